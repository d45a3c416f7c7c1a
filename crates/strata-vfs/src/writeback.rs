//! The write-back cache: dirty chunks as files on local disk
//! (`<cache>/dirty/<ino>.<chunk>`, the chunk's plaintext up to its highest
//! written byte), an in-memory overlay per file (size and mtime of writes not
//! yet in the tree), and the background uploader.
//!
//! A chunk's life: first write → file created (filled from the stored chunk
//! only when the write does not cover its valid bytes) → more writes bump its
//! generation → idle for `writeback_delay` (or full, or fsync) → uploaded
//! (dedup and hole detection in the vault) → `SetChunks` applied and journaled
//! if no write happened meanwhile → file deleted once a commit put that record
//! in the store. Memory use is independent of file sizes: data lives on disk.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use strata_core::record::now;
use strata_core::{Inode, Kind, Record, Ts, Vault};
use tracing::{debug, info, trace, warn};

use crate::{io_errno, lock, vault_errno, Errno, Vfs, VfsResult};

/// One dirty chunk.
#[derive(Debug, Clone)]
pub(crate) struct DChunk {
    /// Bumped by every change of the file's bytes.
    gen: u64,
    /// Length of the chunk file (valid bytes of the chunk).
    len: u64,
    last_write: Instant,
    /// Generation being uploaded (an upload clears only its own mark).
    uploading: Option<u64>,
    /// (generation, record sequence) of the last upload applied to the tree.
    uploaded: Option<(u64, u64)>,
}

impl DChunk {
    fn is_dirty(&self) -> bool {
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

type OverlayRef = Arc<tokio::sync::RwLock<Overlay>>;

pub struct WriteBack {
    dir: PathBuf,
    /// Source of chunk generations, unique across the cache: a chunk entry
    /// dropped and re-created never repeats a generation an in-flight
    /// upload still carries.
    next_gen: AtomicU64,
    overlays: Mutex<HashMap<u64, OverlayRef>>,
    /// (size, mtime) of each overlay, readable without its async lock
    /// (getattr must never see a stale size because an upload holds it).
    attrs: Mutex<HashMap<u64, (u64, Ts)>>,
    /// Bytes in chunk files.
    bytes: AtomicU64,
}

impl WriteBack {
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<WriteBack> {
        std::fs::create_dir_all(&dir)?;
        Ok(WriteBack {
            dir,
            next_gen: AtomicU64::new(1),
            overlays: Mutex::new(HashMap::new()),
            attrs: Mutex::new(HashMap::new()),
            bytes: AtomicU64::new(0),
        })
    }

    fn gen(&self) -> u64 {
        self.next_gen.fetch_add(1, Ordering::Relaxed)
    }

    fn path(&self, ino: u64, ci: u64) -> PathBuf {
        self.dir.join(format!("{ino}.{ci}"))
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
            let cs = u64::from(node.chunk_size);
            let start = ci * cs;
            let flen = e.metadata().map(|m| m.len()).unwrap_or(0);
            if start >= node.size && !(start == 0 && node.size == 0 && flen == 0) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let len = flen.min(node.size - start.min(node.size));
            if len < flen {
                if let Ok(f) = OpenOptions::new().write(true).open(&path) {
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
                o.chunks.insert(
                    ci,
                    DChunk {
                        gen: self.gen(),
                        len,
                        last_write: Instant::now() - Duration::from_secs(3600),
                        uploading: None,
                        uploaded: None,
                    },
                );
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

    fn overlay_or_insert(&self, ino: u64, init: impl FnOnce() -> Overlay) -> OverlayRef {
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
    fn publish(&self, ino: u64, o: &Overlay) {
        lock(&self.attrs).insert(ino, (o.size, o.mtime));
    }

    /// Forget an inode's dirty data (deleted file).
    pub(crate) fn drop_inode(&self, ino: u64) {
        lock(&self.attrs).remove(&ino);
        if lock(&self.overlays).remove(&ino).is_none() {
            return;
        }
        // Remove the inode's chunk files by name (an upload in flight may hold
        // the overlay; it finds the inode gone and references nothing).
        let prefix = format!("{ino}.");
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(e.path()).is_ok() {
                    self.add_bytes(len, 0);
                }
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

    fn add_bytes(&self, old: u64, new: u64) {
        if new >= old {
            self.bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            let d = old - new;
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(d))
                });
        }
    }
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Committed plaintext length of chunk `ci` of `node`.
fn committed_len(node: &Inode, ci: u64) -> u64 {
    let cs = u64::from(node.chunk_size);
    let start = ci * cs;
    let slot = usize::try_from(ci)
        .ok()
        .and_then(|i| node.chunks.get(i).copied())
        .flatten();
    match slot {
        Some(c) => u64::from(c.len).min(node.size.saturating_sub(start)),
        None => 0,
    }
}

impl Vfs {
    /// Lock a file's overlay for writing, creating it if needed. Loops if a
    /// clean overlay was dropped from the map while we waited for its lock,
    /// so changes never land in an overlay nobody else can see.
    async fn lock_overlay(&self, node: &Inode) -> tokio::sync::OwnedRwLockWriteGuard<Overlay> {
        loop {
            let ov = self.wb.overlay_or_insert(node.ino, || Overlay {
                size: node.size,
                mtime: node.mtime,
                attr_dirty: false,
                chunks: BTreeMap::new(),
            });
            let g = ov.clone().write_owned().await;
            let current = crate::lock(&self.wb.overlays)
                .get(&node.ino)
                .is_some_and(|c| Arc::ptr_eq(c, &ov));
            if current {
                return g;
            }
        }
    }

    /// Wait while dirty data is above the limit (writers slow down, never fail).
    async fn wait_for_space(&self) {
        let mut warned = false;
        while self.wb.bytes.load(Ordering::Relaxed) > self.opts.dirty_limit
            && !self.shutting_down.load(Ordering::Relaxed)
        {
            if !warned {
                debug!("write-back cache full; writer waits for uploads");
                warned = true;
            }
            self.wake.notify_one();
            let _ =
                tokio::time::timeout(Duration::from_millis(200), self.progress.notified()).await;
        }
    }

    /// Create the chunk file for `ci`, filled with the chunk's stored bytes
    /// unless the coming write `[a, b)` covers all of them.
    async fn fill_chunk(&self, node: &Inode, ci: u64, a: u64, b: u64) -> VfsResult<u64> {
        let path = self.wb.path(node.ino, ci);
        let valid = committed_len(node, ci);
        if valid == 0 || (a == 0 && b >= valid) {
            block(|| File::create(&path)).map_err(|e| io_errno(e, "creating a cache file"))?;
            return Ok(0);
        }
        let cs = u64::from(node.chunk_size);
        let data = self
            .vault
            .read_at(node, ci * cs, valid)
            .await
            .map_err(|e| vault_errno(e, "reading a chunk before a partial write"))?;
        let tmp = path.with_extension("fill");
        block(|| -> std::io::Result<()> {
            let f = File::create(&tmp)?;
            f.write_all_at(&data, 0)?;
            f.sync_data()?; // the rename must never expose a half-filled chunk
            std::fs::rename(&tmp, &path)
        })
        .map_err(|e| io_errno(e, "filling a cache file"))?;
        Ok(valid)
    }

    /// Write `data` at `offset` of file `ino`.
    // the entry API cannot hold the map across the fill's await
    #[allow(clippy::map_entry)]
    pub async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> VfsResult<u32> {
        if self.opts.read_only {
            return Err(Errno(libc::EROFS));
        }
        let node = self.node(ino)?;
        if node.kind != Kind::File {
            return Err(Errno(libc::EISDIR));
        }
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Errno(libc::EFBIG))?;
        self.wait_for_space().await;
        let mut o = self.lock_overlay(&node).await;
        // the tree may have changed while we waited for the lock
        let node = self.node(ino)?;
        let cs = u64::from(node.chunk_size.max(1));
        let mut pos = offset;
        while pos < end {
            let ci = pos / cs;
            let cstart = ci * cs;
            let a = pos - cstart;
            let b = end.min(cstart + cs) - cstart;
            if !o.chunks.contains_key(&ci) {
                let filled = self.fill_chunk(&node, ci, a, b).await?;
                self.wb.add_bytes(0, filled);
                o.chunks.insert(
                    ci,
                    DChunk {
                        gen: self.wb.gen(),
                        len: filled,
                        last_write: Instant::now(),
                        uploading: None,
                        uploaded: None,
                    },
                );
            }
            let path = self.wb.path(ino, ci);
            let src = &data[(pos - offset) as usize..(pos - offset + (b - a)) as usize];
            block(|| -> std::io::Result<()> {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.write_all_at(src, a)
            })
            .map_err(|e| io_errno(e, "writing to the cache"))?;
            if let Some(c) = o.chunks.get_mut(&ci) {
                let old = c.len;
                c.len = c.len.max(b);
                c.gen = self.wb.gen();
                c.last_write = Instant::now();
                self.wb.add_bytes(old, c.len);
            }
            pos = cstart + b;
        }
        o.size = o.size.max(end);
        o.mtime = now();
        self.wb.publish(ino, &o);
        o.attr_dirty = true;
        drop(o);
        self.wake.notify_one();
        Ok(data.len() as u32)
    }

    /// Read up to `len` bytes at `offset`, dirty data first.
    pub async fn read(&self, ino: u64, offset: u64, len: u32) -> VfsResult<Vec<u8>> {
        let node = self.node(ino)?;
        if node.kind != Kind::File {
            return Err(Errno(libc::EISDIR));
        }
        let Some(ov) = self.wb.get(ino) else {
            trace!(ino, offset, len, "read");
            let run = self.prefetch(&node, offset, u64::from(len));
            let r = self
                .vault
                .read_at(&node, offset, u64::from(len))
                .await
                .map_err(|e| vault_errno(e, "read"));
            trace!(ino, offset, len, "read done");
            if r.is_ok() {
                self.prefetch_done(&node, run);
            }
            return r;
        };
        let o = ov.read().await;
        let node = self.node(ino)?;
        let size = o.size;
        let end = offset.saturating_add(u64::from(len)).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut view = node.clone();
        view.size = size;
        let cs = u64::from(node.chunk_size.max(1));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let ci = pos / cs;
            let cstart = ci * cs;
            let stop = end.min(cstart + cs);
            match o.chunks.get(&ci) {
                Some(c) => {
                    let a = pos - cstart;
                    let b = stop - cstart;
                    let mut buf = vec![0u8; (b - a) as usize];
                    let have = c.len.min(b).saturating_sub(a) as usize;
                    if have > 0 {
                        let path = self.wb.path(ino, ci);
                        block(|| -> std::io::Result<()> {
                            let f = File::open(&path)?;
                            f.read_exact_at(&mut buf[..have], a)
                        })
                        .map_err(|e| io_errno(e, "reading from the cache"))?;
                    }
                    out.extend_from_slice(&buf);
                }
                None => {
                    let part = self
                        .vault
                        .read_at(&view, pos, stop - pos)
                        .await
                        .map_err(|e| vault_errno(e, "read"))?;
                    out.extend_from_slice(&part);
                }
            }
            pos = stop;
        }
        Ok(out)
    }

    /// Change a file's size (truncate or extend with a hole).
    pub(crate) async fn truncate(&self, node: &Inode, size: u64, ctime: Ts) -> VfsResult<()> {
        let mut o = self.lock_overlay(node).await;
        let t = now();
        self.apply(Record::SetAttr {
            ino: node.ino,
            perm: None,
            uid: None,
            gid: None,
            size: Some(size),
            atime: None,
            mtime: Some(t),
            ctime,
        })?;
        let cs = u64::from(node.chunk_size.max(1));
        let keep = size.div_ceil(cs);
        let doomed: Vec<u64> = o.chunks.range(keep..).map(|(k, _)| *k).collect();
        for ci in doomed {
            if let Some(c) = o.chunks.remove(&ci) {
                let _ = block(|| std::fs::remove_file(self.wb.path(node.ino, ci)));
                self.wb.add_bytes(c.len, 0);
            }
        }
        if size > 0 {
            let last = keep - 1;
            let valid = size - last * cs;
            if let Some(c) = o.chunks.get_mut(&last) {
                if c.len > valid {
                    let path = self.wb.path(node.ino, last);
                    block(|| {
                        OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .and_then(|f| f.set_len(valid))
                    })
                    .map_err(|e| io_errno(e, "truncating a cache file"))?;
                    self.wb.add_bytes(c.len, valid);
                    c.len = valid;
                    c.gen = self.wb.gen();
                }
            }
        }
        o.size = size;
        o.mtime = t;
        self.wb.publish(node.ino, &o);
        o.attr_dirty = false;
        if o.chunks.is_empty() {
            drop(o);
            self.forget_clean_overlay(node.ino);
        }
        Ok(())
    }

    /// Remove an overlay that holds nothing.
    fn forget_clean_overlay(&self, ino: u64) {
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

    /// Put the overlay's size/mtime into the tree (journaled). Called on
    /// flush/fsync so a crash never loses the size of closed files.
    pub(crate) async fn flush_attr(&self, ino: u64) -> VfsResult<()> {
        let Some(ov) = self.wb.get(ino) else {
            return Ok(());
        };
        let mut o = ov.write().await;
        if !o.attr_dirty {
            return Ok(());
        }
        let node = self.node(ino)?;
        if node.size != o.size || node.mtime != o.mtime {
            self.apply(Record::SetAttr {
                ino,
                perm: None,
                uid: None,
                gid: None,
                size: Some(o.size).filter(|s| *s != node.size),
                atime: None,
                mtime: Some(o.mtime),
                ctime: o.mtime.max(node.ctime),
            })?;
        }
        o.attr_dirty = false;
        Ok(())
    }

    /// Apply an attribute change that sets mtime explicitly (utimens), with
    /// the file's overlay locked: pending writes' time is replaced, and no
    /// upload can slip an older mtime in between.
    pub(crate) async fn set_attr_with_mtime(&self, r: Record, mtime: Ts) -> VfsResult<()> {
        let ino = match &r {
            Record::SetAttr { ino, .. } => *ino,
            _ => return Err(Errno(libc::EINVAL)),
        };
        let Some(ov) = self.wb.get(ino) else {
            self.apply(r)?;
            return Ok(());
        };
        let mut o = ov.write().await;
        let node = self.node(ino)?;
        if o.size != node.size {
            self.apply(Record::SetAttr {
                ino,
                perm: None,
                uid: None,
                gid: None,
                size: Some(o.size),
                atime: None,
                mtime: None,
                ctime: o.mtime.max(node.ctime),
            })?;
        }
        self.apply(r)?;
        o.mtime = mtime;
        o.attr_dirty = false;
        self.wb.publish(ino, &o);
        Ok(())
    }

    /// Make the file's data and size durable on local disk (close semantics).
    pub async fn flush(&self, ino: u64) -> VfsResult<()> {
        if self.opts.read_only {
            return Ok(());
        }
        self.flush_attr(ino).await?;
        if let Some(ov) = self.wb.get(ino) {
            let o = ov.read().await;
            let paths: Vec<PathBuf> = o
                .chunks
                .iter()
                .filter(|(_, c)| c.is_dirty())
                .map(|(ci, _)| self.wb.path(ino, *ci))
                .collect();
            drop(o);
            block(|| -> std::io::Result<()> {
                for p in paths {
                    match File::open(&p) {
                        Ok(f) => f.sync_data()?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
            .map_err(|e| io_errno(e, "syncing the cache"))?;
        }
        self.sync_journal()
    }

    /// fsync: local durability, and in `Cloud` mode upload the file's dirty
    /// chunks and commit before returning.
    pub async fn fsync(&self, ino: u64) -> VfsResult<()> {
        if self.opts.read_only {
            return Ok(());
        }
        self.flush(ino).await?;
        if self.opts.fsync == crate::FsyncMode::Local {
            return Ok(());
        }
        self.upload_file_now(ino).await?;
        self.flush_attr(ino).await?;
        self.commit_now().await
    }

    /// Upload every dirty chunk of `ino` (waiting for ones in flight).
    async fn upload_file_now(&self, ino: u64) -> VfsResult<()> {
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
        let (gen, len) = {
            let mut o = ov.write().await;
            let Some(c) = o.chunks.get_mut(&ci) else {
                return Ok(());
            };
            if c.uploading.is_some() || !c.is_dirty() {
                return Ok(());
            }
            c.uploading = Some(c.gen);
            (c.gen, c.len)
        };
        self.counters
            .uploads_in_flight
            .fetch_add(1, Ordering::Relaxed);
        let res = self.upload_chunk_inner(&ov, ino, ci, gen, len).await;
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
        ino: u64,
        ci: u64,
        gen: u64,
        len: u64,
    ) -> VfsResult<()> {
        let path = self.wb.path(ino, ci);
        let mut data = vec![0u8; len as usize];
        block(|| File::open(&path).and_then(|f| f.read_exact_at(&mut data, 0)))
            .map_err(|e| io_errno(e, "reading a dirty chunk"))?;
        let _guard = self.vault.data_guard().await;
        let cref = match self.vault.upload_chunk(data).await {
            Ok(c) => c,
            Err(e) => {
                self.note_error(format!("upload failed (will retry): {e}"));
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
        let seq = self.apply(Record::SetChunks {
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
                self.note_error(format!("metadata commit failed (will retry): {e}"));
                Err(vault_errno(e, "committing metadata"))
            }
        }
    }

    /// Drop chunk files whose upload the store now has; compact the journal.
    async fn after_commit(&self) {
        let committed = self.vault.writer_seq();
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
                        && c.uploaded.is_some_and(|u| u.1 <= committed)
                })
                .map(|(k, _)| *k)
                .collect();
            for ci in done {
                if let Some(c) = o.chunks.remove(&ci) {
                    let _ = block(|| std::fs::remove_file(self.wb.path(ino, ci)));
                    self.wb.add_bytes(c.len, 0);
                }
            }
            let empty = o.chunks.is_empty() && !o.attr_dirty;
            drop(o);
            if empty {
                self.forget_clean_overlay(ino);
            }
        }
        let mut j = crate::lock(&self.journal);
        if let Err(e) = j.compact(committed) {
            warn!(error = %e, "could not compact the journal");
        }
        drop(j);
        self.progress.notify_waiters();
    }

    /// Start the background uploader/committer.
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
        let mut backoff = Duration::from_millis(0);
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(200), self.wake.notified()).await;
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
            let stopping = self.shutting_down.load(Ordering::Relaxed);
            let pressure = self.wb.bytes.load(Ordering::Relaxed) > self.opts.dirty_limit / 2;
            let due = self.due_chunks(stopping || pressure).await;
            let mut failed = false;
            if !due.is_empty() {
                let results: Vec<VfsResult<()>> = stream::iter(due)
                    .map(|(ino, ci)| self.upload_chunk(ino, ci))
                    .buffer_unordered(self.opts.upload_parallelism.max(1))
                    .collect()
                    .await;
                failed = results.iter().any(|r| r.is_err());
            }
            if self.vault.uncommitted_records() > 0
                && (stopping || last_commit.elapsed() >= self.opts.commit_interval)
            {
                failed |= self.commit_now().await.is_err();
                last_commit = Instant::now();
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

    /// Chunks ready for upload: idle long enough, full, or everything when forced.
    async fn due_chunks(&self, force: bool) -> Vec<(u64, u64)> {
        let ovs: Vec<(u64, OverlayRef)> = crate::lock(&self.wb.overlays)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut due = Vec::new();
        for (ino, ov) in ovs {
            let Ok(o) = ov.try_read() else { continue };
            let cs = self
                .vault
                .inode(ino)
                .map(|n| u64::from(n.chunk_size))
                .unwrap_or(u64::MAX);
            for (ci, c) in &o.chunks {
                if c.is_dirty()
                    && c.uploading.is_none()
                    && (force || c.len >= cs || c.last_write.elapsed() >= self.opts.writeback_delay)
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
    /// remaining dirty bytes while it works; gives up after `timeout`.
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
        loop {
            if self.is_clean() && !self.uploader_running.load(Ordering::SeqCst) {
                self.after_commit().await;
                return Ok(());
            }
            let (bytes, chunks, _) = self.wb.totals();
            report(bytes, chunks);
            if start.elapsed() > timeout {
                return Err(format!(
                    "{chunks} chunks ({bytes} bytes) and {} metadata records are still not in the store; they stay in the local cache and upload at the next mount",
                    self.vault.uncommitted_records()
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
