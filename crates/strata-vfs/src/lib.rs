//! # strata-vfs — the VFS layer
//!
//! Owns POSIX semantics over a [`strata_core::Vault`]: inode attributes,
//! open handles and open-but-unlinked files, errno mapping, and the local
//! durability machinery of a mount:
//! - the **journal** ([`journal`]): every metadata record is appended locally
//!   before an operation returns (synced on close/fsync) and replayed after a
//!   crash;
//! - the **write-back cache** ([`writeback`]): writes land in dirty chunk
//!   files on local disk; its background uploader seals and uploads chunks
//!   that changed and commits metadata in batches;
//! - the **read and write paths** (`io`): reads, writes, truncates, flush
//!   and fsync, over the write-back cache and the vault's data plane
//!   ([`strata_core::Chunks`]);
//! - **open handles** (`handles`): per-`fh` state, such as each handle's
//!   read-ahead;
//! - **cache-disk space** (`space`): what the mount does when the cache
//!   disk runs short of space;
//! - **sealed cache files** (`sealed`): dirty chunk files in AES-GCM blocks;
//! - **following** ([`follow`]): a read-only VFS catching up with a
//!   writer elsewhere, and what the kernel must forget then;
//! - **handoff** ([`handoff`]): a writer handing the vault over to
//!   another device that asked, and becoming a follower;
//! - **sessions** ([`session`]): opening a vault for a long-running front
//!   end (cache lock, writer lease, uploader, the flush at the end).
//!
//! Front ends (the FUSE adapter, `strata serve`) call [`Vfs`] methods;
//! nothing here knows about FUSE or HTTP.

pub mod follow;
mod handles;
pub mod handoff;
mod io;
pub mod journal;
mod lineage;
mod ops;
mod sealed;
pub mod session;
mod space;
pub mod writeback;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use strata_core::tree::ApplyError;
use strata_core::{Inode, Kind, Record, Ts, Vault, VaultError};
use tracing::{info, warn};

pub use crate::io::Around;

use crate::handles::Handles;
use crate::journal::Journal;
use crate::space::Space;
use crate::writeback::WriteBack;

/// When `fsync` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FsyncMode {
    /// Data and metadata are durable in the store (default).
    Cloud,
    /// Durable in the local cache and journal; uploaded later.
    Local,
}

/// When `close` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CloseMode {
    /// The file's data and size are durable on local disk (default): its
    /// chunk files and the journal are synced.
    Durable,
    /// The file's data and size are in the local cache (written to the
    /// cache's files, not synced): a crash of the mount loses nothing, a
    /// power cut may lose what was closed in the last commit interval, as
    /// on a local filesystem. Synced every commit interval, and by fsync.
    Buffered,
}

/// Mount-time options of the VFS.
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// Holds the journal and dirty chunks (the read cache is the vault's:
    /// [`strata_core::OpenOptions::read_cache`]).
    pub cache_dir: PathBuf,
    /// Dirty data above this makes writers wait for uploads.
    pub dirty_limit: u64,
    pub read_only: bool,
    pub fsync: FsyncMode,
    pub close: CloseMode,
    /// Commit metadata at most this often (batches small operations).
    pub commit_interval: Duration,
    /// A dirty chunk is uploaded once no write touched it for this long
    /// (full chunks go at once).
    pub writeback_delay: Duration,
    /// The same for a file no handle has open for writing (closed, it is
    /// likely complete); at most `writeback_delay`.
    pub closed_delay: Duration,
    pub upload_parallelism: usize,
    /// How long a writer waits for cache space while nothing is uploaded
    /// or freed before it gets ENOSPC.
    pub space_wait: Duration,
    /// Unmount gives up (what is pending stays in the cache for the next
    /// mount) when the store failed and nothing was uploaded or committed
    /// for this long.
    pub stall_timeout: Duration,
}

impl VfsOptions {
    pub fn new(cache_dir: PathBuf) -> Self {
        VfsOptions {
            cache_dir,
            dirty_limit: 1 << 30,
            read_only: false,
            fsync: FsyncMode::Cloud,
            close: CloseMode::Durable,
            commit_interval: Duration::from_secs(1),
            writeback_delay: Duration::from_millis(500),
            closed_delay: writeback::CLOSED_DELAY,
            upload_parallelism: 4,
            space_wait: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// An error for the front end: an errno, logged with context when it is a
/// real failure (EIO) rather than a logic case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

pub type VfsResult<T> = Result<T, Errno>;

impl From<ApplyError> for Errno {
    fn from(e: ApplyError) -> Self {
        Errno(match e {
            ApplyError::NotFound => libc::ENOENT,
            ApplyError::Exists => libc::EEXIST,
            ApplyError::NotDir => libc::ENOTDIR,
            ApplyError::IsDir => libc::EISDIR,
            ApplyError::NotEmpty => libc::ENOTEMPTY,
            ApplyError::Invalid => libc::EINVAL,
            ApplyError::NameTooLong => libc::ENAMETOOLONG,
            ApplyError::TooLarge => libc::E2BIG,
        })
    }
}

/// Map a vault error to an errno, logging the real failures.
pub(crate) fn vault_errno(e: VaultError, what: &str) -> Errno {
    let n = match &e {
        VaultError::NotFound { .. } => libc::ENOENT,
        VaultError::Exists { .. } => libc::EEXIST,
        VaultError::NotADirectory { .. } => libc::ENOTDIR,
        VaultError::IsADirectory { .. } => libc::EISDIR,
        VaultError::DirNotEmpty { .. } => libc::ENOTEMPTY,
        VaultError::InvalidPath { .. } => libc::EINVAL,
        VaultError::TooLarge(_) => libc::EFBIG,
        _ => libc::EIO,
    };
    if n == libc::EIO || n == libc::EFBIG {
        warn!("{what}: {e}");
    }
    Errno(n)
}

pub(crate) fn io_errno(e: std::io::Error, what: &str) -> Errno {
    warn!("{what}: {e}");
    Errno(match e.raw_os_error() {
        Some(libc::ENOSPC) => libc::ENOSPC,
        Some(libc::EDQUOT) => libc::EDQUOT,
        _ => libc::EIO,
    })
}

/// File attributes as the front end reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
    pub btime: Ts,
}

impl Attr {
    pub(crate) fn from_inode(n: &Inode) -> Attr {
        Attr {
            ino: n.ino,
            kind: n.kind,
            perm: u32::from(n.perm),
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: n.rdev(),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            btime: n.btime,
        }
    }
}

/// Time to set in `setattr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Ts),
}

/// A `setattr` request.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Kind,
}

/// Filesystem-wide figures for `statfs`.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// What `strata status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub dirty_bytes: u64,
    /// Of `dirty_bytes`, those of small chunks kept in memory (each write
    /// to them is in the journal).
    pub dirty_memory_bytes: u64,
    pub dirty_chunks: u64,
    pub dirty_files: u64,
    pub uncommitted_records: u64,
    pub uploads_in_flight: u64,
    pub bytes_uploaded: u64,
    pub chunks_uploaded: u64,
    pub commits: u64,
    pub open_files: u64,
    pub metadata_version: u64,
    pub last_error: Option<String>,
    pub fsync_mode: FsyncMode,
    pub close_mode: CloseMode,
    /// Files closed with [`CloseMode::Buffered`] whose bytes are not synced
    /// to the cache disk yet.
    pub close_unsynced: bool,
    pub read_only: bool,
    /// Free bytes on the cache disk at the last sample.
    pub cache_free: Option<u64>,
    /// The cache disk is short of space (see the `space` module).
    pub cache_full: bool,
    /// Uploads stopped: the store refuses the chunks (and what to do).
    pub blocked: Option<String>,
    /// A handoff to another device in progress, or done (see [`handoff`]).
    pub handoff: Option<String>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) uploads_in_flight: AtomicU64,
    pub(crate) bytes_uploaded: AtomicU64,
    pub(crate) chunks_uploaded: AtomicU64,
    pub(crate) commits: AtomicU64,
    /// Failed uploads and commits.
    pub(crate) store_failures: AtomicU64,
}

/// The mounted filesystem's state.
pub struct Vfs {
    pub(crate) vault: Arc<Vault>,
    pub(crate) opts: VfsOptions,
    pub(crate) journal: Mutex<Journal>,
    pub(crate) wb: WriteBack,
    pub(crate) space: Space,
    /// A read-only VFS following the store (see [`follow`]).
    pub(crate) follow: follow::FollowState,
    /// Highest sequence number of a record the journal could not take (a
    /// local write failed): until a commit covers it, the journal is not a
    /// complete record, so close/fsync commit instead of relying on it.
    pub(crate) journal_gap: AtomicU64,
    /// Per file, the journal append (count) of its latest record that
    /// changed its contents or size (`SetChunks`, `SetAttr` with a size,
    /// chunk bytes): a close syncs the journal only if that one is not
    /// synced yet. (A file created and closed unwritten is a metadata
    /// operation: its `Create` is synced by the next close or fsync.)
    pub(crate) content_appends: Mutex<HashMap<u64, u64>>,
    /// What closes left unsynced ([`CloseMode::Buffered`]): the uploader
    /// syncs it every commit interval.
    pub(crate) close_unsynced: Mutex<Unsynced>,
    /// The store refuses this mount's chunks (too large): uploads stop,
    /// `status` and unmount say so.
    pub(crate) blocked: Mutex<Option<String>>,
    /// Open file handles (per-handle read-ahead, unlink-while-open).
    pub(crate) handles: Handles,
    /// Handed the vault over to another device: read-only from now on
    /// (see [`handoff`]).
    pub(crate) demoted: AtomicBool,
    /// What a handoff in progress is doing (for `status`).
    pub(crate) handoff: Mutex<Option<String>>,
    pub(crate) counters: Counters,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) shutting_down: AtomicBool,
    /// The uploader task is running (shutdown waits for it to stop, so no
    /// two sessions ever touch the cache directory at once).
    pub(crate) uploader_running: AtomicBool,
    /// Wakes the uploader (new dirty data, fsync waiting, shutdown).
    pub(crate) wake: tokio::sync::Notify,
    /// Signalled when uploads finish or commits land (fsync / space waiters).
    pub(crate) progress: tokio::sync::Notify,
}

/// What buffered closes left unsynced.
#[derive(Debug, Default)]
pub(crate) struct Unsynced {
    /// Chunk files (a file closed again and again is noted once).
    pub(crate) chunk_files: HashSet<PathBuf>,
    /// The journal append it must be synced up to.
    pub(crate) journal_upto: u64,
}

/// The file whose contents or size record `r` changes.
fn content_change(r: &Record) -> Option<u64> {
    match r {
        Record::SetChunks { ino, .. }
        | Record::SetAttr {
            ino, size: Some(_), ..
        } => Some(*ino),
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vfs {
    /// Set up the VFS over an open vault: replay the local journal (records
    /// the store does not have), pick up dirty chunks left by a crash, drop
    /// orphaned inodes. Start the background uploader with [`Vfs::start`].
    pub fn new(vault: Arc<Vault>, opts: VfsOptions) -> Result<Arc<Vfs>, String> {
        let dir = &opts.cache_dir.clone();
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create cache directory {}: {e}", dir.display()))?;
        // Only the owner may enter the cache (its files are sealed, but
        // their names and sizes say what is pending).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
                format!("cannot restrict the cache directory {}: {e}", dir.display())
            })?;
        }
        let (mut journal, entries) = Journal::open(dir, vault.keys().clone())
            .map_err(|e| format!("cannot open the journal in {}: {e}", dir.display()))?;
        let have = vault.writer_seq();
        let mut replayed = Vec::new();
        let mut skipped = 0;
        let data = journal::surviving_data(&entries, have);
        if opts.read_only {
            let local = entries
                .iter()
                .filter(|e| matches!(e, journal::Entry::Record(s, _) if *s > have))
                .count()
                + data.len();
            if local > 0 {
                warn!(
                    records = local,
                    "the local journal holds changes not yet in the store; a read-only mount does not show them (mount read-write to upload them)"
                );
            }
            let wb = WriteBack::open(dir.join("ro-dirty"), vault.keys().clone())
                .map_err(|e| format!("cannot open the cache: {e}"))?;
            return Ok(Vfs::assemble(vault, opts, journal, wb));
        }
        // Replay only onto the history this cache was writing (see `lineage`).
        let pending = entries
            .iter()
            .filter(|e| matches!(e, journal::Entry::Record(s, _) if *s > have))
            .count();
        lineage::check(
            dir,
            &vault,
            pending,
            lineage::count_files(&dir.join("dirty")) + data.len(),
        )?;
        for e in entries {
            let journal::Entry::Record(seq, r) = e else {
                continue;
            };
            if seq <= have {
                continue;
            }
            match vault.apply(r.clone()) {
                Ok(new_seq) => replayed.push(journal::Entry::Record(new_seq, r)),
                Err(e) => {
                    skipped += 1;
                    warn!(seq, error = %e, "journal record no longer applies; skipped");
                }
            }
        }
        if !replayed.is_empty() || skipped > 0 || !data.is_empty() {
            info!(
                replayed = replayed.len(),
                skipped,
                chunks = data.len(),
                "replayed the local journal"
            );
        }
        let data = writeback::fit_to_tree(data, &vault);
        // the chunks kept in memory go last: no record of the old journal
        // that was after them is left to cover or cut them
        replayed.extend(data.iter().cloned().map(journal::Entry::Data));
        journal
            .rewrite(&replayed)
            .map_err(|e| format!("cannot rewrite the journal in {}: {e}", dir.display()))?;
        lineage::start(dir, &vault)
            .map_err(|e| format!("cannot write the lineage file in {}: {e}", dir.display()))?;
        let wb = WriteBack::open(dir.join("dirty"), vault.keys().clone())
            .map_err(|e| format!("cannot open the write-back cache: {e}"))?;
        let vfs = Vfs::assemble(vault, opts, journal, wb);
        vfs.wb.recover(&vfs.vault);
        vfs.wb.recover_memory(&vfs.vault, data);
        if !vfs.opts.read_only {
            // Inodes unlinked while open in an earlier session are unreachable now.
            let orphans: Vec<u64> = vfs
                .vault
                .with_tree(|t| t.inodes().filter(|n| n.nlink == 0).map(|n| n.ino).collect());
            for ino in orphans {
                let _ = vfs.apply(Record::Forget { ino });
                vfs.wb.drop_inode(ino);
            }
        }
        Ok(vfs)
    }

    fn assemble(vault: Arc<Vault>, opts: VfsOptions, journal: Journal, wb: WriteBack) -> Arc<Vfs> {
        Arc::new(Vfs {
            vault,
            journal: Mutex::new(journal),
            space: Space::new(opts.cache_dir.clone()),
            follow: follow::FollowState::default(),
            journal_gap: AtomicU64::new(0),
            content_appends: Mutex::new(HashMap::new()),
            close_unsynced: Mutex::new(Unsynced::default()),
            blocked: Mutex::new(None),
            wb,
            handles: Handles::default(),
            demoted: AtomicBool::new(false),
            handoff: Mutex::new(None),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            uploader_running: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            progress: tokio::sync::Notify::new(),
            opts,
        })
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Read-only: mounted so, or handed over to another device since.
    pub fn read_only(&self) -> bool {
        self.opts.read_only || self.demoted.load(Ordering::SeqCst)
    }

    /// Apply a record and journal it (not synced yet): a change asked by
    /// an application, refused once the VFS is read-only.
    pub(crate) fn apply(&self, r: Record) -> VfsResult<u64> {
        self.apply_as(r, true)
    }

    /// [`Vfs::apply`] for what the write-back cache itself records (chunk
    /// uploads, sizes of closed files), which a handoff still commits.
    pub(crate) fn apply_internal(&self, r: Record) -> VfsResult<u64> {
        self.apply_as(r, false)
    }

    fn apply_as(&self, r: Record, asked: bool) -> VfsResult<u64> {
        if self.opts.read_only {
            return Err(Errno(libc::EROFS));
        }
        let mut j = lock(&self.journal);
        // checked under the journal lock, where a handoff turns it on:
        // no change slips in after the handoff's flush began
        if asked && self.demoted.load(Ordering::SeqCst) {
            return Err(Errno(libc::EROFS));
        }
        // the unit as applied: with the `Pack` records placing the packed
        // chunks `r` references, which the journal needs as well
        let unit = self.vault.apply_unit(vec![r])?;
        let seq = unit.last().map(|(s, _)| *s).unwrap_or(0);
        for (s, rec) in &unit {
            let appended = j.append(*s, rec);
            if let (Ok(n), Some(ino)) = (&appended, content_change(rec)) {
                lock(&self.content_appends).insert(ino, *n);
            }
            if let Err(e) = appended {
                // The change is in memory and will be committed; until then
                // close and fsync commit rather than trust the journal.
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    self.space.hit_full();
                }
                warn!(error = %e, "could not append to the local journal; the next close or fsync commits to the store instead");
                self.note_error(format!("local journal write failed: {e}"));
                self.journal_gap.fetch_max(seq, Ordering::SeqCst);
                break;
            }
        }
        drop(j);
        // No wake-up of the uploader: it commits on its own tick, and
        // waking it for every record made it rescan every pending file per
        // operation (quadratic CPU when many small files are pending).
        Ok(seq)
    }

    /// Whether the journal must be synced for a close of `ino` to make its
    /// contents and size durable (see `content_appends`).
    pub(crate) fn content_unsynced(&self, ino: u64) -> bool {
        let synced = lock(&self.journal).synced();
        let mut m = lock(&self.content_appends);
        match m.get(&ino) {
            Some(n) if *n > synced => true,
            Some(_) => {
                m.remove(&ino);
                false
            }
            None => false,
        }
    }

    /// Whether a record the journal could not take is still uncommitted.
    pub(crate) fn journal_incomplete(&self) -> bool {
        self.journal_gap.load(Ordering::SeqCst) > self.vault.writer_seq()
    }

    /// Make every record so far durable: in the synced journal, or, when
    /// the journal missed one, in the store (a commit).
    pub(crate) async fn make_records_durable(&self) -> VfsResult<()> {
        self.sync_journal()?;
        self.cover_journal_gap().await
    }

    /// After the journal was synced: commit if it missed a record.
    pub(crate) async fn cover_journal_gap(&self) -> VfsResult<()> {
        if self.journal_incomplete() {
            self.commit_now().await?;
        }
        Ok(())
    }

    /// Make every journaled record durable on local disk.
    pub(crate) fn sync_journal(&self) -> VfsResult<()> {
        let h = lock(&self.journal)
            .sync_handle()
            .map_err(|e| io_errno(e, "journal"))?;
        tokio::task::block_in_place(|| h.sync())
            .map_err(|e| io_errno(e, "syncing the local journal"))
    }

    pub(crate) fn note_error(&self, msg: String) {
        *lock(&self.last_error) = Some(msg);
    }

    /// Inode `ino` (or, on a follower, the ghost of a file deleted by the
    /// writer while open here).
    pub(crate) fn node(&self, ino: u64) -> VfsResult<Inode> {
        self.with_node(ino, Inode::clone)
    }

    /// `f` of inode `ino`, inside the tree lock: no copy of the inode (a
    /// directory's entries can be many). ENOENT if it is gone.
    pub(crate) fn with_node<R>(&self, ino: u64, f: impl FnOnce(&Inode) -> R) -> VfsResult<R> {
        let mut f = Some(f);
        let found = self
            .vault
            .with_tree(|t| t.get(ino).and_then(|n| f.take().map(|f| f(n))));
        match (found, f) {
            (Some(r), _) => Ok(r),
            (None, Some(f)) => self.follow.with_ghost(ino, f).ok_or(Errno(libc::ENOENT)),
            (None, None) => Err(Errno(libc::ENOENT)),
        }
    }

    /// Attributes of an inode, with the write-back overlay (size, mtime of
    /// unflushed writes) applied.
    pub fn getattr(&self, ino: u64) -> VfsResult<Attr> {
        let mut a = self.with_node(ino, Attr::from_inode)?;
        if let Some((size, mtime)) = self.wb.overlay_attr(ino) {
            a.size = size;
            a.blocks = size.div_ceil(512);
            a.mtime = a.mtime.max(mtime);
            a.ctime = a.ctime.max(mtime);
        }
        Ok(a)
    }

    pub(crate) fn open_count(&self, ino: u64) -> u32 {
        self.handles.open_count(ino)
    }

    /// Returns when the write-back cache next makes progress (an upload
    /// ends, a commit lands, space is released): for a front end that
    /// shows the state.
    pub async fn progressed(&self) {
        self.progress.notified().await
    }

    /// Current state for `strata status`.
    pub fn status(&self) -> Status {
        let (dirty_bytes, dirty_chunks, dirty_files) = self.wb.totals();
        Status {
            dirty_bytes,
            dirty_memory_bytes: self.wb.mem_bytes.load(Ordering::Relaxed),
            dirty_chunks,
            dirty_files,
            uncommitted_records: self.vault.uncommitted_records(),
            uploads_in_flight: self.counters.uploads_in_flight.load(Ordering::Relaxed),
            bytes_uploaded: self.counters.bytes_uploaded.load(Ordering::Relaxed),
            chunks_uploaded: self.counters.chunks_uploaded.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            open_files: self.handles.total(),
            metadata_version: self.vault.version(),
            last_error: lock(&self.last_error).clone(),
            fsync_mode: self.opts.fsync,
            close_mode: self.opts.close,
            close_unsynced: self.close_unsynced(),
            read_only: self.read_only(),
            cache_free: self.space.free(),
            cache_full: self.space.is_low(),
            blocked: lock(&self.blocked).clone(),
            handoff: lock(&self.handoff).clone(),
        }
    }
}
