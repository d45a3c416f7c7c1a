//! `strata ls`: list vault directories (`-l` long format, `-R` recursive).

use std::io::Write;

use anyhow::Result;
use strata_core::{Inode, Kind, Vault};

use crate::cli::{Global, LsArgs};
use crate::display;
use crate::report::Partial;
use crate::session;

/// One line of a listing.
fn line(long: bool, name: &str, n: &Inode, w_links: usize, w_size: usize) -> String {
    if !long {
        return name.to_string();
    }
    let mut s = format!(
        "{} {:>w_links$} {:>w_size$} {} {name}",
        display::mode_string(n.kind, u32::from(n.perm)),
        n.nlink,
        n.size,
        display::time(n.mtime),
    );
    if n.kind == Kind::Symlink {
        if let Some(t) = n.target() {
            s.push_str(" -> ");
            s.push_str(&display::name(t));
        }
    }
    s
}

fn print_entries(out: &mut dyn Write, long: bool, entries: &[(String, Inode)]) -> Result<()> {
    let w_links = entries
        .iter()
        .map(|(_, n)| n.nlink.to_string().len())
        .max()
        .unwrap_or(1);
    let w_size = entries
        .iter()
        .map(|(_, n)| n.size.to_string().len())
        .max()
        .unwrap_or(1);
    for (name, n) in entries {
        writeln!(out, "{}", line(long, name, n, w_links, w_size))?;
    }
    Ok(())
}

/// The entries of a directory inode, sorted by name.
fn children(vault: &Vault, dir: &Inode) -> Vec<(String, Inode)> {
    dir.entries()
        .iter()
        .filter_map(|(name, ino)| vault.inode(*ino).map(|n| (display::name(name), n)))
        .collect()
}

struct Lister<'a> {
    vault: &'a Vault,
    a: &'a LsArgs,
    headers: bool,
    first: bool,
}

impl Lister<'_> {
    fn dir(&mut self, out: &mut dyn Write, path: &str, node: &Inode) -> Result<()> {
        if self.headers {
            if !self.first {
                writeln!(out)?;
            }
            writeln!(out, "{path}:")?;
        }
        self.first = false;
        let entries = children(self.vault, node);
        print_entries(out, self.a.long, &entries)?;
        if self.a.recursive {
            for (name, n) in &entries {
                if n.kind == Kind::Dir {
                    self.dir(out, &display::join(path, name), n)?;
                }
            }
        }
        Ok(())
    }
}

pub async fn run(g: &Global, a: &LsArgs) -> Result<()> {
    let (vault, _pw) = session::open_vault(g).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut partial = Partial::default();
    let mut l = Lister {
        vault: &vault,
        a,
        headers: a.paths.len() > 1 || a.recursive,
        first: true,
    };
    // like ls: non-directories first, then each directory
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for p in &a.paths {
        if let Some(n) = partial.check(vault.stat_path(p).map_err(anyhow::Error::from)) {
            if n.kind == Kind::Dir {
                dirs.push((p.clone(), n));
            } else {
                files.push((p.clone(), n));
            }
        }
    }
    if !files.is_empty() {
        print_entries(&mut out, a.long, &files)?;
        l.first = false;
    }
    for (p, n) in &dirs {
        l.dir(&mut out, p, n)?;
    }
    out.flush()?;
    partial.finish()
}
