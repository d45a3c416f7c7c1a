//! A mount (VFS over a lease-holding vault) that loses its writer lease:
//! it stops committing, keeps its changes in the cache, replays them at the
//! next mount if the store is still where it left it, and refuses to replay
//! them onto another writer's history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::{LeaseOptions, Vault, VaultError, ROOT_INO};
use strata_crypto::KdfParams;
use strata_store::open_url;
use strata_vfs::{Vfs, VfsOptions};

const PW: &[u8] = b"pw";
static N: AtomicU64 = AtomicU64::new(0);

struct Env {
    url: String,
    state: tempfile::TempDir,
    cache: tempfile::TempDir,
}

fn lease(label: &str, break_lease: bool) -> LeaseOptions {
    LeaseOptions {
        break_lease,
        ttl: Duration::from_millis(1200),
        clock_margin: Duration::ZERO,
        settle: Duration::from_millis(50),
        ..LeaseOptions::new(label)
    }
}

impl Env {
    async fn new() -> Env {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let e = Env {
            url: format!("memory://vfs-lease-{}-{n}", std::process::id()),
            state: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        };
        Vault::create(
            open_url(&e.url).unwrap().0,
            PW,
            CreateOptions {
                kdf: KdfParams::insecure_for_tests(),
                chunk_size: 64 << 10,
            },
            e.opts(None),
        )
        .await
        .unwrap();
        e
    }

    fn opts(&self, lease: Option<LeaseOptions>) -> OpenOptions {
        OpenOptions {
            state_dir: Some(self.state.path().to_path_buf()),
            lease,
            ..Default::default()
        }
    }

    async fn vault(&self, lease: Option<LeaseOptions>) -> Result<Vault, VaultError> {
        Vault::open(open_url(&self.url).unwrap().0, PW, self.opts(lease)).await
    }

    async fn mount(&self, read_only: bool) -> Result<Mounted, String> {
        let l = (!read_only).then(|| lease("test mount", false));
        let vault = Arc::new(self.vault(l).await.map_err(|e| e.to_string())?);
        let mut o = VfsOptions::new(self.cache.path().to_path_buf());
        o.read_only = read_only;
        o.writeback_delay = Duration::from_millis(20);
        o.commit_interval = Duration::from_millis(50);
        let vfs = Vfs::new(vault.clone(), o)?;
        let uploader = (!read_only).then(|| vfs.start());
        Ok(Mounted { vfs, uploader })
    }
}

/// A VFS and its uploader task, stopped like `run_mount` does on drop.
struct Mounted {
    vfs: Arc<Vfs>,
    uploader: Option<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for Mounted {
    type Target = Vfs;
    fn deref(&self) -> &Vfs {
        &self.vfs
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(u) = self.uploader.take() {
            u.abort();
        }
    }
}

async fn write_file(v: &Vfs, name: &str, data: &[u8]) -> u64 {
    let (a, fh) = v
        .create(ROOT_INO, name.as_bytes(), 0o644, 0o022, 0, 0)
        .unwrap();
    v.write(a.ino, fh, 0, data).await.unwrap();
    v.release(a.ino, fh).await.unwrap(); // close: durable in the local cache
    a.ino
}

async fn read(v: &Vfs, name: &str) -> Option<Vec<u8>> {
    let a = v.lookup(ROOT_INO, name.as_bytes()).ok()?;
    Some(v.read(a.ino, 0, 0, a.size as u32 + 1).await.unwrap())
}

/// Break the mount's lease; return the breaker (holding it).
async fn break_in(e: &Env) -> Vault {
    e.vault(Some(lease("breaker", true))).await.unwrap()
}

async fn wait_lost(v: &Vfs) {
    for _ in 0..100 {
        if v.vault().lease_lost() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the mount did not notice it lost the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lease_keeps_changes_and_replays_them_if_nobody_wrote() {
    let e = Env::new().await;
    let a = e.mount(false).await.unwrap();
    write_file(&a, "committed", b"before the break").await;
    a.fsync(a.lookup(ROOT_INO, b"committed").unwrap().ino)
        .await
        .unwrap();

    let b = break_in(&e).await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let ino = write_file(&a, "pending", &data).await;
    // fsync to the store fails: the lease is gone
    assert!(a.fsync(ino).await.is_err());
    wait_lost(&a).await;
    assert!(a.status().uncommitted_records > 0);
    // the mount still shows its change
    assert_eq!(read(&a, "pending").await.unwrap(), data);
    let err = a
        .shutdown(Duration::from_millis(500), |_, _| {})
        .await
        .unwrap_err();
    assert!(err.contains("upload at the next mount"), "{err}");
    drop(a);

    // the breaker changed nothing and gives the vault back
    b.release_lease().await.unwrap();
    drop(b);

    // next mount: the store is where this cache left it, so its changes
    // are replayed and committed
    let a = e.mount(false).await.unwrap();
    assert_eq!(read(&a, "pending").await.unwrap(), data);
    a.shutdown(Duration::from_secs(30), |_, _| {})
        .await
        .unwrap();
    a.vault().release_lease().await.unwrap();
    let r = e.vault(None).await.unwrap();
    let n = r.stat_path("/pending").unwrap();
    let mut got = Vec::new();
    r.export(&n, &mut got, None).await.unwrap();
    assert_eq!(got, data);
    assert!(r.check(true, None).await.unwrap().damaged.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_not_replayed_onto_another_writers_history() {
    let e = Env::new().await;
    let a = e.mount(false).await.unwrap();
    write_file(&a, "base", b"committed by A").await;
    a.fsync(a.lookup(ROOT_INO, b"base").unwrap().ino)
        .await
        .unwrap();

    let b = break_in(&e).await;
    write_file(&a, "pending", b"A's change after losing the lease").await;
    wait_lost(&a).await;
    // the status names the problem
    let st = a.vault().lease_status().unwrap();
    assert_eq!(st.state, "lost");
    assert!(st.error.unwrap().contains("breaker"));
    let _ = a.shutdown(Duration::from_millis(300), |_, _| {}).await;
    drop(a);

    // B commits: the store's history is no longer A's. B's new file takes
    // the inode number A's pending file had.
    b.mkdir("/from-b", 0o755, false).unwrap();
    b.commit().await.unwrap();
    b.release_lease().await.unwrap();
    drop(b);

    let err = match e.mount(false).await {
        Err(err) => err,
        Ok(_) => panic!("a read-write mount replayed changes onto another writer's history"),
    };
    assert!(err.contains("never reached the store"), "{err}");
    assert!(err.contains("--read-only"), "{err}");
    assert!(err.contains(&e.cache.path().display().to_string()), "{err}");
    // the cache is untouched, the vault is B's, and a read-only mount works
    let ro = e.mount(true).await.unwrap();
    assert!(read(&ro, "pending").await.is_none());
    assert!(ro.lookup(ROOT_INO, b"from-b").is_ok());
    assert_eq!(read(&ro, "base").await.unwrap(), b"committed by A");
    drop(ro);
    let err2 = e.mount(false).await.err().unwrap();
    assert_eq!(err, err2, "refused again, nothing was consumed");
    let r = e.vault(None).await.unwrap();
    assert!(r.stat_path("/pending").is_err());
    assert!(r.check(true, None).await.unwrap().damaged.is_empty());
}
