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

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use strata_crypto::{BlobId, Keys};
use strata_store::{Bytes, Capabilities, DynStore};
use tokio::task::AbortHandle;
use tracing::warn;

use crate::error::{VaultError, VaultResult};
use crate::fetch::Fetcher;
use crate::format::blob::{self, segment_range};
use crate::format::blob_key;
use crate::format::pack::{
    self, item_len, item_range, pack_key, PackBuilder, PackId, DEFAULT_PACK_SIZE,
};
use crate::layout::{chunk_pieces, segment_cover, ChunkPiece, SegmentSpan};
use crate::readcache::ReadCache;
use crate::record::ChunkRef;
use crate::tree::{Inode, PackLoc};
use strata_store::bufpool;

/// Decrypting more than this many bytes moves off the async threads.
const INLINE_DECRYPT: usize = 256 * 1024;
/// Data up to this size is hashed and sealed on the calling (async) thread:
/// a few microseconds of work, less than handing it to a blocking thread
/// and back (which, per small file, was most of a `put` of many of them).
pub const INLINE_CRYPTO: usize = 64 << 10;

/// A read at least this large that starts a chunk is taken as sequential
/// and hints the next chunk to the store ([`Chunks::hint_next_chunk`]). A
/// random 4 KiB read never is; the kernel's read-ahead sends a sequential
/// reader's reads as 128 KiB to 1 MiB requests.
const SEQUENTIAL_READ: u64 = 128 * 1024;

/// The largest single `write` of a file's data to a local file (`get`'s
/// destination): a chunk is written in pieces of this size. Linux 6.x
/// backs a large buffered write with page-cache folios as large as the
/// write (up to 2 MiB), taken from whole free blocks of memory; on a VM
/// that hands free memory back to its host those blocks are unbacked, and
/// 512 MiB written in 4 MiB writes took 1.5-2 s of system time against
/// 0.2 s in 256 KiB writes (the size rclone writes in is 32 KiB).
pub const WRITE_PIECE: usize = 256 << 10;

/// How long the location of a packed blob the tree dropped is kept.
const UNPLACED_KEEP: Duration = Duration::from_secs(600);
/// Whole packs kept in memory on stores without range reads.
const PACK_CACHE_PACKS: usize = 4;

/// Where a blob is, if it is in a pack (the vault's pack table).
pub type Locator = Box<dyn Fn(&BlobId) -> Option<PackLoc> + Send + Sync>;

/// Packs being written: the one being filled, the ones closed but not yet
/// confirmed by the store (both readable from memory), and the items packed
/// whose location no applied record holds yet.
#[derive(Default)]
struct Packer {
    open: Option<PackBuilder>,
    sealed: Vec<(PackId, Bytes)>,
    unrecorded: HashMap<BlobId, PackLoc>,
}

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
    /// The pack table lookup (set once by the vault).
    locate: OnceLock<Locator>,
    /// Size of new packs (≤ the store's max object size).
    pack_size: u64,
    packer: Mutex<Packer>,
    /// One pack upload round at a time (so a commit waits for packs other
    /// writers are sending).
    pack_upload: tokio::sync::Mutex<()>,
    /// Whole packs fetched (on a store without range reads, or for
    /// [`Chunks::read_whole`]; newest last), and one such fetch at a time.
    pack_cache: Mutex<VecDeque<(PackId, Bytes)>>,
    pack_fetch: tokio::sync::Mutex<()>,
    /// Packs a bulk reader will read many items of: fetched whole, like on
    /// a store without range reads ([`Chunks::read_whole`]).
    whole: Mutex<HashSet<PackId>>,
    /// Blobs found in the store that nothing referenced when they were
    /// listed (left by an interrupted writer), with their stored sizes: a
    /// chunk with one of these ids need not be sent again. Filled by
    /// [`crate::vault::Vault::find_stored_blobs`]; a blob this process
    /// deletes leaves it.
    present: Mutex<HashMap<BlobId, u64>>,
    /// See [`Chunks::remember_unplaced`].
    unplaced: Mutex<HashMap<BlobId, (Instant, PackLoc)>>,
    any_unplaced: AtomicBool,
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
        let caps = store.capabilities();
        Chunks {
            pack_size: pack::pack_size_for(DEFAULT_PACK_SIZE, caps.max_object_size),
            caps,
            fetcher: Arc::new(Fetcher::new(store.clone())),
            store,
            keys,
            cache,
            locate: OnceLock::new(),
            packer: Mutex::new(Packer::default()),
            pack_upload: tokio::sync::Mutex::new(()),
            pack_cache: Mutex::new(VecDeque::new()),
            pack_fetch: tokio::sync::Mutex::new(()),
            whole: Mutex::new(HashSet::new()),
            present: Mutex::new(HashMap::new()),
            unplaced: Mutex::new(HashMap::new()),
            any_unplaced: AtomicBool::new(false),
        }
    }

    /// Install the pack table lookup (the vault does, once).
    pub(crate) fn set_locator(&self, f: Locator) {
        let _ = self.locate.set(f);
    }

    /// Where blob `id` is stored, if in a pack (or was, a short while
    /// ago: see [`Chunks::remember_unplaced`]).
    pub fn locate(&self, id: &BlobId) -> Option<PackLoc> {
        self.locate.get().and_then(|f| f(id)).or_else(|| {
            // every read of an unpacked blob asks: no lock unless a
            // follower ever dropped a location
            if !self.any_unplaced.load(Ordering::Relaxed) {
                return None;
            }
            relock(&self.unplaced).get(id).map(|(_, l)| *l)
        })
    }

    /// Remember where packed blobs were that the tree no longer references
    /// (a follower applied the writer's delete): a file open here keeps
    /// reading them while the writer keeps their packs (its grace for
    /// freed objects, 10 min); forgotten after that.
    pub(crate) fn remember_unplaced(&self, gone: Vec<(BlobId, PackLoc)>) {
        let mut m = relock(&self.unplaced);
        m.retain(|_, (t, _)| t.elapsed() < UNPLACED_KEEP);
        let now = Instant::now();
        m.extend(gone.into_iter().map(|(id, l)| (id, (now, l))));
        self.any_unplaced.store(!m.is_empty(), Ordering::Relaxed);
    }

    /// Read the items of `packs` by fetching each pack whole (one request,
    /// kept in a small cache while its other items are read) instead of one
    /// range request per item: for a reader about to read many of their
    /// items, such as `get` of a folder of small files. The reader should
    /// go pack by pack, as the cache holds only a few.
    pub fn read_whole(&self, packs: impl IntoIterator<Item = PackId>) {
        relock(&self.whole).extend(packs);
    }

    /// Size of new packs.
    pub fn pack_size(&self) -> u64 {
        self.pack_size
    }

    /// Use packs of `size` bytes from now on (capped by the store; tests
    /// use small packs to cross pack boundaries).
    pub fn set_pack_size(&mut self, size: u64) {
        self.pack_size =
            pack::pack_size_for(size.max(pack::FIRST_ITEM + 1), self.caps.max_object_size);
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
        if let Some(loc) = self.locate(&c.id) {
            return self.read_packed(c, loc, a, b).await;
        }
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

    /// Plaintext bytes `[a, b)` of the packed blob of `c`, stored at `loc`:
    /// one range read of the segments needed (from memory while the pack
    /// is not uploaded yet); without range reads, the whole pack once,
    /// kept in a small in-memory cache for the pack's other items.
    async fn read_packed(
        &self,
        c: &ChunkRef,
        loc: PackLoc,
        a: u64,
        b: u64,
    ) -> VaultResult<Vec<u8>> {
        let key = pack_key(&loc.pack);
        let blob_len = u64::from(c.blob_len);
        if a >= b || b > blob_len {
            return Err(VaultError::corrupt(
                &key,
                format!("the metadata asks for bytes {a}..{b} of an item of {blob_len}"),
            ));
        }
        let span = SegmentSpan::of(a, b);
        let r = item_range(u64::from(loc.offset), blob_len, span.first, span.last);
        let bytes = match self.unsent_pack_bytes(&loc.pack, r.clone()) {
            Some(b) => b,
            None if self.caps.range_reads && !relock(&self.whole).contains(&loc.pack) => {
                self.fetcher.get(&key, r.clone(), false).await?
            }
            None => {
                let whole = self.whole_pack(&loc.pack, &key).await?;
                if (whole.len() as u64) < r.end {
                    return Err(VaultError::Corrupt {
                        object: key,
                        range: Some(r),
                        file: None,
                        detail: format!("object is truncated ({} bytes)", whole.len()),
                    });
                }
                whole.slice(r.start as usize..r.end as usize)
            }
        };
        self.open(c.id, blob_len, span, bytes, &key)
            .await
            .map_err(|e| match e {
                // name the bytes of the pack, not of the item
                VaultError::Corrupt {
                    object,
                    file,
                    detail,
                    ..
                } => VaultError::Corrupt {
                    object,
                    range: Some(r.clone()),
                    file,
                    detail,
                },
                other => other,
            })
    }

    /// Bytes `r` of a pack still in memory (being filled or being sent).
    fn unsent_pack_bytes(&self, id: &PackId, r: Range<u64>) -> Option<Bytes> {
        let p = self.packer.lock().unwrap_or_else(|e| e.into_inner());
        let cut = |b: &[u8]| {
            b.get(r.start as usize..r.end as usize)
                .map(Bytes::copy_from_slice)
        };
        if let Some(open) = p.open.as_ref().filter(|o| &o.id == id) {
            return cut(open.bytes());
        }
        p.sealed
            .iter()
            .find(|(pid, _)| pid == id)
            .and_then(|(_, b)| cut(b))
    }

    /// A whole pack (stores without range reads), from the pack cache or
    /// fetched once.
    async fn whole_pack(&self, id: &PackId, key: &str) -> VaultResult<Bytes> {
        let cached = |s: &Self| {
            let c = s.pack_cache.lock().unwrap_or_else(|e| e.into_inner());
            c.iter().find(|(p, _)| p == id).map(|(_, b)| b.clone())
        };
        if let Some(b) = cached(self) {
            return Ok(b);
        }
        let _one = self.pack_fetch.lock().await;
        if let Some(b) = cached(self) {
            return Ok(b);
        }
        let whole = self
            .store
            .get(key)
            .await
            .map_err(|e| VaultError::from_get(e, key, crate::fetch::HINT))?;
        let mut c = self.pack_cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= PACK_CACHE_PACKS {
            c.pop_front();
        }
        c.push_back((*id, whole.clone()));
        Ok(whole)
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
            // decrypted where the ciphertext lies: no copy when the fetched
            // bytes are not shared (the usual case), one otherwise
            let mut plain = Vec::from(bytes);
            blob::open_segments_in_place(&keys, &id, blob_len, span.first, &mut plain, &key)?;
            if span.skip == 0 && plain.len() as u64 == span.len {
                return Ok(plain);
            }
            let Some(r) = span.cut_range(plain.len()) else {
                return Err(VaultError::corrupt(
                    &key,
                    "blob is shorter than the metadata says",
                ));
            };
            plain.truncate(r.end);
            plain.drain(..r.start);
            Ok(plain)
        };
        if span.count() as usize * blob::SEGMENT as usize <= INLINE_DECRYPT {
            work()
        } else {
            strata_store::inline::run(work)
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

    /// A large read that starts a chunk: tell the store that the next
    /// chunk's blob will be wanted (a local store reads it ahead into the
    /// page cache, overlapping the disk with this chunk's decryption; the
    /// first chunk of a file is hinted too). Packed parts are small and
    /// skipped; remote stores ignore the hint (their read-ahead is
    /// [`Chunks::prefetch`]).
    fn hint_next_chunk(&self, node: &Inode, index: u64) {
        let first = if index == 0 { 0 } else { index + 1 };
        for i in first..=index + 1 {
            if let Some(c) = node.chunk(i) {
                if self.locate(&c.id).is_none() {
                    self.store.will_need(&blob_key(&c.id));
                }
            }
        }
    }

    /// The file bytes that a read of `range` decrypts anyway: the range
    /// widened to the 64 KiB segments it touches, within its chunk's valid
    /// bytes and the file. `None` for a range that is empty, crosses a
    /// chunk boundary, or reads a hole or bytes past the chunk's data.
    pub fn decrypted_cover(node: &Inode, range: Range<u64>) -> Option<Range<u64>> {
        let end = range.end.min(node.size);
        let mut pieces = chunk_pieces(range.start..end, node.chunk_size);
        let p = pieces.next()?;
        if pieces.next().is_some() {
            return None;
        }
        let c = node.chunk(p.index)?;
        let valid = u64::from(c.len.min(c.blob_len)).min(node.size - p.chunk_start);
        if p.b > valid {
            return None;
        }
        let cover = segment_cover(p.a, p.b, valid);
        Some(p.chunk_start + cover.start..p.chunk_start + cover.end)
    }

    /// Up to `len` bytes at `offset` of a file (short at its end).
    pub async fn read(&self, node: &Inode, offset: u64, len: u64) -> VaultResult<Vec<u8>> {
        let end = offset.saturating_add(len).min(node.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for p in chunk_pieces(offset..end, node.chunk_size) {
            if p.a == 0 && end - offset >= SEQUENTIAL_READ {
                self.hint_next_chunk(node, p.index);
            }
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
            if self.locate(&c.id).is_some() {
                continue; // packed: small, read with one request when asked
            }
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

    /// The content address of `data` (hashed off the async threads, unless
    /// it is small: see [`INLINE_CRYPTO`]).
    pub async fn blob_id(&self, data: Vec<u8>) -> VaultResult<(BlobId, Vec<u8>)> {
        if data.len() <= INLINE_CRYPTO {
            return Ok((self.keys.blob_id(&data), data));
        }
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
        let sealed = tokio::task::spawn_blocking(move || {
            let sealed = blob::seal_with_id(&keys, &id, &data, max);
            bufpool::give(data);
            sealed
        })
        .await
        .map_err(|e| VaultError::Invalid(format!("encryption task failed: {e}")))??;
        // the store drops the bytes once written: the buffer goes back then
        self.store
            .put_deferred(&blob_key(&id), bufpool::bytes(sealed))
            .await?;
        Ok(())
    }

    /// Seal `data` (whose id is `id`) as an item of the pack being filled,
    /// starting a new pack when it does not fit; a pack that is full is
    /// sent to the store here (`put_deferred`, durable at the next sync).
    /// The item is readable at once (from memory until its pack is sent).
    /// Its location is kept as *unrecorded* until the vault records it
    /// ([`Chunks::take_unrecorded`]).
    pub async fn put_packed(&self, id: BlobId, data: Vec<u8>) -> VaultResult<PackLoc> {
        let small = data.len() <= INLINE_CRYPTO;
        let keys = self.keys.clone();
        let seal = move || {
            let mut out = Vec::with_capacity(item_len(data.len() as u64) as usize);
            blob::seal_segments_into(&keys, &id, &data, &mut out).map(|()| (out, data.len()))
        };
        let item = if small {
            seal()?
        } else {
            tokio::task::spawn_blocking(seal)
                .await
                .map_err(|e| VaultError::Invalid(format!("encryption task failed: {e}")))??
        };
        let (item, len) = item;
        let blob_len =
            u32::try_from(len).map_err(|_| VaultError::Invalid("item too large".into()))?;
        let (loc, closed) = {
            let mut p = self.packer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = p.unrecorded.get(&id) {
                return Ok(*l); // packed a moment ago by another writer
            }
            let mut closed = false;
            if !p.open.as_ref().is_some_and(|o| o.fits(item.len() as u64)) {
                if let Some(full) = p.open.take() {
                    let (pid, bytes) = full.finish(self.caps.max_object_size);
                    p.sealed.push((pid, Bytes::from(bytes)));
                    closed = true;
                }
                p.open = Some(PackBuilder::new(pack::new_pack_id()?, self.pack_size));
            }
            let open = p.open.as_mut().expect("a pack is open");
            let offset = open.push(&item);
            let loc = PackLoc {
                pack: open.id,
                offset: u32::try_from(offset)
                    .map_err(|_| VaultError::Invalid("pack too large".into()))?,
                blob_len,
            };
            p.unrecorded.insert(id, loc);
            (loc, closed)
        };
        if closed {
            self.send_sealed_packs().await?;
        }
        Ok(loc)
    }

    /// Where an item packed but not yet recorded is.
    pub fn unrecorded(&self, id: &BlobId) -> Option<PackLoc> {
        self.packer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unrecorded
            .get(id)
            .copied()
    }

    /// The unrecorded locations of those of `ids` that have one (they are
    /// about to be recorded, and are forgotten here).
    pub fn take_unrecorded(&self, ids: &[BlobId]) -> Vec<(BlobId, PackLoc)> {
        let mut p = self.packer.lock().unwrap_or_else(|e| e.into_inner());
        if p.unrecorded.is_empty() {
            return Vec::new();
        }
        ids.iter()
            .filter_map(|id| p.unrecorded.remove(id).map(|l| (*id, l)))
            .collect()
    }

    /// Forget every unrecorded item: items no record will reference (the
    /// caller holds the data lock exclusively, so no writer is between
    /// packing an item and recording it). Their bytes become dead space.
    pub(crate) fn forget_unrecorded(&self) {
        self.packer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unrecorded
            .clear();
    }

    /// Whether pack `id` is still in memory (being filled or sent).
    pub fn pack_unsent(&self, id: &PackId) -> bool {
        let p = self.packer.lock().unwrap_or_else(|e| e.into_inner());
        p.open.as_ref().is_some_and(|o| &o.id == id) || p.sealed.iter().any(|(s, _)| s == id)
    }

    /// Close the pack being filled and send every pack not yet in the
    /// store (the vault does before a commit writes logs that reference
    /// them). On error the packs stay in memory and are sent next time.
    pub async fn flush_packs(&self) -> VaultResult<()> {
        {
            let mut p = self.packer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(open) = p.open.take() {
                if open.is_empty() {
                    p.open = Some(open);
                } else {
                    let (pid, bytes) = open.finish(self.caps.max_object_size);
                    p.sealed.push((pid, Bytes::from(bytes)));
                }
            }
        }
        self.send_sealed_packs().await
    }

    async fn send_sealed_packs(&self) -> VaultResult<()> {
        let _one = self.pack_upload.lock().await;
        loop {
            let next = {
                let p = self.packer.lock().unwrap_or_else(|e| e.into_inner());
                p.sealed.first().cloned()
            };
            let Some((pid, bytes)) = next else {
                return Ok(());
            };
            self.store.put_deferred(&pack_key(&pid), bytes).await?;
            let mut p = self.packer.lock().unwrap_or_else(|e| e.into_inner());
            p.sealed.retain(|(s, _)| s != &pid);
        }
    }

    /// Put a whole pack (gc's repack), durable at the next sync.
    pub(crate) async fn put_pack(&self, id: &PackId, bytes: Vec<u8>) -> VaultResult<()> {
        self.store
            .put_deferred(&pack_key(id), Bytes::from(bytes))
            .await?;
        Ok(())
    }
}

fn relock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
