//! `strata check`: verify that every referenced blob is present (and with
//! `--read-data`, authentic). Damage is listed with the affected files, and
//! the exit status is 1.

use anyhow::{bail, Result};

use crate::cli::{CheckArgs, Global};
use crate::display::{self, size};
use crate::progress::Ui;
use crate::session;

pub async fn run(g: &Global, ui: Ui, a: &CheckArgs) -> Result<()> {
    let (vault, _pw) = session::open_vault(g).await?;
    let total: u64 = if a.read_data {
        vault.with_tree(|t| {
            t.referenced_blobs()
                .values()
                .map(|c| u64::from(c.blob_len))
                .sum()
        })
    } else {
        0
    };
    let bar = a.read_data.then(|| ui.bytes_bar(total, "check"));
    let report = vault
        .check(a.read_data, bar.as_ref().map(|b| b.callback()))
        .await?;
    drop(bar);

    let mut summary = format!(
        "checked {}",
        display::plural(report.blobs_checked, "blob", "blobs")
    );
    if a.read_data {
        summary.push_str(&format!(", read {}", size(report.bytes_read)));
    }
    if report.unreferenced > 0 {
        println!(
            "{} not referenced by any file (leftovers of interrupted runs; `strata gc` deletes them)",
            display::plural(report.unreferenced, "blob is", "blobs are")
        );
    }
    if report.damaged.is_empty() {
        println!("{summary}: no problems found");
        return Ok(());
    }
    let mut files: Vec<&str> = Vec::new();
    for d in &report.damaged {
        println!("DAMAGED {}: {}", d.object, d.problem);
        if d.files.is_empty() {
            println!("  (no file uses it)");
        }
        for f in &d.files {
            println!("  affects {f}");
            if !files.contains(&f.as_str()) {
                files.push(f);
            }
        }
    }
    println!("{summary}");
    bail!(
        "{} damaged, affecting {}; restore the objects from a backup, or remove the affected files",
        display::plural(report.damaged.len() as u64, "object", "objects"),
        display::plural(files.len() as u64, "file", "files")
    )
}
