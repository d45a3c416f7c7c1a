//! The read cache of a mount: owns [`ReadCache`], a size-capped cache of
//! data-blob *ciphertext* (so the cache at rest is as encrypted as the
//! store), and the single-flight fetching of 64 KiB segments through it.
//! The read-ahead policy that fills it is in [`crate::prefetch`]; the store
//! requests go through [`crate::fetch::Fetcher`].
//!
//! Two backings (`backing.rs`): on disk (what a mount of a remote store
//! uses; one sparse file per blob, `<dir>/<2 hex>/<62 hex>`, the stored
//! object's bytes at the object's own offsets) or in memory. Which segments are present is kept in memory only, so the cache starts
//! empty on every mount ([`ReadCache::new`] deletes old cache files). The
//! byte count of the cache is the ciphertext of the present segments; past
//! the cap, whole blobs are evicted in least-recently-used order (never one
//! that a read is using at that moment).
//!
//! Nothing here verifies data: [`crate::chunks::Chunks`] authenticates
//! every segment with `blob::open_segments` after getting the ciphertext.
//! When that fails for bytes that came from the cache, it drops the blob
//! from the cache and fetches it once more from the store.
//!
//! Missing segments are fetched once however many readers want them: the
//! first reader claims them (an in-flight bit per segment) and the others
//! wait for it; a claim released without data (fetch failed, task
//! cancelled, cache write failed) wakes the waiters, which then fetch for
//! themselves. Contiguous missing segments are one range request; on stores
//! without range reads the whole object is fetched once and every segment
//! of it cached.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::join_all;
use strata_crypto::BlobId;
use strata_store::Bytes;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::error::{VaultError, VaultResult};
use crate::fetch::Fetcher;

mod backing;
use crate::format::blob::{segment_range, segments};
use crate::format::blob_key;
use backing::{blob_path, clear_old, make_dir, Backing};

/// Planning rounds of one read before it gives up on the cache's
/// bookkeeping and fetches what is still missing directly.
const MAX_ROUNDS: u32 = 32;

/// A fixed-size bit set (one bit per segment of a blob).
#[derive(Debug, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Self {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: u64, v: bool) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            if v {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }
    fn clear(&mut self) {
        self.0.iter_mut().for_each(|w| *w = 0);
    }
}

/// What the cache knows about one blob.
#[derive(Debug)]
struct Entry {
    blob_len: u64,
    /// Segments whose ciphertext is in the cache file.
    present: Bits,
    /// Segments some reader has claimed and is fetching.
    inflight: Bits,
    /// Ciphertext bytes of the present segments.
    bytes: u64,
    /// LRU clock value of the last use.
    last_use: u64,
    /// Reads (and prefetches) using this blob right now; pinned blobs are
    /// never evicted.
    users: u32,
    /// Changes when the blob is invalidated, so fetches claimed before
    /// that do not mark their segments present.
    epoch: u64,
}

#[derive(Debug, Default)]
struct State {
    blobs: HashMap<BlobId, Entry>,
    size: u64,
    tick: u64,
    epochs: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    prefetched: AtomicU64,
    requests: AtomicU64,
    bytes_fetched: AtomicU64,
    bytes_served: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
    write_errors: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A snapshot of a [`ReadCache`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    /// Segments reads got from the cache files.
    pub hits: u64,
    /// Segments reads had to get from the store themselves.
    pub misses: u64,
    /// Segments fetched and cached by prefetches.
    pub prefetched: u64,
    /// Requests sent to the store (reads and prefetches).
    pub store_requests: u64,
    /// Bytes received from the store (reads and prefetches).
    pub bytes_fetched: u64,
    /// Ciphertext bytes handed to reads.
    pub bytes_served: u64,
    /// Blobs evicted to stay under the cap.
    pub evictions: u64,
    /// Blobs whose cached bytes were dropped because a read of them failed
    /// authentication.
    pub invalidations: u64,
    /// Failed writes to cache files (the data was still returned).
    pub write_errors: u64,
    /// Ciphertext bytes in the cache now.
    pub size: u64,
    /// Blobs with at least one cached segment.
    pub blobs: u64,
    /// The size cap.
    pub cap: u64,
}

/// Ciphertext of a run of segments, as returned by [`ReadCache::read_segments`].
#[derive(Debug, Clone)]
pub struct SegmentBytes {
    /// Stored-object bytes `segment_range(blob_len, s0, s1)`.
    pub bytes: Bytes,
    /// Whether any of it was read from a cache file (rather than the store).
    pub from_cache: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Return the bytes (wait for segments others are fetching).
    Read,
    /// Only fetch what nobody has or is fetching; return nothing.
    Prefetch,
}

/// A cache of data-blob ciphertext with a size cap, shared as
/// `Arc<ReadCache>` by [`crate::chunks::Chunks`] and its read-ahead tasks.
#[derive(Debug)]
pub struct ReadCache {
    backing: Backing,
    cap: u64,
    state: Mutex<State>,
    /// Woken whenever claimed segments are finished or released.
    notify: Notify,
    c: Counters,
    warned: AtomicBool,
    /// The cache disk is short of space: store nothing new (see
    /// [`ReadCache::give_back_space`]).
    space_low: AtomicBool,
}

/// Keeps a blob's entry alive and unevictable while a read uses it.
struct BlobPin<'a> {
    cache: &'a ReadCache,
    id: BlobId,
}

impl Drop for BlobPin<'_> {
    fn drop(&mut self) {
        let mut st = self.cache.lock();
        let mut remove = false;
        if let Some(e) = st.blobs.get_mut(&self.id) {
            e.users = e.users.saturating_sub(1);
            remove = e.users == 0 && e.bytes == 0;
        }
        if remove {
            st.blobs.remove(&self.id);
            // may hold bytes of fetches that were never marked present
            self.cache.backing.remove(&self.id);
        }
        self.cache.evict_locked(&mut st);
    }
}

/// Segments a read has claimed (in-flight bits set); released on drop.
struct Claim<'a> {
    cache: &'a ReadCache,
    id: BlobId,
    epoch: u64,
    blob_len: u64,
    /// Claimed runs `(first, last)` not finished yet.
    runs: Vec<(u64, u64)>,
}

impl Claim<'_> {
    /// Run `run` is fetched; if `stored`, its bytes are in the cache file.
    /// Returns how many segments were newly marked present.
    fn finish(&mut self, run: (u64, u64), stored: bool) -> u64 {
        self.runs.retain(|r| *r != run);
        let mut added = 0;
        {
            let mut st = self.cache.lock();
            let State { blobs, size, .. } = &mut *st;
            if let Some(e) = blobs.get_mut(&self.id) {
                for s in run.0..=run.1 {
                    e.inflight.set(s, false);
                    if stored && e.epoch == self.epoch && !e.present.get(s) {
                        e.present.set(s, true);
                        let n = seg_ct_len(self.blob_len, s);
                        e.bytes += n;
                        *size += n;
                        added += 1;
                    }
                }
            }
            self.cache.evict_locked(&mut st);
        }
        self.cache.notify.notify_waiters();
        added
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.runs.is_empty() {
            let mut st = self.cache.lock();
            if let Some(e) = st.blobs.get_mut(&self.id) {
                for &(a, b) in &self.runs {
                    for s in a..=b {
                        e.inflight.set(s, false);
                    }
                }
            }
        }
        self.cache.notify.notify_waiters();
    }
}

/// What one planning round of a read decided (under the lock).
struct Plan<'a> {
    /// Present runs to read from the cache file.
    disk: Vec<(u64, u64)>,
    epoch: u64,
    claim: Option<Claim<'a>>,
    /// Set when some wanted segments are being fetched by someone else.
    wait: Option<Notified<'a>>,
}

/// One store request of a read: the claimed runs it brings, and the range
/// of the stored object it asks for.
type Piece = (Vec<(u64, u64)>, Range<u64>);

/// Ciphertext length of segment `s` of a blob of `blob_len` plaintext bytes.
fn seg_ct_len(blob_len: u64, s: u64) -> u64 {
    let r = segment_range(blob_len, s, s);
    r.end - r.start
}

/// Group sorted segment numbers into runs `(first, last)`.
fn runs_of(segs: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in segs {
        match out.last_mut() {
            Some(r) if r.1 + 1 == s => r.1 = s,
            _ => out.push((s, s)),
        }
    }
    out
}

impl ReadCache {
    /// A cache in `dir` (created if needed; cache files left there by an
    /// earlier run are deleted) holding at most about `cap_bytes` bytes.
    pub fn new(dir: PathBuf, cap_bytes: u64) -> VaultResult<Self> {
        make_dir(&dir).map_err(|e| {
            VaultError::io(
                format!("creating the read cache directory {}", dir.display()),
                e,
            )
        })?;
        clear_old(&dir).map_err(|e| {
            VaultError::io(
                format!("clearing old files from the read cache {}", dir.display()),
                e,
            )
        })?;
        Ok(ReadCache::with_backing(Backing::Disk(dir), cap_bytes))
    }

    /// A cache in memory holding at most about `cap_bytes` bytes (for stores
    /// as fast as the cache disk, where a disk cache only costs time).
    pub fn in_memory(cap_bytes: u64) -> Self {
        ReadCache::with_backing(Backing::Memory(Mutex::new(HashMap::new())), cap_bytes)
    }

    fn with_backing(backing: Backing, cap_bytes: u64) -> Self {
        ReadCache {
            backing,
            cap: cap_bytes,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            c: Counters::default(),
            warned: AtomicBool::new(false),
            space_low: AtomicBool::new(false),
        }
    }

    /// The cache directory (`None` for a cache in memory).
    pub fn dir(&self) -> Option<&Path> {
        match &self.backing {
            Backing::Disk(d) => Some(d),
            Backing::Memory(_) => None,
        }
    }

    /// The size cap in bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Path of the cache file of blob `id` (it may not exist; `None` for
    /// a cache in memory).
    pub fn blob_path(&self, id: &BlobId) -> Option<PathBuf> {
        self.dir().map(|d| blob_path(d, id))
    }

    /// Counters and current size.
    pub fn stats(&self) -> ReadCacheStats {
        let (size, blobs) = {
            let st = self.lock();
            let blobs = st.blobs.values().filter(|e| e.bytes > 0).count() as u64;
            (st.size, blobs)
        };
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReadCacheStats {
            hits: l(&self.c.hits),
            misses: l(&self.c.misses),
            prefetched: l(&self.c.prefetched),
            store_requests: l(&self.c.requests),
            bytes_fetched: l(&self.c.bytes_fetched),
            bytes_served: l(&self.c.bytes_served),
            evictions: l(&self.c.evictions),
            invalidations: l(&self.c.invalidations),
            write_errors: l(&self.c.write_errors),
            size,
            blobs,
            cap: self.cap,
        }
    }

    /// Whether segment `s` of blob `id` is in the cache.
    pub fn is_cached(&self, id: &BlobId, s: u64) -> bool {
        self.lock().blobs.get(id).is_some_and(|e| e.present.get(s))
    }

    /// Forget everything cached of blob `id` and delete its file (e.g. when
    /// its cached bytes failed authentication). Fetches already under way
    /// for it finish, but do not mark their segments present.
    pub fn invalidate(&self, id: &BlobId) {
        let mut st = self.lock();
        st.epochs += 1;
        let epoch = st.epochs;
        let State { blobs, size, .. } = &mut *st;
        let remove = match blobs.get_mut(id) {
            Some(e) => {
                if e.bytes > 0 {
                    add(&self.c.invalidations, 1);
                }
                *size = size.saturating_sub(e.bytes);
                e.bytes = 0;
                e.present.clear();
                e.epoch = epoch;
                e.users == 0
            }
            None => false,
        };
        if remove {
            blobs.remove(id);
        }
        self.backing.remove(id);
    }

    /// While `low` (the cache disk is short of space), evict every blob no
    /// read is using and cache nothing new: reads go on from the store, and
    /// the space goes to what must be written (the mount's pending data).
    /// Returns the bytes given back.
    pub fn give_back_space(&self, low: bool) -> u64 {
        let was = self.space_low.swap(low, Ordering::Relaxed);
        if !low {
            return 0;
        }
        if !was {
            debug!(dir = ?self.dir(), "cache disk short of space: emptying the read cache");
        }
        let mut st = self.lock();
        let before = st.size;
        let victims: Vec<BlobId> = st
            .blobs
            .iter()
            .filter(|(_, e)| e.users == 0 && e.bytes > 0)
            .map(|(id, _)| *id)
            .collect();
        for id in victims {
            if let Some(e) = st.blobs.remove(&id) {
                st.size = st.size.saturating_sub(e.bytes);
            }
            self.backing.remove(&id);
            add(&self.c.evictions, 1);
        }
        before - st.size
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pin blob `id` (creating its entry). `None` if the cache knows the
    /// blob with another length (inconsistent metadata): bypass the cache.
    fn pin(&self, id: &BlobId, blob_len: u64) -> Option<BlobPin<'_>> {
        let mut st = self.lock();
        st.tick += 1;
        let tick = st.tick;
        match st.blobs.get_mut(id) {
            Some(e) if e.blob_len != blob_len => return None,
            Some(e) => {
                e.users += 1;
                e.last_use = tick;
            }
            None => {
                st.epochs += 1;
                let n = segments(blob_len);
                let e = Entry {
                    blob_len,
                    present: Bits::new(n),
                    inflight: Bits::new(n),
                    bytes: 0,
                    last_use: tick,
                    users: 1,
                    epoch: st.epochs,
                };
                st.blobs.insert(*id, e);
            }
        }
        Some(BlobPin {
            cache: self,
            id: *id,
        })
    }

    /// Evict least-recently-used unpinned blobs until under the cap.
    fn evict_locked(&self, st: &mut State) {
        self.evict_to_locked(st, self.cap);
    }

    /// Evict least-recently-used unpinned blobs until at most `target` bytes.
    fn evict_to_locked(&self, st: &mut State, target: u64) {
        while st.size > target {
            let victim = st
                .blobs
                .iter()
                .filter(|(_, e)| e.users == 0 && e.bytes > 0)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(id, _)| *id);
            let Some(id) = victim else { break };
            if let Some(e) = st.blobs.remove(&id) {
                st.size = st.size.saturating_sub(e.bytes);
            }
            self.backing.remove(&id);
            add(&self.c.evictions, 1);
        }
    }

    /// Forget present segments whose cache-file read failed.
    fn forget(&self, id: &BlobId, epoch: u64, runs: &[(u64, u64)]) {
        let mut st = self.lock();
        let State { blobs, size, .. } = &mut *st;
        if let Some(e) = blobs.get_mut(id) {
            if e.epoch != epoch {
                return;
            }
            for &(a, b) in runs {
                for s in a..=b {
                    if e.present.get(s) {
                        e.present.set(s, false);
                        let n = seg_ct_len(e.blob_len, s);
                        e.bytes = e.bytes.saturating_sub(n);
                        *size = size.saturating_sub(n);
                    }
                }
            }
        }
    }

    /// Decide what to do for the segments of `s0..=s1` not yet `filled`:
    /// read present ones from disk, claim missing ones, wait for the rest.
    /// In prefetch mode, present and in-flight segments count as done.
    fn plan(&self, id: &BlobId, s0: u64, filled: &mut [bool], whole: bool, mode: Mode) -> Plan<'_> {
        let mut st = self.lock();
        st.tick += 1;
        let tick = st.tick;
        let Some(e) = st.blobs.get_mut(id) else {
            // cannot happen while pinned; make the caller fall back
            return Plan {
                disk: Vec::new(),
                epoch: 0,
                claim: None,
                wait: None,
            };
        };
        e.last_use = tick;
        let mut disk = Vec::new();
        let mut missing = Vec::new();
        let mut waiting = false;
        for (i, f) in filled.iter_mut().enumerate() {
            if *f {
                continue;
            }
            let s = s0 + i as u64;
            if e.present.get(s) {
                match mode {
                    Mode::Read => disk.push(s),
                    Mode::Prefetch => *f = true,
                }
            } else if e.inflight.get(s) {
                match mode {
                    Mode::Read => waiting = true,
                    Mode::Prefetch => *f = true,
                }
            } else {
                missing.push(s);
            }
        }
        if whole && !missing.is_empty() {
            // one whole-object get brings every segment: claim all free ones
            missing = (0..segments(e.blob_len))
                .filter(|&s| !e.present.get(s) && !e.inflight.get(s))
                .collect();
        }
        for &s in &missing {
            e.inflight.set(s, true);
        }
        let claim = (!missing.is_empty()).then(|| Claim {
            cache: self,
            id: *id,
            epoch: e.epoch,
            blob_len: e.blob_len,
            runs: runs_of(missing),
        });
        Plan {
            disk: runs_of(disk),
            epoch: e.epoch,
            claim,
            // registered before the lock is released, so no wake-up is lost
            wait: waiting.then(|| self.notify.notified()),
        }
    }

    /// One store request (see [`Fetcher::get`]), counted.
    async fn fetch_piece(
        &self,
        fetcher: &Fetcher,
        key: &str,
        range: Range<u64>,
        whole: bool,
    ) -> VaultResult<Bytes> {
        add(&self.c.requests, 1);
        let bytes = fetcher.get(key, range, whole).await?;
        add(&self.c.bytes_fetched, bytes.len() as u64);
        Ok(bytes)
    }

    /// Ciphertext of segments `s0..=s1` of blob `id` (plaintext length
    /// `blob_len`), i.e. stored-object bytes `segment_range(blob_len, s0, s1)`:
    /// cached segments come from disk, missing ones from `store` (one range
    /// request per contiguous run, or the whole object once on stores
    /// without range reads) and are cached. Concurrent reads of the same
    /// segment share one fetch.
    pub async fn read_segments(
        &self,
        fetcher: &Fetcher,
        id: &BlobId,
        blob_len: u64,
        s0: u64,
        s1: u64,
    ) -> VaultResult<SegmentBytes> {
        self.fetch_segments(fetcher, id, blob_len, s0, s1, Mode::Read)
            .await
    }

    /// Start fetching the missing segments of `s0..=s1` of blob `id` into the
    /// cache in the background, after `delay`. `None` when there is nothing
    /// to fetch (all cached or being fetched) or no tokio runtime to run it
    /// on. Abort the handle to cancel; errors are only logged.
    pub fn prefetch_after(
        self: &Arc<Self>,
        fetcher: &Arc<Fetcher>,
        id: BlobId,
        blob_len: u64,
        s0: u64,
        s1: u64,
        delay: Duration,
    ) -> Option<AbortHandle> {
        // short of disk space nothing fetched ahead could be kept
        if s0 > s1 || s1 >= segments(blob_len) || self.space_low.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(e) = self.lock().blobs.get(&id) {
            if e.blob_len == blob_len && (s0..=s1).all(|s| e.present.get(s) || e.inflight.get(s)) {
                return None;
            }
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let cache = Arc::clone(self);
        let fetcher = Arc::clone(fetcher);
        let task = rt.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Err(e) = cache
                .fetch_segments(&fetcher, &id, blob_len, s0, s1, Mode::Prefetch)
                .await
            {
                debug!(blob = %blob_key(&id), error = %e, "prefetch failed");
            }
        });
        Some(task.abort_handle())
    }

    async fn fetch_segments(
        &self,
        fetcher: &Fetcher,
        id: &BlobId,
        blob_len: u64,
        s0: u64,
        s1: u64,
        mode: Mode,
    ) -> VaultResult<SegmentBytes> {
        let key = blob_key(id);
        let nseg = segments(blob_len);
        if s0 > s1 || s1 >= nseg {
            return Err(VaultError::Corrupt {
                object: key,
                range: None,
                file: None,
                detail: format!(
                    "the metadata asks for segments {s0}..={s1} of a blob with {nseg}; \
                     the file's metadata does not match the blob"
                ),
            });
        }
        let span = segment_range(blob_len, s0, s1);
        let want = mode == Mode::Read;
        let n = (span.end - span.start) as usize;
        // allocated (zeroed) only when a read is assembled from pieces: a
        // read served by one request of exactly its span returns that
        // request's bytes as they are
        let mut out: Vec<u8> = Vec::new();
        let mut direct: Option<Bytes> = None;
        let mut filled = vec![false; (s1 - s0 + 1) as usize];
        let whole = !fetcher.caps().range_reads;
        let Some(_pin) = self.pin(id, blob_len) else {
            debug!(blob = %key, "blob length differs from the cached one; bypassing the cache");
            let mut bytes = Bytes::new();
            if want {
                bytes = self.fetch_piece(fetcher, &key, span.clone(), whole).await?;
                bytes.truncate(n);
                add(&self.c.misses, s1 - s0 + 1);
                add(&self.c.bytes_served, n as u64);
            }
            return Ok(SegmentBytes {
                bytes,
                from_cache: false,
            });
        };
        let mut from_cache = false;
        for _ in 0..MAX_ROUNDS {
            let plan = self.plan(id, s0, &mut filled, whole, mode);
            if !plan.disk.is_empty() {
                let ranges: Vec<Range<u64>> = plan
                    .disk
                    .iter()
                    .map(|&(a, b)| segment_range(blob_len, a, b))
                    .collect();
                match self.backing.load(id, ranges.clone()).await {
                    Ok(mut bufs) => {
                        // the whole span in one piece (a sequential reader
                        // behind the read-ahead): that buffer is the answer
                        let whole_span = out.is_empty()
                            && ranges.len() == 1
                            && ranges[0] == span
                            && bufs.len() == 1
                            && bufs[0].len() == n;
                        if !whole_span {
                            out.resize(n, 0);
                        }
                        for ((&(a, b), r), buf) in plan.disk.iter().zip(&ranges).zip(&bufs) {
                            let at = (r.start - span.start) as usize;
                            if !whole_span {
                                out[at..at + buf.len()].copy_from_slice(buf);
                            }
                            for s in a..=b {
                                filled[(s - s0) as usize] = true;
                            }
                            add(&self.c.hits, b - a + 1);
                        }
                        if whole_span {
                            out = bufs.pop().unwrap_or_default();
                        }
                        from_cache = true;
                    }
                    Err(e) => {
                        debug!(blob = %key, error = %e, "read-cache file unreadable; refetching");
                        self.forget(id, plan.epoch, &plan.disk);
                    }
                }
            }
            if let Some(mut claim) = plan.claim {
                let pieces: Vec<Piece> = if whole {
                    vec![(
                        claim.runs.clone(),
                        0..segment_range(blob_len, 0, nseg - 1).end,
                    )]
                } else {
                    claim
                        .runs
                        .iter()
                        .map(|&r| (vec![r], segment_range(blob_len, r.0, r.1)))
                        .collect()
                };
                let results = join_all(
                    pieces
                        .iter()
                        .map(|(_, r)| self.fetch_piece(fetcher, &key, r.clone(), whole)),
                )
                .await;
                let mut first_err = None;
                let mut writes: Vec<((u64, u64), u64, Bytes)> = Vec::new();
                for ((runs, r), res) in pieces.iter().zip(results) {
                    let bytes = match res {
                        Ok(b) => b,
                        Err(e) => {
                            first_err.get_or_insert(e);
                            continue;
                        }
                    };
                    if want && !whole && *r == span && out.is_empty() && filled.iter().all(|f| !*f)
                    {
                        direct = Some(bytes.clone());
                        filled.iter_mut().for_each(|f| *f = true);
                        add(&self.c.misses, s1 - s0 + 1);
                    } else if want {
                        out.resize(n, 0);
                        for (i, f) in filled.iter_mut().enumerate() {
                            let sr = segment_range(blob_len, s0 + i as u64, s0 + i as u64);
                            if *f || sr.start < r.start || sr.end > r.end {
                                continue;
                            }
                            let src =
                                &bytes[(sr.start - r.start) as usize..(sr.end - r.start) as usize];
                            let at = (sr.start - span.start) as usize;
                            out[at..at + src.len()].copy_from_slice(src);
                            *f = true;
                            add(&self.c.misses, 1);
                        }
                    }
                    for &run in runs {
                        let rr = segment_range(blob_len, run.0, run.1);
                        let piece =
                            bytes.slice((rr.start - r.start) as usize..(rr.end - r.start) as usize);
                        writes.push((run, rr.start, piece));
                    }
                }
                if !writes.is_empty() {
                    let items: Vec<(u64, Bytes)> =
                        writes.iter().map(|(_, off, b)| (*off, b.clone())).collect();
                    let saved = if self.space_low.load(Ordering::Relaxed) {
                        Err(std::io::ErrorKind::StorageFull.into())
                    } else {
                        self.backing.save(id, items).await
                    };
                    let stored = match saved {
                        Ok(()) => true,
                        Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                            // the disk is full: keep nothing, ask for nothing
                            add(&self.c.write_errors, 1);
                            let mut st = self.lock();
                            let half = st.size / 2;
                            self.evict_to_locked(&mut st, half);
                            false
                        }
                        Err(e) => {
                            add(&self.c.write_errors, 1);
                            if self.warned.swap(true, Ordering::Relaxed) {
                                debug!(error = %e, "could not write to the read cache");
                            } else {
                                warn!(dir = ?self.dir(), error = %e, "could not write to the read cache; reads go on without it");
                            }
                            false
                        }
                    };
                    for (run, _, _) in &writes {
                        let added = claim.finish(*run, stored);
                        if mode == Mode::Prefetch {
                            add(&self.c.prefetched, added);
                        }
                    }
                }
                drop(claim); // releases the runs of failed fetches
                if let Some(e) = first_err {
                    return Err(e);
                }
            }
            if !want || filled.iter().all(|f| *f) {
                if want {
                    add(&self.c.bytes_served, n as u64);
                }
                return Ok(SegmentBytes {
                    bytes: direct.unwrap_or_else(|| Bytes::from(out)),
                    from_cache,
                });
            }
            if let Some(w) = plan.wait {
                w.await;
            }
        }
        // The bookkeeping kept failing us (e.g. the cache directory was
        // removed under us): fetch what is left straight from the store.
        debug!(blob = %key, "read cache did not settle; reading around it");
        let b = self.fetch_piece(fetcher, &key, span.clone(), whole).await?;
        out.resize(n, 0);
        for (i, f) in filled.iter().enumerate() {
            if *f {
                continue;
            }
            let sr = segment_range(blob_len, s0 + i as u64, s0 + i as u64);
            let at = (sr.start - span.start) as usize;
            let len = (sr.end - sr.start) as usize;
            out[at..at + len].copy_from_slice(&b[at..at + len]);
            add(&self.c.misses, 1);
        }
        add(&self.c.bytes_served, out.len() as u64);
        Ok(SegmentBytes {
            bytes: Bytes::from(out),
            from_cache,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn runs_and_bits() {
        assert_eq!(runs_of([1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert!(runs_of([]).is_empty());
        let mut b = Bits::new(130);
        b.set(0, true);
        b.set(129, true);
        b.set(200, true); // out of range: ignored
        assert!(b.get(0) && b.get(129) && !b.get(64) && !b.get(200));
        b.set(0, false);
        assert!(!b.get(0));
        b.clear();
        assert!(!b.get(129));
    }

    #[test]
    fn new_clears_only_our_files() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("ab");
        fs::create_dir(&sub).unwrap();
        let ours = sub.join("c".repeat(62));
        fs::write(&ours, b"x").unwrap();
        fs::write(sub.join("keep.txt"), b"x").unwrap();
        fs::write(d.path().join("other"), b"x").unwrap();
        let c = ReadCache::new(d.path().to_path_buf(), 1 << 20).unwrap();
        assert_eq!(c.dir(), Some(d.path()));
        assert!(!ours.exists());
        assert!(sub.join("keep.txt").exists());
        assert!(d.path().join("other").exists());
        assert_eq!(c.stats().size, 0);
    }
}
