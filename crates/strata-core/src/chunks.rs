//! The data plane of a vault: [`Chunks`] owns what it takes to turn chunk
//! references into plaintext and plaintext into stored blobs — the store
//! (through [`Fetcher`]), the keys, the store's capabilities and the read
//! cache — and offers "read these bytes of this chunk", "seal and put this
//! chunk" and "prefetch these bytes of this file". It knows nothing of the
//! tree, records or commits (that is [`crate::vault::Vault`], which holds
//! one `Chunks` and hands it to the front ends).
//!
//! There is one decryption path: the ciphertext of the segments a read
//! needs comes from the read cache when there is one (which fetches what it
//! lacks) or straight from the store, and is then authenticated and
//! decrypted here. Cached bytes that fail authentication drop the blob from
//! the cache and are fetched once more from the store.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_crypto::{BlobId, Keys};
use strata_store::{Bytes, Capabilities, DynStore};
use tokio::task::AbortHandle;
use tracing::warn;

use crate::error::{VaultError, VaultResult};
use crate::fetch::Fetcher;
use crate::format::blob::{self, segment_range};
use crate::format::blob_key;
use crate::layout::{chunk_pieces, ChunkPiece, SegmentSpan};
use crate::readcache::ReadCache;
use crate::record::ChunkRef;
use crate::tree::Inode;

/// Decrypting more than this many bytes moves off the async threads.
const INLINE_DECRYPT: usize = 256 * 1024;

/// Where a vault keeps the ciphertext it reads (see [`ReadCache`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCacheOptions {
    /// A directory for a cache on disk; `None` keeps the cache in memory.
    pub dir: Option<PathBuf>,
    /// Size cap in bytes.
    pub cap: u64,
}

/// The data plane (see the module comment).
pub struct Chunks {
    store: DynStore,
    keys: Arc<Keys>,
    caps: Capabilities,
    fetcher: Arc<Fetcher>,
    cache: Option<Arc<ReadCache>>,
    /// Blobs found in the store that nothing referenced when they were
    /// listed (left by an interrupted writer), with their stored sizes: a
    /// chunk with one of these ids need not be sent again. Filled by
    /// [`crate::vault::Vault::find_stored_blobs`]; a blob this process
    /// deletes leaves it.
    present: Mutex<HashMap<BlobId, u64>>,
}

impl Chunks {
    /// The data plane over `store`, with a read cache if `cache` says so
    /// (a cache that cannot be set up is left out, with a warning: reads
    /// then go to the store).
    pub(crate) fn new(store: DynStore, keys: Arc<Keys>, cache: Option<&ReadCacheOptions>) -> Self {
        let cache = cache.and_then(|o| match &o.dir {
            Some(dir) => match ReadCache::new(dir.clone(), o.cap) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    warn!("read cache disabled: {e}");
                    None
                }
            },
            None => Some(Arc::new(ReadCache::in_memory(o.cap))),
        });
        Chunks {
            caps: store.capabilities(),
            fetcher: Arc::new(Fetcher::new(store.clone())),
            store,
            keys,
            cache,
            present: Mutex::new(HashMap::new()),
        }
    }

    fn present(&self) -> std::sync::MutexGuard<'_, HashMap<BlobId, u64>> {
        self.present.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember blobs listed in the store with their sizes (see `present`).
    pub(crate) fn note_present(&self, blobs: impl IntoIterator<Item = (BlobId, u64)>) {
        self.present().extend(blobs);
    }

    /// Forget blobs this process deleted.
    pub(crate) fn forget_present(&self, ids: &[BlobId]) {
        let mut p = self.present();
        if !p.is_empty() {
            for id in ids {
                p.remove(id);
            }
        }
    }

    /// Whether the blob of a chunk of `len` plaintext bytes with this id is
    /// known to be in the store already, complete (its listed size is the
    /// size its sealed, padded form must have).
    pub fn is_present(&self, id: &BlobId, len: u64) -> bool {
        let want = blob::stored_len(len, self.caps.max_object_size);
        self.present().get(id).is_some_and(|&size| size == want)
    }

    /// The read cache, if there is one.
    pub fn read_cache(&self) -> Option<&Arc<ReadCache>> {
        self.cache.as_ref()
    }

    /// Whether the store serves range reads (a segment alone can be read).
    pub fn range_reads(&self) -> bool {
        self.caps.range_reads
    }

    /// Whether read-ahead has somewhere to put what it fetches.
    pub fn can_prefetch(&self) -> bool {
        self.cache.is_some()
    }

    /// How fast the store has been delivering data lately (bytes/s).
    pub fn delivery_rate(&self) -> Option<f64> {
        self.fetcher.delivery_rate()
    }

    /// Plaintext bytes `[a, b)` of the blob of `c` (`a < b ≤ blob_len`).
    pub async fn read_blob(&self, c: &ChunkRef, a: u64, b: u64) -> VaultResult<Vec<u8>> {
        let key = blob_key(&c.id);
        let blob_len = u64::from(c.blob_len);
        if a >= b || b > blob_len {
            return Err(VaultError::corrupt(
                &key,
                format!("the metadata asks for bytes {a}..{b} of a blob of {blob_len}"),
            ));
        }
        let span = SegmentSpan::of(a, b);
        let mut retried = false;
        loop {
            let (bytes, from_cache) = match &self.cache {
                Some(cache) => {
                    let got = cache
                        .read_segments(&self.fetcher, &c.id, blob_len, span.first, span.last)
                        .await?;
                    (got.bytes, got.from_cache)
                }
                None => {
                    let r = segment_range(blob_len, span.first, span.last);
                    let whole = !self.caps.range_reads;
                    (self.fetcher.get(&key, r, whole).await?, false)
                }
            };
            match self.open(c.id, blob_len, span, bytes, &key).await {
                Ok(plain) => return Ok(plain),
                Err(e) => {
                    let Some(cache) = &self.cache else {
                        return Err(e);
                    };
                    cache.invalidate(&c.id);
                    if from_cache && !retried {
                        warn!(blob = %key, error = %e, "cached copy failed authentication; refetching from the store");
                        retried = true;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Authenticate and decrypt the segments of `span` (`bytes` is their
    /// ciphertext) and cut out the bytes the span asks for.
    async fn open(
        &self,
        id: BlobId,
        blob_len: u64,
        span: SegmentSpan,
        bytes: Bytes,
        key: &str,
    ) -> VaultResult<Vec<u8>> {
        let keys = self.keys.clone();
        let key = key.to_string();
        let work = move || -> VaultResult<Vec<u8>> {
            let plain = blob::open_segments(&keys, &id, blob_len, span.first, &bytes, &key)?;
            if span.skip == 0 && plain.len() as u64 == span.len {
                return Ok(plain);
            }
            span.cut(&plain)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| VaultError::corrupt(&key, "blob is shorter than the metadata says"))
        };
        if span.count() as usize * blob::SEGMENT as usize <= INLINE_DECRYPT {
            work()
        } else {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| VaultError::Invalid(format!("decryption task failed: {e}")))?
        }
    }

    /// The bytes of one piece of a file (holes, and bytes of the chunk past
    /// its valid length, read as zeros).
    pub async fn read_piece(&self, node: &Inode, p: &ChunkPiece) -> VaultResult<Vec<u8>> {
        let n = p.len() as usize;
        let Some(c) = node.chunk(p.index) else {
            return Ok(vec![0u8; n]);
        };
        let valid = u64::from(c.len);
        if p.a >= valid {
            return Ok(vec![0u8; n]);
        }
        let mut out = self.read_blob(&c, p.a, p.b.min(valid)).await?;
        out.resize(n, 0);
        Ok(out)
    }

    /// Up to `len` bytes at `offset` of a file (short at its end).
    pub async fn read(&self, node: &Inode, offset: u64, len: u64) -> VaultResult<Vec<u8>> {
        let end = offset.saturating_add(len).min(node.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for p in chunk_pieces(offset..end, node.chunk_size) {
            let part = self.read_piece(node, &p).await?;
            // the first piece is kept as it is (one chunk: no copy)
            if out.is_empty() {
                out = part;
            } else {
                out.extend_from_slice(&part);
            }
        }
        Ok(out)
    }

    /// Start background fetches into the read cache of file bytes `range`
    /// of `node` (clamped to the file; holes and cached or in-flight
    /// segments skipped), after `delay`. Nothing without a read cache.
    pub fn prefetch(&self, node: &Inode, range: Range<u64>, delay: Duration) -> Vec<AbortHandle> {
        let mut out = Vec::new();
        let Some(cache) = &self.cache else {
            return out;
        };
        let end = range.end.min(node.size);
        for p in chunk_pieces(range.start..end, node.chunk_size) {
            let Some(c) = node.chunk(p.index) else {
                continue;
            };
            let valid = u64::from(c.len.min(c.blob_len));
            let b = p.b.min(valid);
            if p.a < b {
                let s = SegmentSpan::of(p.a, b);
                out.extend(cache.prefetch_after(
                    &self.fetcher,
                    c.id,
                    u64::from(c.blob_len),
                    s.first,
                    s.last,
                    delay,
                ));
            }
        }
        out
    }

    /// The content address of `data` (hashed off the async threads).
    pub async fn blob_id(&self, data: Vec<u8>) -> VaultResult<(BlobId, Vec<u8>)> {
        let keys = self.keys.clone();
        tokio::task::spawn_blocking(move || (keys.blob_id(&data), data))
            .await
            .map_err(|e| VaultError::Invalid(format!("hashing task failed: {e}")))
    }

    /// Seal `data` (whose id is `id`) and put it into the store, durable at
    /// the next [`strata_store::Store::sync`] (the vault's commit syncs
    /// before it writes a log that references the blob).
    pub async fn put(&self, id: BlobId, data: Vec<u8>) -> VaultResult<()> {
        let keys = self.keys.clone();
        let max = self.caps.max_object_size;
        let sealed =
            tokio::task::spawn_blocking(move || blob::seal_with_id(&keys, &id, &data, max))
                .await
                .map_err(|e| VaultError::Invalid(format!("encryption task failed: {e}")))??;
        self.store
            .put_deferred(&blob_key(&id), Bytes::from(sealed))
            .await?;
        Ok(())
    }
}
