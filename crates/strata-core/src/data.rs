//! Whole files in and out of a [`Vault`] (the CLI's `put` and `get`).
//!
//! Writing: a file is cut into fixed-size chunks (aligned at multiples of the
//! chunk size, so a later partial rewrite touches one chunk); each chunk's
//! content address is computed first, so chunks already in the vault are not
//! uploaded again (dedup), all-zero chunks become holes, and new chunks are
//! sealed and uploaded in parallel. Blobs are uploaded *before* the records
//! referencing them are applied, so committed metadata never dangles.
//!
//! Reading goes through the data plane ([`crate::chunks::Chunks`]): only the
//! 64 KiB segments covering the requested range are fetched (one range read
//! per chunk), or the whole blob on stores without ranges.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{VaultError, VaultResult};
use crate::format::pack::packable;
use crate::format::{parse_blob_key, DATA_PREFIX};
use crate::layout::chunk_pieces;
use crate::paths::apply_error;
use crate::record::{now, ChunkRef, Kind, Record, Ts};
use crate::tree::{ApplyError, Inode};
use crate::vault::Vault;

/// Chunk slots per `SetChunks` record (keeps each record small).
const CHUNKS_PER_RECORD: usize = 1024;

/// From this many referenced blobs on, [`Vault::find_stored_blobs`] lists
/// `data/` one shard (`data/00/` … `data/ff/`) at a time, so that no listing
/// holds more than a fraction of the store's names in memory.
const SHARDED_LISTING: usize = 50_000;

/// Attributes for a file written with [`Vault::write_file`].
#[derive(Debug, Clone, Copy)]
pub struct FileMeta {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Ts,
    pub mtime: Ts,
}

impl Default for FileMeta {
    fn default() -> Self {
        let t = now();
        FileMeta {
            perm: 0o644,
            uid: crate::vault::current_uid(),
            gid: crate::vault::current_gid(),
            atime: t,
            mtime: t,
        }
    }
}

/// Progress callback: called with a number of bytes just processed.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// See [`Vault::write_target`].
struct WriteTarget {
    parent: u64,
    name: Vec<u8>,
    existing: Option<(u64, Kind, u32)>,
}

impl Vault {
    /// Store the bytes of `reader` as the file `path` (replacing an existing
    /// file when `overwrite`). Memory use is bounded by chunk size × parallelism.
    pub async fn write_file(
        &self,
        path: &str,
        reader: Box<dyn Read + Send>,
        meta: FileMeta,
        overwrite: bool,
        progress: Option<Progress>,
    ) -> VaultResult<u64> {
        let target = self.write_target(path, overwrite)?;
        let _data = self.data_lock.read().await;
        let (chunks, size) = self.upload_stream(reader, path, progress).await?;
        self.finish_write(path, target, chunks, size, meta)
    }

    /// [`Vault::write_file`] of contents already in memory (a small file
    /// read whole): no reader thread, and small chunks are hashed and
    /// sealed on this thread ([`crate::chunks::INLINE_CRYPTO`]).
    pub async fn write_file_data(
        &self,
        path: &str,
        data: Vec<u8>,
        meta: FileMeta,
        overwrite: bool,
        progress: Option<Progress>,
    ) -> VaultResult<u64> {
        let target = self.write_target(path, overwrite)?;
        let _data = self.data_lock.read().await;
        let cs = (self.chunk_size as usize).max(1);
        let size = data.len() as u64;
        let pieces: Vec<Vec<u8>> = if data.len() <= cs {
            vec![data]
        } else {
            data.chunks(cs).map(<[u8]>::to_vec).collect()
        };
        let chunks = stream::iter(pieces)
            .map(|piece| {
                let progress = progress.clone();
                async move {
                    let n = piece.len() as u64;
                    let c = self.upload_chunk_with(piece, false, true).await?;
                    if let Some(p) = &progress {
                        p(n);
                    }
                    Ok::<_, VaultError>(c)
                }
            })
            .buffered(self.opts.parallelism.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        self.finish_write(path, target, chunks, size, meta)
    }

    /// Where a new file `path` goes: its parent, its name, and the entry
    /// it replaces (refused if that is a directory, or exists and not
    /// `overwrite`).
    fn write_target(&self, path: &str, overwrite: bool) -> VaultResult<WriteTarget> {
        let (parent, name) = self.resolve_parent(path)?;
        let existing = self.with_tree(|t| {
            t.lookup(parent, &name)
                .and_then(|i| t.get(i).map(|n| (n.ino, n.kind, n.nlink)))
        });
        match existing {
            Some((_, Kind::Dir, _)) => return Err(VaultError::IsADirectory { path: path.into() }),
            Some(_) if !overwrite => return Err(VaultError::Exists { path: path.into() }),
            _ => {}
        }
        Ok(WriteTarget {
            parent,
            name,
            existing,
        })
    }

    /// Apply the records of a file whose chunks are uploaded (caller holds
    /// `data_lock` shared).
    fn finish_write(
        &self,
        path: &str,
        target: WriteTarget,
        chunks: Vec<Option<ChunkRef>>,
        size: u64,
        meta: FileMeta,
    ) -> VaultResult<u64> {
        let WriteTarget {
            parent,
            name,
            existing,
        } = target;
        let mut records = Vec::with_capacity(4 + chunks.len() / CHUNKS_PER_RECORD);
        // The old file goes, but its inode (and so its chunks) lives until
        // the new one holds its chunks: a chunk both share (deduplicated
        // above against the old file) never drops to no reference in
        // between, which would lose a packed item's location.
        if existing.is_some() {
            records.push(Record::Unlink {
                parent,
                name: name.clone(),
                keep_orphan: true,
                time: now(),
            });
        }
        let ino = self.alloc_ino();
        let mut attr = self.new_inode(Kind::File, meta.perm, None);
        attr.uid = meta.uid;
        attr.gid = meta.gid;
        records.push(Record::Create {
            ino,
            parent,
            name,
            attr,
        });
        let t = now();
        let n = chunks.len();
        for (i, group) in chunks.chunks(CHUNKS_PER_RECORD).enumerate() {
            let first = i * CHUNKS_PER_RECORD;
            // intermediate records keep the size consistent with the slots so far
            let sz = if first + group.len() == n {
                size
            } else {
                ((first + group.len()) as u64) * u64::from(self.chunk_size)
            };
            records.push(Record::SetChunks {
                ino,
                first: first as u64,
                chunks: group.to_vec(),
                size: sz,
                mtime: t,
            });
        }
        records.push(Record::SetAttr {
            ino,
            perm: None,
            uid: None,
            gid: None,
            size: None,
            atime: Some(meta.atime),
            mtime: Some(meta.mtime),
            ctime: t,
        });
        // (another hard link keeps it: then there is nothing to forget)
        if let Some((old, _, 1)) = existing {
            records.push(Record::Forget { ino: old });
        }
        // One unit: the old file is replaced by the complete new one in a
        // single log object. Only a file whose chunk list alone exceeds one
        // metadata object (hundreds of GiB on small-object stores) is
        // committed in several units.
        match self.apply_all(records.clone()) {
            Err(ApplyError::TooLarge) => {
                for r in records {
                    self.apply(r).map_err(|e| apply_error(e, path))?;
                }
            }
            other => {
                other.map_err(|e| apply_error(e, path))?;
            }
        }
        Ok(ino)
    }

    /// List the blobs in the store that nothing references — what an
    /// interrupted `put` uploaded but did not commit — so that
    /// [`Vault::upload_chunk`] reuses them (blob ids are content addresses:
    /// same id, same bytes) instead of sending them again. One listing of
    /// `data/` (one per shard on big vaults); returns how many were found.
    ///
    /// Each listing and what it finds are taken under the data lock held
    /// shared, so no blob this process frees is deleted in between; blobs
    /// it frees later leave the set when they are deleted.
    pub async fn find_stored_blobs(&self) -> VaultResult<u64> {
        let prefixes: Vec<String> = if self.with_tree(|t| t.blob_count()) < SHARDED_LISTING {
            vec![DATA_PREFIX.to_string()]
        } else {
            (0..=255u8)
                .map(|i| format!("{DATA_PREFIX}{i:02x}/"))
                .collect()
        };
        let mut found = 0u64;
        for prefix in prefixes {
            let _data = self.data_lock.read().await;
            let listed = self.store.list(&prefix).await?;
            let orphans: Vec<_> = {
                let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                let freed: HashSet<_> = g.freed.iter().map(|(_, id)| id).collect();
                listed
                    .into_iter()
                    .filter_map(|o| parse_blob_key(&o.key).map(|id| (id, o.size)))
                    .filter(|(id, _)| g.tree.blob_refs(id) == 0 && !freed.contains(id))
                    .collect()
            };
            found += orphans.len() as u64;
            self.chunks.note_present(orphans);
        }
        Ok(found)
    }

    /// Read `reader` to its end in chunks, uploading each (dedup, holes).
    /// Caller holds `data_lock` shared.
    async fn upload_stream(
        &self,
        mut reader: Box<dyn Read + Send>,
        path: &str,
        progress: Option<Progress>,
    ) -> VaultResult<(Vec<Option<ChunkRef>>, u64)> {
        let cs = self.chunk_size as usize;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(2);
        let reader_task = tokio::task::spawn_blocking(move || loop {
            let mut buf = vec![0u8; cs];
            match read_full(reader.as_mut(), &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() || n < cs {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        });
        let chunks = stream::poll_fn(|cx| rx.poll_recv(cx))
            .map(|r| {
                let progress = progress.clone();
                async move {
                    let data =
                        r.map_err(|e| VaultError::io(format!("reading the source of {path}"), e))?;
                    let n = data.len() as u64;
                    let c = self.upload_chunk_with(data, false, true).await?;
                    if let Some(p) = &progress {
                        p(n);
                    }
                    Ok::<_, VaultError>((c, n))
                }
            })
            .buffered(self.opts.parallelism.max(1))
            .try_collect::<Vec<_>>()
            .await;
        // On an upload error the reader may be blocked sending the next
        // chunk: close the channel first, or joining it waits forever.
        drop(rx);
        let _ = reader_task.await;
        let chunks = chunks?;
        let size = chunks.iter().map(|(_, n)| n).sum();
        Ok((chunks.into_iter().map(|(c, _)| c).collect(), size))
    }

    /// Seal and upload one chunk (unless an identical one is already stored);
    /// all-zero chunks become holes (`None`). Caller holds `data_lock` shared.
    pub async fn upload_chunk(&self, data: Vec<u8>) -> VaultResult<Option<ChunkRef>> {
        self.upload_chunk_with(data, false, false).await
    }

    /// [`Vault::upload_chunk`] that puts a partial chunk (a small file, or
    /// the tail of a large one) into a pack (FORMAT §5.6) instead of a blob
    /// object of its own. The records that reference it get the pack's
    /// location added when they are applied, and the pack is sent to the
    /// store at the latest by the commit that makes them durable.
    pub async fn upload_chunk_packed(&self, data: Vec<u8>) -> VaultResult<Option<ChunkRef>> {
        self.upload_chunk_with(data, false, true).await
    }

    /// [`Vault::upload_chunk`] that puts the blob even when the tree already
    /// references it. For chunks a crashed session left in its cache: the
    /// replayed journal may reference a blob whose put was deferred and lost
    /// with the crash (a `file://` store syncs blobs only at commit), so
    /// trusting the reference would commit a dangling one. Puts are
    /// idempotent (same content, same bytes), so this costs one upload.
    pub async fn upload_chunk_always(&self, data: Vec<u8>) -> VaultResult<Option<ChunkRef>> {
        self.upload_chunk_with(data, true, false).await
    }

    /// [`Vault::upload_chunk_always`] for a mount's recovered chunks, packing
    /// like [`Vault::upload_chunk_packed`]: a small chunk gets a new item
    /// (and so a new location) even if a replayed record placed it in a
    /// pack that the crash kept from being sent.
    pub async fn upload_chunk_always_packed(&self, data: Vec<u8>) -> VaultResult<Option<ChunkRef>> {
        self.upload_chunk_with(data, true, true).await
    }

    async fn upload_chunk_with(
        &self,
        data: Vec<u8>,
        always: bool,
        pack: bool,
    ) -> VaultResult<Option<ChunkRef>> {
        if data.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let len = data.len() as u32;
        let (id, data) = self.chunks.blob_id(data).await?;
        let cref = ChunkRef {
            id,
            blob_len: len,
            len,
        };
        if !always && self.with_tree(|t| t.blob_refs(&id)) > 0 {
            return Ok(Some(cref)); // dedup: already stored and referenced
        }
        let chunk_size = u64::from(self.chunk_size);
        if pack && packable(u64::from(len), chunk_size, self.chunks.pack_size()) {
            if always || self.chunks.unrecorded(&id).is_none() {
                self.chunks.put_packed(id, data).await?;
            }
            return Ok(Some(cref));
        }
        if !always && self.chunks.is_present(&id, u64::from(len)) {
            return Ok(Some(cref)); // left in the store by an interrupted put
        }
        self.chunks.put(id, data).await?;
        Ok(Some(cref))
    }

    /// Read up to `len` bytes at `offset` of a file (short at end of file).
    pub async fn read_at(&self, node: &Inode, offset: u64, len: u64) -> VaultResult<Vec<u8>> {
        self.chunks.read(node, offset, len).await
    }

    /// Write a whole file to `out`, fetching chunks in parallel, in order.
    pub async fn export(
        &self,
        node: &Inode,
        out: &mut (dyn Write + Send),
        progress: Option<Progress>,
    ) -> VaultResult<()> {
        self.export_from(node, 0, out, progress).await
    }

    /// [`Vault::export`] of the bytes from `from` on (to finish a partial
    /// download).
    pub async fn export_from(
        &self,
        node: &Inode,
        from: u64,
        out: &mut (dyn Write + Send),
        progress: Option<Progress>,
    ) -> VaultResult<()> {
        if node.kind != Kind::File {
            return Err(VaultError::Invalid("not a regular file".into()));
        }
        // The fetches run in their own task, so they go on while this one
        // writes (a write of a few MiB into the page cache would otherwise
        // stall every download in flight).
        let par = self.opts.parallelism.max(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<VaultResult<Vec<u8>>>(par);
        let chunks = Arc::clone(&self.chunks);
        let file = node.clone();
        let fetch = tokio::spawn(async move {
            let mut pieces = stream::iter(chunk_pieces(
                from.min(file.size)..file.size,
                file.chunk_size,
            ))
            .map(|p| {
                let (chunks, file) = (&chunks, &file);
                async move { chunks.read_piece(file, &p).await }
            })
            .buffered(par);
            while let Some(c) = pieces.next().await {
                let stop = c.is_err();
                if tx.send(c).await.is_err() || stop {
                    return;
                }
            }
        });
        // a blocking write moves this worker's other tasks elsewhere first
        // (not possible on a current-thread runtime, as in some tests)
        let multi = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        let res = async {
            while let Some(c) = rx.recv().await {
                let c = c?;
                let mut write = || {
                    c.chunks(crate::chunks::WRITE_PIECE)
                        .try_for_each(|piece| out.write_all(piece))
                };
                if multi {
                    tokio::task::block_in_place(write)
                } else {
                    write()
                }
                .map_err(|e| VaultError::io("writing the output", e))?;
                if let Some(p) = &progress {
                    p(c.len() as u64);
                }
                // the chunk's receive buffer serves the next request
                strata_store::bufpool::give(c);
            }
            Ok(())
        }
        .await;
        // on an error here the fetch task is stopped, not left running
        fetch.abort();
        let _ = fetch.await;
        res
    }
}
