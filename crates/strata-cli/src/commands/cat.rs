//! `strata cat`: stream vault files to standard output.

use std::io::Write;

use anyhow::{bail, Result};
use strata_core::{Inode, Kind, Vault};

use crate::cli::{CatArgs, Global};
use crate::display;
use crate::session;

/// Most symbolic links followed while resolving one path.
const MAX_LINKS: usize = 40;

/// Look `path` up, following symbolic links (the core does not).
fn follow(vault: &Vault, path: &str) -> Result<Inode> {
    let mut p = path.to_string();
    for _ in 0..MAX_LINKS {
        let n = vault.stat_path(&p)?;
        if n.kind != Kind::Symlink {
            return Ok(n);
        }
        let target = display::name(n.target().unwrap_or_default());
        p = if target.starts_with('/') {
            target
        } else {
            let dir = p
                .trim_end_matches('/')
                .rsplit_once('/')
                .map(|(d, _)| d)
                .unwrap_or("");
            display::join(if dir.is_empty() { "/" } else { dir }, &target)
        };
    }
    bail!("{path}: too many levels of symbolic links")
}

pub async fn run(g: &Global, a: &CatArgs) -> Result<()> {
    let (vault, _pw) = session::open_vault(g).await?;
    // check them all before writing anything
    let mut nodes = Vec::new();
    for p in &a.paths {
        let n = follow(&vault, p)?;
        match n.kind {
            Kind::File => nodes.push((p, n)),
            Kind::Dir => bail!("{p}: is a directory"),
            _ => bail!("{p}: not a regular file"),
        }
    }
    let mut out = std::io::stdout();
    for (p, n) in nodes {
        vault
            .export(&n, &mut out, None)
            .await
            .map_err(|e| e.in_file(p))?;
    }
    out.flush()?;
    Ok(())
}
