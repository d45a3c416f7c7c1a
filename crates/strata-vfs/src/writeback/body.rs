//! Where a dirty chunk's bytes live: in its chunk file, or (a small
//! partial chunk) in memory, with each write to it appended to the
//! journal ([`crate::journal::ChunkData`]); and what a replay or a
//! compaction needs of those memory chunks.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strata_core::layout::chunk_start;
use strata_core::{Kind, Vault};
use tracing::warn;

use super::{add, block, sub_bytes, DChunk, Overlay, OverlayRef, WriteBack};
use crate::journal::{ChunkData, ChunkWrite};
use crate::sealed::SealedFile;
use crate::{lock, Vfs};

/// Largest chunk kept in memory (bytes from the chunk's start).
pub const MEM_CHUNK_MAX: u64 = 256 << 10;

/// Whether a memory chunk written up to `end` stays in memory.
fn stays_in_memory(end: u64, chunk_size: u32) -> bool {
    end <= MEM_CHUNK_MAX && end < u64::from(chunk_size)
}
/// Memory for chunks kept in memory, all files together; past it new
/// chunks get chunk files.
pub const MEM_BUDGET: u64 = 64 << 20;

impl WriteBack {
    /// Whether a new chunk of `len` bytes may live in memory: a partial
    /// chunk (a whole one is uploaded at once) of at most
    /// [`MEM_CHUNK_MAX`] bytes, within [`MEM_BUDGET`].
    pub(crate) fn fits_in_memory(&self, len: u64, chunk_size: u32) -> bool {
        stays_in_memory(len, chunk_size)
            && self.mem_bytes.load(Ordering::Relaxed) + len <= MEM_BUDGET
    }

    /// Write `src` at `at` into chunk `(ino, ci)` (its file opened, unless
    /// `file` is the one just created). A memory chunk that would grow past
    /// [`MEM_CHUNK_MAX`] moves into a chunk file first. These body methods
    /// take the blocking section (see [`block`]) only for file I/O.
    pub(crate) fn write_body(
        &self,
        (ino, ci): (u64, u64),
        c: &mut DChunk,
        file: Option<SealedFile>,
        (src, at): (&[u8], u64),
        chunk_size: u32,
    ) -> std::io::Result<()> {
        let end = at + src.len() as u64;
        if let Some(m) = c.mem.as_mut() {
            if stays_in_memory(end, chunk_size) {
                let old = m.len() as u64;
                if (m.len() as u64) < end {
                    m.resize(end as usize, 0);
                }
                m[at as usize..end as usize].copy_from_slice(src);
                add(&self.mem_bytes, old, m.len() as u64);
                return Ok(());
            }
            // too big for memory: into a chunk file, then written there
            let f = block(|| -> std::io::Result<SealedFile> {
                let f = self.create_file(&self.path(ino, ci))?;
                f.write_at(m, 0)?;
                Ok(f)
            })?;
            sub_bytes(&self.mem_bytes, m.len() as u64);
            c.mem = None;
            return block(|| f.write_at(src, at));
        }
        block(|| {
            let f = match file {
                Some(f) => f,
                None => self.open_file(&self.path(ino, ci))?,
            };
            f.write_at(src, at)
        })
    }

    /// Read `buf.len()` valid bytes of chunk `(ino, ci)` at `at`.
    pub(crate) fn read_body(
        &self,
        (ino, ci): (u64, u64),
        c: &DChunk,
        buf: &mut [u8],
        at: u64,
    ) -> std::io::Result<()> {
        match &c.mem {
            Some(m) => {
                let src = m.get(at as usize..at as usize + buf.len()).ok_or_else(|| {
                    std::io::Error::other("read past the bytes of a chunk kept in memory")
                })?;
                buf.copy_from_slice(src);
                Ok(())
            }
            None => block(|| self.open_file(&self.path(ino, ci))?.read_at(buf, at)),
        }
    }

    /// Cut chunk `(ino, ci)` to `len` valid bytes.
    pub(crate) fn truncate_body(
        &self,
        (ino, ci): (u64, u64),
        c: &mut DChunk,
        len: u64,
    ) -> std::io::Result<()> {
        match c.mem.as_mut() {
            Some(m) => {
                let old = m.len() as u64;
                m.truncate(len as usize);
                add(&self.mem_bytes, old, m.len() as u64);
                Ok(())
            }
            None => block(|| self.open_file(&self.path(ino, ci))?.set_len(len)),
        }
    }

    /// Forget chunk `(ino, ci)`'s bytes (its file, or its memory).
    pub(crate) fn remove_body(&self, (ino, ci): (u64, u64), c: &DChunk) {
        match &c.mem {
            Some(m) => sub_bytes(&self.mem_bytes, m.len() as u64),
            None => {
                let _ = block(|| std::fs::remove_file(self.path(ino, ci)));
            }
        }
    }

    /// Re-register the chunks an earlier session kept in memory (from the
    /// journal, fitted to the tree by [`fit_to_tree`]); a chunk file of
    /// the same chunk (written later) wins.
    pub(crate) fn recover_memory(&self, vault: &Vault, data: Vec<ChunkData>) {
        for d in data {
            let Some(node) = vault.inode(d.ino) else {
                continue;
            };
            let ov = self.overlay_or_insert(d.ino, || Overlay {
                size: node.size,
                mtime: node.mtime,
                attr_dirty: false,
                chunks: BTreeMap::new(),
            });
            let Ok(mut o) = ov.try_write() else {
                continue;
            };
            if o.chunks.contains_key(&d.chunk) {
                continue;
            }
            let len = d.bytes.len() as u64;
            let mut c = DChunk::new(self.gen(), len, Some(d.bytes));
            c.last_write = Instant::now() - Duration::from_secs(3600);
            c.recovered = true;
            c.fresh = false; // the journal holds its whole content
            o.chunks.insert(d.chunk, c);
            self.publish(d.ino, &o);
            self.bytes.fetch_add(len, Ordering::Relaxed);
            self.mem_bytes.fetch_add(len, Ordering::Relaxed);
        }
    }
}

/// The chunk bytes a replay restores ([`crate::journal::surviving_data`]),
/// fitted to the replayed tree: dropped for files that are gone, cut to
/// the file's size.
pub(crate) fn fit_to_tree(data: Vec<ChunkData>, vault: &Vault) -> Vec<ChunkData> {
    data.into_iter()
        .filter_map(|mut d| {
            let node = vault
                .inode(d.ino)
                .filter(|n| n.kind == Kind::File && n.chunk_size > 0)?;
            let limit = node.size;
            let start = chunk_start(d.chunk, node.chunk_size);
            let keep = limit.checked_sub(start).filter(|k| *k > 0)?;
            d.bytes.truncate(keep.min(d.bytes.len() as u64) as usize);
            Some(d)
        })
        .collect()
}

impl Vfs {
    /// Journal a write of `at..at+len` to memory chunk `(ino, ci)` (its
    /// whole content if it is fresh), not synced. A failure (disk full) is
    /// logged and marks the chunk: its close then uploads and commits.
    pub(crate) fn journal_write(
        &self,
        (ino, ci): (u64, u64),
        c: &mut DChunk,
        chunk_size: u32,
        at: u64,
        len: u64,
    ) {
        let Some(m) = &c.mem else {
            return;
        };
        // the whole content when fresh, else just the bytes written
        let (at, bytes) = if c.fresh {
            (0, &m[..])
        } else {
            (at, &m[at as usize..(at + len) as usize])
        };
        let w = ChunkWrite {
            ino,
            chunk: ci,
            start: chunk_start(ci, chunk_size),
            at,
            bytes,
            len: m.len() as u64,
            fresh: c.fresh,
        };
        let appended = lock(&self.journal).append_data(&w);
        self.journaled(ino, c, appended);
    }

    /// Journal that memory chunk `(ino, ci)` moved into its chunk file.
    pub(crate) fn journal_moved_to_file(
        &self,
        (ino, ci): (u64, u64),
        c: &mut DChunk,
        chunk_size: u32,
    ) {
        let start = chunk_start(ci, chunk_size);
        let gone = ChunkData::whole(ino, ci, start, Vec::new());
        let appended = lock(&self.journal).append_data(&gone.as_write());
        self.journaled(ino, c, appended);
    }

    /// Note the outcome of a journal append for memory chunk `c` of `ino`.
    fn journaled(&self, ino: u64, c: &mut DChunk, appended: std::io::Result<u64>) {
        match appended {
            Ok(n) => {
                c.fresh = false;
                c.unjournaled = false;
                lock(&self.content_appends).insert(ino, n);
            }
            Err(e) => {
                // the next entry that gets in carries the whole content
                c.fresh = true;
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    self.space.hit_full();
                }
                if !c.unjournaled {
                    warn!(error = %e, "could not append a small file's bytes to the local journal; its close uploads them instead");
                    self.note_error(format!("local journal write failed: {e}"));
                }
                c.unjournaled = true;
            }
        }
    }

    /// The whole content of every chunk kept in memory, for a journal
    /// compaction; `None` if an overlay is busy (try again later).
    pub(crate) fn memory_chunks(&self) -> Option<Vec<ChunkData>> {
        let ovs: Vec<(u64, OverlayRef)> = lock(&self.wb.overlays)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut out = Vec::new();
        for (ino, ov) in ovs {
            let o = ov.try_read().ok()?;
            for (ci, c) in &o.chunks {
                if let Some(m) = &c.mem {
                    let cs = self.with_node(ino, |n| n.chunk_size).ok()?;
                    out.push(ChunkData::whole(ino, *ci, chunk_start(*ci, cs), m.clone()));
                }
            }
        }
        Some(out)
    }
}
