//! `strata get`: download vault files and directories, recursively.
//!
//! Everything is planned first (the vault's tree is in memory): every
//! destination conflict is found before anything is written. A local file
//! with the vault file's size and modification time is taken as already
//! downloaded and skipped; any other existing file is a conflict unless
//! `--force`. Each file is downloaded into `.NAME.strata-part` in its
//! destination directory, given its mode and times, flushed to disk and only
//! then renamed into place (without replacing anything unless `--force`), so
//! an interrupted or failed get never leaves a partial file under a real
//! name. The partial file stays after an interruption: the next get keeps
//! its leading chunks that match the vault's (hashed and compared with the
//! blob ids, see `compare`) and downloads only the rest. Directories get
//! their mode and times after their contents are written. Set-user/group-ID
//! bits are not restored.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, Permissions};
use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::{self, TryStreamExt};
use strata_core::format::pack::PackId;
use strata_core::{Inode, Kind, Ts, Vault, VaultError};

use super::compare;
use crate::cli::{GetArgs, Global};
use crate::display::{self, Tally};
use crate::interrupt::{self, Interrupted};
use crate::progress::{Bar, Ui};
use crate::session;

/// Small files downloaded at the same time.
const FILES_IN_FLIGHT: usize = 4;
/// Planned items of one pack from which the whole pack is fetched at once.
const WHOLE_PACK_ITEMS: usize = 8;
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
    /// A directory is complete: set its mode and times (if they differ).
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
    /// Bytes to download.
    total: u64,
    tally: Tally,
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

/// What is at a file's or link's destination.
enum Target {
    Missing,
    /// Already what the vault holds: nothing to do.
    Same,
    /// Something else, to be replaced (`--force`).
    Other,
}

fn mtime_ns(m: &fs::Metadata) -> Ts {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

impl Planner<'_> {
    /// May a file or link be written at `local`? `same` says whether what
    /// is there already matches the vault.
    fn check_target(&self, local: &Path, same: impl Fn(&fs::Metadata) -> bool) -> Result<Target> {
        match lstat(local)? {
            Some(m) if m.is_dir() => {
                bail!("{}: destination exists and is a directory", local.display())
            }
            Some(m) if !self.force && same(&m) => Ok(Target::Same),
            Some(_) if !self.force => Err(exists_error(local)),
            Some(_) => Ok(Target::Other),
            None => Ok(Target::Missing),
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
                if !exists {
                    self.plan.tally.dirs += 1;
                }
                for (name, child) in node.entries() {
                    let Some(c) = self.vault.inode(*child) else {
                        continue;
                    };
                    let cv = display::join(&vpath, &display::name(name));
                    self.add(c, cv, local.join(OsStr::from_bytes(name)))?;
                }
                self.plan.items.push(Item::DirDone {
                    local,
                    perm: u32::from(node.perm),
                    atime: node.atime,
                    mtime: node.mtime,
                });
            }
            Kind::File => {
                let same = |m: &fs::Metadata| {
                    m.is_file() && m.len() == node.size && mtime_ns(m) == node.mtime
                };
                match self.check_target(&local, same)? {
                    Target::Same => {
                        self.plan.tally.unchanged += 1;
                        return Ok(());
                    }
                    Target::Other => self.plan.tally.replaced += 1,
                    Target::Missing => self.plan.tally.added += 1,
                }
                self.plan.total += node.size;
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
                let target = node.target().unwrap_or_default().to_vec();
                let same = |m: &fs::Metadata| {
                    m.file_type().is_symlink()
                        && fs::read_link(&local)
                            .is_ok_and(|t| t.as_os_str().as_bytes() == target.as_slice())
                };
                if let Target::Same = self.check_target(&local, same)? {
                    self.plan.tally.links_unchanged += 1;
                    return Ok(());
                }
                self.plan.items.push(Item::Symlink { local, target });
                self.plan.tally.links += 1;
            }
            _ => {
                self.ui.warn(
                    None,
                    format!("skipping {vpath}: special files are not restored"),
                );
                self.plan.tally.ignored += 1;
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

/// Where a file is downloaded before it is renamed into place.
fn part_path(local: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(local.file_name().unwrap_or_default());
    name.push(".strata-part");
    parent_dir(local).join(name)
}

async fn get_file(vault: &Vault, f: &FileGet, force: bool, bar: &Bar) -> Result<()> {
    let local = &f.local;
    let part = part_path(local);
    let write_err = |e: std::io::Error| anyhow!("cannot write {}: {e}", local.display());
    // What an interrupted get left: keep the leading chunks that match.
    let keep = match fs::symlink_metadata(&part) {
        Ok(m) if m.is_file() => {
            match compare::compare_async(vault.keys().clone(), part.clone(), f.node.clone()).await {
                Ok(m) if m.whole => f.node.size,
                Ok(m) => (m.chunks * u64::from(f.node.chunk_size)).min(f.node.size),
                Err(_) => 0,
            }
        }
        _ => 0,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .map_err(|e| anyhow!("cannot create {}: {e}", part.display()))?;
    file.set_len(keep).map_err(write_err)?;
    file.seek(SeekFrom::Start(keep)).map_err(write_err)?;
    let progress = bar.callback();
    progress(keep);
    let mut out = EarlyWriteback::new(&mut file, keep);
    vault
        .export_from(&f.node, keep, &mut out, Some(progress))
        .await
        .map_err(|e| match e {
            VaultError::Io { source, .. } => write_err(source),
            e => anyhow::Error::from(e.in_file(&f.vpath)),
        })?;
    file.set_times(times(f.node.atime, f.node.mtime))
        .map_err(write_err)?;
    file.set_permissions(Permissions::from_mode(u32::from(f.node.perm) & MODE_MASK))
        .map_err(write_err)?;
    // Not synced one by one: `run` syncs the destination's filesystem once
    // at the end (a per-file fsync made 5000 small files take seconds).
    if force {
        return fs::rename(&part, local).map_err(write_err);
    }
    let path = tempfile::TempPath::try_from_path(&part).map_err(write_err)?;
    let tmp = tempfile::NamedTempFile::from_parts(file, path);
    tmp.persist_noclobber(local).map_err(|e| {
        if e.error.kind() == ErrorKind::AlreadyExists {
            exists_error(local)
        } else {
            write_err(e.error)
        }
    })?;
    Ok(())
}

/// A file being written that asks the kernel to start writing each
/// [`EarlyWriteback::STEP`] written to disk (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`, which starts the writes and does not wait for
/// them), so the disk works while the download goes on and the `syncfs`
/// at the end of the run finds little left to write.
struct EarlyWriteback<'a> {
    file: &'a mut File,
    /// End of what was written so far, and of what was handed to the disk.
    pos: u64,
    started: u64,
}

impl<'a> EarlyWriteback<'a> {
    const STEP: u64 = 8 << 20;

    fn new(file: &'a mut File, at: u64) -> Self {
        EarlyWriteback {
            file,
            pos: at,
            started: at,
        }
    }
}

impl Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        if self.pos - self.started >= Self::STEP {
            let (Ok(off), Ok(len)) = (
                i64::try_from(self.started),
                i64::try_from(self.pos - self.started),
            ) else {
                return Ok(n);
            };
            // SAFETY: a plain system call on the file's open descriptor,
            // which `self.file` keeps open; no memory is passed.
            // A failure only loses the head start: the result is ignored.
            let _ = unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE)
            };
            self.started = self.pos;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
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
    let m = fs::metadata(local).map_err(err)?;
    if m.mode() & MODE_MASK == perm & MODE_MASK && mtime_ns(&m) == mtime {
        return Ok(());
    }
    File::open(local)
        .and_then(|d| d.set_times(times(atime, mtime)))
        .map_err(err)?;
    fs::set_permissions(local, Permissions::from_mode(perm & MODE_MASK)).map_err(err)
}

/// Make everything written under `dir` durable: one `syncfs(2)` of its
/// filesystem, once, instead of an fsync per file.
fn sync_filesystem(dir: &Path) -> Result<()> {
    let err =
        |e: std::io::Error| anyhow!("cannot sync the files written to {}: {e}", dir.display());
    let d = File::open(dir).map_err(err)?;
    rustix::fs::syncfs(&d).map_err(|e| err(e.into()))
}

/// Small files stored in packs: each batch goes pack by pack, and a pack
/// the plan reads at least [`WHOLE_PACK_ITEMS`] items of is fetched whole
/// (one request) instead of with one range request per item.
fn plan_pack_reads(vault: &Vault, items: &mut [Item]) {
    let chunks = vault.chunks();
    let loc = |f: &FileGet| {
        let first = f.node.chunks().iter().flatten().next()?;
        chunks.locate(&first.id)
    };
    let mut wanted: HashMap<PackId, usize> = HashMap::new();
    for item in items.iter_mut() {
        if let Item::Files(v) = item {
            v.sort_by_cached_key(|f| loc(f).map(|l| (l.pack, l.offset)));
            for l in v.iter().filter_map(loc) {
                *wanted.entry(l.pack).or_default() += 1;
            }
        }
    }
    chunks.read_whole(
        wanted
            .into_iter()
            .filter(|&(_, n)| n >= WHOLE_PACK_ITEMS)
            .map(|(p, _)| p),
    );
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
    let mut plan = planner.plan;
    plan_pack_reads(&vault, &mut plan.items);

    interrupt::install();
    let bar = ui.bytes_bar(plan.total, "get");
    let dest_dir = if into_dir {
        a.dest.clone()
    } else {
        parent_dir(&a.dest).to_path_buf()
    };
    for item in &plan.items {
        let r = tokio::select! {
            r = exec(&vault, item, a.force, &bar) => r,
            _ = interrupt::wait() => Err(Interrupted.into()),
        };
        if let Err(e) = r {
            drop(bar);
            // Best effort: the error that stopped the run is the one to report.
            let _ = sync_filesystem(&dest_dir);
            ui.note("strata: the files completed before stopping are in place; run the same command again to resume");
            return Err(e);
        }
    }
    drop(bar);
    sync_filesystem(&dest_dir)?;
    let mut tally = plan.tally;
    tally.copied = plan.total;
    ui.note(display::tally("restored", &tally));
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
