//! `strata gc`: delete objects nothing references.

use anyhow::Result;

use crate::cli::{GcArgs, Global};
use crate::display::{self, size_exact};
use crate::progress::Ui;
use crate::session;

pub async fn gc(g: &Global, _ui: Ui, a: &GcArgs) -> Result<()> {
    let (vault, _pw) = session::open_writer(g, "gc", &a.lease).await?;
    let r = vault.gc().await;
    let r = session::finish(&vault, r.map_err(anyhow::Error::from)).await?;
    println!(
        "deleted {} ({} freed)",
        display::plural(r.blobs_deleted, "unreferenced blob", "unreferenced blobs"),
        size_exact(r.bytes_freed)
    );
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
