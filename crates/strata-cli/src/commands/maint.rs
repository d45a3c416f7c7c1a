//! `strata gc`: delete objects nothing references.

use anyhow::Result;

use crate::cli::Global;
use crate::display::{self, size_exact};
use crate::progress::Ui;
use crate::session;

pub async fn gc(g: &Global, _ui: Ui) -> Result<()> {
    let (vault, _pw) = session::open_vault(g).await?;
    let r = vault.gc().await?;
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
