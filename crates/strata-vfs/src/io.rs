//! The read and write paths of the VFS: `read`, `write`, `truncate`,
//! `flush` (close) and `fsync`. Writes go into the write-back cache
//! ([`crate::writeback`]); reads take dirty bytes from there and the rest
//! from the vault's data plane ([`strata_core::Chunks`]), with the
//! handle's read-ahead. Every range is split into chunk pieces by
//! [`strata_core::layout::chunk_pieces`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_core::format::blob::SEGMENT;
use strata_core::layout::{chunk_count, chunk_pieces, chunk_start, last_piece};
use strata_core::record::now;
use strata_core::{Chunks, Inode, Kind, Record, Ts};
use tracing::{debug, trace, warn};

use crate::sealed::SealedFile;
use crate::writeback::{block, committed_len, DChunk, Overlay};
use crate::{io_errno, lock, vault_errno, CloseMode, Errno, Vfs, VfsResult};

/// fdatasync each file that exists (a chunk file may have been uploaded,
/// committed and deleted meanwhile).
fn sync_files(paths: &[PathBuf]) -> std::io::Result<()> {
    for p in paths {
        match File::open(p) {
            Ok(f) => f.sync_data()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The answer to [`Vfs::read_around`]: file bytes from `start`, of which
/// `data[asked]` were asked for; the rest (if any) is spare plaintext of
/// the same segments.
#[derive(Debug)]
pub struct Around {
    pub ino: u64,
    /// File offset of `data[0]`.
    pub start: u64,
    pub data: Vec<u8>,
    pub asked: std::ops::Range<usize>,
    token: u64,
}

impl Around {
    /// The bytes asked for.
    pub fn asked(&self) -> &[u8] {
        &self.data[self.asked.clone()]
    }

    /// The spare bytes before and after those asked for, with their file
    /// offsets (none, one or two runs).
    pub fn spare(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let (a, b) = (self.asked.start, self.asked.end);
        [
            (self.start, &self.data[..a]),
            (self.start + b as u64, &self.data[b..]),
        ]
        .into_iter()
        .filter(|(_, d)| !d.is_empty())
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

    /// Wait while the write-back cache is over its limit, or the cache
    /// disk is short of space and uploads can free some (or, after a local
    /// write got ENOSPC, until space comes back). Waits as long as uploads
    /// make progress; ENOSPC once nothing was freed for `space_wait`.
    async fn wait_for_space(&self, after_enospc: bool) -> VfsResult<()> {
        let mut logged = false;
        let mut last = (self.wb.bytes.load(Ordering::Relaxed), self.space.free());
        let mut deadline = Instant::now() + self.opts.space_wait;
        let mut first = true;
        loop {
            if self.shutting_down.load(Ordering::Relaxed) {
                return Ok(());
            }
            let bytes = self.wb.bytes.load(Ordering::Relaxed);
            let free = self.space.free();
            let low = self.space.is_low();
            let wait = bytes > self.dirty_budget()
                || (low && bytes > self.space.slack())
                || (after_enospc && (first || low));
            if !wait {
                return Ok(());
            }
            first = false;
            if bytes < last.0 || free > last.1 {
                deadline = Instant::now() + self.opts.space_wait;
            }
            last = (bytes, free);
            if Instant::now() >= deadline {
                warn!(
                    dirty = bytes,
                    free = ?free,
                    "no cache space freed for {:?}; a write fails with ENOSPC",
                    self.opts.space_wait
                );
                return Err(Errno(libc::ENOSPC));
            }
            if !logged {
                debug!(dirty = bytes, free = ?free, "writer waits for cache space");
                logged = true;
            }
            self.wake.notify_one();
            let _ =
                tokio::time::timeout(Duration::from_millis(200), self.progress.notified()).await;
            if after_enospc {
                self.space.sample();
            }
        }
    }

    /// Create the dirty chunk `ci` for a write of `[a, b)`: in memory when
    /// small ([`crate::writeback::MEM_CHUNK_MAX`]), else a chunk file;
    /// filled with the chunk's stored bytes unless the write covers all of
    /// them. Returns the chunk and, when a file was just created empty,
    /// that file (the write goes through that handle).
    async fn fill_chunk(
        &self,
        node: &Inode,
        ci: u64,
        a: u64,
        b: u64,
    ) -> VfsResult<(DChunk, Option<SealedFile>)> {
        let path = self.wb.path(node.ino, ci);
        let valid = committed_len(node, ci);
        let covered = valid == 0 || (a == 0 && b >= valid);
        let in_memory = self.wb.fits_in_memory(b.max(valid), node.chunk_size);
        if covered {
            if in_memory {
                return Ok((DChunk::new(self.wb.gen(), 0, Some(Vec::new())), None));
            }
            let f = block(|| self.wb.create_file(&path))
                .map_err(|e| io_errno(e, "creating a cache file"))?;
            return Ok((DChunk::new(self.wb.gen(), 0, None), Some(f)));
        }
        let start = chunk_start(ci, node.chunk_size);
        let data = self
            .vault
            .read_at(node, start, valid)
            .await
            .map_err(|e| vault_errno(e, "reading a chunk before a partial write"))?;
        if in_memory {
            self.wb
                .mem_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            return Ok((DChunk::new(self.wb.gen(), valid, Some(data)), None));
        }
        let tmp = path.with_extension("fill");
        block(|| -> std::io::Result<()> {
            let r = self.wb.create_file(&tmp).and_then(|f| {
                f.write_at(&data, 0)?;
                f.file().sync_data()?; // the rename must never expose a half-filled chunk
                std::fs::rename(&tmp, &path)
            });
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r
        })
        .map_err(|e| io_errno(e, "filling a cache file"))?;
        Ok((DChunk::new(self.wb.gen(), valid, None), None))
    }

    /// Write `data` at `offset` of file `ino` through handle `fh`. When the
    /// cache disk is full the write waits for uploads to free space (see
    /// [`Vfs::wait_for_space`]) and is tried again; ENOSPC only once no
    /// space came back for a while.
    pub async fn write(&self, ino: u64, _fh: u64, offset: u64, data: &[u8]) -> VfsResult<u32> {
        if self.read_only() {
            return Err(Errno(libc::EROFS));
        }
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Errno(libc::EFBIG))?;
        let give_up = Instant::now() + self.opts.space_wait * 4;
        let mut after_enospc = false;
        loop {
            self.wait_for_space(after_enospc).await?;
            match self.write_once(ino, offset, end, data).await {
                Err(Errno(libc::ENOSPC)) if Instant::now() < give_up => {
                    self.space.hit_full();
                    self.wake.notify_one();
                    after_enospc = true;
                }
                r => return r,
            }
        }
    }

    /// One attempt of [`Vfs::write`]; the same bytes may be written again.
    // the entry API cannot hold the map across the fill's await
    #[allow(clippy::map_entry)]
    async fn write_once(&self, ino: u64, offset: u64, end: u64, data: &[u8]) -> VfsResult<u32> {
        let node = self.node(ino)?;
        if node.kind != Kind::File {
            return Err(Errno(libc::EISDIR));
        }
        let mut o = self.lock_overlay(&node).await;
        // the tree may have changed while we waited for the lock
        let node = self.node(ino)?;
        let mut full = false;
        for p in chunk_pieces(offset..end, node.chunk_size) {
            let ci = p.index;
            full |= p.b == u64::from(node.chunk_size);
            let mut created = None;
            if !o.chunks.contains_key(&ci) {
                let (c, f) = self.fill_chunk(&node, ci, p.a, p.b).await?;
                created = f;
                self.wb.add_bytes(0, c.len);
                o.chunks.insert(ci, c);
            }
            let Some(c) = o.chunks.get_mut(&ci) else {
                continue;
            };
            let r = p.file_range();
            let src = &data[(r.start - offset) as usize..(r.end - offset) as usize];
            let was_in_memory = c.mem.is_some();
            let cs = node.chunk_size;
            let written = self.wb.write_body((ino, ci), c, created, (src, p.a), cs);
            if let Err(e) = written {
                // Part of the bytes may be in the file: the chunk counts as
                // changed. A chunk file this write created holds nothing.
                if c.len == 0 {
                    if let Some(c) = o.chunks.remove(&ci) {
                        self.wb.remove_body((ino, ci), &c);
                    }
                } else {
                    c.gen = self.wb.gen();
                }
                return Err(match e.raw_os_error() {
                    Some(libc::ENOSPC) => Errno(libc::ENOSPC),
                    _ => io_errno(e, "writing to the cache"),
                });
            }
            let Some(c) = o.chunks.get_mut(&ci) else {
                continue;
            };
            let old = c.len;
            c.len = c.len.max(p.b);
            c.gen = self.wb.gen();
            c.last_write = Instant::now();
            self.wb.add_bytes(old, c.len);
            if c.mem.is_some() {
                self.journal_write((ino, ci), c, node.chunk_size, p.a, p.len());
            } else if was_in_memory {
                self.journal_moved_to_file((ino, ci), c, node.chunk_size);
            }
        }
        o.size = o.size.max(end);
        o.mtime = now();
        self.wb.publish(ino, &o);
        o.attr_dirty = true;
        drop(o);
        if full {
            // a full chunk is uploaded at once; others wait until idle
            self.wake.notify_one();
        }
        Ok(data.len() as u32)
    }

    /// Read from the store (no pending writes to the file), with the read-ahead
    /// of handle `fh`: bytes `fetch` (which holds the `offset`/`len` asked
    /// for, the range the read-ahead sees).
    async fn read_stored(
        &self,
        node: &Inode,
        fh: u64,
        offset: u64,
        len: u64,
        fetch: std::ops::Range<u64>,
    ) -> VfsResult<Vec<u8>> {
        let chunks = self.vault.chunks();
        let handle = chunks
            .can_prefetch()
            .then(|| self.handles.get(node.ino, fh))
            .flatten();
        let run = handle
            .as_ref()
            .map(|h| lock(&h.prefetcher).on_read(chunks, node, offset, len));
        trace!(ino = node.ino, offset, len, "read");
        let r = chunks
            .read(node, fetch.start, fetch.end - fetch.start)
            .await
            .map_err(|e| vault_errno(e, "read"))?;
        trace!(ino = node.ino, offset, len, "read done");
        if let (Some(h), Some(run)) = (handle, run) {
            lock(&h.prefetcher).on_read_done(chunks, node, run);
        }
        Ok(r)
    }

    /// Read up to `len` bytes at `offset` of `ino` through handle `fh`,
    /// dirty data first.
    pub async fn read(&self, ino: u64, fh: u64, offset: u64, len: u32) -> VfsResult<Vec<u8>> {
        self.read_with(ino, fh, offset, len, |_| None).await
    }

    /// [`Vfs::read`], and for a small read of stored data the rest of the
    /// 64 KiB segments it had to decrypt, for the front end to hand to the
    /// kernel's page cache through [`Vfs::if_unchanged`].
    pub async fn read_around(&self, ino: u64, fh: u64, offset: u64, len: u32) -> VfsResult<Around> {
        let token = self.handles.contents_token();
        let mut cover = None;
        let data = self
            .read_with(ino, fh, offset, len, |node| {
                // larger reads are sequential ones: the kernel asks for
                // their neighbours itself
                if u64::from(len) >= SEGMENT {
                    return None;
                }
                let end = offset.saturating_add(u64::from(len));
                let c = Chunks::decrypted_cover(node, offset..end)?;
                cover = Some(c.clone());
                Some(c)
            })
            .await?;
        Ok(match cover {
            Some(c) if data.len() as u64 == c.end - c.start => {
                let a = (offset - c.start) as usize;
                let b = (a + len as usize).min(data.len());
                Around {
                    start: c.start,
                    data,
                    asked: a..b,
                    ino,
                    token,
                }
            }
            _ => Around {
                start: offset,
                asked: 0..data.len(),
                data,
                ino,
                token,
            },
        })
    }

    /// Run `push` (the front end's store into the kernel's page cache) if
    /// the spare bytes of `a` are still the file's: no handle open for
    /// writing on it and no change of contents since the read began. Returns
    /// whether it ran.
    pub fn if_unchanged(&self, a: &Around, push: impl FnOnce()) -> bool {
        self.handles.if_unchanged(a.token, a.ino, push)
    }

    /// A read; `widen(node)` may give a larger range of stored data to read
    /// (holding the one asked for) when the file has no pending writes.
    async fn read_with(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        len: u32,
        widen: impl FnOnce(&Inode) -> Option<std::ops::Range<u64>>,
    ) -> VfsResult<Vec<u8>> {
        let file_node = || -> VfsResult<Inode> {
            let n = self.node(ino)?;
            if n.kind != Kind::File {
                return Err(Errno(libc::EISDIR));
            }
            Ok(n)
        };
        let Some(ov) = self.wb.get(ino) else {
            let node = file_node()?;
            let len = u64::from(len);
            let fetch = widen(&node).unwrap_or(offset..offset.saturating_add(len));
            return self.read_stored(&node, fh, offset, len, fetch).await;
        };
        let o = ov.read().await;
        // the file as the overlay sees it (taken under its lock: current)
        let mut view = file_node()?;
        view.size = o.size;
        let end = offset.saturating_add(u64::from(len)).min(o.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for p in chunk_pieces(offset..end, view.chunk_size) {
            match o.chunks.get(&p.index) {
                Some(c) => {
                    let mut buf = vec![0u8; p.len() as usize];
                    let have = c.len.min(p.b).saturating_sub(p.a) as usize;
                    if have > 0 {
                        self.wb
                            .read_body((ino, p.index), c, &mut buf[..have], p.a)
                            .map_err(|e| io_errno(e, "reading from the cache"))?;
                    }
                    out.extend_from_slice(&buf);
                }
                None => {
                    let part = self
                        .vault
                        .chunks()
                        .read_piece(&view, &p)
                        .await
                        .map_err(|e| vault_errno(e, "read"))?;
                    out.extend_from_slice(&part);
                }
            }
        }
        Ok(out)
    }

    /// Change a file's size (truncate or extend with a hole).
    pub(crate) async fn truncate(&self, node: &Inode, size: u64, ctime: Ts) -> VfsResult<()> {
        let r = self.truncate_now(node, size, ctime).await;
        // after the change, before the kernel hears of it: a read that
        // began before holds old bytes (and an old size)
        self.handles.contents_changed();
        r
    }

    async fn truncate_now(&self, node: &Inode, size: u64, ctime: Ts) -> VfsResult<()> {
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
        let keep = chunk_count(size, node.chunk_size);
        let doomed: Vec<u64> = o.chunks.range(keep..).map(|(k, _)| *k).collect();
        for ci in doomed {
            if let Some(c) = o.chunks.remove(&ci) {
                self.wb.remove_body((node.ino, ci), &c);
                self.wb.add_bytes(c.len, 0);
            }
        }
        if let Some(lp) = last_piece(size, node.chunk_size) {
            let (last, valid) = (lp.index, lp.b);
            if let Some(c) = o.chunks.get_mut(&last) {
                if c.len > valid {
                    self.wb
                        .truncate_body((node.ino, last), c, valid)
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
            self.apply_internal(Record::SetAttr {
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

    /// Close: the file's data and size durable on local disk, or with
    /// [`CloseMode::Buffered`] in the local cache (the uploader syncs it
    /// within a commit interval).
    pub async fn flush(&self, ino: u64) -> VfsResult<()> {
        if self.read_only() {
            return Ok(());
        }
        match self.opts.close {
            CloseMode::Durable => self.flush_durable(ino).await,
            CloseMode::Buffered => self.flush_buffered(ino).await,
        }
    }

    /// The file's size into the tree; its dirty chunk files, and whether
    /// the journal missed a change of one of its memory chunks.
    async fn flush_start(&self, ino: u64) -> VfsResult<Option<(Vec<PathBuf>, bool)>> {
        self.flush_attr(ino).await?;
        let Some(ov) = self.wb.get(ino) else {
            return Ok(None);
        };
        let o = ov.read().await;
        let paths: Vec<PathBuf> = o
            .chunks
            .iter()
            .filter(|(_, c)| c.is_dirty() && c.mem.is_none())
            .map(|(ci, _)| self.wb.path(ino, *ci))
            .collect();
        // a memory chunk the journal missed a change of
        let missed = o.chunks.values().any(|c| c.unjournaled && c.is_dirty());
        Ok(Some((paths, missed)))
    }

    /// Make the file's data and size durable on local disk (close
    /// semantics): its chunk files and the journal synced (the journal
    /// alone for a file whose chunks are in memory: their writes are in
    /// it).
    async fn flush_durable(&self, ino: u64) -> VfsResult<()> {
        let Some((paths, journal_failed)) = self.flush_start(ino).await? else {
            return self.make_content_durable(ino).await;
        };
        if journal_failed {
            // the journal refused the bytes of a memory chunk: durable in
            // the store instead, like an fsync in cloud mode
            return self.commit_file(ino).await;
        }
        if paths.is_empty() {
            return self.make_content_durable(ino).await;
        }
        // The chunk files and the journal are synced at the same time (two
        // devices queues' worth of waiting become one); close returns once
        // both are durable.
        let chunks = tokio::task::spawn_blocking(move || sync_files(&paths));
        let journal = self.sync_journal();
        chunks
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|e| io_errno(e, "syncing the cache"))?;
        journal?;
        self.cover_journal_gap().await
    }

    /// [`CloseMode::Buffered`]: the file's bytes are in its chunk files and
    /// the journal (the kernel keeps them if this process dies); they are
    /// noted for `Vfs::sync_closed`. What exists only in this process's
    /// memory (a change the journal missed) still goes to the store first.
    async fn flush_buffered(&self, ino: u64) -> VfsResult<()> {
        let paths = match self.flush_start(ino).await? {
            Some((_, true)) => return self.commit_file(ino).await,
            Some((paths, false)) => paths,
            None => Vec::new(),
        };
        let upto = lock(&self.journal).appended();
        {
            let mut u = lock(&self.close_unsynced);
            u.chunk_files.extend(paths);
            u.journal_upto = u.journal_upto.max(upto);
        }
        self.cover_journal_gap().await
    }

    /// Whether files closed with [`CloseMode::Buffered`] have bytes not yet
    /// synced to the cache disk.
    pub(crate) fn close_unsynced(&self) -> bool {
        let (files, upto) = {
            let u = lock(&self.close_unsynced);
            (!u.chunk_files.is_empty(), u.journal_upto)
        };
        files || lock(&self.journal).synced() < upto
    }

    /// Sync what buffered closes left unsynced: their chunk files and the
    /// journal. The uploader calls this every commit interval; on failure
    /// the files stay noted and it is tried again.
    pub(crate) async fn sync_closed(&self) -> VfsResult<()> {
        if !self.close_unsynced() {
            return Ok(());
        }
        let paths: Vec<PathBuf> = std::mem::take(&mut lock(&self.close_unsynced).chunk_files)
            .into_iter()
            .collect();
        let h = lock(&self.journal)
            .sync_handle()
            .map_err(|e| io_errno(e, "journal"))?;
        let todo = paths.clone();
        let r = tokio::task::spawn_blocking(move || sync_files(&todo).and_then(|()| h.sync()))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = r {
            lock(&self.close_unsynced).chunk_files.extend(paths);
            self.note_error(format!(
                "syncing closed files to the cache disk failed: {e}"
            ));
            return Err(io_errno(e, "syncing the cache"));
        }
        Ok(())
    }

    /// Sync the journal if it holds a record of `ino`'s contents or size
    /// not yet synced; commit if the journal missed a record.
    async fn make_content_durable(&self, ino: u64) -> VfsResult<()> {
        if self.content_unsynced(ino) {
            self.sync_journal()?;
        }
        self.cover_journal_gap().await
    }

    /// fsync: local durability, and in `Cloud` mode upload the file's dirty
    /// chunks and commit before returning.
    pub async fn fsync(&self, ino: u64) -> VfsResult<()> {
        if self.read_only() {
            return Ok(());
        }
        self.flush_durable(ino).await?;
        if self.opts.fsync == crate::FsyncMode::Local {
            // the file's records too, not only its contents (a new empty file)
            return self.make_records_durable().await;
        }
        self.commit_file(ino).await
    }

    /// Upload the file's dirty chunks and commit: its data and metadata
    /// are in the store when this returns.
    async fn commit_file(&self, ino: u64) -> VfsResult<()> {
        self.upload_file_now(ino).await?;
        self.flush_attr(ino).await?;
        self.commit_now().await
    }
}
