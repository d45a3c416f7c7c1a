//! The read cache and read-ahead of a mount: store requests and bytes are
//! counted with the store stack's metrics (and the cache's own counters).

use std::future::Future;
use std::io::Cursor;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use strata_core::data::FileMeta;
use strata_core::format::blob::{segment_range, SEGMENT};
use strata_core::prefetch::{PrefetchConfig, Prefetcher};
use strata_core::readcache::ReadCache;
use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::ReadCacheOptions;
use strata_core::{Inode, Vault, VaultError};
use strata_crypto::KdfParams;
use strata_store::{
    build_stack, open_url, Bytes, Capabilities, DynStore, FaultOp, FaultPlan, FaultStore, Metrics,
    MetricsSnapshot, ObjectMeta, Store, StoreErrorKind, StoreOptions, StoreResult,
};

const PW: &[u8] = b"pw";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
static COUNTER: AtomicU64 = AtomicU64::new(0);

struct Env {
    vault: Arc<Vault>,
    metrics: Metrics,
    cache: Arc<ReadCache>,
    _state: tempfile::TempDir,
    cache_dir: tempfile::TempDir,
}

fn url(query: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("memory://readcache-{}-{n}{query}", std::process::id())
}

async fn env_on(store: DynStore, metrics: Metrics, chunk: u64, cap: u64) -> Env {
    env_backed(store, metrics, chunk, cap, true).await
}

/// A vault whose read cache is on disk (`disk`) or in memory.
async fn env_backed(store: DynStore, metrics: Metrics, chunk: u64, cap: u64, disk: bool) -> Env {
    let state = tempfile::tempdir().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let vault = Vault::create(
        store,
        PW,
        CreateOptions {
            kdf: KdfParams::insecure_for_tests(),
            chunk_size: chunk as u32,
        },
        OpenOptions {
            state_dir: Some(state.path().to_path_buf()),
            read_cache: Some(ReadCacheOptions {
                dir: disk.then(|| cache_dir.path().join("cache")),
                cap,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cache = vault.chunks().read_cache().cloned().unwrap();
    assert_eq!(cache.dir().is_some(), disk);
    Env {
        vault: Arc::new(vault),
        metrics,
        cache,
        _state: state,
        cache_dir,
    }
}

async fn env(query: &str, chunk: u64, cap: u64) -> Env {
    let (store, metrics) = open_url(&url(query)).unwrap();
    env_on(store, metrics, chunk, cap).await
}

fn random(len: u64, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn put(e: &Env, path: &str, data: &[u8]) -> Inode {
    e.vault
        .write_file(
            path,
            Box::new(Cursor::new(data.to_vec())),
            FileMeta::default(),
            true,
            None,
        )
        .await
        .unwrap();
    e.vault.commit().await.unwrap();
    e.vault.stat_path(path).unwrap()
}

fn snap(e: &Env) -> MetricsSnapshot {
    e.metrics.snapshot()
}

async fn read(e: &Env, node: &Inode, off: u64, len: u64) -> Vec<u8> {
    e.vault.read_at(node, off, len).await.unwrap()
}

fn slice(data: &[u8], off: u64, len: u64) -> &[u8] {
    let end = (off + len).min(data.len() as u64) as usize;
    &data[(off as usize).min(end)..end]
}

#[tokio::test]
async fn memory_cache_serves_repeats_and_read_ahead() {
    let (store, metrics) = open_url(&url("")).unwrap();
    let e = env_backed(store, metrics, MIB, 8 * MIB, false).await;
    let data = random(3 * MIB, 9);
    let node = put(&e, "/f", &data).await;
    let before = snap(&e);
    for _ in 0..2 {
        assert_eq!(
            read(&e, &node, 5000, 100_000).await,
            slice(&data, 5000, 100_000)
        );
    }
    let d = snap(&e).since(&before);
    assert_eq!(d.range_gets, 1, "{d:?}");
    let s = e.cache.stats();
    assert_eq!((s.misses, s.hits), (2, 2), "{s:?}");
    // sequential reads are read ahead into memory, and served from there
    let mut p = Prefetcher::default();
    let mut off = 0;
    while off < 3 * MIB {
        assert_eq!(
            read_ahead(&e, &mut p, &node, off, 128 * KIB).await,
            slice(&data, off, 128 * KIB)
        );
        off += 128 * KIB;
    }
    let s = e.cache.stats();
    assert!(s.prefetched > 0 && s.size <= s.cap, "{s:?}");
}

#[tokio::test]
async fn same_range_twice_goes_to_the_store_once() {
    let e = env("", MIB, 64 * MIB).await;
    let data = random(3 * MIB, 1);
    let node = put(&e, "/f", &data).await;
    let before = snap(&e);
    for _ in 0..2 {
        assert_eq!(
            read(&e, &node, 1000, 200_000).await,
            slice(&data, 1000, 200_000)
        );
    }
    let d = snap(&e).since(&before);
    assert_eq!(d.range_gets, 1, "{d:?}");
    assert_eq!(d.gets, 0);
    let s = e.cache.stats();
    assert_eq!(s.misses, 4, "{s:?}"); // 200 KB from offset 1000 spans 4 segments
    assert_eq!(s.hits, 4, "{s:?}");
    assert!(s.size > 0 && s.size <= s.cap);

    // a wider read only fetches what is missing, in one request per gap
    let before = snap(&e);
    assert_eq!(read(&e, &node, 0, 2 * MIB).await, slice(&data, 0, 2 * MIB));
    let d = snap(&e).since(&before);
    assert_eq!(d.range_gets, 2, "one gap in chunk 0, one chunk 1: {d:?}");
    assert!(d.bytes_down < 2 * MIB - 200_000, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_of_one_segment_share_one_request() {
    let e = env("", MIB, 64 * MIB).await;
    let data = random(MIB, 2);
    let node = Arc::new(put(&e, "/f", &data).await);
    let before = snap(&e);
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let v = e.vault.clone();
            let node = node.clone();
            let b = barrier.clone();
            tokio::spawn(async move {
                b.wait().await;
                v.read_at(&node, 3 * SEGMENT + 100 + i, 1000).await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap().unwrap();
        assert_eq!(got, slice(&data, 3 * SEGMENT + 100 + i as u64, 1000));
    }
    let d = snap(&e).since(&before);
    assert_eq!(d.range_gets + d.gets, 1, "{d:?}");
    assert!(d.bytes_down <= SEGMENT + 64, "{d:?}");
}

#[tokio::test]
async fn small_read_fetches_one_segment_not_the_chunk() {
    let e = env("", 4 * MIB, 64 * MIB).await;
    let data = random(4 * MIB, 3);
    let node = put(&e, "/f", &data).await;
    assert_eq!(node.chunks().len(), 1);
    let before = snap(&e);
    let off = 2 * MIB + 12345;
    assert_eq!(read(&e, &node, off, 10).await, slice(&data, off, 10));
    let d = snap(&e).since(&before);
    assert_eq!(d.range_gets, 1, "{d:?}");
    assert!(
        d.bytes_down > SEGMENT && d.bytes_down <= SEGMENT + 64,
        "{d:?}"
    );
    assert_eq!(e.cache.stats().size, d.bytes_down);
}

#[tokio::test]
async fn rangeless_store_fetches_a_chunk_once_whole() {
    let e = env("?range-reads=false", MIB, 64 * MIB).await;
    let data = random(2 * MIB + 5000, 4);
    let node = put(&e, "/f", &data).await;
    let before = snap(&e);
    assert_eq!(read(&e, &node, 10, 10).await, slice(&data, 10, 10));
    let d = snap(&e).since(&before);
    assert_eq!((d.gets, d.range_gets), (1, 0), "{d:?}");
    // other segments of the same chunk are now hits
    let mid = snap(&e);
    for off in [300 * KIB, MIB - 5000, 0] {
        assert_eq!(read(&e, &node, off, 4000).await, slice(&data, off, 4000));
    }
    assert_eq!(snap(&e).since(&mid).requests(), 0);
    assert!(e.cache.stats().hits >= 3);
    // a read spanning chunks 0 and 1 fetches chunk 1 once
    let mid = snap(&e);
    assert_eq!(
        read(&e, &node, MIB - 100, 300 * KIB).await,
        slice(&data, MIB - 100, 300 * KIB)
    );
    assert_eq!(snap(&e).since(&mid).gets, 1);
    // whole file through export: only chunk 2 is new
    let mid = snap(&e);
    let mut out = Vec::new();
    e.vault.export(&node, &mut out, None).await.unwrap();
    assert_eq!(out, data);
    assert_eq!(snap(&e).since(&mid).gets, 1);
}

#[tokio::test]
async fn cap_evicts_least_recently_used_blobs() {
    let cap = 2 * MIB + 512 * KIB;
    let e = env("", MIB, cap).await;
    let mut files = Vec::new();
    for i in 0..6 {
        let data = random(MIB, 10 + i);
        let node = put(&e, &format!("/f{i}"), &data).await;
        files.push((node, data));
    }
    for (node, data) in &files {
        assert_eq!(&read(&e, node, 0, MIB).await, data);
        let s = e.cache.stats();
        assert!(s.size <= cap, "{s:?}");
    }
    let s = e.cache.stats();
    assert!(s.evictions >= 4, "{s:?}");
    assert!(s.blobs <= 2, "{s:?}");
    // the newest file is still cached; the oldest was evicted
    let before = snap(&e);
    assert_eq!(read(&e, &files[5].0, 0, MIB).await, files[5].1);
    assert_eq!(snap(&e).since(&before).requests(), 0);
    assert_eq!(read(&e, &files[0].0, 0, MIB).await, files[0].1);
    assert_eq!(snap(&e).since(&before).range_gets, 1);
    assert!(e.cache.stats().size <= cap);
    // evicted blobs' files are gone from disk
    let id0 = files[1].0.chunks()[0].unwrap().id;
    assert!(!e.cache.blob_path(&id0).unwrap().exists());
}

#[tokio::test]
async fn corrupted_cache_file_is_healed_from_the_store() {
    let e = env("", MIB, 64 * MIB).await;
    let data = random(MIB, 5);
    let node = put(&e, "/f", &data).await;
    let c = node.chunks()[0].unwrap();
    assert_eq!(
        read(&e, &node, 0, 3 * SEGMENT).await,
        slice(&data, 0, 3 * SEGMENT)
    );
    let path = e.cache.blob_path(&c.id).unwrap();
    assert!(path.exists());
    assert!(path.starts_with(e.cache_dir.path()));
    // flip a byte inside segment 1 of the cache file
    let mut bytes = std::fs::read(&path).unwrap();
    let at = segment_range(u64::from(c.blob_len), 1, 1).start as usize + 77;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let before = snap(&e);
    assert_eq!(
        read(&e, &node, 1000, 2 * SEGMENT).await,
        slice(&data, 1000, 2 * SEGMENT)
    );
    let d = snap(&e).since(&before);
    assert_eq!(d.range_gets, 1, "refetched once: {d:?}");
    let s = e.cache.stats();
    assert_eq!(s.invalidations, 1, "{s:?}");
    // the refetched bytes are cached again and good
    let before = snap(&e);
    assert_eq!(
        read(&e, &node, 0, 3 * SEGMENT).await,
        slice(&data, 0, 3 * SEGMENT)
    );
    assert_eq!(snap(&e).since(&before).requests(), 0);

    // a truncated / vanished cache file is refetched silently
    std::fs::write(&path, b"short").unwrap();
    assert_eq!(
        read(&e, &node, 0, 3 * SEGMENT).await,
        slice(&data, 0, 3 * SEGMENT)
    );
}

#[tokio::test]
async fn corruption_in_the_store_is_still_reported() {
    let plan = FaultPlan::new();
    let (mem, _) = open_url(&url("")).unwrap();
    let faulty: DynStore = Arc::new(FaultStore::new(mem, plan.clone()));
    let (store, metrics) = build_stack(faulty, &StoreOptions::default());
    let e = env_on(store, metrics, MIB, 64 * MIB).await;
    let data = random(MIB, 6);
    let node = put(&e, "/f", &data).await;
    plan.corrupt_reads("data/");
    let before = snap(&e);
    let err = e.vault.read_at(&node, 0, 1000).await.unwrap_err();
    assert!(matches!(err, VaultError::Corrupt { .. }), "{err}");
    assert_eq!(
        snap(&e).since(&before).range_gets,
        1,
        "fresh bytes are not refetched"
    );
    // nothing bad stays cached
    assert_eq!(e.cache.stats().size, 0);
    plan.clear();
    assert_eq!(read(&e, &node, 0, 1000).await, slice(&data, 0, 1000));
}

/// One read as a mount serves it: tell the read-ahead, serve, report back.
async fn read_ahead(e: &Env, p: &mut Prefetcher, node: &Inode, off: u64, len: u64) -> Vec<u8> {
    let run = p.on_read(e.vault.chunks(), node, off, len);
    // reads of a mount arrive as separate requests: let the runtime run
    // the read-ahead tasks in between
    tokio::task::yield_now().await;
    let got = read(e, node, off, len).await;
    p.on_read_done(e.vault.chunks(), node, run);
    got
}

#[tokio::test]
async fn sequential_reads_are_prefetched() {
    let e = env("", 4 * MIB, 256 * MIB).await;
    let size = 21 * MIB + 12345;
    let data = random(size, 7);
    let node = put(&e, "/movie", &data).await;
    let before = snap(&e);
    let mut p = Prefetcher::new(PrefetchConfig::default());
    let mut off = 0;
    let step = 128 * KIB;
    while off < size {
        assert_eq!(
            read_ahead(&e, &mut p, &node, off, step).await,
            slice(&data, off, step)
        );
        off += step;
    }
    let min = PrefetchConfig::default().min_request;
    assert!(p.window() >= 2 * min, "{}", p.window());
    // let stragglers finish (there should be none past EOF)
    tokio::time::sleep(Duration::from_millis(50)).await;
    let d = snap(&e).since(&before);
    let s = e.cache.stats();
    let ratio = d.bytes_down as f64 / size as f64;
    assert!(
        ratio <= 1.05,
        "fetched {} for {size}: {d:?} {s:?}",
        d.bytes_down
    );
    assert!(d.bytes_down >= size);
    let segs = size.div_ceil(SEGMENT);
    assert!(s.misses <= 4, "only the first read should miss: {s:?}");
    assert!(s.hits >= segs - 4, "{s:?}");
    assert!(s.prefetched >= segs - 4, "{s:?}");
    // requests stay large: at least the minimum request size (one more
    // wherever a request crosses a chunk boundary)
    assert!(d.range_gets <= size / min + size / (4 * MIB) + 4, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_are_prefetched_multithreaded() {
    let e = env("", MIB, 256 * MIB).await;
    let size = 9 * MIB + 3;
    let data = random(size, 8);
    let node = put(&e, "/movie", &data).await;
    let before = snap(&e);
    let mut p = Prefetcher::default();
    let mut off = 0;
    while off < size {
        assert_eq!(
            read_ahead(&e, &mut p, &node, off, 100_000).await,
            slice(&data, off, 100_000)
        );
        off += 100_000;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let d = snap(&e).since(&before);
    assert!(d.bytes_down as f64 / size as f64 <= 1.05, "{d:?}");
    assert!(e.cache.stats().hits > 0);
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// A slow link in front of a store: every `get`/`get_range` answer takes a
/// fixed latency and then queues for a shared bandwidth (first come, first
/// served), like a bottleneck router; an infinite bandwidth leaves only the
/// latency. Cancelled requests stop at once.
struct Link {
    inner: DynStore,
    latency: Duration,
    bytes_per_sec: f64,
    free_at: std::sync::Mutex<tokio::time::Instant>,
}

impl Link {
    fn new(inner: DynStore, latency: Duration, bytes_per_sec: f64) -> Self {
        Link {
            inner,
            latency,
            bytes_per_sec,
            free_at: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn carry(&self, res: StoreResult<Bytes>) -> StoreResult<Bytes> {
        let n = res.as_ref().map_or(0, |b| b.len());
        let done = {
            let mut free = self.free_at.lock().unwrap();
            let start = (tokio::time::Instant::now() + self.latency).max(*free);
            *free = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            *free
        };
        tokio::time::sleep_until(done).await;
        res
    }
}

impl Store for Link {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put<'a, 'b, 'c>(&'a self, key: &'b str, data: Bytes) -> Fut<'c, ()>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put(key, data)
    }
    fn put_if_absent<'a, 'b, 'c>(&'a self, key: &'b str, data: Bytes) -> Fut<'c, bool>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.put_if_absent(key, data)
    }
    fn get<'a, 'b, 'c>(&'a self, key: &'b str) -> Fut<'c, Bytes>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move { self.carry(self.inner.get(key).await).await })
    }
    fn get_range<'a, 'b, 'c>(&'a self, key: &'b str, range: Range<u64>) -> Fut<'c, Bytes>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        Box::pin(async move { self.carry(self.inner.get_range(key, range).await).await })
    }
    fn list<'a, 'b, 'c>(&'a self, prefix: &'b str) -> Fut<'c, Vec<ObjectMeta>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.list(prefix)
    }
    fn delete<'a, 'b, 'c>(&'a self, key: &'b str) -> Fut<'c, ()>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.delete(key)
    }
    fn stat<'a, 'b, 'c>(&'a self, key: &'b str) -> Fut<'c, Option<ObjectMeta>>
    where
        'a: 'c,
        'b: 'c,
        Self: 'c,
    {
        self.inner.stat(key)
    }
}

/// A player over a slow link: read 4 MiB, seek, read 2 MiB, close. What the
/// read-ahead fetched for nothing stays within its window at each of the two
/// stops, and most reads were served by the read-ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_waste_at_a_seek_and_a_stop_is_bounded() {
    // under the metrics: bytes_down counts answers that came over the link
    let (mem, _) = open_url(&url("")).unwrap();
    let link: DynStore = Arc::new(Link::new(mem, Duration::from_millis(10), 8e6));
    let (store, metrics) = build_stack(link, &StoreOptions::default());
    let e = env_on(store, metrics, 4 * MIB, 256 * MIB).await;
    let data = random(24 * MIB, 11);
    let node = put(&e, "/movie", &data).await;
    let before = snap(&e);
    let mut p = Prefetcher::default();
    let step = 128 * KIB;
    let mut widest = 0;
    for (start, len) in [(0, 4 * MIB), (16 * MIB + 5000, 2 * MIB)] {
        let mut off = start;
        while off < start + len {
            let n = step.min(start + len - off);
            assert_eq!(
                read_ahead(&e, &mut p, &node, off, n).await,
                slice(&data, off, n)
            );
            widest = widest.max(p.window());
            off += n;
        }
    }
    drop(p); // close: cancels what is in flight
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = snap(&e).since(&before);
    let read = 6 * MIB;
    // requests are sized to ~100 ms at 8 MB/s: the window stays small
    assert!(widest <= 2 * MIB, "window {widest}");
    assert!(d.bytes_down >= read, "{d:?}");
    assert!(
        d.bytes_down <= read + 2 * widest + 4 * SEGMENT,
        "fetched {} for {read} (window {widest}): {d:?}",
        d.bytes_down
    );
    let s = e.cache.stats();
    assert!(s.prefetched * SEGMENT >= read / 2, "{s:?}");
}

/// A player pulling two streams from one file (or two handles reading
/// different places): each stream keeps its own read-ahead instead of every
/// read looking like a seek.
#[tokio::test]
async fn interleaved_streams_each_get_read_ahead() {
    let e = env("", 4 * MIB, 256 * MIB).await;
    let size = 16 * MIB;
    let data = random(size, 13);
    let node = put(&e, "/movie", &data).await;
    let before = snap(&e);
    let mut p = Prefetcher::default();
    let step = 64 * KIB;
    let (mut a, mut b) = (0, 8 * MIB);
    for _ in 0..48 {
        for off in [&mut a, &mut b] {
            assert_eq!(
                read_ahead(&e, &mut p, &node, *off, step).await,
                slice(&data, *off, step)
            );
            *off += step;
        }
    }
    assert_eq!(p.runs(), 2);
    drop(p);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = e.cache.stats();
    let read = 2 * 48 * step;
    assert!(s.misses <= 4, "only each stream's first read misses: {s:?}");
    assert!(s.prefetched * SEGMENT >= read - 4 * step, "{s:?}");
    let d = snap(&e).since(&before);
    let min = PrefetchConfig::default().min_request;
    assert!(d.bytes_down <= read + 2 * 2 * min + 4 * SEGMENT, "{d:?}");
}

/// Without range reads a request is a whole chunk: the read-ahead keeps the
/// next chunk coming, never the one after it.
#[tokio::test]
async fn rangeless_read_ahead_keeps_one_chunk_coming() {
    let e = env("?range-reads=false", MIB, 64 * MIB).await;
    let data = random(6 * MIB, 12);
    let node = put(&e, "/movie", &data).await;
    let before = snap(&e);
    let mut p = Prefetcher::default();
    let step = 128 * KIB;
    let mut off = 0;
    while off < 5 * MIB / 2 {
        assert_eq!(
            read_ahead(&e, &mut p, &node, off, step).await,
            slice(&data, off, step)
        );
        off += step;
    }
    drop(p);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let d = snap(&e).since(&before);
    // chunks 0..=2 are read; chunk 3 may be on its way; never chunk 4
    assert!(d.gets <= 4, "{d:?}");
    assert!(!e.cache.is_cached(&node.chunks()[4].unwrap().id, 0));
    assert_eq!(d.range_gets, 0);
}

#[tokio::test]
async fn a_seek_cancels_read_ahead() {
    let (mem, metrics) = open_url(&url("")).unwrap();
    let slow: DynStore = Arc::new(Link::new(mem, Duration::from_millis(100), f64::INFINITY));
    let e = env_on(slow, metrics, 4 * MIB, 256 * MIB).await;
    let size = 24 * MIB;
    let data = random(size, 9);
    let node = put(&e, "/movie", &data).await;
    let mut p = Prefetcher::default();
    let step = 128 * KIB;
    for i in 0..8 {
        assert_eq!(
            read_ahead(&e, &mut p, &node, i * step, step).await,
            slice(&data, i * step, step)
        );
    }
    assert!(p.window() >= 2 * PrefetchConfig::default().min_request);
    assert!(p.in_flight() > 0, "read-ahead should be under way");
    let before = snap(&e);
    let off = 20 * MIB + 1000;
    let run = p.on_read(e.vault.chunks(), &node, off, MIB);
    assert_eq!(p.in_flight(), 0);
    assert_eq!(read(&e, &node, off, MIB).await, slice(&data, off, MIB));
    p.on_read_done(e.vault.chunks(), &node, run);
    // one read after a seek is not a sequential run yet: no read-ahead
    assert_eq!(p.in_flight(), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let d = snap(&e).since(&before);
    assert!(
        d.bytes_down <= MIB + 2 * SEGMENT,
        "fetched {} after the seek: {d:?}",
        d.bytes_down
    );
    // sequential again from the new position: read-ahead resumes
    let next = off + MIB;
    let run = p.on_read(e.vault.chunks(), &node, next, step);
    assert!(
        p.in_flight() > 0,
        "the second read of a run starts read-ahead"
    );
    assert_eq!(read(&e, &node, next, step).await, slice(&data, next, step));
    p.on_read_done(e.vault.chunks(), &node, run);
}

/// The first read after an open or a seek has the link to itself: read-ahead
/// starts once it has been served.
#[tokio::test]
async fn the_first_read_goes_alone() {
    let (mem, metrics) = open_url(&url("")).unwrap();
    let slow: DynStore = Arc::new(Link::new(mem, Duration::from_millis(50), f64::INFINITY));
    let e = env_on(slow, metrics, 4 * MIB, 256 * MIB).await;
    let data = random(8 * MIB, 10);
    let node = put(&e, "/movie", &data).await;
    let mut p = Prefetcher::default();
    let before = snap(&e);
    let run = p.on_read(e.vault.chunks(), &node, 0, 16 * KIB);
    assert_eq!(p.in_flight(), 0, "nothing may compete with the first read");
    assert_eq!(
        read(&e, &node, 0, 16 * KIB).await,
        slice(&data, 0, 16 * KIB)
    );
    let seg0 = segment_range(4 * MIB, 0, 0);
    assert_eq!(snap(&e).since(&before).bytes_down, seg0.end - seg0.start);
    p.on_read_done(e.vault.chunks(), &node, run);
    // a run from offset 0 is sequential at once; requests start small
    assert!(p.in_flight() > 0);
    assert!(p.frontier() <= 16 * KIB + 2 * PrefetchConfig::default().min_request);
    // a read reported from an earlier run does not release a new run
    let old = run;
    let run = p.on_read(e.vault.chunks(), &node, 6 * MIB, 4 * KIB);
    p.on_read_done(e.vault.chunks(), &node, old);
    let mid = snap(&e);
    assert_eq!(
        p.on_read(e.vault.chunks(), &node, 6 * MIB + 4 * KIB, 4 * KIB),
        run
    );
    assert_eq!(p.in_flight(), 0, "held until a read of this run is served");
    assert_eq!(snap(&e).since(&mid).requests(), 0);
}

#[tokio::test]
async fn holes_are_not_prefetched() {
    let e = env("", MIB, 64 * MIB).await;
    let mut data = vec![0u8; 4 * MIB as usize];
    data[..1000].fill(1); // chunk 0 has data; chunks 1..3 are holes
    data[3 * MIB as usize + 5..3 * MIB as usize + 10].fill(2);
    let node = put(&e, "/sparse", &data).await;
    assert!(node.chunks()[1].is_none() && node.chunks()[2].is_none());
    let before = snap(&e);
    let mut p = Prefetcher::default();
    let mut off = 0;
    while off < 4 * MIB {
        assert_eq!(
            read_ahead(&e, &mut p, &node, off, 256 * KIB).await,
            slice(&data, off, 256 * KIB)
        );
        off += 256 * KIB;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let d = snap(&e).since(&before);
    assert!(d.bytes_down <= 2 * MIB + 4 * KIB, "{d:?}");
}

/// Many readers with read-ahead, random seeks and a tiny cache: data always
/// correct, cache stays under its cap once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_random_and_sequential_readers() {
    let cap = 3 * MIB / 2;
    let e = env("", MIB, cap).await;
    let mut files = Vec::new();
    for i in 0..3 {
        let data = Arc::new(random(3 * MIB + 777 * i, 20 + i));
        let node = Arc::new(put(&e, &format!("/f{i}"), &data).await);
        files.push((node, data));
    }
    let files = Arc::new(files);
    let tasks: Vec<_> = (0..6u64)
        .map(|t| {
            let v = e.vault.clone();
            let files = files.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let (node, data) = &files[(t % 3) as usize];
                let mut p = Prefetcher::new(PrefetchConfig {
                    max_request: 256 * KIB,
                    tolerance: 0,
                    ..PrefetchConfig::default()
                });
                let mut off = 0u64;
                for _ in 0..60 {
                    if rng.gen_bool(0.2) {
                        off = rng.gen_range(0..node.size);
                    }
                    let len = rng.gen_range(1..200_000u64);
                    let run = p.on_read(v.chunks(), node, off, len);
                    let got = v.read_at(node, off, len).await.unwrap();
                    assert_eq!(got, slice(data, off, len));
                    p.on_read_done(v.chunks(), node, run);
                    off = (off + len).min(node.size);
                    if off == node.size {
                        off = 0;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = e.cache.stats();
    assert!(s.size <= cap, "{s:?}");
    assert!(s.hits > 0, "{s:?}");
}

/// A waiter whose fetcher fails retries on its own; nobody hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_of_a_failed_fetch_do_not_hang() {
    let plan = FaultPlan::new();
    let (mem, _) = open_url(&url("")).unwrap();
    let faulty: DynStore = Arc::new(FaultStore::new(mem, plan.clone()));
    let (store, metrics) = build_stack(faulty, &StoreOptions::default());
    let e = env_on(store, metrics, MIB, 64 * MIB).await;
    let data = random(MIB, 30);
    let node = Arc::new(put(&e, "/f", &data).await);
    plan.fail_next(FaultOp::GetRange, 1, StoreErrorKind::Other);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let v = e.vault.clone();
            let node = node.clone();
            tokio::spawn(async move { v.read_at(&node, 5000, 1000).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("a read hung")
            .unwrap();
        if let Ok(got) = r {
            assert_eq!(got, slice(&data, 5000, 1000));
            ok += 1;
        }
    }
    assert!(ok >= 7, "only the fetcher itself sees the error ({ok} ok)");
    assert_eq!(read(&e, &node, 5000, 1000).await, slice(&data, 5000, 1000));
}

/// A read dropped while fetching (a cancelled request) releases its claim.
#[tokio::test]
async fn cancelled_fetcher_releases_its_waiters() {
    let (mem, metrics) = open_url(&url("")).unwrap();
    let slow: DynStore = Arc::new(Link::new(mem, Duration::from_millis(200), f64::INFINITY));
    let e = env_on(slow, metrics, MIB, 64 * MIB).await;
    let data = random(MIB, 31);
    let node = Arc::new(put(&e, "/f", &data).await);
    let (v, n) = (e.vault.clone(), node.clone());
    let first = tokio::spawn(async move { v.read_at(&n, 0, 100).await });
    tokio::time::sleep(Duration::from_millis(20)).await; // first has claimed
    let (v, n) = (e.vault.clone(), node.clone());
    let second = tokio::spawn(async move { v.read_at(&n, 50, 100).await });
    tokio::time::sleep(Duration::from_millis(20)).await; // second waits
    first.abort();
    let got = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("waiter hung after its fetcher was cancelled")
        .unwrap()
        .unwrap();
    assert_eq!(got, slice(&data, 50, 100));
}
