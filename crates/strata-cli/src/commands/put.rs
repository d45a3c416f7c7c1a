//! `strata put`: upload local files and directories, recursively, like
//! `cp -r`.
//!
//! Everything is planned first (walk the sources, check every conflict with
//! the vault, check every file can be opened, add up the sizes for the
//! progress bar), so a put that would fail on a conflict or an unreadable file
//! fails before anything is uploaded. The plan then runs in order: directories
//! are created before their contents and get their times after them; runs of
//! small files are uploaded a few at a time. Changes are committed every few
//! hundred entries, so an interruption loses little, and once more at the end
//! (also after an error or Ctrl-C, so completed files are kept).

use std::fs::{self, File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::{self, TryStreamExt};
use strata_core::data::FileMeta;
use strata_core::paths::apply_error;
use strata_core::record::now;
use strata_core::{Inode, Kind, Record, Ts, Vault, VaultError};

use crate::cli::{Global, PutArgs};
use crate::display;
use crate::interrupt::{self, Interrupted};
use crate::progress::{Bar, Ui};
use crate::session;

/// Commit after this many entries…
const COMMIT_EVERY: usize = 500;
/// …or this many bytes, whichever comes first.
const COMMIT_BYTES: u64 = 1 << 30;
/// Small files uploaded at the same time.
const FILES_IN_FLIGHT: usize = 4;

/// One planned upload of a regular file.
struct FileItem {
    local: PathBuf,
    vpath: String,
    meta: FileMeta,
    size: u64,
}

/// One step of the plan.
enum Item {
    /// Create a directory (`exists`: it is already there; contents merge in).
    Dir {
        vpath: String,
        perm: u32,
        exists: bool,
    },
    /// Everything inside a directory this put created is done: set its times.
    DirDone {
        vpath: String,
        atime: Ts,
        mtime: Ts,
    },
    File(FileItem),
    /// Several small files uploaded concurrently.
    Files(Vec<FileItem>),
    Symlink {
        vpath: String,
        target: Vec<u8>,
        atime: Ts,
        mtime: Ts,
        replace: bool,
    },
}

/// What the walk found.
#[derive(Default)]
struct Plan {
    items: Vec<Item>,
    total: u64,
    files: u64,
    dirs: u64,
    links: u64,
    skipped: u64,
}

/// `stat` a vault path; `None` if it does not exist.
pub(crate) fn lookup(vault: &Vault, path: &str) -> Result<Option<Inode>> {
    match vault.stat_path(path) {
        Ok(n) => Ok(Some(n)),
        Err(VaultError::NotFound { .. }) | Err(VaultError::NotADirectory { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn ns(secs: i64, nsec: i64) -> Ts {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn times(m: &Metadata) -> (Ts, Ts) {
    (ns(m.atime(), m.atime_nsec()), ns(m.mtime(), m.mtime_nsec()))
}

fn kind_name(ft: &fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a named pipe"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else {
        "a special file"
    }
}

fn exists_error(vpath: &str) -> anyhow::Error {
    anyhow!("{vpath}: exists (use --force to overwrite)")
}

struct Planner<'a> {
    vault: &'a Vault,
    ui: Ui,
    force: bool,
    small: u64,
    plan: Plan,
}

impl Planner<'_> {
    /// Check that a non-directory may be written at `vpath`; returns whether
    /// something is there already.
    fn check_target(&self, vpath: &str, local: &Path) -> Result<bool> {
        match lookup(self.vault, vpath)? {
            Some(n) if n.kind == Kind::Dir => bail!(
                "{vpath}: is a directory in the vault; cannot replace it with {}",
                local.display()
            ),
            Some(_) if !self.force => Err(exists_error(vpath)),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    fn add(&mut self, local: &Path, vpath: String) -> Result<()> {
        let m = fs::symlink_metadata(local)
            .with_context(|| format!("cannot read {}", local.display()))?;
        let ft = m.file_type();
        let (atime, mtime) = times(&m);
        if ft.is_dir() {
            let exists = match lookup(self.vault, &vpath)? {
                Some(n) if n.kind == Kind::Dir => true,
                Some(_) => bail!(
                    "{vpath}: exists in the vault and is not a directory; cannot put the directory {} there",
                    local.display()
                ),
                None => false,
            };
            self.plan.items.push(Item::Dir {
                vpath: vpath.clone(),
                perm: m.mode() & 0o7777,
                exists,
            });
            self.plan.dirs += 1;
            let mut entries = fs::read_dir(local)
                .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
                .with_context(|| format!("cannot read directory {}", local.display()))?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name();
                let Some(n) = name.to_str() else {
                    self.ui.warn(
                        None,
                        format!(
                            "skipping {}: the name is not valid UTF-8",
                            e.path().display()
                        ),
                    );
                    self.plan.skipped += 1;
                    continue;
                };
                self.add(&e.path(), display::join(&vpath, n))?;
            }
            if !exists {
                self.plan.items.push(Item::DirDone {
                    vpath,
                    atime,
                    mtime,
                });
            }
        } else if ft.is_file() {
            self.check_target(&vpath, local)?;
            // Fail now, before anything is uploaded, if it cannot be read.
            File::open(local).with_context(|| format!("cannot read {}", local.display()))?;
            let size = m.len();
            let item = FileItem {
                local: local.to_path_buf(),
                vpath,
                meta: FileMeta {
                    perm: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    atime,
                    mtime,
                },
                size,
            };
            self.plan.total += size;
            self.plan.files += 1;
            if size <= self.small {
                match self.plan.items.last_mut() {
                    Some(Item::Files(v)) if v.len() < COMMIT_EVERY / 4 => v.push(item),
                    _ => self.plan.items.push(Item::Files(vec![item])),
                }
            } else {
                self.plan.items.push(Item::File(item));
            }
        } else if ft.is_symlink() {
            let replace = self.check_target(&vpath, local)?;
            let target = fs::read_link(local)
                .with_context(|| format!("cannot read the symbolic link {}", local.display()))?;
            self.plan.items.push(Item::Symlink {
                vpath,
                target: target.as_os_str().as_bytes().to_vec(),
                atime,
                mtime,
                replace,
            });
            self.plan.links += 1;
        } else {
            self.ui.warn(
                None,
                format!(
                    "skipping {}: it is {} (only files, directories and symbolic links are stored)",
                    local.display(),
                    kind_name(&ft)
                ),
            );
            self.plan.skipped += 1;
        }
        Ok(())
    }
}

/// Where each source goes, following `cp -r`.
fn targets(vault: &Vault, a: &PutArgs) -> Result<Vec<(PathBuf, String)>> {
    let dest = lookup(vault, &a.dest)?;
    let into_dir = dest.as_ref().is_some_and(|n| n.kind == Kind::Dir);
    if !into_dir {
        if a.sources.len() > 1 {
            match dest {
                Some(_) => bail!("{}: not a directory in the vault (several sources need an existing directory as DEST)", a.dest),
                None => bail!("{}: no such directory in the vault (several sources need an existing directory as DEST)", a.dest),
            }
        }
        if dest.is_none() {
            // The new name's parent directory must exist.
            vault.resolve_parent(&a.dest)?;
        }
    }
    let mut out = Vec::new();
    for src in &a.sources {
        let vpath = if into_dir {
            match src.file_name() {
                Some(n) => {
                    let n = n
                        .to_str()
                        .ok_or_else(|| anyhow!("{}: the name is not valid UTF-8", src.display()))?;
                    display::join(&a.dest, n)
                }
                // ".", "..", "/": the contents go straight into DEST
                None => a.dest.clone(),
            }
        } else {
            a.dest.clone()
        };
        out.push((src.clone(), vpath));
    }
    Ok(out)
}

fn write_error(e: VaultError, local: &Path, vpath: &str) -> anyhow::Error {
    match e {
        VaultError::Exists { .. } => exists_error(vpath),
        VaultError::Io { source, .. } => anyhow!("cannot read {}: {source}", local.display()),
        e => e.into(),
    }
}

async fn put_file(vault: &Vault, f: &FileItem, force: bool, bar: &Bar) -> Result<()> {
    let file =
        File::open(&f.local).with_context(|| format!("cannot read {}", f.local.display()))?;
    vault
        .write_file(
            &f.vpath,
            Box::new(file),
            f.meta,
            force,
            Some(bar.callback()),
        )
        .await
        .map_err(|e| write_error(e, &f.local, &f.vpath))?;
    Ok(())
}

fn set_times(vault: &Vault, ino: u64, vpath: &str, atime: Ts, mtime: Ts) -> Result<()> {
    vault
        .apply(Record::SetAttr {
            ino,
            perm: None,
            uid: None,
            gid: None,
            size: None,
            atime: Some(atime),
            mtime: Some(mtime),
            ctime: now(),
        })
        .map(|_| ())
        .map_err(|e| apply_error(e, vpath).into())
}

/// Run one step; returns (entries done, bytes uploaded).
async fn exec(vault: &Vault, item: &Item, force: bool, bar: &Bar) -> Result<(usize, u64)> {
    match item {
        Item::Dir {
            vpath,
            perm,
            exists,
        } => {
            if !exists {
                vault.mkdir(vpath, *perm, false)?;
            }
            Ok((1, 0))
        }
        Item::DirDone {
            vpath,
            atime,
            mtime,
        } => {
            let ino = vault.resolve(vpath)?;
            set_times(vault, ino, vpath, *atime, *mtime)?;
            Ok((0, 0))
        }
        Item::File(f) => {
            put_file(vault, f, force, bar).await?;
            Ok((1, f.size))
        }
        Item::Files(v) => {
            stream::iter(v.iter().map(Ok))
                .try_for_each_concurrent(FILES_IN_FLIGHT, |f| put_file(vault, f, force, bar))
                .await?;
            Ok((v.len(), v.iter().map(|f| f.size).sum()))
        }
        Item::Symlink {
            vpath,
            target,
            atime,
            mtime,
            replace,
        } => {
            if *replace {
                vault.remove(vpath, false)?;
            }
            let ino = vault.symlink(vpath, target).map_err(|e| match e {
                VaultError::Exists { .. } => exists_error(vpath),
                e => e.into(),
            })?;
            set_times(vault, ino, vpath, *atime, *mtime)?;
            Ok((1, 0))
        }
    }
}

pub async fn run(g: &Global, ui: Ui, a: &PutArgs) -> Result<()> {
    let (vault, _pw) = session::open_writer(g, "put", &a.lease).await?;
    let res = put_all(&vault, ui, a).await;
    session::finish(&vault, res).await
}

async fn put_all(vault: &Vault, ui: Ui, a: &PutArgs) -> Result<()> {
    let mut planner = Planner {
        vault,
        ui,
        force: a.force,
        small: u64::from(vault.chunk_size()),
        plan: Plan::default(),
    };
    for (local, vpath) in targets(vault, a)? {
        planner.add(&local, vpath)?;
    }
    let plan = planner.plan;

    interrupt::install();
    let bar = ui.bytes_bar(plan.total, "put");
    let mut result = Ok(());
    let (mut entries, mut bytes) = (0usize, 0u64);
    let mut did_any = false;
    for item in &plan.items {
        let r = tokio::select! {
            r = exec(vault, item, a.force, &bar) => r,
            _ = interrupt::wait() => Err(Interrupted.into()),
        };
        match r {
            Ok((n, b)) => {
                did_any = true;
                entries += n;
                bytes += b;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        if entries >= COMMIT_EVERY || bytes >= COMMIT_BYTES {
            if let Err(e) = session::commit(vault).await {
                result = Err(e);
                break;
            }
            entries = 0;
            bytes = 0;
        }
    }
    drop(bar);
    let committed = session::commit(vault).await;
    match (result, committed) {
        (Ok(()), Ok(())) => {
            ui.note(display::summary(
                "stored",
                [plan.files, plan.total, plan.dirs, plan.links, plan.skipped],
            ));
            Ok(())
        }
        (Err(e), Ok(())) => {
            if did_any {
                ui.note("strata: what was completed before stopping has been saved; rerun with --force to finish");
            }
            Err(e)
        }
        (Ok(()), Err(c)) => Err(c),
        (Err(e), Err(c)) => Err(anyhow!(
            "{e:#} (saving the completed part also failed: {c:#})"
        )),
    }
}
