//! The local read cache and read-ahead of a mount: owns [`ReadCache`] (an
//! on-disk, size-capped cache of data-blob *ciphertext*, so the cache at rest
//! is as encrypted as the store), the single-flight fetching of 64 KiB
//! segments through it, and [`Prefetcher`] (per-open-file sequential-read
//! detection with a growing read-ahead window).
//!
//! Layout: one sparse file per blob, `<dir>/<2 hex>/<62 hex>` (the blob key's
//! shape), holding the stored object's bytes at the object's own offsets.
//! Which segments are present is kept in memory only, so the cache starts
//! empty on every mount ([`ReadCache::new`] deletes old cache files). The
//! byte count of the cache is the ciphertext of the present segments; past
//! the cap, whole blobs are evicted in least-recently-used order (never one
//! that a read is using at that moment).
//!
//! Nothing here verifies data: the vault still authenticates every segment
//! with `blob::open_segments` after getting the ciphertext. When that fails
//! for bytes that came from the cache, the vault drops the blob from the
//! cache and fetches it once more from the store
//! (see `Vault::fetch_blob_range_cached`).
//!
//! Missing segments are fetched once however many readers want them: the
//! first reader claims them (an in-flight bit per segment) and the others
//! wait for it; a claim released without data (fetch failed, task
//! cancelled, cache write failed) wakes the waiters, which then fetch for
//! themselves. Contiguous missing segments are one range request; on stores
//! without range reads the whole object is fetched once and every segment
//! of it cached.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::join_all;
use strata_crypto::BlobId;
use strata_store::{Bytes, DynStore};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{debug, trace, warn};

use crate::error::{VaultError, VaultResult};
use crate::format::blob::{self, segment_range, segments, SEGMENT};
use crate::format::blob_key;
use crate::record::ChunkRef;
use crate::tree::Inode;
use crate::vault::Vault;

const HINT: &str = "run `strata check` to list affected files";

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

/// How fast the store delivers: the bytes of the last completed requests of
/// this cache over the time at least one of them was outstanding (the union
/// of their intervals). Requests that were cancelled or failed do not count.
/// The read-ahead sizes and spaces its requests from it.
#[derive(Debug, Default)]
struct LinkMeter {
    /// `(start, end, bytes)` of recently completed requests, oldest first.
    done: VecDeque<(Instant, Instant, u64)>,
}

/// Completed requests the rate estimate looks at, and how old they may be.
const METER_REQUESTS: usize = 16;
const METER_AGE: Duration = Duration::from_secs(5);

impl LinkMeter {
    fn record(&mut self, start: Instant, bytes: u64) {
        self.record_span(start, Instant::now(), bytes);
    }

    fn record_span(&mut self, start: Instant, end: Instant, bytes: u64) {
        self.done.push_back((start, end, bytes));
        while self.done.len() > METER_REQUESTS
            || self
                .done
                .front()
                .is_some_and(|r| end.saturating_duration_since(r.1) > METER_AGE)
        {
            self.done.pop_front();
        }
    }

    /// Bytes per second, once there is enough to go by.
    fn rate(&self) -> Option<f64> {
        let mut spans: Vec<(Instant, Instant)> = self.done.iter().map(|r| (r.0, r.1)).collect();
        spans.sort();
        let mut busy = Duration::ZERO;
        let mut cur: Option<(Instant, Instant)> = None;
        for (a, b) in spans {
            cur = match cur {
                Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    busy += cb - ca;
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        if let Some((ca, cb)) = cur {
            busy += cb - ca;
        }
        let bytes: u64 = self.done.iter().map(|r| r.2).sum();
        let secs = busy.as_secs_f64();
        (secs >= 0.02 && bytes >= 128 * 1024).then(|| bytes as f64 / secs)
    }
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
    pub bytes: Vec<u8>,
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

/// An on-disk cache of data-blob ciphertext with a size cap. Share it as
/// `Arc<ReadCache>` (see [`Vault::set_read_cache`]).
#[derive(Debug)]
pub struct ReadCache {
    dir: PathBuf,
    cap: u64,
    state: Mutex<State>,
    /// Woken whenever claimed segments are finished or released.
    notify: Notify,
    c: Counters,
    warned: AtomicBool,
    meter: Mutex<LinkMeter>,
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
            remove_quietly(&self.cache.blob_path(&self.id));
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

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            debug!(path = %path.display(), error = %e, "could not remove a read-cache file");
        }
    }
}

fn make_dir(path: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(path)
}

fn open_for_write(path: &Path) -> io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                make_dir(parent)?;
            }
            o.open(path)
        }
        r => r,
    }
}

#[cfg(unix)]
fn write_at(f: &fs::File, buf: &[u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, off)
}

#[cfg(unix)]
fn read_at(f: &fs::File, buf: &mut [u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, off)
}

#[cfg(not(unix))]
fn write_at(mut f: &fs::File, buf: &[u8], off: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(off))?;
    f.write_all(buf)
}

#[cfg(not(unix))]
fn read_at(mut f: &fs::File, buf: &mut [u8], off: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(buf)
}

/// Write `(offset, bytes)` pieces into a cache file.
fn write_pieces(path: &Path, pieces: &[(u64, Bytes)]) -> io::Result<()> {
    let f = open_for_write(path)?;
    for (off, b) in pieces {
        write_at(&f, b, *off)?;
    }
    Ok(())
}

/// Read `offset..offset+len` pieces of a cache file.
fn read_pieces(path: &Path, pieces: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>> {
    let f = fs::File::open(path)?;
    pieces
        .iter()
        .map(|r| {
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            read_at(&f, &mut buf, r.start)?;
            Ok(buf)
        })
        .collect()
}

/// Delete cache files of an earlier run (only names of our own layout).
fn clear_old(dir: &Path) -> io::Result<()> {
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 2 || !is_hex(name) || !ent.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(ent.path())? {
            let f = f?;
            let fname = f.file_name();
            let ours = fname.to_str().is_some_and(|n| n.len() == 62 && is_hex(n));
            if ours && f.file_type()?.is_file() {
                fs::remove_file(f.path())?;
            }
        }
        let _ = fs::remove_dir(ent.path());
    }
    Ok(())
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
        Ok(ReadCache {
            dir,
            cap: cap_bytes,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            c: Counters::default(),
            warned: AtomicBool::new(false),
            meter: Mutex::new(LinkMeter::default()),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size cap in bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// How fast the store has been delivering lately, in bytes per second
    /// (bytes received while requests of this cache were outstanding, over
    /// that time); `None` until there is enough to go by.
    pub fn delivery_rate(&self) -> Option<f64> {
        self.meter.lock().unwrap_or_else(|e| e.into_inner()).rate()
    }

    /// Path of the cache file of blob `id` (it may not exist).
    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        let h = id.to_hex();
        self.dir.join(&h[..2]).join(&h[2..])
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
        remove_quietly(&self.blob_path(id));
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
        while st.size > self.cap {
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
            remove_quietly(&self.blob_path(&id));
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

    /// One store request: `range` of the object, or (`whole`) the whole
    /// object cut to `range` (which then starts at 0).
    async fn fetch_piece(
        &self,
        store: &DynStore,
        key: &str,
        range: Range<u64>,
        whole: bool,
    ) -> VaultResult<Bytes> {
        trace!(blob = %key, ?range, whole, "fetch");
        let started = Instant::now();
        let res = if whole {
            store.get(key).await
        } else {
            store.get_range(key, range.clone()).await
        };
        if let Ok(b) = &res {
            self.meter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(started, b.len() as u64);
        }
        add(&self.c.requests, 1);
        trace!(blob = %key, ?range, ok = res.is_ok(), "fetched");
        let bytes = res.map_err(|e| VaultError::from_get(e, key, HINT))?;
        add(&self.c.bytes_fetched, bytes.len() as u64);
        let need = if whole {
            range.end
        } else {
            range.end - range.start
        };
        if (bytes.len() as u64) < need {
            return Err(VaultError::Corrupt {
                object: key.to_string(),
                range: Some(range),
                file: None,
                detail: format!(
                    "object is truncated (got {} of {} bytes)",
                    bytes.len(),
                    need
                ),
            });
        }
        Ok(bytes.slice(..need as usize))
    }

    /// Ciphertext of segments `s0..=s1` of blob `id` (plaintext length
    /// `blob_len`), i.e. stored-object bytes `segment_range(blob_len, s0, s1)`:
    /// cached segments come from disk, missing ones from `store` (one range
    /// request per contiguous run, or the whole object once on stores
    /// without range reads) and are cached. Concurrent reads of the same
    /// segment share one fetch.
    pub async fn read_segments(
        &self,
        store: &DynStore,
        id: &BlobId,
        blob_len: u64,
        s0: u64,
        s1: u64,
    ) -> VaultResult<SegmentBytes> {
        self.fetch_segments(store, id, blob_len, s0, s1, Mode::Read)
            .await
    }

    /// Start fetching the missing segments of `s0..=s1` of blob `id` into the
    /// cache in the background. `None` when there is nothing to fetch (all
    /// cached or being fetched) or no tokio runtime to run it on. Abort the
    /// handle to cancel; errors are only logged.
    pub fn prefetch(
        self: &Arc<Self>,
        store: &DynStore,
        id: BlobId,
        blob_len: u64,
        s0: u64,
        s1: u64,
    ) -> Option<AbortHandle> {
        self.prefetch_after(store, id, blob_len, s0, s1, Duration::ZERO)
    }

    /// [`ReadCache::prefetch`] that waits `delay` before it looks at what is
    /// missing and fetches it.
    pub fn prefetch_after(
        self: &Arc<Self>,
        store: &DynStore,
        id: BlobId,
        blob_len: u64,
        s0: u64,
        s1: u64,
        delay: Duration,
    ) -> Option<AbortHandle> {
        if s0 > s1 || s1 >= segments(blob_len) {
            return None;
        }
        if let Some(e) = self.lock().blobs.get(&id) {
            if e.blob_len == blob_len && (s0..=s1).all(|s| e.present.get(s) || e.inflight.get(s)) {
                return None;
            }
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let cache = Arc::clone(self);
        let store = store.clone();
        let task = rt.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Err(e) = cache
                .fetch_segments(&store, &id, blob_len, s0, s1, Mode::Prefetch)
                .await
            {
                debug!(blob = %blob_key(&id), error = %e, "prefetch failed");
            }
        });
        Some(task.abort_handle())
    }

    async fn fetch_segments(
        &self,
        store: &DynStore,
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
        let mut out = if want {
            vec![0u8; (span.end - span.start) as usize]
        } else {
            Vec::new()
        };
        let mut filled = vec![false; (s1 - s0 + 1) as usize];
        let whole = !store.capabilities().range_reads;
        let Some(_pin) = self.pin(id, blob_len) else {
            debug!(blob = %key, "blob length differs from the cached one; bypassing the cache");
            if want {
                let b = self.fetch_piece(store, &key, span.clone(), whole).await?;
                let from = if whole { span.start as usize } else { 0 };
                let n = out.len();
                out.copy_from_slice(&b[from..from + n]);
                add(&self.c.misses, s1 - s0 + 1);
                add(&self.c.bytes_served, out.len() as u64);
            }
            return Ok(SegmentBytes {
                bytes: out,
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
                let path = self.blob_path(id);
                let r2 = ranges.clone();
                let res = tokio::task::spawn_blocking(move || read_pieces(&path, &r2))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                match res {
                    Ok(bufs) => {
                        for ((&(a, b), r), buf) in plan.disk.iter().zip(&ranges).zip(bufs) {
                            let at = (r.start - span.start) as usize;
                            out[at..at + buf.len()].copy_from_slice(&buf);
                            for s in a..=b {
                                filled[(s - s0) as usize] = true;
                            }
                            add(&self.c.hits, b - a + 1);
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
                        .map(|(_, r)| self.fetch_piece(store, &key, r.clone(), whole)),
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
                    if want {
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
                    let path = self.blob_path(id);
                    let items: Vec<(u64, Bytes)> =
                        writes.iter().map(|(_, off, b)| (*off, b.clone())).collect();
                    let res = tokio::task::spawn_blocking(move || write_pieces(&path, &items))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                    let stored = match res {
                        Ok(()) => true,
                        Err(e) => {
                            add(&self.c.write_errors, 1);
                            if self.warned.swap(true, Ordering::Relaxed) {
                                debug!(dir = %self.dir.display(), error = %e, "could not write to the read cache");
                            } else {
                                warn!(dir = %self.dir.display(), error = %e, "could not write to the read cache; reads go on without it");
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
                    add(&self.c.bytes_served, out.len() as u64);
                }
                return Ok(SegmentBytes {
                    bytes: out,
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
        let b = self.fetch_piece(store, &key, span.clone(), whole).await?;
        let from = if whole { span.start as usize } else { 0 };
        for (i, f) in filled.iter().enumerate() {
            if *f {
                continue;
            }
            let sr = segment_range(blob_len, s0 + i as u64, s0 + i as u64);
            let at = (sr.start - span.start) as usize;
            let len = (sr.end - sr.start) as usize;
            out[at..at + len].copy_from_slice(&b[from + at..from + at + len]);
            add(&self.c.misses, 1);
        }
        add(&self.c.bytes_served, out.len() as u64);
        Ok(SegmentBytes {
            bytes: out,
            from_cache,
        })
    }
}

impl Vault {
    /// Use `cache` for reads of file data from now on. Returns false (and
    /// changes nothing) if a read cache was already set.
    pub fn set_read_cache(&self, cache: Arc<ReadCache>) -> bool {
        self.read_cache.set(cache).is_ok()
    }

    /// The read cache, if one is set.
    pub fn read_cache(&self) -> Option<&Arc<ReadCache>> {
        self.read_cache.get()
    }

    /// `fetch_blob_range` through the read cache: plaintext bytes `a..b`
    /// (`a < b`) of a chunk's blob. Cached bytes that fail authentication
    /// drop the blob from the cache and are fetched once more from the store.
    pub(crate) async fn fetch_blob_range_cached(
        &self,
        cache: &ReadCache,
        c: &ChunkRef,
        a: u64,
        b: u64,
    ) -> VaultResult<Vec<u8>> {
        let key = blob_key(&c.id);
        let blob_len = u64::from(c.blob_len);
        let s0 = a / SEGMENT;
        let s1 = b.saturating_sub(1) / SEGMENT;
        let mut retried = false;
        loop {
            let got = cache
                .read_segments(&self.store, &c.id, blob_len, s0, s1)
                .await?;
            let from_cache = got.from_cache;
            let keys = self.keys.clone();
            let id = c.id;
            let k2 = key.clone();
            let res = tokio::task::spawn_blocking(move || {
                blob::open_segments(&keys, &id, blob_len, s0, &got.bytes, &k2)
            })
            .await
            .map_err(|e| VaultError::Invalid(format!("decryption task failed: {e}")))?;
            match res {
                Ok(plain) => {
                    let off = (a - s0 * SEGMENT) as usize;
                    let n = (b - a) as usize;
                    return plain.get(off..off + n).map(<[u8]>::to_vec).ok_or_else(|| {
                        VaultError::corrupt(&key, "blob is shorter than the metadata says")
                    });
                }
                Err(e) => {
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

    /// Start background fetches into the read cache of file bytes
    /// `offset..offset+len` of `node` (clamped to the file; holes and
    /// cached or in-flight segments skipped). Nothing without a read cache.
    pub fn prefetch_range(&self, node: &Inode, offset: u64, len: u64) -> Vec<AbortHandle> {
        self.prefetch_range_after(node, offset, len, Duration::ZERO)
    }

    /// [`Vault::prefetch_range`] whose fetches start after `delay`.
    pub fn prefetch_range_after(
        &self,
        node: &Inode,
        offset: u64,
        len: u64,
        delay: Duration,
    ) -> Vec<AbortHandle> {
        let mut out = Vec::new();
        let Some(cache) = self.read_cache.get() else {
            return out;
        };
        let end = offset.saturating_add(len).min(node.size);
        let cs = u64::from(node.chunk_size.max(1));
        let mut pos = offset;
        while pos < end {
            let ci = pos / cs;
            let cstart = ci * cs;
            let stop = end.min(cstart.saturating_add(cs));
            let slot = usize::try_from(ci)
                .ok()
                .and_then(|i| node.chunks.get(i).copied())
                .flatten();
            if let Some(c) = slot {
                let valid = u64::from(c.len.min(c.blob_len));
                let a = pos - cstart;
                let b = (stop - cstart).min(valid);
                if a < b {
                    out.extend(cache.prefetch_after(
                        &self.store,
                        c.id,
                        u64::from(c.blob_len),
                        a / SEGMENT,
                        (b - 1) / SEGMENT,
                        delay,
                    ));
                }
            }
            pos = stop;
        }
        out
    }
}

/// Read-ahead settings of a [`Prefetcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Size of the first read-ahead request of a sequential run; each
    /// further request doubles up to the request size (a slow start on fast
    /// links, so a reader that stops early leaves little fetched for
    /// nothing). 256 KiB: the first one then covers a player's first large
    /// read after a small probe.
    pub first_request: u64,
    /// Smallest request size (also used while the read cache has no
    /// delivery-rate estimate yet).
    pub min_request: u64,
    /// Largest request size.
    pub max_request: u64,
    /// Requests are sized to take about this long at the store's measured
    /// delivery rate, between `min_request` and `max_request`.
    pub request_time: Duration,
    /// Read-ahead requests in flight at once: with two, the next one is on
    /// its way while the other is arriving, so the link does not idle.
    pub max_in_flight: usize,
    /// A read continues the current run if it starts at most this far past
    /// the read-ahead frontier, or at most `max(tolerance, 1 MiB)` before
    /// the end of the furthest read; anything else is a seek.
    pub tolerance: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            first_request: 256 * 1024,
            min_request: 256 * 1024,
            max_request: 4 << 20,
            request_time: Duration::from_millis(100),
            max_in_flight: 2,
            tolerance: 128 * 1024,
        }
    }
}

/// Round `n` up to a whole number of segments.
fn round_to_segments(n: u64) -> u64 {
    n.div_ceil(SEGMENT).saturating_mul(SEGMENT)
}

/// Sequential-read detection and read-ahead for one open file. Call
/// [`Prefetcher::on_read`] with every read before serving it and
/// [`Prefetcher::on_read_done`] once it is served.
///
/// Reads that follow each other form a *run*. A file keeps a few runs at
/// once (handles reading different places, or a player pulling two streams
/// from one file), each with its own read-ahead; a read that continues none
/// of them (a seek) starts a new run, replacing the least recently used one,
/// and cancels the read-ahead in flight of all others (a seek means the
/// reader wants other bytes now; a run that is continued later picks up its
/// read-ahead again). A run is sequential from its second read, or from its
/// first if it starts at offset 0. Read-ahead begins only once a read of
/// the run has been served, so the first read after an open or a seek has
/// the link to itself. It then issues requests in file order — the first one
/// small, each next one twice as large up to a size worth `request_time` at
/// the store's measured delivery rate — with at most `max_in_flight` of them
/// outstanding and the frontier at most that many requests past the
/// furthest read (on stores without range reads, where a request is a whole
/// chunk: one request at a time, at most one chunk past the furthest read).
/// So a reader that stops or seeks leaves at most about two requests' worth
/// fetched for nothing, while a reader as fast as the link always has a
/// request arriving and the next one on its way. Dropping it cancels.
#[derive(Debug)]
pub struct Prefetcher {
    cfg: PrefetchConfig,
    runs: Vec<Run>,
    /// Id of the next new run (reads report back with their run's id).
    next_id: u64,
    /// Clock for least-recently-used replacement of runs.
    clock: u64,
}

/// Runs a [`Prefetcher`] follows at once.
const MAX_RUNS: usize = 4;

/// One sequential run of reads and its read-ahead.
#[derive(Debug)]
struct Run {
    id: u64,
    last_use: u64,
    /// Where the run started.
    start: u64,
    /// End of the furthest read of the run.
    pos: u64,
    /// Reads in this run.
    reads: u64,
    /// A read of this run has been served.
    served: bool,
    /// File offset up to which read-ahead has been issued.
    ahead: u64,
    /// Size of the next request.
    next_request: u64,
    /// How far past the furthest read the frontier may be (last computed).
    window: u64,
    /// When the next request may start (requests are spaced so that two
    /// of them never arrive in lockstep).
    not_before: Option<Instant>,
    /// Requests in flight (a request crossing a chunk boundary is one
    /// task per chunk).
    tasks: Vec<Vec<AbortHandle>>,
}

impl Run {
    fn reap(&mut self) {
        self.tasks.retain(|r| r.iter().any(|t| !t.is_finished()));
    }

    /// Abort the read-ahead in flight; if the run is continued later, its
    /// read-ahead starts again (small) from the furthest read (what did
    /// arrive is in the cache and is not fetched again).
    fn cancel(&mut self, first_request: u64) {
        if self.tasks.is_empty() {
            return;
        }
        for t in self.tasks.drain(..).flatten() {
            t.abort();
        }
        self.not_before = None;
        self.ahead = self.pos;
        self.next_request = first_request;
    }

    /// Whether a read at `offset` continues this run.
    fn continued_by(&self, offset: u64, tolerance: u64) -> bool {
        let back = tolerance.max(1 << 20);
        offset.saturating_add(back) >= self.pos
            && offset <= self.ahead.max(self.pos).saturating_add(tolerance)
    }

    fn top_up(&mut self, cfg: &PrefetchConfig, vault: &Vault, node: &Inode) {
        if !self.served || !(self.start == 0 || self.reads >= 2) {
            return;
        }
        let Some(cache) = vault.read_cache.get() else {
            return;
        };
        let rate = cache.delivery_rate();
        let cap = rate
            .map_or(cfg.min_request, |r| {
                (r * cfg.request_time.as_secs_f64()) as u64
            })
            .clamp(cfg.min_request, cfg.max_request);
        let cap = round_to_segments(cap);
        let (window, max_in_flight) = if vault.caps.range_reads {
            let k = cfg.max_in_flight;
            (cap.saturating_mul(k as u64), k)
        } else {
            // A request brings a whole chunk: fetch the next chunk while the
            // reader is in this one, one at a time (two would share the link
            // and delay the one the reader waits for).
            (u64::from(node.chunk_size).max(cap), 1)
        };
        self.window = window;
        let now = Instant::now();
        while self.tasks.len() < max_in_flight && self.ahead < node.size {
            let n = self.next_request.min(cap);
            if self.ahead.saturating_add(n) > self.pos.saturating_add(window) {
                break;
            }
            let from = self.ahead;
            let to = round_to_segments(from.saturating_add(n)).min(node.size);
            let delay = self
                .not_before
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
            let req = vault.prefetch_range_after(node, from, to - from, delay);
            if !req.is_empty() {
                trace!(from, to, ?delay, rate, cap, "read-ahead");
                self.tasks.push(req);
                // Two requests issued together share the link and arrive
                // together, and the link idles while the next two are on
                // their way: start the next one half a transfer later.
                self.not_before = rate
                    .and_then(|r| Duration::try_from_secs_f64((to - from) as f64 / r / 2.0).ok())
                    .map(|half| now + delay + half);
            }
            self.ahead = to;
            self.next_request = self.next_request.saturating_mul(2).min(cap);
        }
    }
}

impl Prefetcher {
    pub fn new(cfg: PrefetchConfig) -> Self {
        let first = round_to_segments(cfg.first_request.max(SEGMENT));
        let min = round_to_segments(cfg.min_request.max(first));
        let cfg = PrefetchConfig {
            first_request: first,
            min_request: min,
            max_request: round_to_segments(cfg.max_request.max(min)),
            request_time: cfg.request_time,
            max_in_flight: cfg.max_in_flight.max(1),
            tolerance: cfg.tolerance,
        };
        Prefetcher {
            cfg,
            runs: Vec::new(),
            next_id: 1,
            clock: 0,
        }
    }

    fn latest(&self) -> Option<&Run> {
        self.runs.iter().max_by_key(|r| r.last_use)
    }

    /// How far past its furthest read the most recently used run's
    /// read-ahead may reach now, in bytes (0 until that run is sequential
    /// and under way).
    pub fn window(&self) -> u64 {
        self.latest().map_or(0, |r| r.window)
    }

    /// File offset up to which the most recently used run has issued
    /// read-ahead.
    pub fn frontier(&self) -> u64 {
        self.latest().map_or(0, |r| r.ahead)
    }

    /// Runs followed now.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Read-ahead requests issued and not finished yet (all runs).
    pub fn in_flight(&mut self) -> usize {
        self.runs
            .iter_mut()
            .map(|r| {
                r.reap();
                r.tasks.len()
            })
            .sum()
    }

    /// Abort every read-ahead request in flight.
    pub fn cancel(&mut self) {
        let first = self.cfg.first_request;
        self.runs.iter_mut().for_each(|r| r.cancel(first));
    }

    /// Note a read of `len` bytes at `offset` of `node` (before serving it)
    /// and issue read-ahead. Returns the run the read belongs to, for
    /// [`Prefetcher::on_read_done`].
    pub fn on_read(&mut self, vault: &Vault, node: &Inode, offset: u64, len: u64) -> u64 {
        let end = offset.saturating_add(len).min(node.size).max(offset);
        self.clock += 1;
        let tol = self.cfg.tolerance;
        let found = self
            .runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.continued_by(offset, tol))
            .min_by_key(|(_, r)| offset.abs_diff(r.pos))
            .map(|(i, _)| i);
        let Some(i) = found else {
            // a seek, or a new stream
            let inflight = self.in_flight();
            if inflight > 0 {
                debug!(offset, tasks = inflight, "seek: cancelling read-ahead");
            }
            self.cancel();
            if self.runs.len() >= MAX_RUNS {
                if let Some(j) = (0..self.runs.len()).min_by_key(|&j| self.runs[j].last_use) {
                    self.runs.swap_remove(j);
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            self.runs.push(Run {
                id,
                last_use: self.clock,
                start: offset,
                pos: end,
                reads: 1,
                served: false,
                ahead: end,
                next_request: self.cfg.first_request,
                window: 0,
                not_before: None,
                tasks: Vec::new(),
            });
            return id;
        };
        let cfg = self.cfg;
        let run = &mut self.runs[i];
        run.last_use = self.clock;
        run.reap();
        run.reads += 1;
        run.pos = run.pos.max(end);
        run.ahead = run.ahead.max(run.pos);
        run.top_up(&cfg, vault, node);
        run.id
    }

    /// A read noted with [`Prefetcher::on_read`] (which returned `run`) has
    /// been served: that run's read-ahead may start or continue — if it is
    /// still the run read last (a read that finishes after a seek must not
    /// restart the read-ahead the seek cancelled).
    pub fn on_read_done(&mut self, vault: &Vault, node: &Inode, run: u64) {
        let cfg = self.cfg;
        let clock = self.clock;
        if let Some(r) = self.runs.iter_mut().find(|r| r.id == run) {
            r.served = true;
            if r.last_use == clock {
                r.reap();
                r.top_up(&cfg, vault, node);
            }
        }
    }
}

impl Default for Prefetcher {
    fn default() -> Self {
        Prefetcher::new(PrefetchConfig::default())
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn delivery_rate_counts_overlapping_requests_once() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let mut m = LinkMeter::default();
        assert_eq!(m.rate(), None);
        // two overlapping requests (0..100, 50..200 ms) and one after a
        // gap (300..400 ms): 300 KB over 300 ms of busy time
        m.record_span(ms(0), ms(100), 100_000);
        m.record_span(ms(50), ms(200), 100_000);
        m.record_span(ms(300), ms(400), 100_000);
        let r = m.rate().unwrap();
        assert!((r - 1e6).abs() < 1e3, "{r}");
        // only the most recent requests count
        for i in 0..METER_REQUESTS as u64 {
            m.record_span(ms(1000 + 10 * i), ms(1010 + 10 * i), 50_000);
        }
        let r = m.rate().unwrap();
        assert!((r - 5e6).abs() < 5e3, "{r}");
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
        assert!(!ours.exists());
        assert!(sub.join("keep.txt").exists());
        assert!(d.path().join("other").exists());
        assert_eq!(c.stats().size, 0);
    }
}
