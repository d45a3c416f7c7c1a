//! `strata gc`: delete objects nothing references.

use anyhow::Result;

use crate::cli::{GcArgs, Global};
use crate::display::{self, size_exact};
use crate::progress::Ui;
use crate::session;

pub async fn gc(g: &Global, _ui: Ui, a: &GcArgs) -> Result<()> {
    let (vault, _pw) = session::open_writer(g, "gc", &a.lease).await?;
    let r = vault
        .gc_with(strata_core::maint::GcOptions {
            repack_below: f64::from(a.repack_below) / 100.0,
            ..Default::default()
        })
        .await;
    let r = session::finish(&vault, r.map_err(anyhow::Error::from)).await?;
    println!(
        "deleted {} ({} freed)",
        display::plural(r.blobs_deleted, "unreferenced blob", "unreferenced blobs"),
        size_exact(r.bytes_freed - r.pack_bytes_freed)
    );
    if r.packs_deleted > 0 {
        println!(
            "deleted {}",
            display::plural(r.packs_deleted, "unreferenced pack", "unreferenced packs")
        );
    }
    if r.packs_repacked > 0 {
        println!(
            "repacked {} into {} (live small files copied, deleted ones dropped)",
            display::plural(r.packs_repacked, "pack", "packs"),
            r.packs_written
        );
    }
    if r.pack_bytes_freed > 0 {
        println!("deleted packs: {}", size_exact(r.pack_bytes_freed));
    }
    println!(
        "removed {}",
        display::plural(
            r.meta_deleted,
            "obsolete metadata object",
            "obsolete metadata objects"
        )
    );
    Ok(())
}
