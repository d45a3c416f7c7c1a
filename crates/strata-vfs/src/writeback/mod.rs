//! The write-back cache: dirty chunks as files on local disk
//! (`<cache>/dirty/<ino>.<chunk>`, the chunk's bytes up to its highest
//! written byte, sealed with a per-file key: [`crate::sealed`]) or, when
//! small, in memory; an in-memory overlay per file (size and mtime of
//! writes not yet in the tree); and the background uploader.
//!
//! Small chunks in memory: a chunk whose bytes stay within
//! [`MEM_CHUNK_MAX`] (a small file, or the first bytes of one) lives in
//! the overlay while the memory chunks together stay under
//! [`MEM_BUDGET`]. Each write to it is appended to the journal before it
//! returns ([`crate::journal::ChunkData`]), so a close makes it durable by
//! syncing the journal alone: no chunk file is created, written, synced
//! and deleted for it. A write past [`MEM_CHUNK_MAX`] moves the chunk into
//! a chunk file. Where a chunk's bytes live, and the journal entries of
//! the memory ones, is [`body`]'s.
//!
//! A chunk's life: first write → file created (filled from the stored chunk
//! only when the write does not cover its valid bytes) → more writes bump its
//! generation → idle for `writeback_delay` ([`CLOSED_DELAY`] once no handle
//! writes to the file; or full, or fsync) → uploaded
//! (dedup and hole detection in the vault) → `SetChunks` applied and journaled
//! if no write happened meanwhile → file deleted once a commit put that record
//! in the store. Memory use is independent of file sizes: data lives on disk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use strata_core::layout::chunk_start;
use strata_core::{Inode, Kind, Record, Ts, Vault};
use strata_crypto::Keys;
use tracing::{info, warn};

use crate::sealed::{self, SealedFile};

mod body;
use crate::{io_errno, lock, vault_errno, Vfs, VfsResult};

/// Changes stopped this long ago, and nothing is left to upload: the
/// committer does not wait for the rest of its interval (what was done is
/// in the store as soon as it can be; a burst of changes is still one
/// commit per interval).
pub const QUIET: Duration = Duration::from_millis(200);

/// The default [`crate::VfsOptions::closed_delay`]: a dirty chunk of a
/// file no handle has open for writing is uploaded once idle this long (if
/// `writeback_delay` is longer): closed, it is likely complete (a program
/// that keeps reopening a file to append stays under it).
pub const CLOSED_DELAY: Duration = Duration::from_millis(100);
pub(crate) use body::fit_to_tree;
pub use body::{MEM_BUDGET, MEM_CHUNK_MAX};

/// One dirty chunk.
#[derive(Debug, Clone)]
pub(crate) struct DChunk {
    /// Bumped by every change of the file's bytes.
    pub(crate) gen: u64,
    /// Length of the chunk file (valid bytes of the chunk).
    pub(crate) len: u64,
    pub(crate) last_write: Instant,
    /// Generation being uploaded (an upload clears only its own mark).
    pub(crate) uploading: Option<u64>,
    /// (generation, record sequence) of the last upload applied to the tree.
    pub(crate) uploaded: Option<(u64, u64)>,
    /// Left by an earlier session: its blob is put even if the tree already
    /// references that content (see [`strata_core::Vault::upload_chunk_always`]).
    pub(crate) recovered: bool,
    /// The chunk's valid bytes when it lives in memory (`len` of them);
    /// `None`: in its chunk file.
    pub(crate) mem: Option<Vec<u8>>,
    /// A memory chunk whose next journal entry must carry its whole
    /// content (it was just created, or filled from the store).
    pub(crate) fresh: bool,
    /// The last change of this memory chunk could not be journaled (disk
    /// full): its close uploads and commits instead, until an entry with
    /// its whole content gets in.
    pub(crate) unjournaled: bool,
}

impl DChunk {
    /// A chunk just created, of `len` valid bytes (`mem`: in memory).
    pub(crate) fn new(gen: u64, len: u64, mem: Option<Vec<u8>>) -> DChunk {
        DChunk {
            gen,
            len,
            last_write: Instant::now(),
            uploading: None,
            uploaded: None,
            recovered: false,
            fresh: mem.is_some(),
            mem,
            unjournaled: false,
        }
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.uploaded.map(|u| u.0) != Some(self.gen)
    }
}

/// Write-back state of one file.
#[derive(Debug)]
pub(crate) struct Overlay {
    pub(crate) size: u64,
    pub(crate) mtime: Ts,
    /// Size/mtime differ from the tree (a SetAttr is due on flush).
    pub(crate) attr_dirty: bool,
    pub(crate) chunks: BTreeMap<u64, DChunk>,
}

pub(crate) type OverlayRef = Arc<tokio::sync::RwLock<Overlay>>;

pub struct WriteBack {
    dir: PathBuf,
    /// Seal the chunk files ([`crate::sealed`]).
    keys: Arc<Keys>,
    /// Source of chunk generations, unique across the cache: a chunk entry
    /// dropped and re-created never repeats a generation an in-flight
    /// upload still carries.
    next_gen: AtomicU64,
    pub(crate) overlays: Mutex<HashMap<u64, OverlayRef>>,
    /// (size, mtime) of each overlay, readable without its async lock
    /// (getattr must never see a stale size because an upload holds it).
    pub(crate) attrs: Mutex<HashMap<u64, (u64, Ts)>>,
    /// Bytes of dirty chunks (files and memory).
    pub(crate) bytes: Arc<AtomicU64>,
    /// Bytes of the chunks kept in memory.
    pub(crate) mem_bytes: Arc<AtomicU64>,
}

impl WriteBack {
    pub(crate) fn open(dir: PathBuf, keys: Arc<Keys>) -> std::io::Result<WriteBack> {
        std::fs::create_dir_all(&dir)?;
        Ok(WriteBack {
            dir,
            keys,
            next_gen: AtomicU64::new(1),
            overlays: Mutex::new(HashMap::new()),
            attrs: Mutex::new(HashMap::new()),
            bytes: Arc::new(AtomicU64::new(0)),
            mem_bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    pub(crate) fn gen(&self) -> u64 {
        self.next_gen.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn path(&self, ino: u64, ci: u64) -> PathBuf {
        self.dir.join(format!("{ino}.{ci}"))
    }

    /// Create (or empty) the chunk file of `(ino, ci)` at `path`.
    pub(crate) fn create_file(&self, path: &Path) -> std::io::Result<SealedFile> {
        SealedFile::create(path, &self.keys)
    }

    /// Open an existing chunk file.
    pub(crate) fn open_file(&self, path: &Path) -> std::io::Result<SealedFile> {
        SealedFile::open(path, &self.keys)
    }

    /// Seal a chunk file an earlier version left in plaintext (temp file,
    /// sync, rename); returns its plaintext length.
    fn seal_legacy(&self, path: &Path) -> std::io::Result<u64> {
        let plain = std::fs::read(path)?;
        let tmp = path.with_extension("seal");
        let f = self.create_file(&tmp)?;
        f.write_at(&plain, 0)?;
        f.file().sync_data()?;
        std::fs::rename(&tmp, path)?;
        Ok(plain.len() as u64)
    }

    /// Re-register chunk files left by an earlier session (after the journal
    /// was replayed, so the tree knows every file and its flushed size).
    pub(crate) fn recover(&self, vault: &Vault) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut found = 0u64;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let parsed = name
                .split_once('.')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            let path = e.path();
            let Some((ino, ci)) = parsed else {
                let _ = std::fs::remove_file(&path); // temp file of an interrupted fill
                continue;
            };
            let node = vault
                .inode(ino)
                .filter(|n| n.kind == Kind::File && n.chunk_size > 0);
            let Some(node) = node else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let start = chunk_start(ci, node.chunk_size);
            let flen = if sealed::is_sealed(&path) {
                e.metadata().map(|m| sealed::capacity(m.len())).unwrap_or(0)
            } else {
                match self.seal_legacy(&path) {
                    Ok(n) => n,
                    Err(err) => {
                        warn!(path = %path.display(), error = %err, "could not seal a chunk file of an earlier version; it stays as it is and is not uploaded");
                        continue;
                    }
                }
            };
            if start >= node.size && !(start == 0 && node.size == 0 && flen == 0) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let len = flen.min(node.size - start.min(node.size));
            if len < flen {
                if let Ok(f) = self.open_file(&path) {
                    let _ = f.set_len(len);
                }
            }
            let ov = self.overlay_or_insert(ino, || Overlay {
                size: node.size,
                mtime: node.mtime,
                attr_dirty: false,
                chunks: BTreeMap::new(),
            });
            if let Ok(mut o) = ov.try_write() {
                let mut c = DChunk::new(self.gen(), len, None);
                c.last_write = Instant::now() - Duration::from_secs(3600);
                c.recovered = true;
                o.chunks.insert(ci, c);
                self.publish(ino, &o);
            }
            self.bytes.fetch_add(len, Ordering::Relaxed);
            found += 1;
        }
        if found > 0 {
            info!(
                chunks = found,
                "resuming uploads of dirty chunks from the previous session"
            );
        }
    }

    pub(crate) fn overlay_or_insert(&self, ino: u64, init: impl FnOnce() -> Overlay) -> OverlayRef {
        lock(&self.overlays)
            .entry(ino)
            .or_insert_with(|| Arc::new(tokio::sync::RwLock::new(init())))
            .clone()
    }

    pub(crate) fn get(&self, ino: u64) -> Option<OverlayRef> {
        lock(&self.overlays).get(&ino).cloned()
    }

    /// (size, mtime) of a file with pending writes, if any.
    pub(crate) fn overlay_attr(&self, ino: u64) -> Option<(u64, Ts)> {
        lock(&self.attrs).get(&ino).copied()
    }

    /// Mirror an overlay's size/mtime (call with its lock held).
    pub(crate) fn publish(&self, ino: u64, o: &Overlay) {
        lock(&self.attrs).insert(ino, (o.size, o.mtime));
    }

    /// Forget an inode's dirty data (deleted file).
    pub(crate) fn drop_inode(&self, ino: u64) {
        lock(&self.attrs).remove(&ino);
        let Some(ov) = lock(&self.overlays).remove(&ino) else {
            return;
        };
        // Remove the inode's chunk files by name (an upload in flight may hold
        // the overlay; it finds the inode gone and references nothing).
        let prefix = format!("{ino}.");
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Their bytes as the overlay counts them: now, or once an upload
        // holding the overlay lets go of it.
        let bytes = self.bytes.clone();
        let mem_bytes = self.mem_bytes.clone();
        let uncount = move |o: &Overlay| {
            let n: u64 = o.chunks.values().map(|c| c.len).sum();
            sub_bytes(&bytes, n);
            let m: u64 = o
                .chunks
                .values()
                .filter_map(|c| c.mem.as_ref())
                .map(|m| m.len() as u64)
                .sum();
            sub_bytes(&mem_bytes, m);
        };
        let now = ov.try_read().map(|o| uncount(&o));
        if now.is_err() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(async move { uncount(&*ov.read().await) });
                }
                // outside the runtime (mount start): no upload can hold it
                Err(_) => uncount(&ov.blocking_read()),
            }
        }
    }

    /// (bytes, dirty chunks, files with dirty data)
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        let ovs: Vec<OverlayRef> = lock(&self.overlays).values().cloned().collect();
        let mut chunks = 0;
        let mut files = 0;
        for ov in ovs {
            if let Ok(o) = ov.try_read() {
                let n = o.chunks.values().filter(|c| c.is_dirty()).count() as u64;
                chunks += n;
                if n > 0 || o.attr_dirty {
                    files += 1;
                }
            }
        }
        (self.bytes.load(Ordering::Relaxed), chunks, files)
    }

    pub(crate) fn add_bytes(&self, old: u64, new: u64) {
        add(&self.bytes, old, new);
    }
}

fn add(counter: &AtomicU64, old: u64, new: u64) {
    if new >= old {
        counter.fetch_add(new - old, Ordering::Relaxed);
    } else {
        sub_bytes(counter, old - new);
    }
}

fn sub_bytes(bytes: &AtomicU64, d: u64) {
    let _ = bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
        Some(b.saturating_sub(d))
    });
}

pub(crate) fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Committed plaintext length of chunk `ci` of `node`.
pub(crate) fn committed_len(node: &Inode, ci: u64) -> u64 {
    let start = chunk_start(ci, node.chunk_size);
    match node.chunk(ci) {
        Some(c) => u64::from(c.len).min(node.size.saturating_sub(start)),
        None => 0,
    }
}

impl Vfs {
    /// Remove an overlay that holds nothing.
    pub(crate) fn forget_clean_overlay(&self, ino: u64) {
        let mut m = crate::lock(&self.wb.overlays);
        let clean = m.get(&ino).is_some_and(|ov| {
            ov.try_read()
                .is_ok_and(|o| o.chunks.is_empty() && !o.attr_dirty)
        });
        if clean {
            m.remove(&ino);
            crate::lock(&self.wb.attrs).remove(&ino);
        }
    }

    /// Upload every dirty chunk of `ino` (waiting for ones in flight).
    pub(crate) async fn upload_file_now(&self, ino: u64) -> VfsResult<()> {
        loop {
            let Some(ov) = self.wb.get(ino) else {
                return Ok(());
            };
            let (todo, busy) = {
                let o = ov.read().await;
                let todo: Vec<u64> = o
                    .chunks
                    .iter()
                    .filter(|(_, c)| c.is_dirty() && c.uploading.is_none())
                    .map(|(k, _)| *k)
                    .collect();
                let busy = o.chunks.values().any(|c| c.uploading.is_some());
                (todo, busy)
            };
            if todo.is_empty() && !busy {
                return Ok(());
            }
            if !todo.is_empty() {
                let results: Vec<VfsResult<()>> = stream::iter(todo)
                    .map(|ci| self.upload_chunk(ino, ci))
                    .buffer_unordered(self.opts.upload_parallelism.max(1))
                    .collect()
                    .await;
                for r in results {
                    r?;
                }
            } else {
                let _ =
                    tokio::time::timeout(Duration::from_millis(50), self.progress.notified()).await;
            }
        }
    }

    /// Upload one chunk and, if it did not change meanwhile, reference it.
    async fn upload_chunk(&self, ino: u64, ci: u64) -> VfsResult<()> {
        let Some(ov) = self.wb.get(ino) else {
            return Ok(());
        };
        let (gen, len, recovered, mem) = {
            let mut o = ov.write().await;
            let Some(c) = o.chunks.get_mut(&ci) else {
                return Ok(());
            };
            if c.uploading.is_some() || !c.is_dirty() {
                return Ok(());
            }
            c.uploading = Some(c.gen);
            (c.gen, c.len, c.recovered, c.mem.clone())
        };
        self.counters
            .uploads_in_flight
            .fetch_add(1, Ordering::Relaxed);
        let res = self
            .upload_chunk_inner(&ov, (ino, ci), (gen, len, recovered), mem)
            .await;
        self.counters
            .uploads_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = ov.write().await.chunks.get_mut(&ci) {
            if c.uploading == Some(gen) {
                c.uploading = None;
            }
        }
        self.progress.notify_waiters();
        res
    }

    async fn upload_chunk_inner(
        &self,
        ov: &OverlayRef,
        (ino, ci): (u64, u64),
        (gen, len, recovered): (u64, u64, bool),
        mem: Option<Vec<u8>>,
    ) -> VfsResult<()> {
        let path = self.wb.path(ino, ci);
        // The file is read without the overlay lock: a truncate or unlink
        // may shrink or remove it meanwhile. That is no failure (the chunk
        // changed: it stays dirty and goes with its new generation, or it
        // is gone), only a read error of an unchanged chunk is. A memory
        // chunk's bytes were taken with its generation.
        let read = match mem {
            Some(m) => Ok(m),
            None => block(|| self.wb.open_file(&path).and_then(|f| f.read_prefix(len))),
        };
        let data = match read {
            Ok(d) => d,
            Err(e) => {
                let current = self.wb.get(ino).is_some_and(|c| Arc::ptr_eq(&c, ov));
                let unchanged = current
                    && ov
                        .read()
                        .await
                        .chunks
                        .get(&ci)
                        .is_some_and(|c| c.gen == gen);
                if !unchanged {
                    return Ok(());
                }
                return Err(io_errno(e, "reading a dirty chunk"));
            }
        };
        let _guard = self.vault.data_guard().await;
        // small chunks (small files, short tails) go into packs, sent at
        // the next commit (or before chunk files are released early)
        let up = if recovered {
            self.vault.upload_chunk_always_packed(data).await
        } else {
            self.vault.upload_chunk_packed(data).await
        };
        let cref = match up {
            Ok(c) => c,
            Err(e) => {
                self.counters.store_failures.fetch_add(1, Ordering::Relaxed);
                if let strata_core::VaultError::TooLarge(why) = &e {
                    // permanent: every chunk of this size is refused alike
                    let m = format!("blocked: the store refuses this mount's chunks: {why}");
                    if lock(&self.blocked).replace(m.clone()).is_none() {
                        warn!("{m}");
                    }
                    self.note_error(m);
                } else {
                    self.note_error(format!("upload failed (will retry): {e}"));
                }
                return Err(vault_errno(e, "uploading a chunk"));
            }
        };
        let mut o = ov.write().await;
        let size = o.size;
        let mtime = o.mtime;
        let Some(c) = o.chunks.get_mut(&ci) else {
            return Ok(());
        };
        if c.gen != gen {
            return Ok(()); // rewritten meanwhile: stays dirty, uploaded again later
        }
        let Some(node) = self.vault.inode(ino) else {
            return Ok(());
        };
        let size = size.max(node.size);
        let seq = self.apply_internal(Record::SetChunks {
            ino,
            first: ci,
            chunks: vec![cref],
            size,
            mtime,
        })?;
        c.uploaded = Some((gen, seq));
        self.counters
            .chunks_uploaded
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_uploaded
            .fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Commit now (waits for the store).
    pub(crate) async fn commit_now(&self) -> VfsResult<()> {
        match self.vault.commit().await {
            Ok(()) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.after_commit().await;
                Ok(())
            }
            Err(e) => {
                self.counters.store_failures.fetch_add(1, Ordering::Relaxed);
                self.note_error(format!("metadata commit failed (will retry): {e}"));
                Err(vault_errno(e, "committing metadata"))
            }
        }
    }

    /// Drop chunk files whose upload the store now has; compact the journal.
    async fn after_commit(&self) {
        let committed = self.vault.writer_seq();
        self.release_chunks(committed).await;
        let mut j = crate::lock(&self.journal);
        if let Err(e) = j.compact(committed, self.space.is_low(), || self.memory_chunks()) {
            warn!(error = %e, "could not compact the journal");
        }
        drop(j);
        self.progress.notify_waiters();
    }

    /// Short of cache space (or over half the dirty budget): release the
    /// files of uploaded chunks before the commit, as soon as the synced
    /// journal holds their `SetChunks` (and `Pack`) records and the packs
    /// are sent (after a crash the journal replays them; the blobs and
    /// packs are in the store). Not while the journal misses a record.
    async fn release_uploaded_early(&self) {
        if self.journal_incomplete() {
            return;
        }
        let upto = crate::lock(&self.journal).max_seq;
        if self.sync_journal().is_err() || self.journal_incomplete() {
            return;
        }
        // packed chunks are in the store only once their pack is sent
        if let Err(e) = self.vault.flush_packs().await {
            warn!(error = %e, "could not send packs; chunk files kept until the next commit");
            return;
        }
        self.release_chunks(upto).await;
        self.progress.notify_waiters();
    }

    /// Delete the files of chunks uploaded (and referenced by a record of
    /// sequence number ≤ `upto`) and not changed since.
    async fn release_chunks(&self, upto: u64) {
        let ovs: Vec<(u64, OverlayRef)> = crate::lock(&self.wb.overlays)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (ino, ov) in ovs {
            let mut o = ov.write().await;
            let done: Vec<u64> = o
                .chunks
                .iter()
                .filter(|(_, c)| {
                    c.uploading.is_none()
                        && !c.is_dirty()
                        && c.uploaded.is_some_and(|u| u.1 <= upto)
                })
                .map(|(k, _)| *k)
                .collect();
            for ci in done {
                if let Some(c) = o.chunks.remove(&ci) {
                    self.wb.remove_body((ino, ci), &c);
                    self.wb.add_bytes(c.len, 0);
                }
            }
            let empty = o.chunks.is_empty() && !o.attr_dirty;
            drop(o);
            if empty {
                self.forget_clean_overlay(ino);
            }
        }
    }

    /// Sample the cache disk's free space; on a change of the
    /// short-of-space state, say so. While short, the read cache keeps
    /// nothing. Returns whether the cache is short of space.
    fn check_space(&self) -> bool {
        let changed = self.space.sample();
        let low = self.space.is_low();
        let free = self.space.free().unwrap_or(0);
        let dir = self.opts.cache_dir.display();
        match changed {
            Some(true) => {
                warn!(
                    free_mib = free >> 20,
                    "cache disk full: {} MiB free for {dir}; uploading and releasing pending data first, new writes wait",
                    free >> 20
                );
                self.note_error(format!(
                    "cache disk full: {} MiB free for {dir}",
                    free >> 20
                ));
            }
            Some(false) => info!(free_mib = free >> 20, "cache disk has space again"),
            None => {}
        }
        if low || changed.is_some() {
            if let Some(rc) = self.vault.chunks().read_cache() {
                rc.give_back_space(low);
            }
        }
        low
    }

    /// Start the background uploader/committer (see [`QUIET`]).
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        self.uploader_running.store(true, Ordering::SeqCst);
        tokio::spawn(async move {
            me.clone().uploader().await;
            me.uploader_running.store(false, Ordering::SeqCst);
            me.progress.notify_waiters();
        })
    }

    async fn uploader(self: Arc<Self>) {
        let mut last_commit = Instant::now();
        let mut last_sync = Instant::now();
        // uncommitted records at the last pass, and since when
        let (mut last_records, mut records_since) = (0, Instant::now());
        let mut backoff = Duration::from_millis(0);
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(200), self.wake.notified()).await;
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
            let stopping = self.shutting_down.load(Ordering::Relaxed);
            let low = self.check_space();
            let pressure = low || self.wb.bytes.load(Ordering::Relaxed) > self.dirty_budget() / 2;
            // a store that refuses the chunks (too large) is not asked again
            let due = if lock(&self.blocked).is_some() {
                Vec::new()
            } else {
                self.due_chunks(stopping, pressure).await
            };
            let mut failed = false;
            let uploaded = !due.is_empty();
            if uploaded {
                let results: Vec<VfsResult<()>> = stream::iter(due)
                    .map(|(ino, ci)| self.upload_chunk(ino, ci))
                    .buffer_unordered(self.opts.upload_parallelism.max(1))
                    .collect()
                    .await;
                failed = results.iter().any(|r| r.is_err());
            }
            // writers may be waiting for that space: release it now, not
            // at the next commit
            if pressure && uploaded {
                self.release_uploaded_early().await;
            }
            let records = self.vault.uncommitted_records();
            if records != last_records {
                (last_records, records_since) = (records, Instant::now());
            }
            // commit every `commit_interval` while changes keep coming, and
            // at once when they stopped (QUIET) with nothing left to upload
            // (the dirty scan last: only then is it needed)
            let quiet = || !uploaded && records_since.elapsed() >= QUIET && self.wb.totals().1 == 0;
            if records > 0
                && (stopping || last_commit.elapsed() >= self.opts.commit_interval || quiet())
            {
                failed |= self.commit_now().await.is_err();
                last_commit = Instant::now();
            }
            // files closed without a sync are synced once per interval
            if self.opts.close == crate::CloseMode::Buffered
                && (stopping || last_sync.elapsed() >= self.opts.commit_interval)
            {
                let _ = self.sync_closed().await;
                last_sync = Instant::now();
            }
            backoff = if failed {
                (backoff * 2).clamp(Duration::from_millis(500), Duration::from_secs(30))
            } else {
                Duration::ZERO
            };
            if stopping && self.is_clean() {
                return;
            }
        }
    }

    /// Chunks ready for upload: full, or idle for `writeback_delay` (for
    /// 100 ms when `hurry`, `closed_delay` when the file is closed), or
    /// everything when `all`.
    async fn due_chunks(&self, all: bool, hurry: bool) -> Vec<(u64, u64)> {
        let delay = if hurry {
            self.opts.writeback_delay.min(Duration::from_millis(100))
        } else {
            self.opts.writeback_delay
        };
        let closed_delay = delay.min(self.opts.closed_delay);
        let ovs: Vec<(u64, OverlayRef)> = crate::lock(&self.wb.overlays)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut due = Vec::new();
        for (ino, ov) in ovs {
            let Ok(o) = ov.try_read() else { continue };
            if !o
                .chunks
                .values()
                .any(|c| c.is_dirty() && c.uploading.is_none())
            {
                continue;
            }
            let cs = self
                .vault
                .with_tree(|t| t.get(ino).map(|n| u64::from(n.chunk_size)))
                .unwrap_or(u64::MAX);
            let delay = if self.handles.writing(ino) {
                delay
            } else {
                closed_delay
            };
            for (ci, c) in &o.chunks {
                if c.is_dirty()
                    && c.uploading.is_none()
                    && (all || c.len >= cs || c.last_write.elapsed() >= delay)
                {
                    due.push((ino, *ci));
                }
            }
        }
        due
    }

    /// Nothing dirty and nothing uncommitted.
    pub fn is_clean(&self) -> bool {
        let (_, chunks, _) = self.wb.totals();
        let attrs_dirty = crate::lock(&self.wb.overlays)
            .values()
            .any(|ov| ov.try_read().map(|o| o.attr_dirty).unwrap_or(true));
        chunks == 0 && !attrs_dirty && self.vault.uncommitted_records() == 0
    }

    /// Upload and commit everything (unmount). Calls `report` with the
    /// remaining dirty bytes while it works; gives up after `timeout`, or
    /// once the store failed and nothing went in for `stall_timeout`.
    pub async fn shutdown(
        &self,
        timeout: Duration,
        report: impl Fn(u64, u64),
    ) -> Result<(), String> {
        let inos: Vec<u64> = crate::lock(&self.wb.overlays).keys().copied().collect();
        for ino in inos {
            if let Err(e) = self.flush_attr(ino).await {
                warn!(ino, errno = e.0, "could not flush attributes at unmount");
            }
        }
        self.shutting_down.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let start = Instant::now();
        let c = &self.counters;
        let progress = || {
            (
                c.chunks_uploaded.load(Ordering::Relaxed),
                c.commits.load(Ordering::Relaxed),
            )
        };
        let (mut seen, mut since, mut failures) = (
            progress(),
            Instant::now(),
            c.store_failures.load(Ordering::Relaxed),
        );
        loop {
            if self.is_clean() && !self.uploader_running.load(Ordering::SeqCst) {
                self.after_commit().await;
                return Ok(());
            }
            let (bytes, chunks, _) = self.wb.totals();
            report(bytes, chunks);
            if progress() != seen {
                (seen, since) = (progress(), Instant::now());
                failures = c.store_failures.load(Ordering::Relaxed);
            }
            let blocked = lock(&self.blocked).clone();
            let stalled = blocked.is_some()
                || (since.elapsed() > self.opts.stall_timeout
                    && c.store_failures.load(Ordering::Relaxed) > failures);
            if start.elapsed() > timeout || stalled {
                let why = if let Some(b) = &blocked {
                    format!("{b}: ")
                } else if stalled {
                    let last = crate::lock(&self.last_error).clone().unwrap_or_default();
                    format!(
                        "the store took nothing for {} s ({last}): ",
                        self.opts.stall_timeout.as_secs()
                    )
                } else {
                    String::new()
                };
                return Err(format!(
                    "{why}{chunks} chunks ({bytes} bytes) and {} metadata records are still not in the store; they stay in the local cache ({}) and upload at the next mount",
                    self.vault.uncommitted_records(),
                    self.opts.cache_dir.display()
                ));
            }
            self.wake.notify_one();
            let _ =
                tokio::time::timeout(Duration::from_millis(500), self.progress.notified()).await;
        }
    }
}

/// Path helper for tests.
pub fn dirty_dir(cache: &Path) -> PathBuf {
    cache.join("dirty")
}

/// Plaintext bytes a dirty chunk file of `file_len` bytes can hold (its
/// valid bytes rounded up to whole 4 KiB blocks).
pub fn plain_capacity(file_len: u64) -> u64 {
    sealed::capacity(file_len)
}
