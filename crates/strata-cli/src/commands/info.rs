//! `strata info`: usage figures of the vault and its store.

use anyhow::Result;
use strata_core::lease;

use crate::cli::Global;
use crate::display::{self, size, size_exact};
use crate::session;

pub async fn run(g: &Global) -> Result<()> {
    let (vault, _pw) = session::open_vault(g).await?;
    let i = vault.info().await?;
    let header = strata_core::Vault::read_header(vault.store()).await?;
    let lease = match vault.lease_holder().await? {
        None => "free (no writer)".to_string(),
        Some(h) => match &h.lease {
            Some(l) => {
                let now = lease::unix_now();
                let state = if now <= l.expires {
                    format!("expires {}", lease::format_utc(l.expires))
                } else {
                    format!(
                        "expired {} (stale: the writer stopped without releasing it)",
                        lease::format_utc(l.expires)
                    )
                };
                format!(
                    "held by {} since {}; {state}",
                    h.describe(),
                    lease::format_utc(l.acquired)
                )
            }
            None => h.describe(),
        },
    };
    let caps = strata_store::Store::capabilities(vault.store());
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let store_caps = format!(
        "range reads: {}; create-if-absent enforced: {}{}; max object size: {}",
        yes_no(caps.range_reads),
        yes_no(caps.conditional_create),
        if caps.conditional_create {
            ""
        } else {
            " (the writer lease uses put + settle + read-back)"
        },
        caps.max_object_size
            .map(size)
            .unwrap_or_else(|| "no limit".to_string())
    );
    let rows: Vec<(&str, String)> = vec![
        ("store", vault.store_name().to_string()),
        ("store can do", store_caps),
        ("vault id", vault.vault_id()),
        (
            "format",
            format!("{} version {}", header.format, header.version),
        ),
        ("metadata version", i.version.to_string()),
        ("writer lease", lease),
        ("chunk size", size(u64::from(i.chunk_size))),
        ("files", i.files.to_string()),
        ("directories", i.dirs.to_string()),
        ("symbolic links", i.symlinks.to_string()),
        ("file bytes", size_exact(i.bytes)),
        ("blobs", i.blobs.to_string()),
        (
            "packed",
            format!(
                "{} in {}",
                display::plural(i.packed_blobs, "blob", "blobs"),
                display::plural(i.packs, "pack", "packs")
            ),
        ),
        ("bytes stored", size_exact(i.blob_bytes)),
        ("dedup savings", size_exact(i.dedup_saved)),
        (
            "metadata",
            format!(
                "{}, {}",
                display::plural(i.meta_objects, "object", "objects"),
                size(i.meta_bytes)
            ),
        ),
        (
            "store total",
            format!(
                "{}, {}",
                display::plural(i.store_objects, "object", "objects"),
                size(i.store_bytes)
            ),
        ),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in rows {
        println!("{:<w$} {v}", format!("{k}:"));
    }
    Ok(())
}
