//! File contents and path-level operations on a [`Vault`].
//!
//! Writing: a file is cut into fixed-size chunks (aligned at multiples of the
//! chunk size, so a later partial rewrite touches one chunk); each chunk's
//! content address is computed first, so chunks already in the vault are not
//! uploaded again (dedup), all-zero chunks become holes, and new chunks are
//! sealed and uploaded in parallel. Blobs are uploaded *before* the records
//! referencing them are applied, so committed metadata never dangles.
//!
//! Reading: only the 64 KiB segments covering the requested range are fetched
//! (one range read per chunk), or the whole blob on stores without ranges.

use std::io::{Read, Write};
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use strata_store::Bytes;

use crate::error::{VaultError, VaultResult};
use crate::format::blob::{self, SEGMENT};
use crate::format::blob_key;
use crate::record::{now, ChunkRef, Kind, NewInode, Record, Ts};
use crate::tree::{ApplyError, Inode, ROOT_INO};
use crate::vault::Vault;

/// Chunk slots per `SetChunks` record (keeps each record small).
const CHUNKS_PER_RECORD: usize = 1024;

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

/// Map a tree rejection to a path-level error.
pub fn apply_error(e: ApplyError, path: &str) -> VaultError {
    let path = path.to_string();
    match e {
        ApplyError::NotFound => VaultError::NotFound { path },
        ApplyError::Exists => VaultError::Exists { path },
        ApplyError::NotDir => VaultError::NotADirectory { path },
        ApplyError::IsDir => VaultError::IsADirectory { path },
        ApplyError::NotEmpty => VaultError::DirNotEmpty { path },
        ApplyError::NameTooLong => VaultError::InvalidPath {
            path,
            why: format!("a name is longer than {} bytes", crate::tree::NAME_MAX),
        },
        ApplyError::TooLarge => VaultError::Invalid(format!(
            "{path}: the change is too large for one metadata object of this store (raise max-object-size)"
        )),
        ApplyError::Invalid => VaultError::InvalidPath {
            path,
            why: "not allowed here (moving a directory into itself, or a reserved name)".into(),
        },
    }
}

/// Split a vault path into components ('.' and empty ones dropped).
fn components(path: &str) -> VaultResult<Vec<&str>> {
    if path.contains('\0') {
        return Err(VaultError::InvalidPath {
            path: path.into(),
            why: "contains a NUL byte".into(),
        });
    }
    Ok(path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect())
}

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

impl Vault {
    /// Resolve a vault path (absolute or relative to the root) to an inode.
    pub fn resolve(&self, path: &str) -> VaultResult<u64> {
        let comps = components(path)?;
        self.with_tree(|t| {
            let mut ino = ROOT_INO;
            for c in comps {
                let node = t
                    .get(ino)
                    .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
                if node.kind != Kind::Dir {
                    return Err(VaultError::NotADirectory { path: path.into() });
                }
                ino = if c == ".." {
                    node.parent
                } else {
                    t.lookup(ino, c.as_bytes())
                        .ok_or_else(|| VaultError::NotFound { path: path.into() })?
                };
            }
            Ok(ino)
        })
    }

    /// Resolve the parent directory of `path`; returns (parent, last name).
    pub fn resolve_parent(&self, path: &str) -> VaultResult<(u64, Vec<u8>)> {
        let comps = components(path)?;
        let Some((last, dirs)) = comps.split_last() else {
            return Err(VaultError::InvalidPath {
                path: path.into(),
                why: "the root directory cannot be used here".into(),
            });
        };
        if *last == ".." {
            return Err(VaultError::InvalidPath {
                path: path.into(),
                why: "must not end in '..'".into(),
            });
        }
        let parent = self.resolve(&dirs.join("/"))?;
        match self.inode(parent) {
            Some(n) if n.kind == Kind::Dir => Ok((parent, last.as_bytes().to_vec())),
            Some(_) => Err(VaultError::NotADirectory { path: path.into() }),
            None => Err(VaultError::NotFound { path: path.into() }),
        }
    }

    /// Look a path up and return a copy of its inode.
    pub fn stat_path(&self, path: &str) -> VaultResult<Inode> {
        let ino = self.resolve(path)?;
        self.inode(ino)
            .ok_or_else(|| VaultError::NotFound { path: path.into() })
    }

    /// Entries of a directory, sorted by name.
    pub fn list_dir(&self, path: &str) -> VaultResult<Vec<(Vec<u8>, Inode)>> {
        let ino = self.resolve(path)?;
        self.with_tree(|t| {
            let d = t
                .get(ino)
                .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
            if d.kind != Kind::Dir {
                return Err(VaultError::NotADirectory { path: path.into() });
            }
            Ok(d.entries
                .iter()
                .filter_map(|(n, i)| t.get(*i).map(|node| (n.clone(), node.clone())))
                .collect())
        })
    }

    fn new_inode(&self, kind: Kind, perm: u32, target: Option<Vec<u8>>) -> NewInode {
        NewInode {
            kind,
            perm,
            uid: crate::vault::current_uid(),
            gid: crate::vault::current_gid(),
            rdev: 0,
            time: now(),
            target,
            chunk_size: if kind == Kind::File {
                self.chunk_size
            } else {
                0
            },
        }
    }

    /// Create a directory (with `parents`, also missing ancestors; an existing
    /// directory is then fine). Returns its inode.
    pub fn mkdir(&self, path: &str, perm: u32, parents: bool) -> VaultResult<u64> {
        if parents {
            let mut ino = ROOT_INO;
            let mut so_far = String::new();
            for c in components(path)? {
                so_far.push('/');
                so_far.push_str(c);
                match self.with_tree(|t| t.lookup(ino, c.as_bytes())) {
                    Some(child) => {
                        if self.inode(child).is_some_and(|n| n.kind != Kind::Dir) {
                            return Err(VaultError::NotADirectory { path: so_far });
                        }
                        ino = child;
                    }
                    None => ino = self.mkdir(&so_far, perm, false)?,
                }
            }
            return Ok(ino);
        }
        let (parent, name) = self.resolve_parent(path)?;
        let ino = self.alloc_ino();
        self.apply(Record::Create {
            ino,
            parent,
            name,
            attr: self.new_inode(Kind::Dir, perm, None),
        })
        .map_err(|e| apply_error(e, path))?;
        Ok(ino)
    }

    /// Create a symbolic link at `path` pointing to `target`.
    pub fn symlink(&self, path: &str, target: &[u8]) -> VaultResult<u64> {
        let (parent, name) = self.resolve_parent(path)?;
        let ino = self.alloc_ino();
        self.apply(Record::Create {
            ino,
            parent,
            name,
            attr: self.new_inode(Kind::Symlink, 0o777, Some(target.to_vec())),
        })
        .map_err(|e| apply_error(e, path))?;
        Ok(ino)
    }

    /// Remove a file, link or (empty, or with `recursive` any) directory.
    pub fn remove(&self, path: &str, recursive: bool) -> VaultResult<()> {
        let (parent, name) = self.resolve_parent(path)?;
        let ino = self
            .with_tree(|t| t.lookup(parent, &name))
            .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
        let node = self
            .inode(ino)
            .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
        if node.kind == Kind::Dir && !node.entries.is_empty() {
            if !recursive {
                return Err(VaultError::DirNotEmpty { path: path.into() });
            }
            for child in node.entries.keys() {
                let cp = format!(
                    "{}/{}",
                    path.trim_end_matches('/'),
                    String::from_utf8_lossy(child)
                );
                self.remove_entry(ino, child, &cp, true)?;
            }
        }
        self.remove_entry(parent, &name, path, recursive)
    }

    fn remove_entry(
        &self,
        parent: u64,
        name: &[u8],
        path: &str,
        recursive: bool,
    ) -> VaultResult<()> {
        if recursive {
            if let Some(node) =
                self.with_tree(|t| t.lookup(parent, name).and_then(|i| t.get(i).cloned()))
            {
                if node.kind == Kind::Dir {
                    for child in node.entries.keys() {
                        let cp = format!("{path}/{}", String::from_utf8_lossy(child));
                        self.remove_entry(node.ino, child, &cp, true)?;
                    }
                }
            }
        }
        self.apply(Record::Unlink {
            parent,
            name: name.to_vec(),
            keep_orphan: false,
            time: now(),
        })
        .map(|_| ())
        .map_err(|e| apply_error(e, path))
    }

    /// Move/rename like `mv`: if `to` is an existing directory, `from` moves
    /// into it; otherwise `from` takes the name `to` (replacing a file there).
    pub fn rename(&self, from: &str, to: &str) -> VaultResult<()> {
        let (parent, name) = self.resolve_parent(from)?;
        if self.with_tree(|t| t.lookup(parent, &name)).is_none() {
            return Err(VaultError::NotFound { path: from.into() });
        }
        let (new_parent, new_name) = match self.resolve(to) {
            Ok(d)
                if self.inode(d).is_some_and(|n| n.kind == Kind::Dir)
                    && !self.same_entry(parent, &name, d) =>
            {
                (d, name.clone())
            }
            _ => self.resolve_parent(to)?,
        };
        self.apply(Record::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags: 0,
            time: now(),
        })
        .map(|_| ())
        .map_err(|e| apply_error(e, to))
    }

    fn same_entry(&self, parent: u64, name: &[u8], ino: u64) -> bool {
        self.with_tree(|t| t.lookup(parent, name)) == Some(ino)
    }

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
        let (parent, name) = self.resolve_parent(path)?;
        let existing = self.with_tree(|t| {
            t.lookup(parent, &name)
                .and_then(|i| t.get(i).map(|n| n.kind))
        });
        match existing {
            Some(Kind::Dir) => return Err(VaultError::IsADirectory { path: path.into() }),
            Some(_) if !overwrite => return Err(VaultError::Exists { path: path.into() }),
            _ => {}
        }
        let _data = self.data_lock.read().await;
        let (chunks, size) = self.upload_stream(reader, path, progress).await?;
        let mut records = Vec::with_capacity(4 + chunks.len() / CHUNKS_PER_RECORD);
        if existing.is_some() {
            records.push(Record::Unlink {
                parent,
                name: name.clone(),
                keep_orphan: false,
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
                    let c = self.upload_chunk(data).await?;
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
        if data.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let keys = self.keys.clone();
        let max = self.caps.max_object_size;
        let len = data.len() as u32;
        let (id, data) = tokio::task::spawn_blocking(move || (keys.blob_id(&data), data))
            .await
            .map_err(|e| VaultError::Invalid(format!("hashing task failed: {e}")))?;
        let cref = ChunkRef {
            id,
            blob_len: len,
            len,
        };
        if self.with_tree(|t| t.blob_refs(&id)) > 0 {
            return Ok(Some(cref)); // dedup: already stored and referenced
        }
        let keys = self.keys.clone();
        let sealed =
            tokio::task::spawn_blocking(move || blob::seal_with_id(&keys, &id, &data, max))
                .await
                .map_err(|e| VaultError::Invalid(format!("encryption task failed: {e}")))??;
        // Durable at the next commit: it syncs the store before writing the
        // log that references this blob.
        self.store
            .put_deferred(&blob_key(&id), Bytes::from(sealed))
            .await?;
        Ok(Some(cref))
    }

    /// Fetch and decrypt plaintext bytes `a..b` of a chunk's blob.
    async fn fetch_blob_range(&self, c: &ChunkRef, a: u64, b: u64) -> VaultResult<Vec<u8>> {
        if let Some(cache) = self.read_cache.get() {
            return self.fetch_blob_range_cached(cache, c, a, b).await;
        }
        let key = blob_key(&c.id);
        let blob_len = u64::from(c.blob_len);
        let hint = "run `strata check` to list affected files";
        if self.caps.range_reads {
            let s0 = a / SEGMENT;
            let s1 = (b - 1) / SEGMENT;
            let r = blob::segment_range(blob_len, s0, s1);
            let bytes = self
                .store
                .get_range(&key, r.clone())
                .await
                .map_err(|e| VaultError::from_get(e, &key, hint))?;
            let keys = self.keys.clone();
            let id = c.id;
            let k2 = key.clone();
            let plain = tokio::task::spawn_blocking(move || {
                if (bytes.len() as u64) < r.end - r.start {
                    return Err(VaultError::Corrupt {
                        object: k2,
                        range: Some(r.clone()),
                        file: None,
                        detail: format!(
                            "object is truncated (got {} of {} bytes)",
                            bytes.len(),
                            r.end - r.start
                        ),
                    });
                }
                blob::open_segments(&keys, &id, blob_len, s0, &bytes, &k2)
            })
            .await
            .map_err(|e| VaultError::Invalid(format!("decryption task failed: {e}")))??;
            let off = (a - s0 * SEGMENT) as usize;
            Ok(plain[off..off + (b - a) as usize].to_vec())
        } else {
            let bytes = self
                .store
                .get(&key)
                .await
                .map_err(|e| VaultError::from_get(e, &key, hint))?;
            let keys = self.keys.clone();
            let id = c.id;
            let plain = tokio::task::spawn_blocking(move || {
                blob::open_whole(&keys, &id, blob_len, &bytes, &key)
            })
            .await
            .map_err(|e| VaultError::Invalid(format!("decryption task failed: {e}")))??;
            Ok(plain[a as usize..b as usize].to_vec())
        }
    }

    /// Plaintext of file bytes `a..b` within chunk `ci` (holes and bytes past
    /// the chunk's valid length read as zeros).
    async fn read_chunk(&self, node: &Inode, ci: u64, a: u64, b: u64) -> VaultResult<Vec<u8>> {
        let slot = usize::try_from(ci)
            .ok()
            .and_then(|i| node.chunks.get(i).copied())
            .flatten();
        let Some(c) = slot else {
            return Ok(vec![0u8; (b - a) as usize]);
        };
        let valid = u64::from(c.len);
        if a >= valid {
            return Ok(vec![0u8; (b - a) as usize]);
        }
        let mut out = self.fetch_blob_range(&c, a, b.min(valid)).await?;
        out.resize((b - a) as usize, 0);
        Ok(out)
    }

    /// Read up to `len` bytes at `offset` of a file (short at end of file).
    pub async fn read_at(&self, node: &Inode, offset: u64, len: u64) -> VaultResult<Vec<u8>> {
        let end = offset.saturating_add(len).min(node.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let cs = u64::from(node.chunk_size.max(1));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let ci = pos / cs;
            let cstart = ci * cs;
            let stop = end.min(cstart + cs);
            out.extend_from_slice(
                &self
                    .read_chunk(node, ci, pos - cstart, stop - cstart)
                    .await?,
            );
            pos = stop;
        }
        Ok(out)
    }

    /// Write a whole file to `out`, fetching chunks in parallel, in order.
    pub async fn export(
        &self,
        node: &Inode,
        out: &mut (dyn Write + Send),
        progress: Option<Progress>,
    ) -> VaultResult<()> {
        if node.kind != Kind::File {
            return Err(VaultError::Invalid("not a regular file".into()));
        }
        let cs = u64::from(node.chunk_size.max(1));
        let n = node.size.div_ceil(cs);
        let mut chunks = stream::iter(0..n)
            .map(|ci| {
                let stop = node.size.min((ci + 1) * cs) - ci * cs;
                self.read_chunk(node, ci, 0, stop)
            })
            .buffered(self.opts.parallelism.max(1));
        while let Some(c) = chunks.next().await {
            let c = c?;
            out.write_all(&c)
                .map_err(|e| VaultError::io("writing the output", e))?;
            if let Some(p) = &progress {
                p(c.len() as u64);
            }
        }
        Ok(())
    }

    /// Path of every inode reachable from the root (first path found for
    /// hard-linked files).
    pub fn paths(&self) -> std::collections::HashMap<u64, String> {
        self.with_tree(|t| {
            let mut out = std::collections::HashMap::new();
            let mut stack = vec![(ROOT_INO, String::from("/"))];
            while let Some((ino, p)) = stack.pop() {
                if let Some(n) = t.get(ino) {
                    for (name, child) in &n.entries {
                        let cp = format!(
                            "{}{}{}",
                            p,
                            if p.ends_with('/') { "" } else { "/" },
                            String::from_utf8_lossy(name)
                        );
                        if !out.contains_key(child) {
                            stack.push((*child, cp.clone()));
                            out.insert(*child, cp);
                        }
                    }
                }
            }
            out.insert(ROOT_INO, "/".into());
            out
        })
    }
}
