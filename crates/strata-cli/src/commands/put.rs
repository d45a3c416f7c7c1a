//! `strata put`: upload local files and directories, recursively, like
//! `cp -r` — and, run again, like `rsync` or `rclone copy`: files already in
//! the vault with the same size and modification time (the same content,
//! with `--checksum`) are skipped, changed ones are replaced, `--force`
//! replaces everything.
//!
//! The sources are walked while they are uploaded ([`walk::stream`]); a
//! second walk only counts them for the progress bar ([`walk::count`]).
//! Each entry is decided on as it arrives: directories are created at once,
//! files that need copying are uploaded a few at a time (a file takes one
//! upload slot per chunk, up to all of them, so a big file goes alone and
//! small ones go together), and a directory gets its mode and times once
//! every upload started before its end has finished. Changes are committed
//! every [`COMMIT_INTERVAL`] (or [`COMMIT_RECORDS`] records), in the
//! background, so memory holds only what is in flight and a crash, kill or
//! network loss keeps what was committed; the same command run again
//! resumes. Blobs uploaded but not committed before an interruption are
//! found by one listing of the store ([`Vault::find_stored_blobs`]) and not
//! sent again.
//!
//! An entry that cannot be read or stored (unreadable file, a directory in
//! the vault where the source has a file) is reported and the rest goes on;
//! the command then exits non-zero. A store or vault failure, or Ctrl-C,
//! stops it: what was completed is committed first.

mod walk;

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, Metadata};
use std::future::Future;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use strata_core::data::{FileMeta, Progress};
use strata_core::paths::apply_error;
use strata_core::record::now;
use strata_core::{Inode, Kind, Record, Ts, Vault, VaultError};

use super::compare;
use crate::cli::{Global, PutArgs};
use crate::display::{self, Tally};
use crate::interrupt::{self, Interrupted};
use crate::progress::{Transfer, Ui};
use crate::report::AlreadyReported;
use crate::session;
use walk::Entry;

/// Commit at least this often while changes are pending…
const COMMIT_INTERVAL: Duration = Duration::from_secs(2);
/// …or as soon as this many records are pending.
const COMMIT_RECORDS: u64 = 20_000;
/// Upload slots: a file takes one per chunk, at most all of them.
const SLOTS: usize = 8;
/// A put that committed this many records ends with a checkpoint.
const CHECKPOINT_RECORDS: u64 = 20_000;
/// Files up to this size are read whole on the async thread instead of
/// through a reader thread: a few KiB from the page cache take microseconds,
/// less than the handoff to a blocking thread and back, which for many
/// small files was a good part of the put. (One that grew past this since
/// it was looked at is streamed after all.)
const INLINE_READ: u64 = 64 << 10;
/// How long uploads wait for the listing of the store's blobs (so that what
/// an interrupted put left there is reused) before they start without it.
const LISTING_WAIT: Duration = Duration::from_secs(5);

/// `stat` a vault path; `None` if it does not exist.
pub(crate) fn lookup(vault: &Vault, path: &str) -> Result<Option<Inode>> {
    match vault.stat_path(path) {
        Ok(n) => Ok(Some(n)),
        Err(VaultError::NotFound { .. }) | Err(VaultError::NotADirectory { .. }) => Ok(None),
        Err(e) => Err(e.into()),
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

/// A failure while handling one entry.
struct Failure {
    err: anyhow::Error,
    /// The store or the vault failed (not just this entry): stop.
    fatal: bool,
}

impl Failure {
    fn entry(err: anyhow::Error) -> Failure {
        Failure { err, fatal: false }
    }
}

/// Errors of the vault: local read errors and name conflicts concern one
/// entry; anything else (the store, the lease) stops the put.
impl From<(VaultError, &Path, &str)> for Failure {
    fn from((e, local, vpath): (VaultError, &Path, &str)) -> Failure {
        match e {
            VaultError::Io { source, .. } => {
                Failure::entry(anyhow!("cannot read {}: {source}", local.display()))
            }
            VaultError::Exists { .. } => Failure::entry(anyhow!(
                "{vpath}: was created in the vault by another source of this put"
            )),
            e @ (VaultError::IsADirectory { .. }
            | VaultError::NotFound { .. }
            | VaultError::NotADirectory { .. }) => Failure::entry(e.into()),
            e => Failure {
                err: e.into(),
                fatal: true,
            },
        }
    }
}

/// What to do with a file that needs more than a look.
enum Action {
    Add,
    Replace,
    /// `--checksum`: same size; compare the contents with this inode's.
    Compare(Inode),
}

enum Outcome {
    Added,
    Replaced,
    Unchanged,
}

/// One file to upload (or compare).
struct Job {
    seq: u64,
    local: PathBuf,
    vpath: String,
    meta: FileMeta,
    size: u64,
    action: Action,
}

impl Job {
    /// Upload slots it takes: one per chunk, at most all of them.
    fn slots(&self, chunk: u64) -> usize {
        usize::try_from(self.size.div_ceil(chunk.max(1)))
            .unwrap_or(SLOTS)
            .clamp(1, SLOTS)
    }
}

fn file_meta(m: &Metadata) -> FileMeta {
    let (atime, mtime) = walk::times(m);
    FileMeta {
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        atime,
        mtime,
    }
}

fn set_attrs(
    vault: &Vault,
    ino: u64,
    vpath: &str,
    perm: Option<u32>,
    atime: Ts,
    mtime: Ts,
) -> Result<()> {
    vault
        .apply(Record::SetAttr {
            ino,
            perm,
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

/// Give an unchanged file the source's mode and times if they differ.
fn touch_up(vault: &Vault, node: &Inode, vpath: &str, meta: &FileMeta) -> Result<()> {
    if u32::from(node.perm) != meta.perm || node.mtime != meta.mtime {
        set_attrs(
            vault,
            node.ino,
            vpath,
            Some(meta.perm),
            meta.atime,
            meta.mtime,
        )?;
    }
    Ok(())
}

/// Upload (or compare, then maybe upload) one file.
async fn run_job(vault: &Vault, job: &Job, progress: Progress) -> Result<Outcome, Failure> {
    if let Action::Compare(node) = &job.action {
        let m = compare::compare_async(vault.keys().clone(), job.local.clone(), node.clone())
            .await
            .map_err(|e| Failure::entry(anyhow!("cannot read {}: {e}", job.local.display())))?;
        if m.whole {
            touch_up(vault, node, &job.vpath, &job.meta).map_err(Failure::entry)?;
            return Ok(Outcome::Unchanged);
        }
    }
    let replace = !matches!(job.action, Action::Add);
    let cannot_read =
        |e: std::io::Error| Failure::entry(anyhow!("cannot read {}: {e}", job.local.display()));
    let mut file = File::open(&job.local).map_err(cannot_read)?;
    let mut head = Vec::new();
    if job.size <= INLINE_READ {
        // small: read whole, here (see INLINE_READ)
        (&mut file)
            .take(INLINE_READ + 1)
            .read_to_end(&mut head)
            .map_err(cannot_read)?;
    }
    let written = if job.size <= INLINE_READ && head.len() as u64 <= INLINE_READ {
        vault
            .write_file_data(&job.vpath, head, job.meta, replace, Some(progress))
            .await
    } else {
        // large, or grew since it was looked at: streamed
        let reader = std::io::Cursor::new(head).chain(file);
        vault
            .write_file(
                &job.vpath,
                Box::new(reader),
                job.meta,
                replace,
                Some(progress),
            )
            .await
    };
    written.map_err(|e| Failure::from((e, job.local.as_path(), job.vpath.as_str())))?;
    Ok(if replace {
        Outcome::Replaced
    } else {
        Outcome::Added
    })
}

/// A directory whose mode and times are set once every upload started
/// before its end (sequence numbers below `after`) has finished.
struct DirEnd {
    after: u64,
    vpath: String,
    perm: u32,
    atime: Ts,
    mtime: Ts,
}

type JobFuture<'a> = Pin<Box<dyn Future<Output = (Job, usize, Result<Outcome, Failure>)> + 'a>>;
type UnitFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;
type ListFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, VaultError>> + 'a>>;

/// The state of one put.
struct Put<'a> {
    vault: &'a Vault,
    ui: Ui,
    force: bool,
    checksum: bool,
    chunk: u64,
    progress: Transfer,
    tally: Tally,
    next_seq: u64,
    /// Sequence numbers of jobs not finished (waiting or uploading).
    open: BTreeSet<u64>,
    dir_ends: VecDeque<DirEnd>,
    /// A directory that could not be put: its contents are skipped.
    skip_under: Option<String>,
    slots: usize,
}

impl<'a> Put<'a> {
    fn fail(&mut self, e: &anyhow::Error) {
        self.ui.error(Some(self.progress.bar()), e);
        self.tally.failed += 1;
    }

    fn new_job(&mut self, local: PathBuf, vpath: String, m: &Metadata, action: Action) -> Job {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.open.insert(seq);
        Job {
            seq,
            local,
            vpath,
            meta: file_meta(m),
            size: m.len(),
            action,
        }
    }

    fn in_skipped_dir(&self, vpath: &str) -> bool {
        self.skip_under
            .as_deref()
            .is_some_and(|d| vpath.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
    }

    /// Handle one entry of the walk; returns a file to upload, if any.
    fn entry(&mut self, e: Entry) -> Result<Option<Job>, Failure> {
        match e {
            Entry::Skip(msg) => {
                self.ui.warn(Some(self.progress.bar()), msg);
                self.tally.ignored += 1;
                Ok(None)
            }
            Entry::Failed(err) => {
                self.fail(&err);
                Ok(None)
            }
            Entry::Dir { local, vpath, meta } => {
                if self.in_skipped_dir(&vpath) {
                    return Ok(None);
                }
                match lookup(self.vault, &vpath).map_err(|e| Failure {
                    err: e,
                    fatal: true,
                })? {
                    Some(n) if n.kind == Kind::Dir => {}
                    Some(_) => {
                        self.fail(&anyhow!(
                            "{vpath}: exists in the vault and is not a directory; cannot put the directory {} there",
                            local.display()
                        ));
                        self.skip_under = Some(vpath);
                    }
                    None => match self.vault.mkdir(&vpath, meta.mode() & 0o7777, false) {
                        Ok(_) => self.tally.dirs += 1,
                        Err(e) => {
                            self.fail(&Failure::from((e, local.as_path(), vpath.as_str())).err);
                            self.skip_under = Some(vpath);
                        }
                    },
                }
                Ok(None)
            }
            Entry::DirEnd {
                vpath,
                perm,
                atime,
                mtime,
            } => {
                if self.skip_under.as_deref() == Some(vpath.as_str()) {
                    self.skip_under = None;
                } else if !self.in_skipped_dir(&vpath) {
                    self.dir_ends.push_back(DirEnd {
                        after: self.next_seq,
                        vpath,
                        perm,
                        atime,
                        mtime,
                    });
                }
                Ok(None)
            }
            Entry::Symlink { local, vpath, meta } => {
                if !self.in_skipped_dir(&vpath) {
                    if let Err(f) = self.symlink(&local, &vpath, &meta) {
                        if f.fatal {
                            return Err(f);
                        }
                        self.fail(&f.err);
                    }
                }
                Ok(None)
            }
            Entry::File { local, vpath, meta } => {
                if self.in_skipped_dir(&vpath) {
                    return Ok(None);
                }
                let size = meta.len();
                let existing = lookup(self.vault, &vpath).map_err(|e| Failure {
                    err: e,
                    fatal: true,
                })?;
                let action = match existing {
                    None => Action::Add,
                    Some(n) if n.kind == Kind::Dir => {
                        self.fail(&anyhow!(
                            "{vpath}: is a directory in the vault; cannot replace it with {}",
                            local.display()
                        ));
                        self.progress.file_done(size);
                        return Ok(None);
                    }
                    Some(_) if self.force => Action::Replace,
                    Some(n) if n.kind == Kind::File && n.size == size => {
                        if self.checksum {
                            Action::Compare(n)
                        } else if n.mtime == walk::times(&meta).1 {
                            let fm = file_meta(&meta);
                            if let Err(e) = touch_up(self.vault, &n, &vpath, &fm) {
                                return Err(Failure {
                                    err: e,
                                    fatal: true,
                                });
                            }
                            self.tally.unchanged += 1;
                            self.progress.file_done(size);
                            return Ok(None);
                        } else {
                            Action::Replace
                        }
                    }
                    Some(_) => Action::Replace,
                };
                Ok(Some(self.new_job(local, vpath, &meta, action)))
            }
        }
    }

    fn symlink(&mut self, local: &Path, vpath: &str, meta: &Metadata) -> Result<(), Failure> {
        let target = fs::read_link(local)
            .map_err(|e| {
                Failure::entry(anyhow!(
                    "cannot read the symbolic link {}: {e}",
                    local.display()
                ))
            })?
            .as_os_str()
            .as_bytes()
            .to_vec();
        let fatal = |e: anyhow::Error| Failure {
            err: e,
            fatal: true,
        };
        match lookup(self.vault, vpath).map_err(fatal)? {
            Some(n) if n.kind == Kind::Dir => {
                return Err(Failure::entry(anyhow!(
                    "{vpath}: is a directory in the vault; cannot replace it with {}",
                    local.display()
                )))
            }
            Some(n)
                if !self.force
                    && n.kind == Kind::Symlink
                    && n.target() == Some(target.as_slice()) =>
            {
                self.tally.links_unchanged += 1;
                return Ok(());
            }
            Some(_) => {
                self.vault
                    .remove(vpath, false)
                    .map_err(|e| Failure::from((e, local, vpath)))?;
            }
            None => {}
        }
        let ino = self
            .vault
            .symlink(vpath, &target)
            .map_err(|e| Failure::from((e, local, vpath)))?;
        let (atime, mtime) = walk::times(meta);
        set_attrs(self.vault, ino, vpath, None, atime, mtime).map_err(fatal)?;
        self.tally.links += 1;
        Ok(())
    }

    /// A job finished.
    fn done(&mut self, job: &Job, slots: usize, r: Result<Outcome, Failure>) -> Result<()> {
        self.slots -= slots;
        self.open.remove(&job.seq);
        match r {
            Ok(Outcome::Added) => {
                self.tally.added += 1;
                self.tally.copied += job.size;
                self.progress.file_done(0);
            }
            Ok(Outcome::Replaced) => {
                self.tally.replaced += 1;
                self.tally.copied += job.size;
                self.progress.file_done(0);
            }
            Ok(Outcome::Unchanged) => {
                self.tally.unchanged += 1;
                self.progress.file_done(job.size);
            }
            Err(f) if f.fatal => return Err(f.err),
            Err(f) => {
                self.fail(&f.err);
                self.progress.file_done(0);
            }
        }
        Ok(())
    }

    /// Set the mode and times of directories whose contents are all done.
    fn finish_dirs(&mut self) -> Result<()> {
        let oldest = self.open.first().copied().unwrap_or(u64::MAX);
        while self.dir_ends.front().is_some_and(|d| d.after <= oldest) {
            let Some(d) = self.dir_ends.pop_front() else {
                break;
            };
            let Some(n) = lookup(self.vault, &d.vpath)? else {
                continue;
            };
            if n.kind == Kind::Dir && (u32::from(n.perm) != d.perm || n.mtime != d.mtime) {
                set_attrs(self.vault, n.ino, &d.vpath, Some(d.perm), d.atime, d.mtime)?;
            }
        }
        Ok(())
    }

    fn start(&mut self, job: Job, jobs: &mut FuturesUnordered<JobFuture<'a>>) {
        let slots = job.slots(self.chunk);
        self.slots += slots;
        let vault = self.vault;
        let progress = self.progress.callback();
        jobs.push(Box::pin(async move {
            let r = run_job(vault, &job, progress).await;
            (job, slots, r)
        }));
    }

    fn can_start(&self, job: &Job) -> bool {
        self.slots == 0 || self.slots + job.slots(self.chunk) <= SLOTS
    }
}

pub async fn run(g: &Global, ui: Ui, a: &PutArgs) -> Result<()> {
    // No checkpoint for every few thousand records: each one writes the
    // whole tree (cost growing with the tree, memory for a copy of it), and
    // most would be skipped anyway while uploads keep applying records. One
    // at the end instead (`CHECKPOINT_RECORDS`), and every 256 logs.
    // Without conditional create the lease settles (2 s) while the put
    // walks, seals and uploads: only commits and deletions wait for it
    // (FORMAT §13).
    let (vault, _pw) = session::open_writer_with(g, "put", &a.lease, |o| {
        o.checkpoint_records = u64::MAX;
        if let Some(l) = o.lease.as_mut() {
            l.defer_settle = true;
        }
    })
    .await?;
    let res = put_all(&vault, ui, a).await;
    session::finish(&vault, res).await
}

async fn put_all(vault: &Vault, ui: Ui, a: &PutArgs) -> Result<()> {
    let roots = targets(vault, a)?;
    let first_seq = vault.writer_seq();
    interrupt::install();
    let progress = ui.transfer_bar("put");
    let stop_count = Arc::new(AtomicBool::new(false));
    walk::count(roots.clone(), progress.counter(), stop_count.clone());
    let mut entries = walk::stream(roots);

    let mut put = Put {
        vault,
        ui,
        force: a.force,
        checksum: a.checksum,
        chunk: u64::from(vault.chunk_size()),
        progress,
        tally: Tally::default(),
        next_seq: 0,
        open: BTreeSet::new(),
        dir_ends: VecDeque::new(),
        skip_under: None,
        slots: 0,
    };
    let mut jobs: FuturesUnordered<JobFuture<'_>> = FuturesUnordered::new();
    let mut commits: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
    let mut listing: FuturesUnordered<ListFuture<'_>> = FuturesUnordered::new();
    listing.push(Box::pin(vault.find_stored_blobs()));
    let gate = tokio::time::Instant::now() + LISTING_WAIT;
    let mut gate_open = false;
    let mut tick = tokio::time::interval(COMMIT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting: Option<Job> = None;
    let mut walked = false;
    let mut lease_confirmed = false;

    let result: Result<()> = loop {
        if let Err(e) = put.finish_dirs() {
            break Err(e);
        }
        if let Some(job) = waiting.take() {
            if gate_open && put.can_start(&job) {
                put.start(job, &mut jobs);
            } else {
                waiting = Some(job);
            }
        }
        if walked && waiting.is_none() && jobs.is_empty() {
            break Ok(());
        }
        if commits.is_empty() && vault.uncommitted_records() >= COMMIT_RECORDS {
            commits.push(Box::pin(session::commit(vault)));
        }
        tokio::select! {
            _ = interrupt::wait() => break Err(Interrupted.into()),
            Some((job, slots, r)) = jobs.next(), if !jobs.is_empty() => {
                if let Err(e) = put.done(&job, slots, r) {
                    break Err(e);
                }
            }
            Some(r) = commits.next(), if !commits.is_empty() => {
                if let Err(e) = r {
                    break Err(e);
                }
            }
            Some(r) = listing.next(), if !listing.is_empty() => {
                gate_open = true;
                if let Err(e) = r {
                    put.ui.warn(
                        Some(put.progress.bar()),
                        format!("could not list the blobs already in the store ({e}); everything will be uploaded"),
                    );
                }
            }
            _ = tokio::time::sleep_until(gate), if !gate_open => gate_open = true,
            // a refused lease stops the uploads at once (they would only
            // leave more unreferenced objects for gc)
            r = vault.lease_confirmed(), if !lease_confirmed => match r {
                Ok(()) => lease_confirmed = true,
                Err(e) => break Err(e.into()),
            },
            _ = tick.tick(), if commits.is_empty() => {
                if vault.uncommitted_records() > 0 {
                    commits.push(Box::pin(session::commit(vault)));
                }
            }
            e = entries.recv(), if waiting.is_none() && !walked => match e {
                None => walked = true,
                Some(e) => match put.entry(e) {
                    Ok(job) => waiting = job,
                    Err(f) => break Err(f.err),
                },
            },
        }
    };
    stop_count.store(true, Ordering::Relaxed);
    // Stop uploading (an upload cut short leaves an unreferenced blob that
    // the next run finds), let a commit under way finish, then commit what
    // is complete.
    drop(entries);
    drop(jobs);
    drop(listing);
    let mut result = result;
    while let Some(r) = commits.next().await {
        if let Err(e) = r {
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    let tally = put.tally;
    drop(put.progress);
    if vault.lease_refused() {
        // Nothing was committed; what was uploaded is unreferenced, for gc.
        // The error is the one an open that waited would have failed with.
        return match vault.lease_confirmed().await {
            Err(e) => Err(e.into()),
            Ok(()) => result,
        };
    }
    let committed = match session::commit(vault).await {
        Ok(()) if vault.writer_seq().saturating_sub(first_seq) >= CHECKPOINT_RECORDS => {
            // the logs are durable: a failed checkpoint is only a warning
            if let Err(e) = vault.checkpoint().await {
                ui.warn(
                    None,
                    format!("could not write a checkpoint ({e}); the next writer will"),
                );
            }
            Ok(())
        }
        r => r,
    };
    let did_any = tally.added + tally.replaced + tally.dirs + tally.links > 0;
    match (result, committed) {
        (Ok(()), Ok(())) => {
            ui.note(display::tally("stored", &tally));
            if tally.failed > 0 {
                Err(AlreadyReported.into())
            } else {
                Ok(())
            }
        }
        (Err(e), Ok(())) => {
            if did_any {
                ui.note(format!(
                    "strata: what was completed before stopping has been saved ({}); run the same command again to resume",
                    display::tally("stored", &tally)
                ));
            }
            Err(e)
        }
        (Ok(()), Err(c)) => Err(c),
        (Err(e), Err(c)) => Err(anyhow!(
            "{e:#} (saving the completed part also failed: {c:#})"
        )),
    }
}
