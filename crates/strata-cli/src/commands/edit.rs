//! Tree edits that move no data: `mkdir`, `rm` and `mv`. Each operand is
//! tried in turn (a failure is reported and the rest still run, like the
//! Unix tools); whatever succeeded is committed before exiting.

use anyhow::{anyhow, bail, Result};
use strata_core::{Kind, Vault, VaultError};

use crate::cli::{Global, MkdirArgs, MvArgs, RmArgs};
use crate::display;
use crate::progress::Ui;
use crate::report::Partial;
use crate::session;

fn parse_mode(s: &str) -> Result<u32> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => bail!("--mode must be octal permission bits like 755, not `{s}`"),
    }
}

pub async fn mkdir(g: &Global, ui: Ui, a: &MkdirArgs) -> Result<()> {
    let mode = parse_mode(&a.mode)?;
    let (vault, _pw) = session::open_writer(g, "mkdir", &a.lease).await?;
    let res = mkdir_in(&vault, ui, a, mode).await;
    session::finish(&vault, res).await
}

async fn mkdir_in(vault: &Vault, ui: Ui, a: &MkdirArgs, mode: u32) -> Result<()> {
    let mut partial = Partial::default();
    let mut made = 0u64;
    for p in &a.paths {
        if partial
            .check(vault.mkdir(p, mode, a.parents).map_err(anyhow::Error::from))
            .is_some()
        {
            made += 1;
        }
    }
    session::commit(vault).await?;
    if made > 0 && a.paths.len() > 1 {
        ui.note(format!(
            "created {}",
            display::plural(made, "directory", "directories")
        ));
    }
    partial.finish()
}

pub async fn rm(g: &Global, ui: Ui, a: &RmArgs) -> Result<()> {
    let (vault, _pw) = session::open_writer(g, "rm", &a.lease).await?;
    let res = rm_in(&vault, ui, a).await;
    session::finish(&vault, res).await
}

async fn rm_in(vault: &Vault, ui: Ui, a: &RmArgs) -> Result<()> {
    let mut partial = Partial::default();
    let mut removed = 0u64;
    for p in &a.paths {
        match vault.remove(p, a.recursive) {
            Ok(()) => removed += 1,
            Err(VaultError::NotFound { .. }) if a.force => {}
            Err(e) => partial.fail(e.into()),
        }
    }
    session::commit(vault).await?;
    if removed > 1 {
        ui.note(format!(
            "removed {}",
            display::plural(removed, "entry", "entries")
        ));
    }
    partial.finish()
}

pub async fn mv(g: &Global, ui: Ui, a: &MvArgs) -> Result<()> {
    let (vault, _pw) = session::open_writer(g, "mv", &a.lease).await?;
    let res = mv_in(&vault, ui, a).await;
    session::finish(&vault, res).await
}

async fn mv_in(vault: &Vault, ui: Ui, a: &MvArgs) -> Result<()> {
    if a.sources.len() > 1 {
        match vault.stat_path(&a.dest) {
            Ok(n) if n.kind == Kind::Dir => {}
            Ok(_) => bail!(
                "{}: not a directory (several sources need a directory as DEST)",
                a.dest
            ),
            Err(e) => {
                return Err(anyhow!(e).context("several sources need an existing directory as DEST"))
            }
        }
    }
    let mut partial = Partial::default();
    let mut moved = 0u64;
    for src in &a.sources {
        if partial
            .check(vault.rename(src, &a.dest).map_err(anyhow::Error::from))
            .is_some()
        {
            moved += 1;
        }
    }
    session::commit(vault).await?;
    if moved > 1 {
        ui.note(format!(
            "moved {}",
            display::plural(moved, "entry", "entries")
        ));
    }
    partial.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0700").unwrap(), 0o700);
        assert!(parse_mode("9").is_err());
        assert!(parse_mode("77777").is_err());
    }
}
