//! `strata get`: download vault files and directories, recursively.
//!
//! Like `put`, everything is planned first: every destination conflict is
//! found before anything is written. Each file is downloaded into a temporary
//! file in its destination directory, given its mode and times, flushed to
//! disk and only then renamed into place (without replacing anything unless
//! `--force`), so an interrupted or failed get never leaves a partial file
//! under a real name. Directories get their mode and times after their
//! contents are written. Set-user/group-ID bits are not restored.

use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, Permissions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::{self, TryStreamExt};
use strata_core::{Inode, Kind, Ts, Vault, VaultError};

use crate::cli::{GetArgs, Global};
use crate::display;
use crate::interrupt::{self, Interrupted};
use crate::progress::{Bar, Ui};
use crate::session;

/// Small files downloaded at the same time.
const FILES_IN_FLIGHT: usize = 4;
/// Mode bits restored (no set-user/group-ID).
const MODE_MASK: u32 = 0o1777;

struct FileGet {
    node: Inode,
    vpath: String,
    local: PathBuf,
}

enum Item {
    /// Create a local directory (`exists`: merge into the existing one).
    Dir {
        local: PathBuf,
        exists: bool,
    },
    /// A directory this get created is complete: set its mode and times.
    DirDone {
        local: PathBuf,
        perm: u32,
        atime: Ts,
        mtime: Ts,
    },
    File(FileGet),
    Files(Vec<FileGet>),
    Symlink {
        local: PathBuf,
        target: Vec<u8>,
    },
}

#[derive(Default)]
struct Plan {
    items: Vec<Item>,
    total: u64,
    files: u64,
    dirs: u64,
    links: u64,
    skipped: u64,
}

/// The directory a local path lives in (`.` for a bare name).
fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn exists_error(local: &Path) -> anyhow::Error {
    anyhow!(
        "{}: destination exists (use --force to overwrite)",
        local.display()
    )
}

/// `lstat`, with "does not exist" as `None`.
fn lstat(p: &Path) -> Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot access {}", p.display())),
    }
}

struct Planner<'a> {
    vault: &'a Vault,
    ui: Ui,
    force: bool,
    small: u64,
    plan: Plan,
}

impl Planner<'_> {
    /// May a file or link be written at `local`?
    fn check_target(&self, local: &Path) -> Result<()> {
        match lstat(local)? {
            Some(m) if m.is_dir() => {
                bail!("{}: destination exists and is a directory", local.display())
            }
            Some(_) if !self.force => Err(exists_error(local)),
            _ => Ok(()),
        }
    }

    fn add(&mut self, node: Inode, vpath: String, local: PathBuf) -> Result<()> {
        match node.kind {
            Kind::Dir => {
                // follow a link to a directory, like cp does
                let exists = match lstat(&local)? {
                    None => false,
                    Some(_) if local.is_dir() => true,
                    Some(_) => bail!(
                        "{}: destination exists and is not a directory",
                        local.display()
                    ),
                };
                self.plan.items.push(Item::Dir {
                    local: local.clone(),
                    exists,
                });
                self.plan.dirs += 1;
                for (name, child) in &node.entries {
                    let Some(c) = self.vault.inode(*child) else {
                        continue;
                    };
                    let cv = display::join(&vpath, &display::name(name));
                    self.add(c, cv, local.join(OsStr::from_bytes(name)))?;
                }
                if !exists {
                    self.plan.items.push(Item::DirDone {
                        local,
                        perm: node.perm,
                        atime: node.atime,
                        mtime: node.mtime,
                    });
                }
            }
            Kind::File => {
                self.check_target(&local)?;
                self.plan.total += node.size;
                self.plan.files += 1;
                let small = node.size <= self.small;
                let f = FileGet { node, vpath, local };
                if small {
                    match self.plan.items.last_mut() {
                        Some(Item::Files(v)) if v.len() < 128 => v.push(f),
                        _ => self.plan.items.push(Item::Files(vec![f])),
                    }
                } else {
                    self.plan.items.push(Item::File(f));
                }
            }
            Kind::Symlink => {
                self.check_target(&local)?;
                self.plan.items.push(Item::Symlink {
                    local,
                    target: node.target.unwrap_or_default(),
                });
                self.plan.links += 1;
            }
            _ => {
                self.ui.warn(
                    None,
                    format!("skipping {vpath}: special files are not restored"),
                );
                self.plan.skipped += 1;
            }
        }
        Ok(())
    }
}

/// The last name of a vault path, if it has one.
fn vault_name(path: &str) -> Option<&str> {
    path.split('/')
        .rfind(|c| !c.is_empty() && *c != ".")
        .filter(|c| *c != "..")
}

fn times(atime: Ts, mtime: Ts) -> FileTimes {
    FileTimes::new()
        .set_accessed(display::system_time(atime))
        .set_modified(display::system_time(mtime))
}

async fn get_file(vault: &Vault, f: &FileGet, force: bool, bar: &Bar) -> Result<()> {
    let local = &f.local;
    let dir = parent_dir(local);
    let write_err = |e: std::io::Error| anyhow!("cannot write {}: {e}", local.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".strata-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| anyhow!("cannot create a temporary file in {}: {e}", dir.display()))?;
    vault
        .export(&f.node, &mut tmp, Some(bar.callback()))
        .await
        .map_err(|e| match e {
            VaultError::Io { source, .. } => write_err(source),
            e => anyhow::Error::from(e.in_file(&f.vpath)),
        })?;
    let file = tmp.as_file();
    file.set_times(times(f.node.atime, f.node.mtime))
        .map_err(write_err)?;
    file.set_permissions(Permissions::from_mode(f.node.perm & MODE_MASK))
        .map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    let persisted = if force {
        tmp.persist(local)
    } else {
        tmp.persist_noclobber(local)
    };
    persisted.map_err(|e| {
        if e.error.kind() == ErrorKind::AlreadyExists {
            exists_error(local)
        } else {
            write_err(e.error)
        }
    })?;
    Ok(())
}

fn make_symlink(local: &Path, target: &[u8], force: bool) -> Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = parent_dir(local).join(format!(
        ".strata-{}-{}.link",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)
        .with_context(|| format!("cannot create the symbolic link {}", local.display()))?;
    if !force && lstat(local)?.is_some() {
        let _ = fs::remove_file(&tmp);
        return Err(exists_error(local));
    }
    if let Err(e) = fs::rename(&tmp, local) {
        let _ = fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("cannot create the symbolic link {}", local.display()));
    }
    Ok(())
}

fn finish_dir(local: &Path, perm: u32, atime: Ts, mtime: Ts) -> Result<()> {
    let err =
        |e: std::io::Error| anyhow!("cannot set the mode and times of {}: {e}", local.display());
    File::open(local)
        .and_then(|d| d.set_times(times(atime, mtime)))
        .map_err(err)?;
    fs::set_permissions(local, Permissions::from_mode(perm & MODE_MASK)).map_err(err)
}

async fn exec(vault: &Vault, item: &Item, force: bool, bar: &Bar) -> Result<()> {
    match item {
        Item::Dir { local, exists } => {
            if !exists {
                fs::create_dir(local)
                    .with_context(|| format!("cannot create directory {}", local.display()))?;
            }
        }
        Item::DirDone {
            local,
            perm,
            atime,
            mtime,
        } => finish_dir(local, *perm, *atime, *mtime)?,
        Item::File(f) => get_file(vault, f, force, bar).await?,
        Item::Files(v) => {
            stream::iter(v.iter().map(Ok))
                .try_for_each_concurrent(FILES_IN_FLIGHT, |f| get_file(vault, f, force, bar))
                .await?
        }
        Item::Symlink { local, target } => make_symlink(local, target, force)?,
    }
    Ok(())
}

pub async fn run(g: &Global, ui: Ui, a: &GetArgs) -> Result<()> {
    let (vault, _pw) = session::open_vault(g).await?;
    let into_dir = a.dest.is_dir();
    if !into_dir {
        if a.sources.len() > 1 {
            bail!(
                "{}: not an existing directory (several sources need one as LOCAL)",
                a.dest.display()
            );
        }
        let parent = parent_dir(&a.dest);
        if !parent.is_dir() {
            bail!("{}: no such local directory", parent.display());
        }
    }
    let mut planner = Planner {
        vault: &vault,
        ui,
        force: a.force,
        small: u64::from(vault.chunk_size()),
        plan: Plan::default(),
    };
    for src in &a.sources {
        let node = vault.stat_path(src)?;
        let local = match (into_dir, vault_name(src)) {
            (true, Some(n)) => a.dest.join(n),
            _ => a.dest.clone(),
        };
        planner.add(node, src.clone(), local)?;
    }
    let plan = planner.plan;

    interrupt::install();
    let bar = ui.bytes_bar(plan.total, "get");
    for item in &plan.items {
        tokio::select! {
            r = exec(&vault, item, a.force, &bar) => r?,
            _ = interrupt::wait() => return Err(Interrupted.into()),
        }
    }
    drop(bar);
    ui.note(display::summary(
        "restored",
        [plan.files, plan.total, plan.dirs, plan.links, plan.skipped],
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(vault_name("/a/b"), Some("b"));
        assert_eq!(vault_name("/a/b/"), Some("b"));
        assert_eq!(vault_name("a/./"), Some("a"));
        assert_eq!(vault_name("/"), None);
        assert_eq!(vault_name("/a/.."), None);
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/d/x")), Path::new("/d"));
    }
}
