//! Behavioural tests of the store layer through its public API: one
//! conformance suite run against `memory://` and `file://`, plus the layers,
//! fault injection, URL parsing and size parsing. (The conformance suite
//! lives in `common/`, shared with `http_basic.rs`.)

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use strata_store::{
    build_stack, open_url, parse_size, Bytes, CapStore, Capabilities, ConcurrencyLimit, DynStore,
    FaultOp, FaultPlan, FaultStore, Metrics, MetricsSnapshot, MetricsStore, ObjectMeta,
    OpendalStore, RetryPolicy, RetryStore, Store, StoreErrorKind, StoreOptions, StoreResult,
};

mod common;

use common::{bytes_of, conformance, keys, many_objects};

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
    }
}

#[tokio::test]
async fn memory_conformance() {
    conformance(Arc::new(OpendalStore::memory("").unwrap())).await;
}

#[tokio::test]
async fn fs_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = OpendalStore::fs(&dir.path().join("store")).unwrap();
    assert_eq!(
        store.describe(),
        format!("file://{}", dir.path().join("store").display())
    );
    conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn url_stack_conformance() {
    let (mem, _) = open_url("memory://").unwrap();
    conformance(mem).await;
    let dir = tempfile::tempdir().unwrap();
    let (fs, _) = open_url(&format!("file://{}/s", dir.path().display())).unwrap();
    conformance(fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_many_objects() {
    many_objects(Arc::new(OpendalStore::memory("").unwrap()), 3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_many_objects() {
    let dir = tempfile::tempdir().unwrap();
    many_objects(Arc::new(OpendalStore::fs(dir.path()).unwrap()), 3000).await;
}

// ---------------------------------------------------------------------------
// Backend specifics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn memory_stores_are_shared_by_name() {
    let a = OpendalStore::memory("shared-by-name-test").unwrap();
    a.put("k", Bytes::from_static(b"hello")).await.unwrap();
    let b = OpendalStore::memory("shared-by-name-test").unwrap();
    assert_eq!(b.get("k").await.unwrap(), Bytes::from_static(b"hello"));
    let (c, _) = open_url("memory://shared-by-name-test").unwrap();
    assert_eq!(c.get("k").await.unwrap(), Bytes::from_static(b"hello"));
    let other = OpendalStore::memory("shared-by-name-test-2").unwrap();
    assert_eq!(other.stat("k").await.unwrap(), None);

    // memory:// with no name is private every time.
    let (p1, _) = open_url("memory://").unwrap();
    p1.put("k", Bytes::from_static(b"x")).await.unwrap();
    let (p2, _) = open_url("memory://").unwrap();
    assert_eq!(p2.stat("k").await.unwrap(), None);
    assert_eq!(p1.stat("k").await.unwrap().unwrap().size, 1);
}

#[tokio::test]
async fn fs_put_is_durable_in_place_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vault");
    let store = OpendalStore::fs(&root).unwrap();
    assert!(root.is_dir(), "root created");
    assert_eq!(store.fs_root(), Some(root.as_path()));
    let data = bytes_of(4 << 20, 9);
    store.put("data/ab/cdef", data.clone()).await.unwrap();
    assert_eq!(std::fs::read(root.join("data/ab/cdef")).unwrap(), data);
    assert!(store
        .put_if_absent("data/ab/new", data.clone())
        .await
        .unwrap());
    assert!(!store
        .put_if_absent("data/ab/new", Bytes::new())
        .await
        .unwrap());
    assert_eq!(std::fs::read(root.join("data/ab/new")).unwrap(), data);
    // Every temp file is gone (renamed into place or removed).
    let tmp = root.join(".strata-tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    // The hard-link trick left exactly one link to the object.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(root.join("data/ab/new")).unwrap().nlink(),
            1
        );
    }
    // Files written by other means are objects too.
    std::fs::write(root.join("data/ab/outside"), b"xyz").unwrap();
    assert_eq!(
        store.get("data/ab/outside").await.unwrap(),
        Bytes::from_static(b"xyz")
    );
}

#[tokio::test]
async fn fs_crash_leftovers_are_invisible_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = OpendalStore::fs(dir.path()).unwrap();
    store.put("a", Bytes::from_static(b"1")).await.unwrap();
    // A writer "crashed" mid-put: its temp file stays behind.
    let tmp = dir.path().join(".strata-tmp");
    let fresh = tmp.join("fresh.tmp");
    let stale = tmp.join("stale.tmp");
    std::fs::write(&fresh, b"half").unwrap();
    std::fs::write(&stale, b"half").unwrap();
    let f = std::fs::File::options().write(true).open(&stale).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    drop(f);
    assert_eq!(keys(&store.list("").await.unwrap()), ["a"]);
    assert!(
        store.get(".strata-tmp/fresh.tmp").await.is_err(),
        "reserved"
    );
    // Reopening sweeps stale temp files but leaves fresh ones (another
    // process may be writing them).
    let _again = OpendalStore::fs(dir.path()).unwrap();
    assert!(fresh.exists());
    assert!(!stale.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_readers_never_see_partial_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(OpendalStore::fs(dir.path()).unwrap());
    let a = Bytes::from(vec![0xAA; 1 << 20]);
    let b = Bytes::from(vec![0xBB; 3 << 20]);
    store.put("obj", a.clone()).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, done) = (store.clone(), done.clone());
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                let v = if i % 2 == 0 { b.clone() } else { a.clone() };
                store.put("obj", v).await.unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut reads = 0;
    while !done.load(Ordering::SeqCst) {
        let got = store.get("obj").await.unwrap();
        assert!(
            got == a || got == b,
            "partial object of {} bytes",
            got.len()
        );
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 0);
}

#[tokio::test]
async fn fs_root_rules() {
    let dir = tempfile::tempdir().unwrap();
    let e = OpendalStore::fs(&dir.path().join("missing/parent/root")).unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("parent directory"), "{e}");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(OpendalStore::fs(&file).is_err());
    // Opening an existing store keeps its objects.
    let s = OpendalStore::fs(&dir.path().join("r")).unwrap();
    s.put("k/v", Bytes::from_static(b"v")).await.unwrap();
    let s2 = OpendalStore::fs(&dir.path().join("r")).unwrap();
    assert_eq!(s2.get("k/v").await.unwrap(), Bytes::from_static(b"v"));
    assert!(s2.capabilities().conditional_create);
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn max_object_size_rejects_and_writes_nothing() {
    let (s, m) = open_url("memory://?max-object-size=1KiB").unwrap();
    assert_eq!(s.capabilities().max_object_size, Some(1024));
    s.put("ok", bytes_of(1024, 0)).await.unwrap();
    let e = s.put("big/one", bytes_of(1025, 0)).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::TooLarge);
    let msg = e.to_string();
    for part in ["big/one", "1025", "1024"] {
        assert!(msg.contains(part), "{msg}");
    }
    assert_eq!(s.stat("big/one").await.unwrap(), None);
    let e = s
        .put_if_absent("big/two", bytes_of(5000, 0))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::TooLarge);
    assert_eq!(keys(&s.list("").await.unwrap()), ["ok"]);
    // TooLarge is not transient: no retries.
    assert_eq!(m.snapshot().puts, 3);

    // Narrowing: the smaller of inner and outer caps wins.
    let inner = CapStore::new(OpendalStore::memory("").unwrap()).with_max_object_size(Some(100));
    let outer = CapStore::new(inner).with_max_object_size(Some(1000));
    assert_eq!(outer.capabilities().max_object_size, Some(100));
    assert_eq!(
        outer.put("k", bytes_of(101, 0)).await.unwrap_err().kind(),
        StoreErrorKind::TooLarge
    );
}

#[tokio::test]
async fn range_reads_can_be_disabled() {
    for url in ["memory://?range-reads=false", "memory://?no-range"] {
        let (s, _) = open_url(url).unwrap();
        assert!(!s.capabilities().range_reads, "{url}");
        s.put("k", bytes_of(10, 0)).await.unwrap();
        let e = s.get_range("k", 0..4).await.unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Unsupported, "{url}");
        assert_eq!(s.get("k").await.unwrap(), bytes_of(10, 0));
    }
    let (s, _) = open_url("memory://?range-reads=true").unwrap();
    assert!(s.capabilities().range_reads);
    let caps = CapStore::new(OpendalStore::memory("").unwrap())
        .with_range_reads(false)
        .capabilities();
    assert_eq!(
        caps,
        Capabilities {
            range_reads: false,
            conditional_create: true,
            max_object_size: None
        }
    );
}

#[tokio::test]
async fn metrics_count_requests_and_bytes() {
    let (s, m) = open_url("memory://").unwrap();
    s.put("a", bytes_of(100, 0)).await.unwrap();
    s.put("b", bytes_of(50, 0)).await.unwrap();
    assert!(s.put_if_absent("c", bytes_of(7, 0)).await.unwrap());
    let before = m.snapshot();
    assert_eq!(before.gets + before.range_gets, 0);
    assert_eq!(s.get("a").await.unwrap().len(), 100);
    assert_eq!(s.get_range("a", 10..30).await.unwrap().len(), 20);
    assert_eq!(s.get_range("b", 40..100).await.unwrap().len(), 10);
    assert!(s.get("missing").await.is_err());
    s.list("").await.unwrap();
    s.stat("a").await.unwrap();
    s.delete("a").await.unwrap();
    let snap = m.snapshot();
    assert_eq!(
        snap,
        MetricsSnapshot {
            puts: 3,
            gets: 2,
            range_gets: 2,
            lists: 1,
            deletes: 1,
            stats: 1,
            bytes_up: 157,
            bytes_down: 130,
            errors: 1,
        }
    );
    assert_eq!(snap.requests(), 10);
    let d = snap.since(&before);
    assert_eq!(
        (d.puts, d.gets, d.range_gets, d.bytes_up, d.bytes_down),
        (0, 2, 2, 0, 130)
    );
    assert_eq!(d.requests(), 7);
    // Clones share counters.
    let m2 = m.clone();
    m2.reset();
    assert_eq!(m.snapshot(), MetricsSnapshot::default());
    assert_eq!(m.snapshot().requests(), 0);
}

/// Retry → metrics → faults → memory: a small stack with fast backoff.
fn faulty_stack(max_attempts: u32) -> (DynStore, Metrics, FaultPlan) {
    let plan = FaultPlan::new();
    let faulty = FaultStore::new(Arc::new(OpendalStore::memory("").unwrap()), plan.clone());
    let metrics = Metrics::new();
    let counted = MetricsStore::new(faulty, metrics.clone());
    (
        Arc::new(RetryStore::new(counted, fast_retry(max_attempts))),
        metrics,
        plan,
    )
}

#[tokio::test]
async fn retry_recovers_from_transient_faults_and_retries_are_counted() {
    let (s, m, plan) = faulty_stack(6);
    plan.fail_next(FaultOp::Put, 2, StoreErrorKind::Transient);
    s.put("k", bytes_of(10, 0)).await.unwrap();
    let snap = m.snapshot();
    assert_eq!((snap.puts, snap.errors, snap.bytes_up), (3, 2, 30));
    assert_eq!(plan.injected(), 2);

    plan.fail_next(FaultOp::Any, 3, StoreErrorKind::Transient);
    assert_eq!(s.get("k").await.unwrap(), bytes_of(10, 0));
    assert_eq!(m.snapshot().gets, 4);

    // Gives up after max_attempts, returning the transient error.
    plan.fail_next(FaultOp::Stat, 10, StoreErrorKind::Transient);
    let before = m.snapshot();
    let e = s.stat("k").await.unwrap_err();
    assert!(e.is_transient());
    assert!(e.message.contains("injected fault"), "{e}");
    assert_eq!(m.snapshot().since(&before).stats, 6);
    plan.clear();
    assert_eq!(s.stat("k").await.unwrap().unwrap().size, 10);
}

#[tokio::test]
async fn retry_does_not_hide_permanent_faults() {
    let (s, m, plan) = faulty_stack(6);
    s.put("k", bytes_of(10, 0)).await.unwrap();
    plan.fail_next(FaultOp::Get, 1, StoreErrorKind::Other);
    let e = s.get("k").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Other);
    assert_eq!(m.snapshot().gets, 1, "no retry of a permanent error");
    // NotFound is not retried either.
    assert!(s.get("missing").await.unwrap_err().is_not_found());
    assert_eq!(m.snapshot().gets, 2);

    // Crash: every write fails from now on, reads still work.
    plan.crash();
    assert!(plan.is_crashed());
    let before = m.snapshot();
    let e = s.put("k2", bytes_of(1, 0)).await.unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("injected fault"), "{e}");
    assert!(s.delete("k").await.is_err());
    assert!(s.put_if_absent("k3", Bytes::new()).await.is_err());
    let d = m.snapshot().since(&before);
    assert_eq!((d.puts, d.deletes), (2, 1), "no retries");
    assert_eq!(s.get("k").await.unwrap(), bytes_of(10, 0));
    plan.clear();
    assert_eq!(
        s.stat("k2").await.unwrap(),
        None,
        "crashed put wrote nothing"
    );
    s.put("k2", bytes_of(1, 0)).await.unwrap();
}

#[tokio::test]
async fn prefix_put_faults() {
    let (s, _, plan) = faulty_stack(6);
    plan.fail_puts_after("meta/", 2);
    s.put("meta/1", Bytes::from_static(b"1")).await.unwrap();
    s.put("meta/2", Bytes::from_static(b"2")).await.unwrap();
    for k in ["meta/3", "meta/4"] {
        let e = s.put(k, Bytes::from_static(b"x")).await.unwrap_err();
        assert!(
            !e.is_transient() && e.message.contains("injected fault"),
            "{e}"
        );
    }
    s.put("data/1", Bytes::from_static(b"d")).await.unwrap();
    assert_eq!(
        keys(&s.list("").await.unwrap()),
        ["data/1", "meta/1", "meta/2"]
    );
}

#[tokio::test]
async fn random_transient_faults_are_reproducible_and_retried_away() {
    async fn run(seed: u64) -> (u64, MetricsSnapshot) {
        let (s, m, plan) = faulty_stack(12);
        plan.random_failures(0.3, seed);
        for i in 0..100u32 {
            let k = format!("k/{i}");
            s.put(&k, bytes_of(i as usize, 1)).await.unwrap();
            assert_eq!(s.get(&k).await.unwrap(), bytes_of(i as usize, 1));
        }
        assert_eq!(s.list("k/").await.unwrap().len(), 100);
        (plan.injected(), m.snapshot())
    }
    let (injected, snap) = run(42).await;
    assert!(injected > 20, "{injected}");
    assert_eq!(snap.errors, injected);
    assert_eq!(snap.requests(), 201 + injected);
    assert_eq!(run(42).await, (injected, snap), "same seed, same faults");
}

#[tokio::test]
async fn corrupted_reads_flip_one_byte() {
    let (s, _, plan) = faulty_stack(1);
    let v = bytes_of(100, 3);
    s.put("data/x", v.clone()).await.unwrap();
    s.put("meta/x", v.clone()).await.unwrap();
    plan.corrupt_reads("data/");
    let got = s.get("data/x").await.unwrap();
    assert_eq!(got.len(), v.len());
    assert_eq!(got.iter().zip(v.iter()).filter(|(a, b)| a != b).count(), 1);
    let got = s.get_range("data/x", 10..20).await.unwrap();
    assert_ne!(got, v.slice(10..20));
    assert_eq!(
        s.get("meta/x").await.unwrap(),
        v,
        "other prefixes untouched"
    );
    plan.clear();
    assert_eq!(
        s.get("data/x").await.unwrap(),
        v,
        "stored data was never changed"
    );
}

#[tokio::test]
async fn lost_put_replies_are_retried() {
    let (s, m, plan) = faulty_stack(3);
    plan.lose_put_replies(1);
    s.put("k", bytes_of(5, 0)).await.unwrap();
    assert_eq!(m.snapshot().puts, 2);
    assert_eq!(s.get("k").await.unwrap(), bytes_of(5, 0));
    // A conditional create whose reply was lost looks like "already there".
    plan.lose_put_replies(1);
    assert!(!s.put_if_absent("c", bytes_of(5, 1)).await.unwrap());
    assert_eq!(s.get("c").await.unwrap(), bytes_of(5, 1));
}

#[tokio::test]
async fn full_url_stack_counts_retries() {
    let plan = FaultPlan::new();
    let base: DynStore = Arc::new(FaultStore::new(
        Arc::new(OpendalStore::memory("").unwrap()),
        plan.clone(),
    ));
    let opts = StoreOptions::from_query("retries=2").unwrap();
    let (s, m) = build_stack(base, &opts);
    plan.fail_next(FaultOp::Put, 2, StoreErrorKind::Transient);
    s.put("k", bytes_of(3, 0)).await.unwrap();
    assert_eq!((m.snapshot().puts, m.snapshot().errors), (3, 2));
    plan.fail_next(FaultOp::Put, 3, StoreErrorKind::Transient);
    assert!(s.put("k", bytes_of(3, 0)).await.unwrap_err().is_transient());
    assert_eq!(m.snapshot().puts, 6);
}

/// Counts how many calls are inside it at once.
struct Slow {
    now: AtomicUsize,
    max: AtomicUsize,
}

#[async_trait::async_trait]
impl Store for Slow {
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn describe(&self) -> String {
        "slow://".into()
    }
    async fn put(&self, _: &str, _: Bytes) -> StoreResult<()> {
        unimplemented!()
    }
    async fn put_if_absent(&self, _: &str, _: Bytes) -> StoreResult<bool> {
        unimplemented!()
    }
    async fn get(&self, _: &str) -> StoreResult<Bytes> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(Bytes::new())
    }
    async fn get_range(&self, k: &str, _: Range<u64>) -> StoreResult<Bytes> {
        self.get(k).await
    }
    async fn list(&self, _: &str) -> StoreResult<Vec<ObjectMeta>> {
        Ok(vec![])
    }
    async fn delete(&self, _: &str) -> StoreResult<()> {
        Ok(())
    }
    async fn stat(&self, _: &str) -> StoreResult<Option<ObjectMeta>> {
        Ok(None)
    }
}

#[tokio::test]
async fn concurrency_limit_bounds_in_flight_requests() {
    let slow = Arc::new(Slow {
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
    });
    let limited = Arc::new(ConcurrencyLimit::new(slow.clone(), 3));
    assert_eq!(limited.limit(), 3);
    stream::iter(0..30)
        .map(|_| {
            let l = limited.clone();
            async move { l.get("k").await.unwrap() }
        })
        .buffer_unordered(30)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(slow.max.load(Ordering::SeqCst), 3);

    // Unlimited for comparison: the same load really runs concurrently.
    slow.max.store(0, Ordering::SeqCst);
    stream::iter(0..30)
        .map(|_| {
            let s = slow.clone();
            async move { s.get("k").await.unwrap() }
        })
        .buffer_unordered(30)
        .collect::<Vec<_>>()
        .await;
    assert!(slow.max.load(Ordering::SeqCst) > 3);
}

#[test]
fn retry_backoff_is_bounded_full_jitter() {
    let p = RetryPolicy::default();
    assert_eq!(p.max_attempts, 6);
    assert_eq!(p.base_delay, Duration::from_millis(100));
    assert_eq!(p.max_delay, Duration::from_secs(5));
    for retry in 0..40 {
        let cap = Duration::from_millis(100)
            .saturating_mul(1 << retry.min(20))
            .min(Duration::from_secs(5));
        for _ in 0..20 {
            assert!(p.backoff(retry) <= cap, "retry {retry}");
        }
    }
    // Jitter: not always the same value.
    let draws: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(3)).collect();
    assert!(draws.len() > 10);
}

// ---------------------------------------------------------------------------
// URLs and sizes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn url_errors() {
    let err = |u: &str| match open_url(u) {
        Ok(_) => panic!("{u} should fail"),
        Err(e) => e,
    };
    let e = err("gopher://host/path");
    assert_eq!(e.kind(), StoreErrorKind::InvalidUrl);
    let msg = e.to_string();
    assert!(
        msg.contains("gopher")
            && msg.contains("file://")
            && msg.contains("s3://")
            && msg.contains("webdav+https://")
            && msg.contains("sftp://"),
        "{msg}"
    );

    // Cloud URLs: each mistake gets a message saying what to give instead.
    for (bad, says) in [
        ("s3://", "bucket"),
        (
            "s3://Bad_Bucket/x?endpoint=http://127.0.0.1:1",
            "bucket name",
        ),
        ("s3://b/x?endpoint=127.0.0.1:9000", "http://"),
        (
            "s3://b/x?endpoint=http://127.0.0.1:1&virtual-host=maybe",
            "true or false",
        ),
        (
            "s3://b/x?endpoint=http://127.0.0.1:1&credentials-file=/nonexistent/c",
            "/nonexistent/c",
        ),
        (
            "webdav+https://user:secret@host/dav/",
            "password in the URL",
        ),
        ("webdav+http://", "WebDAV URL"),
        (
            "webdav+http://h/dav/?password-file=/nonexistent/pw",
            "/nonexistent/pw",
        ),
        ("onedrive:/vault", "token-file"),
        (
            "onedrive:/vault?refresh-token-file=/etc/hostname",
            "client-id",
        ),
        (
            "onedrive:/vault?token-file=/nonexistent/t",
            "/nonexistent/t",
        ),
    ] {
        let e = err(bad);
        assert_eq!(e.kind(), StoreErrorKind::InvalidUrl, "{bad:?}: {e}");
        assert!(e.to_string().contains(says), "{bad:?}: {e}");
        assert!(!e.to_string().contains("secret"), "{bad:?}: {e}");
    }

    let e = err("memory://x?bogus=1");
    assert_eq!(e.kind(), StoreErrorKind::InvalidUrl);
    assert!(e.to_string().contains("bogus"), "{e}");

    for bad in [
        "memory://x?max-object-size=abc",
        "memory://x?max-object-size",
        "memory://x?max-object-size=0",
        "memory://x?concurrency=0",
        "memory://x?concurrency=many",
        "memory://x?retries=-1",
        "memory://x?range-reads=maybe",
        "memory://bad/name",
        "file://relative/path",
        "",
    ] {
        assert_eq!(err(bad).kind(), StoreErrorKind::InvalidUrl, "{bad:?}");
    }

    // Secrets never show up in errors or descriptions.
    let e = err("memory://x?token=hunter2");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let e = err("s3://me:hunter2@host/b");
    assert!(!e.to_string().contains("hunter2"), "{e}");

    // File paths are shown (they are where a secret is, not the secret);
    // secret values are not.
    let files = tempfile::tempdir().unwrap();
    let (k, kh) = (files.path().join("id"), files.path().join("known_hosts"));
    std::fs::write(&k, "not a real key").unwrap();
    std::fs::write(&kh, "").unwrap();
    let url = format!(
        "sftp://u@127.0.0.1:22/srv/v?key={}&known-hosts={}",
        k.display(),
        kh.display()
    );
    let (store, _) = open_url(&url).unwrap();
    assert!(
        store.describe().contains(&format!("key={}", k.display())),
        "{}",
        store.describe()
    );
    let e = err("memory://x?secret-key=hunter2");
    assert!(!e.to_string().contains("hunter2"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let e = err(&format!("file://{}/no/such/root", dir.path().display()));
    assert_eq!(e.kind(), StoreErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn url_forms_and_descriptions() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s1");
    let url = format!("file://{}?no-range&concurrency=4", p.display());
    let (s, _) = open_url(&url).unwrap();
    assert_eq!(s.describe(), url);
    assert!(!s.capabilities().range_reads);
    s.put("x/y", Bytes::from_static(b"z")).await.unwrap();
    assert_eq!(std::fs::read(p.join("x/y")).unwrap(), b"z");

    // A bare absolute path means file://.
    let (s2, _) = open_url(p.to_str().unwrap()).unwrap();
    assert_eq!(s2.describe(), format!("file://{}", p.display()));
    assert_eq!(s2.get("x/y").await.unwrap(), Bytes::from_static(b"z"));
    // file://localhost/... is the same thing.
    let (s3, _) = open_url(&format!("file://localhost{}", p.display())).unwrap();
    assert_eq!(s3.get("x/y").await.unwrap(), Bytes::from_static(b"z"));
    // Errors carry the description.
    let e = s2.get("nope").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("store file://{}: get nope: object not found", p.display())
    );

    let (m, _) = open_url("MEMORY://url-forms?max-object-size=10MB").unwrap();
    assert_eq!(m.describe(), "memory://url-forms?max-object-size=10MB");
    assert_eq!(m.capabilities().max_object_size, Some(10_000_000));
}

#[test]
fn store_options_parse() {
    assert_eq!(
        StoreOptions::from_query("").unwrap(),
        StoreOptions::default()
    );
    let d = StoreOptions::default();
    assert_eq!(
        (d.max_object_size, d.range_reads, d.concurrency, d.retries),
        (None, true, 16, 5)
    );
    assert_eq!(d.retry_policy().max_attempts, 6);
    let o = StoreOptions::from_query(
        "max-object-size=100MiB&range-reads=false&concurrency=8&retries=0",
    )
    .unwrap();
    assert_eq!(
        o,
        StoreOptions {
            max_object_size: Some(100 << 20),
            range_reads: false,
            concurrency: 8,
            retries: 0
        }
    );
    assert_eq!(o.retry_policy().max_attempts, 1);
    assert!(!StoreOptions::from_query("no-range").unwrap().range_reads);
    assert!(
        StoreOptions::from_query("no-range=false")
            .unwrap()
            .range_reads
    );
    let e = StoreOptions::from_query("concurrency=2&colour=blue").unwrap_err();
    assert!(e.contains("colour"), "{e}");
}

#[test]
fn parse_size_cases() {
    let ok = [
        ("0", 0),
        ("4096", 4096),
        ("1B", 1),
        ("1K", 1000),
        ("1kb", 1000),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("100MiB", 100 << 20),
        ("100MB", 100_000_000),
        ("100m", 100_000_000),
        ("2G", 2_000_000_000),
        ("2GiB", 2 << 30),
        ("1.5GiB", 3 << 29),
        ("0.5K", 500),
        (" 10 MB ", 10_000_000),
        ("1TiB", 1 << 40),
        ("1TB", 1_000_000_000_000),
    ];
    for (s, want) in ok {
        assert_eq!(parse_size(s), Ok(want), "{s}");
    }
    for bad in [
        "",
        "abc",
        "MiB",
        "10XB",
        "-1",
        "1.2.3",
        "1.",
        ".",
        "99999999999999999999TiB",
        "1 K B",
        "16384PiB",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?} should fail");
    }
    assert_eq!(parse_size("15PiB"), Ok(15 << 50));
    assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    assert!(parse_size("18446744073709551616").is_err());
}

#[tokio::test]
async fn deferred_puts_are_visible_at_once_and_synced_through_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/s?max-object-size=10", dir.path().display());
    let (store, metrics) = strata_store::open_url(&url).unwrap();
    store
        .put_deferred("data/ab/x", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(&store.get("data/ab/x").await.unwrap()[..], b"hello");
    store.sync().await.unwrap();
    store.sync().await.unwrap(); // nothing pending: a no-op
    assert_eq!(metrics.snapshot().puts, 1, "deferred puts are counted");
    // the size cap applies to deferred puts too
    let err = store
        .put_deferred("data/ab/y", Bytes::from_static(b"more than ten bytes"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, strata_store::StoreErrorKind::TooLarge);
    assert!(store.stat("data/ab/y").await.unwrap().is_none());
}

#[tokio::test]
async fn deferred_puts_of_every_size_sync_even_after_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/s", dir.path().display());
    let (store, _) = strata_store::open_url(&url).unwrap();
    // A few small ones (synced one by one), one deleted before the sync.
    for i in 0..3 {
        let key = format!("data/0{i}/small");
        store
            .put_deferred(&key, Bytes::from(vec![i as u8; 100]))
            .await
            .unwrap();
    }
    store.delete("data/01/small").await.unwrap();
    // A large one (synced at the put).
    let big = Bytes::from(vec![7u8; 3 << 20]);
    store
        .put_deferred("data/ff/big", big.clone())
        .await
        .unwrap();
    store.sync().await.unwrap();
    assert_eq!(store.get("data/ff/big").await.unwrap(), big);
    assert!(store.stat("data/01/small").await.unwrap().is_none());
    // More than the one-by-one limit: one filesystem sync.
    for i in 0..40 {
        let key = format!("data/aa/{i}");
        store
            .put_deferred(&key, Bytes::from(vec![1u8; 10]))
            .await
            .unwrap();
    }
    store.sync().await.unwrap();
    assert_eq!(store.list("data/aa/").await.unwrap().len(), 40);
}

/// Large durable puts bypass the page cache where the filesystem allows it
/// (block-aligned front, the rest buffered): every size comes back whole,
/// on a disk filesystem and on tmpfs (which refuses `O_DIRECT`).
#[tokio::test]
async fn large_durable_puts_round_trip_at_every_alignment() {
    let disk = tempfile::tempdir().unwrap();
    let mut roots = vec![disk.path().to_path_buf()];
    let shm = std::path::Path::new("/dev/shm");
    let tmpfs = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
    if let Some(t) = &tmpfs {
        roots.push(t.path().to_path_buf());
    }
    for root in roots {
        let (store, _) = strata_store::open_url(&format!("file://{}/s", root.display())).unwrap();
        for (i, len) in [
            1 << 20,
            (1 << 20) + 1,
            (4 << 20) + 12_345,
            (2 << 20) - 4096 + 7,
        ]
        .into_iter()
        .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let key = format!("data/0{i}/big");
            store
                .put_deferred(&key, Bytes::from(data.clone()))
                .await
                .unwrap();
            let got = store.get(&key).await.unwrap();
            assert_eq!(got.len(), len, "{} at {}", len, root.display());
            assert!(got[..] == data[..], "{} at {}", len, root.display());
            let tail = store
                .get_range(&key, (len - 5000) as u64..len as u64)
                .await
                .unwrap();
            assert!(tail[..] == data[len - 5000..]);
        }
        store.sync().await.unwrap();
        assert!(
            std::fs::read_dir(root.join("s/.strata-tmp"))
                .unwrap()
                .next()
                .is_none(),
            "no temp file left"
        );
    }
}

/// Range reads keep the object open; a replace or delete after that, or
/// after a read-ahead hint (which opens it too), is still seen by the next
/// read, and a hint for a missing or invalid key is harmless.
#[tokio::test]
async fn range_reads_see_a_replaced_or_deleted_object() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/s", dir.path().display());
    let (store, _) = strata_store::open_url(&url).unwrap();
    store
        .put("data/ab/o", Bytes::from_static(b"first version"))
        .await
        .unwrap();
    store.will_need("data/ab/o");
    store.will_need("data/ab/missing");
    store.will_need("../outside");
    assert_eq!(
        &store.get_range("data/ab/o", 0..5).await.unwrap()[..],
        b"first"
    );
    // Clamped to the end, through the object kept open.
    assert_eq!(
        &store.get_range("data/ab/o", 6..100).await.unwrap()[..],
        b"version"
    );
    store
        .put("data/ab/o", Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(
        &store.get_range("data/ab/o", 0..100).await.unwrap()[..],
        b"second"
    );
    store
        .put_deferred("data/ab/o", Bytes::from_static(b"third"))
        .await
        .unwrap();
    assert_eq!(
        &store.get_range("data/ab/o", 0..100).await.unwrap()[..],
        b"third"
    );
    store.will_need("data/ab/o");
    store.delete("data/ab/o").await.unwrap();
    let err = store.get_range("data/ab/o", 0..5).await.unwrap_err();
    assert_eq!(err.kind, strata_store::StoreErrorKind::NotFound);
    assert!(store.get_range("data/ab/missing", 0..4).await.is_err());
}
