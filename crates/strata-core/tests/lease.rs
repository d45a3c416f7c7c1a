//! The writer lease against real stores: `memory://` and `file://` (both
//! enforce conditional create) and a `memory://` store whose conditional
//! create is not enforced (wrapped), so both acquisition paths run.

use std::io::Cursor;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_core::data::FileMeta;
use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::{LeaseOptions, Vault, VaultError};
use strata_crypto::KdfParams;
use strata_store::{
    open_url, Bytes, Capabilities, DynStore, ObjectMeta, Store, StoreError, StoreErrorKind,
    StoreResult,
};

const PW: &[u8] = b"lease test password";
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A store without enforced conditional create (like most S3-compatible
/// servers, WebDAV, SFTP), and with a switch that makes every request fail.
struct Plain {
    inner: DynStore,
    down: AtomicBool,
    /// Report conditional create as enforced (and forward it).
    cc: bool,
    /// A put of this key waits for `resume` (after signalling `paused`).
    pause_key: std::sync::Mutex<Option<String>>,
    paused: tokio::sync::Notify,
    resume: tokio::sync::Notify,
    /// Every put, list and delete, in order ("put KEY", "list PREFIX",
    /// "delete KEY").
    log: std::sync::Mutex<Vec<String>>,
}

impl Plain {
    fn new(inner: DynStore, cc: bool) -> Plain {
        Plain {
            inner,
            down: AtomicBool::new(false),
            cc,
            pause_key: std::sync::Mutex::new(None),
            paused: tokio::sync::Notify::new(),
            resume: tokio::sync::Notify::new(),
            log: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl Plain {
    fn note(&self, op: &str, key: &str) {
        self.log.lock().unwrap().push(format!("{op} {key}"));
    }

    fn check(&self, op: &'static str) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Transient,
                self.inner.describe(),
                op,
                None,
                "store unreachable (test)",
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for Plain {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_create: self.cc,
            ..self.inner.capabilities()
        }
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.check("put")?;
        self.note("put", key);
        let pause = self.pause_key.lock().unwrap().as_deref() == Some(key);
        if pause {
            self.paused.notify_one();
            self.resume.notified().await;
        }
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        if self.cc {
            return self.inner.put_if_absent(key, data).await;
        }
        Err(StoreError::unsupported(
            self.describe(),
            "put_if_absent",
            Some(key),
            "not enforced here",
        ))
    }
    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        self.check("get")?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.check("get_range")?;
        self.inner.get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.check("list")?;
        self.note("list", prefix);
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.check("delete")?;
        self.note("delete", key);
        self.inner.delete(key).await
    }
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.check("stat")?;
        self.inner.stat(key).await
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// memory://, conditional create enforced
    Memory,
    /// file://, conditional create enforced (hard links)
    File,
    /// memory:// behind [`Plain`]: no conditional create
    NoConditional,
}

const KINDS: [Kind; 3] = [Kind::Memory, Kind::File, Kind::NoConditional];

struct Env {
    url: String,
    _dir: tempfile::TempDir,
    state: tempfile::TempDir,
    plain: Option<Arc<Plain>>,
}

impl Env {
    async fn new(kind: Kind) -> Env {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::tempdir().unwrap();
        let url = match kind {
            Kind::File => format!("file://{}", dir.path().join("store").display()),
            _ => format!("memory://lease-test-{}-{n}", std::process::id()),
        };
        let mut e = Env {
            url,
            _dir: dir,
            state: tempfile::tempdir().unwrap(),
            plain: None,
        };
        if let Kind::NoConditional = kind {
            let (inner, _) = open_url(&e.url).unwrap();
            e.plain = Some(Arc::new(Plain::new(inner, false)));
        }
        let v = Vault::create(
            e.store(),
            PW,
            CreateOptions {
                kdf: KdfParams::insecure_for_tests(),
                chunk_size: 64 << 10,
            },
            e.opts(None),
        )
        .await
        .unwrap();
        drop(v);
        e
    }

    fn store(&self) -> DynStore {
        match &self.plain {
            Some(p) => p.clone(),
            None => open_url(&self.url).unwrap().0,
        }
    }

    fn opts(&self, lease: Option<LeaseOptions>) -> OpenOptions {
        OpenOptions {
            state_dir: Some(self.state.path().to_path_buf()),
            lease,
            ..Default::default()
        }
    }

    async fn open(&self, lease: Option<LeaseOptions>) -> Result<Vault, VaultError> {
        Vault::open(self.store(), PW, self.opts(lease)).await
    }

    async fn writer(&self, label: &str) -> Vault {
        self.open(Some(lopts(label))).await.unwrap()
    }

    async fn lease_objects(&self) -> Vec<String> {
        self.store()
            .list("lease/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    }
}

/// Short lease times for tests: renewal every 400 ms, expiry after 2 s
/// (whole seconds), no clock margin, a short settle delay.
fn lopts(label: &str) -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_millis(1200),
        clock_margin: Duration::ZERO,
        settle: Duration::from_millis(100),
        ..LeaseOptions::new(label)
    }
}

async fn put(v: &Vault, path: &str, data: &[u8]) {
    v.write_file(
        path,
        Box::new(Cursor::new(data.to_vec())),
        FileMeta::default(),
        true,
        None,
    )
    .await
    .unwrap();
}

async fn read(v: &Vault, path: &str) -> Vec<u8> {
    let n = v.stat_path(path).unwrap();
    let mut out = Vec::new();
    v.export(&n, &mut out, None).await.unwrap();
    out
}

fn locked_text(r: Result<Vault, VaultError>) -> String {
    match r {
        Err(e @ VaultError::Locked { .. }) => e.to_string(),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("expected Locked, the second writer opened"),
    }
}

#[tokio::test]
async fn second_writer_is_refused_naming_the_holder_reader_still_opens() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        let a = e.writer("writer A").await;
        put(&a, "/a.txt", b"from A").await;
        a.commit().await.unwrap();
        assert_eq!(e.lease_objects().await.len(), 1, "{kind:?}");

        let msg = locked_text(e.open(Some(lopts("writer B"))).await);
        for want in [
            "vault is in use by writer A on ",
            &format!("(pid {})", std::process::id()),
            " since ",
            "its lease expires at ",
            "--read-only",
            "--break-lease",
        ] {
            assert!(msg.contains(want), "{kind:?}: {want:?} not in {msg:?}");
        }
        // the refused writer left nothing behind
        assert_eq!(e.lease_objects().await.len(), 1, "{kind:?}");

        // a reader takes no lease and sees the committed state
        let r = e.open(None).await.unwrap();
        assert_eq!(read(&r, "/a.txt").await, b"from A");
        let h = r.lease_holder().await.unwrap().unwrap();
        assert_eq!(h.lease.unwrap().label, "writer A");

        // the lease is sealed: neither label nor host is readable in the store
        let key = e.lease_objects().await.remove(0);
        let bytes = e.store().get(&key).await.unwrap();
        assert!(!bytes.windows(8).any(|w| w == b"writer A"), "{kind:?}");

        // after a clean release the next writer gets in at once
        a.release_lease().await.unwrap();
        assert!(e.lease_objects().await.is_empty(), "{kind:?}");
        assert!(r.lease_holder().await.unwrap().is_none());
        let b = e.writer("writer B").await;
        assert_eq!(read(&b, "/a.txt").await, b"from A");
        put(&b, "/b.txt", b"from B").await;
        b.commit().await.unwrap();
        b.release_lease().await.unwrap();

        // a released vault commits nothing more
        a.mkdir("/late", 0o755, false).unwrap();
        let err = a.commit().await.unwrap_err();
        assert!(
            matches!(err, VaultError::LeaseLost { .. }),
            "{kind:?}: {err}"
        );
        let r = e.open(None).await.unwrap();
        assert!(r.stat_path("/late").is_err());
        assert_eq!(read(&r, "/b.txt").await, b"from B");
    }
}

#[tokio::test]
async fn lease_is_renewed_while_held() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        let a = e.writer("long writer").await;
        // three times the ttl: only renewals keep it (idle after one ttl:
        // then renewed with the idle lifetime, 10 × ttl)
        tokio::time::sleep(Duration::from_millis(3600)).await;
        let st = a.lease_status().unwrap();
        assert_eq!(st.state, "held", "{kind:?}: {st:?}");
        assert!(st.renewals >= 1, "{kind:?}: {st:?}");
        let now = strata_core::lease::unix_now();
        assert!(
            st.expires >= now + 8,
            "{kind:?}: idle lifetime not written: {st:?}, now {now}"
        );
        let expiring = LeaseOptions {
            local_liveness: false,
            ..lopts("other")
        };
        locked_text(e.open(Some(expiring)).await);
        put(&a, "/x", b"still mine").await;
        a.commit().await.unwrap();
        a.release_lease().await.unwrap();
    }
}

#[tokio::test]
async fn crashed_holder_expires_and_the_next_writer_takes_over() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        let a = e.writer("crashing writer").await;
        put(&a, "/kept", b"committed before the crash").await;
        a.commit().await.unwrap();
        drop(a); // no release: the lease stays in the store, unrenewed

        // another machine (no local liveness check) must wait for expiry
        let remote = LeaseOptions {
            local_liveness: false,
            ..lopts("remote writer")
        };
        let msg = locked_text(e.open(Some(remote.clone())).await);
        assert!(msg.contains("crashing writer"), "{msg}");
        // expiry is in whole seconds: ttl rounded up, so 2-3 s after the
        // last renewal
        let start = std::time::Instant::now();
        let b = loop {
            match e.open(Some(remote.clone())).await {
                Ok(b) => break b,
                Err(VaultError::Locked { .. }) if start.elapsed() < Duration::from_secs(6) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(err) => panic!("{kind:?}: the lease did not expire: {err}"),
            }
        };
        assert!(start.elapsed() > Duration::from_millis(500), "{kind:?}");
        assert_eq!(read(&b, "/kept").await, b"committed before the crash");
        // the old epoch is gone, one lease remains
        assert_eq!(e.lease_objects().await.len(), 1, "{kind:?}");
        b.release_lease().await.unwrap();

        // on the same machine a dead holder is noticed at once
        let c = e.writer("crashing again").await;
        drop(c);
        let d = e.writer("same machine").await;
        d.release_lease().await.unwrap();
    }
}

#[tokio::test]
async fn break_lease_takes_over_and_the_old_holder_stops_committing() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        let a = e.writer("old writer").await;
        put(&a, "/one", b"committed by A").await;
        a.commit().await.unwrap();
        // A has uncommitted work when B breaks in
        put(&a, "/pending", b"not yet committed by A").await;

        let b = e
            .open(Some(LeaseOptions {
                break_lease: true,
                ..lopts("breaker")
            }))
            .await
            .unwrap();
        assert!(b.stat_path("/pending").is_err());
        put(&b, "/two", b"committed by B").await;
        b.commit().await.unwrap();

        // A notices at its next renewal (background, every ttl/3)
        tokio::time::sleep(Duration::from_millis(900)).await;
        let st = a.lease_status().unwrap();
        assert_eq!(st.state, "lost", "{kind:?}: {st:?}");
        assert!(a.lease_lost());
        let err = a.commit().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, VaultError::LeaseLost { .. }), "{text}");
        assert!(text.contains("lost the vault's writer lease"), "{text}");
        assert!(text.contains("breaker"), "{text}");
        // A's change is not dropped: still applied in memory, still queued
        assert!(a.uncommitted_records() > 0);
        assert_eq!(read(&a, "/pending").await, b"not yet committed by A");
        // and it did not reach the store; B's history is intact
        let r = e.open(None).await.unwrap();
        assert!(r.stat_path("/pending").is_err());
        assert_eq!(read(&r, "/two").await, b"committed by B");
        assert_eq!(read(&r, "/one").await, b"committed by A");
        let report = r.check(true, None).await.unwrap();
        assert!(report.damaged.is_empty(), "{kind:?}: {report:?}");
        // releasing a lost lease leaves B's alone
        a.release_lease().await.unwrap();
        assert_eq!(
            r.lease_holder()
                .await
                .unwrap()
                .unwrap()
                .lease
                .unwrap()
                .label,
            "breaker"
        );
        b.commit().await.unwrap();
        b.release_lease().await.unwrap();
    }
}

#[tokio::test]
async fn a_deleted_lease_is_lost_too() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        let a = e.writer("A").await;
        // someone breaks the lease and is done before A's next renewal
        let b = e
            .open(Some(LeaseOptions {
                break_lease: true,
                ..lopts("quick breaker")
            }))
            .await
            .unwrap();
        b.release_lease().await.unwrap();
        assert!(e.lease_objects().await.is_empty());
        // the next commit checks the lease (no need to wait for a renewal)
        a.mkdir("/x", 0o755, false).unwrap();
        let err = a.commit().await.unwrap_err();
        assert!(
            matches!(err, VaultError::LeaseLost { .. }),
            "{kind:?}: {err}"
        );
        assert!(
            err.to_string().contains("was deleted from the store"),
            "{kind:?}: {err}"
        );
        assert!(matches!(
            a.renew_lease().await.unwrap_err(),
            VaultError::LeaseLost { .. }
        ));
        // nothing of A's reached the store, and it took no lease again
        assert!(e.lease_objects().await.is_empty());
        assert!(e.open(None).await.unwrap().stat_path("/x").is_err());
    }
}

#[tokio::test]
async fn unreadable_lease_blocks_writers_until_broken() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        e.store()
            .put(
                "lease/0000000000000007",
                Bytes::from_static(b"STRLSE01 forged"),
            )
            .await
            .unwrap();
        let msg = locked_text(e.open(Some(lopts("w"))).await);
        assert!(
            msg.contains("lease/0000000000000007") && msg.contains("cannot read"),
            "{msg}"
        );
        assert!(msg.contains("--break-lease"), "{msg}");
        let v = e
            .open(Some(LeaseOptions {
                break_lease: true,
                ..lopts("w")
            }))
            .await
            .unwrap();
        assert_eq!(e.lease_objects().await, vec!["lease/0000000000000008"]);
        v.release_lease().await.unwrap();
    }
}

#[tokio::test]
async fn of_two_writers_racing_exactly_one_wins() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        for round in 0..3 {
            let (x, y) = tokio::join!(
                e.open(Some(lopts("racer X"))),
                e.open(Some(lopts("racer Y")))
            );
            let (winner, loser) = match (x, y) {
                (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
                (Ok(_), Ok(_)) => panic!("{kind:?} round {round}: both writers got the lease"),
                (Err(a), Err(b)) => panic!("{kind:?} round {round}: nobody won: {a} / {b}"),
            };
            assert!(
                matches!(loser, VaultError::Locked { .. }),
                "{kind:?}: {loser}"
            );
            assert!(loser.to_string().contains("racer"), "{loser}");
            assert_eq!(e.lease_objects().await.len(), 1);
            winner.release_lease().await.unwrap();
        }
    }
}

#[tokio::test]
async fn without_a_confirmed_lease_nothing_is_committed() {
    let e = Env::new(Kind::NoConditional).await;
    let plain = e.plain.clone().unwrap();
    let a = e.writer("flaky").await;
    put(&a, "/before", b"ok").await;
    a.commit().await.unwrap();
    plain.down.store(true, Ordering::SeqCst);
    // renewals fail; after ttl*2/3 the lease is not comfortably valid
    tokio::time::sleep(Duration::from_millis(900)).await;
    a.mkdir("/during", 0o755, false).unwrap();
    let err = a.commit().await.unwrap_err();
    assert!(
        matches!(err, VaultError::LeaseUnavailable { .. }),
        "expected LeaseUnavailable, got {err}"
    );
    assert!(a.uncommitted_records() > 0);
    plain.down.store(false, Ordering::SeqCst);
    // back in time (nobody took it over): the commit goes through
    a.commit().await.unwrap();
    assert_eq!(a.uncommitted_records(), 0);
    a.release_lease().await.unwrap();
    let r = e.open(None).await.unwrap();
    assert!(r.stat_path("/during").is_ok());
}

#[tokio::test]
async fn gc_and_passwd_need_the_lease() {
    let e = Env::new(Kind::Memory).await;
    let a = e.writer("A").await;
    let b = e
        .open(Some(LeaseOptions {
            break_lease: true,
            ..lopts("B")
        }))
        .await
        .unwrap();
    put(&b, "/b", b"uploaded by B").await;
    b.commit().await.unwrap();
    let _ = a.renew_lease().await;
    assert!(matches!(
        a.gc().await.unwrap_err(),
        VaultError::LeaseLost { .. }
    ));
    assert!(matches!(
        a.change_password(PW, b"new", Some(KdfParams::insecure_for_tests()))
            .await
            .unwrap_err(),
        VaultError::LeaseLost { .. }
    ));
    b.release_lease().await.unwrap();
    let r = e.open(None).await.unwrap();
    assert_eq!(read(&r, "/b").await, b"uploaded by B");
    assert!(r.check(true, None).await.unwrap().damaged.is_empty());
}

#[tokio::test]
async fn create_can_hold_the_lease() {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let url = format!("memory://lease-create-{}-{n}", std::process::id());
    let state = tempfile::tempdir().unwrap();
    let opts = |lease| OpenOptions {
        state_dir: Some(state.path().to_path_buf()),
        lease,
        ..Default::default()
    };
    let v = Vault::create(
        open_url(&url).unwrap().0,
        PW,
        CreateOptions {
            kdf: KdfParams::insecure_for_tests(),
            chunk_size: 64 << 10,
        },
        opts(Some(lopts("creator"))),
    )
    .await
    .unwrap();
    assert_eq!(v.lease_status().unwrap().state, "held");
    let err = Vault::open(open_url(&url).unwrap().0, PW, opts(Some(lopts("x"))))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("creator"), "{err}");
    v.release_lease().await.unwrap();
    Vault::open(open_url(&url).unwrap().0, PW, opts(Some(lopts("x"))))
        .await
        .unwrap()
        .release_lease()
        .await
        .unwrap();
}

/// A renewal whose check passed just before a writer broke in, and whose
/// put lands after the breaker deleted the old epoch, brings that object
/// back: the holder must still see it lost and remove the leftover, or it
/// would take the leftover for its lease once the breaker is gone.
#[tokio::test]
async fn a_late_renewal_does_not_resurrect_a_broken_lease() {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let url = format!("memory://lease-late-{}-{n}", std::process::id());
    let state = tempfile::tempdir().unwrap();
    let wrapped = Arc::new(Plain::new(open_url(&url).unwrap().0, true));
    let store: DynStore = wrapped.clone();
    let opts = |lease| OpenOptions {
        state_dir: Some(state.path().to_path_buf()),
        lease,
        ..Default::default()
    };
    Vault::create(
        store.clone(),
        PW,
        CreateOptions {
            kdf: KdfParams::insecure_for_tests(),
            chunk_size: 64 << 10,
        },
        opts(None),
    )
    .await
    .unwrap();
    let long = |label: &str, break_lease| LeaseOptions {
        ttl: Duration::from_secs(60), // no background renewal during the test
        break_lease,
        ..LeaseOptions::new(label)
    };
    let a = Arc::new(
        Vault::open(store.clone(), PW, opts(Some(long("A", false))))
            .await
            .unwrap(),
    );
    *wrapped.pause_key.lock().unwrap() = Some("lease/0000000000000001".into());
    let renewing = {
        let a = a.clone();
        tokio::spawn(async move { a.renew_lease().await })
    };
    wrapped.paused.notified().await; // A checked, its put is on the way
    *wrapped.pause_key.lock().unwrap() = None;
    let b = Vault::open(store.clone(), PW, opts(Some(long("B", true))))
        .await
        .unwrap();
    let keys = |s: DynStore| async move {
        s.list("lease/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(store.clone()).await, vec!["lease/0000000000000002"]);
    wrapped.resume.notify_one(); // A's put lands now
    let err = renewing.await.unwrap().unwrap_err();
    assert!(matches!(err, VaultError::LeaseLost { .. }), "{err}");
    assert!(a.lease_lost());
    assert_eq!(keys(store.clone()).await, vec!["lease/0000000000000002"]);
    b.release_lease().await.unwrap();
    assert!(keys(store.clone()).await.is_empty());
    a.mkdir("/zombie", 0o755, false).unwrap();
    assert!(matches!(
        a.commit().await.unwrap_err(),
        VaultError::LeaseLost { .. }
    ));
    let c = Vault::open(store.clone(), PW, opts(Some(long("C", false))))
        .await
        .unwrap();
    assert!(c.stat_path("/zombie").is_err());
    c.release_lease().await.unwrap();
}

#[tokio::test]
async fn an_idle_writer_renews_rarely_and_still_checks_before_committing() {
    let e = Env::new(Kind::Memory).await;
    let (store, metrics) = open_url(&e.url).unwrap();
    let a = Vault::open(store, PW, e.opts(Some(lopts("idle writer"))))
        .await
        .unwrap();
    put(&a, "/first", b"active").await;
    a.commit().await.unwrap();
    // active: renewed every ttl/3 (400 ms); then idle after one ttl
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let base = metrics.snapshot();
    // 4 s idle: at most one renewal (3 requests); active renewals would
    // have made 10 (30 requests)
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let idle = metrics.snapshot().since(&base).requests();
    assert!(idle <= 3, "{idle} requests in 4 s of idleness");
    // still the holder: a second writer is refused
    let other = LeaseOptions {
        local_liveness: false,
        ..lopts("other")
    };
    locked_text(e.open(Some(other.clone())).await);
    // broken while idle: the next commit checks first and refuses
    let b = e
        .open(Some(LeaseOptions {
            break_lease: true,
            ..other
        }))
        .await
        .unwrap();
    put(&a, "/late", b"after the break").await;
    let err = a.commit().await.unwrap_err();
    assert!(matches!(err, VaultError::LeaseLost { .. }), "{err}");
    assert!(b.stat_path("/late").is_err());
    b.release_lease().await.unwrap();
}

/// A writer that asks a live holder to hand over: short polls and waits.
fn asker(label: &str, lines: Option<Arc<std::sync::Mutex<Vec<String>>>>) -> LeaseOptions {
    LeaseOptions {
        take_over: true,
        poll: Duration::from_millis(300),
        handoff_answer: Duration::from_secs(3),
        handoff_drain: Duration::from_secs(10),
        handoff_poll: Duration::from_millis(50),
        on_wait: lines.map(|l| {
            strata_core::lease::WaitReport::new(move |s| l.lock().unwrap().push(s.to_string()))
        }),
        ..lopts(label)
    }
}

fn holder_opts(label: &str) -> LeaseOptions {
    LeaseOptions {
        poll: Duration::from_millis(300),
        ..lopts(label)
    }
}

#[tokio::test]
async fn a_holder_hands_over_to_an_asker_what_it_committed_included() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        let a = e.open(Some(holder_opts("holder"))).await.unwrap();
        put(&a, "/a.txt", b"from A").await;
        a.commit().await.unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (store, o) = (e.store(), e.opts(Some(asker("asker", Some(lines.clone())))));
        let b = tokio::spawn(async move { Vault::open(store, PW, o).await });
        // the holder sees the request at its next look at the lease
        let req = tokio::time::timeout(Duration::from_secs(5), a.handoff_requested())
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: the holder never saw the request"));
        assert!(
            req.describe().starts_with("asker on "),
            "{}",
            req.describe()
        );
        a.answer_handoff(&req, "uploading 5 bytes").await.unwrap();
        // the asker shows the answer while it waits
        let t = std::time::Instant::now();
        while !lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("handing over to us"))
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{kind:?}: answer not seen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        put(&a, "/late.txt", b"accepted before letting go").await;
        a.commit().await.unwrap();
        a.release_lease().await.unwrap();
        let b = b.await.unwrap().unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(read(&b, "/a.txt").await, b"from A");
        assert_eq!(read(&b, "/late.txt").await, b"accepted before letting go");
        let said = lines.lock().unwrap().join("\n");
        assert!(said.contains("asked it to hand over"), "{kind:?}: {said}");
        assert!(
            said.contains("handing over to us: uploading 5 bytes"),
            "{kind:?}: {said}"
        );
        // the new writer commits; the old one cannot, and follows instead
        put(&b, "/b.txt", b"from B").await;
        b.commit().await.unwrap();
        put(&a, "/zombie", b"after letting go").await;
        assert!(
            a.commit().await.is_err(),
            "{kind:?}: a released holder committed"
        );
        let a2 = e.open(None).await.unwrap();
        assert_eq!(read(&a2, "/b.txt").await, b"from B");
        b.release_lease().await.unwrap();
        let left: Vec<String> = e.lease_objects().await;
        assert!(left.is_empty(), "{kind:?}: leftovers {left:?}");
    }
}

#[tokio::test]
async fn an_asker_gives_up_on_a_holder_that_never_answers() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        // a holder that does not hand over (a `strata put`, an old version)
        let a = e.open(Some(holder_opts("silent holder"))).await.unwrap();
        let t = std::time::Instant::now();
        let text = locked_text(e.open(Some(asker("asker", None))).await);
        assert!(
            t.elapsed() >= Duration::from_secs(3),
            "{kind:?}: gave up early"
        );
        assert!(text.contains("silent holder"), "{kind:?}: {text}");
        assert!(
            text.contains("did not answer a request to hand over"),
            "{kind:?}: {text}"
        );
        assert!(text.contains("--break-lease"), "{kind:?}: {text}");
        // its request is gone; the holder is still the writer
        let objs = e.lease_objects().await;
        assert!(
            !objs.iter().any(|k| k.contains(".ask.")),
            "{kind:?}: {objs:?}"
        );
        put(&a, "/still", b"mine").await;
        a.commit().await.unwrap();
        a.release_lease().await.unwrap();
    }
}

#[tokio::test]
async fn of_two_askers_at_once_one_takes_the_lease() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        let a = e.open(Some(holder_opts("holder"))).await.unwrap();
        let ask = |label: &'static str| {
            let (store, o) = (e.store(), e.opts(Some(asker(label, None))));
            tokio::spawn(async move { Vault::open(store, PW, o).await })
        };
        let (b, c) = (ask("B"), ask("C"));
        let req = tokio::time::timeout(Duration::from_secs(5), a.handoff_requested())
            .await
            .unwrap();
        a.answer_handoff(&req, "committing").await.unwrap();
        a.release_lease().await.unwrap();
        let (b, c) = (b.await.unwrap(), c.await.unwrap());
        let (winner, loser) = match (b, c) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (Ok(_), Ok(_)) => panic!("{kind:?}: both askers took the lease"),
            (Err(x), Err(y)) => panic!("{kind:?}: neither took it: {x} / {y}"),
        };
        assert!(
            matches!(loser, VaultError::Locked { .. }),
            "{kind:?}: {loser}"
        );
        assert!(winner.holds_lease());
        put(&winner, "/w", b"winner").await;
        winner.commit().await.unwrap();
        winner.release_lease().await.unwrap();
    }
}

#[tokio::test]
async fn an_idle_holder_makes_one_request_per_poll() {
    let e = Env::new(Kind::Memory).await;
    let (store, metrics) = open_url(&e.url).unwrap();
    let o = LeaseOptions {
        poll: Duration::from_secs(1),
        ..lopts("idle holder")
    };
    let a = Vault::open(store, PW, e.opts(Some(o))).await.unwrap();
    put(&a, "/first", b"active").await;
    a.commit().await.unwrap();
    // idle after one ttl (1.2 s)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let base = metrics.snapshot();
    tokio::time::sleep(Duration::from_millis(6000)).await;
    let s = metrics.snapshot().since(&base);
    // one request per poll (a renewal is a listing and a put, and skips
    // the next poll); one more for where the window falls
    assert!(
        s.requests() <= 7,
        "{} requests in 6 polls: {s:?}",
        s.requests()
    );
    assert!(s.lists >= 3, "it must look for handoff requests: {s:?}");
    a.release_lease().await.unwrap();
}

#[tokio::test]
async fn a_holder_that_dies_while_handing_over_is_taken_over_when_its_lease_runs_out() {
    for kind in KINDS {
        let e = Env::new(kind).await;
        let a = e.open(Some(holder_opts("dying holder"))).await.unwrap();
        put(&a, "/committed", b"safe").await;
        a.commit().await.unwrap();
        let o = LeaseOptions {
            // another machine: its pid says nothing about the holder
            local_liveness: false,
            ..asker("asker", None)
        };
        let (store, o) = (e.store(), e.opts(Some(o)));
        let b = tokio::spawn(async move { Vault::open(store, PW, o).await });
        let req = tokio::time::timeout(Duration::from_secs(5), a.handoff_requested())
            .await
            .unwrap();
        a.answer_handoff(&req, "uploading").await.unwrap();
        put(&a, "/never-committed", b"lost with the crash").await;
        drop(a); // killed: no release, no more renewals
        let t = std::time::Instant::now();
        let b = b.await.unwrap().unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "{kind:?}: {:?}",
            t.elapsed()
        );
        assert_eq!(read(&b, "/committed").await, b"safe");
        assert!(b.stat_path("/never-committed").is_err());
        put(&b, "/next", b"new writer").await;
        b.commit().await.unwrap();
        b.release_lease().await.unwrap();
    }
}

/// [`lopts`] confirmed in the background after `settle_ms`.
fn deferred(label: &str, settle_ms: u64) -> LeaseOptions {
    LeaseOptions {
        settle: Duration::from_millis(settle_ms),
        defer_settle: true,
        ..lopts(label)
    }
}

#[tokio::test]
async fn a_deferred_lease_commits_only_after_its_read_back() {
    let e = Env::new(Kind::NoConditional).await;
    let plain = e.plain.clone().unwrap();
    plain.log.lock().unwrap().clear();
    let a = e
        .open(Some(deferred("deferred writer", 300)))
        .await
        .unwrap();
    // uploads need no confirmed lease: a file of several chunks, and a
    // small one (packed)
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    put(&a, "/big", &big).await;
    put(&a, "/small", b"small").await;
    a.commit().await.unwrap();
    assert!(!a.lease_refused());
    let log = plain.log.lock().unwrap().clone();
    let pos = |what: &dyn Fn(&str) -> bool, from: usize| {
        log.iter()
            .skip(from)
            .position(|l| what(l))
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("not in {log:#?}"))
    };
    let claim = pos(&|l| l.starts_with("put lease/"), 0);
    let read_back = pos(&|l| l == "list lease/", claim + 1);
    let first_log = pos(&|l| l.starts_with("put meta/"), 0);
    assert!(
        read_back < first_log,
        "the log was written before the lease was read back: {log:#?}"
    );
    assert!(
        !log[..read_back].iter().any(|l| l.starts_with("delete ")),
        "something was deleted before the lease was confirmed: {log:#?}"
    );
    a.release_lease().await.unwrap();
    let r = e.open(None).await.unwrap();
    assert_eq!(read(&r, "/big").await, big);
    assert_eq!(read(&r, "/small").await, b"small");
    let report = r.check(true, None).await.unwrap();
    assert!(report.damaged.is_empty(), "{report:?}");
}

#[tokio::test]
async fn a_deferred_lease_lost_to_a_racer_commits_and_deletes_nothing() {
    let e = Env::new(Kind::NoConditional).await;
    let w = e.writer("setup").await;
    put(&w, "/old", b"the old contents").await;
    w.commit().await.unwrap();
    w.release_lease().await.unwrap();
    drop(w);

    let a = e.open(Some(deferred("slow writer", 1000))).await.unwrap();
    // another writer takes the vault while A's lease settles
    let b = e
        .open(Some(LeaseOptions {
            break_lease: true,
            ..lopts("racer B")
        }))
        .await
        .unwrap();
    // A goes on: replaces a file (its old blob loses its last reference)
    // and uploads a new one
    put(&a, "/old", b"replaced by the slow writer").await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
    put(&a, "/new", &big).await;
    let err = a.commit().await.unwrap_err();
    assert!(matches!(err, VaultError::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("vault is in use by racer B on "), "{msg}");
    assert!(a.lease_refused());
    assert!(matches!(
        a.lease_confirmed().await,
        Err(VaultError::Locked { .. })
    ));
    assert!(a.uncommitted_records() > 0, "nothing was committed");
    a.release_lease().await.unwrap();
    drop(a);

    // B's lease is untouched and B commits on top of the old state
    assert_eq!(e.lease_objects().await.len(), 1);
    b.mkdir("/by-b", 0o755, false).unwrap();
    b.commit().await.unwrap();
    assert_eq!(read(&b, "/old").await, b"the old contents");
    assert!(b.stat_path("/new").is_err());
    let report = b.check(true, None).await.unwrap();
    assert!(report.damaged.is_empty(), "{report:?}");
    assert!(
        report.unreferenced > 0,
        "A's uploads are orphans: {report:?}"
    );
    // gc removes what A uploaded
    let gc = b.gc().await.unwrap();
    assert!(gc.blobs_deleted > 0, "{gc:?}");
    assert_eq!(b.check(true, None).await.unwrap().unreferenced, 0);
    b.release_lease().await.unwrap();
}

#[tokio::test]
async fn a_deferred_lease_refuses_to_commit_over_a_log_written_while_it_settled() {
    let e = Env::new(Kind::NoConditional).await;
    let plain = e.plain.clone().unwrap();
    let old = Arc::new(e.writer("old holder").await);
    old.mkdir("/late", 0o755, false).unwrap();
    // the old holder has checked its lease and its log is on the way…
    *plain.pause_key.lock().unwrap() = Some(strata_core::format::log_key(1));
    let committing = {
        let old = old.clone();
        tokio::spawn(async move { old.commit().await })
    };
    plain.paused.notified().await;
    *plain.pause_key.lock().unwrap() = None;
    // …when another writer takes the vault over and reads it…
    let a = e
        .open(Some(LeaseOptions {
            break_lease: true,
            ..deferred("taker", 300)
        }))
        .await
        .unwrap();
    assert_eq!(a.version(), 0);
    // …and the log lands after that read
    plain.resume.notify_one();
    committing.await.unwrap().unwrap();
    a.mkdir("/mine", 0o755, false).unwrap();
    let err = a.commit().await.unwrap_err();
    assert!(matches!(err, VaultError::LeaseLost { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("another writer committed meta/log.0000000000000001"),
        "{err}"
    );
    a.release_lease().await.unwrap();
    let r = e.open(None).await.unwrap();
    assert!(
        r.stat_path("/late").is_ok(),
        "the old holder's log survives"
    );
    assert!(r.stat_path("/mine").is_err());
}
