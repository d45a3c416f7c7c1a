//! Deterministic reproductions of strata-vfs bugs found while writing the
//! FUSE front end, driven through the `Vfs` API directly (no FUSE) over a
//! store that makes data requests slow. They were found as
//! bugs and are kept as regression tests.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use strata_core::{CreateOptions, OpenOptions, Vault, ROOT_INO};
use strata_crypto::KdfParams;
use strata_store::{
    Bytes, Capabilities, DynStore, ObjectMeta, OpendalStore, Store, StoreOptions, StoreResult,
};
use strata_vfs::{SetAttr, SetTime, Vfs, VfsOptions};

const CS: usize = 256 * 1024;

/// Delays puts and gets of `data/` objects.
struct SlowStore {
    inner: DynStore,
    delay: Duration,
}

impl SlowStore {
    async fn pause(&self, key: &str) {
        if key.starts_with("data/") {
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[async_trait::async_trait]
impl Store for SlowStore {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.pause(key).await;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        self.pause(key).await;
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        self.pause(key).await;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.pause(key).await;
        self.inner.get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.inner.stat(key).await
    }
}

struct Setup {
    vfs: Arc<Vfs>,
    _dir: tempfile::TempDir,
}

async fn setup(delay_ms: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mem: DynStore = Arc::new(OpendalStore::memory("").unwrap());
    let slow: DynStore = Arc::new(SlowStore {
        inner: mem,
        delay: Duration::from_millis(delay_ms),
    });
    let (store, _) = strata_store::build_stack(slow, &StoreOptions::default());
    let c = CreateOptions {
        kdf: KdfParams::insecure_for_tests(),
        chunk_size: CS as u32,
    };
    let o = OpenOptions {
        state_dir: Some(dir.path().join("state")),
        ..OpenOptions::default()
    };
    let vault = Arc::new(Vault::create(store, b"pw", c, o).await.unwrap());
    let mut vo = VfsOptions::new(dir.path().join("cache"));
    vo.writeback_delay = Duration::from_secs(2); // partial chunks wait; full ones go at once
    let vfs = Vfs::new(vault, vo).unwrap();
    vfs.start();
    Setup { vfs, _dir: dir }
}

/// A chunk removed by a truncate while its upload is in flight and then
/// written again gets a new `DChunk` whose generation restarts at 0 → 1, the
/// generation the in-flight upload carries. When that stale upload returns,
/// `upload_chunk_inner` finds "the same" generation, references the OLD
/// bytes with `SetChunks` and marks the new data clean; after the commit
/// the dirty file is deleted and reads return the old bytes: the new data is
/// lost.
#[test]
fn truncate_during_upload_loses_the_rewrite() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = setup(300).await;
        let vfs = &s.vfs;
        let (a, fh) = vfs.create(ROOT_INO, b"f", 0o644, 0, 0, 0).unwrap();
        let ino = a.ino;
        // two full chunks: the uploader starts both at once (each put takes 300 ms)
        vfs.write(ino, fh, 0, &vec![0xAB; 2 * CS]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // drop chunk 1 while its upload is in flight, then write it again
        vfs.setattr(
            ino,
            SetAttr {
                size: Some(100),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
        vfs.write(ino, fh, CS as u64, &[0xCD; 1000]).await.unwrap();
        // the stale upload finishes here (partial new chunk waits 2 s)
        tokio::time::sleep(Duration::from_millis(600)).await;
        vfs.fsync(ino).await.unwrap();
        let got = vfs.read(ino, fh, CS as u64, 1000).await.unwrap();
        let stale = got.iter().filter(|b| **b == 0xAB).count();
        assert_eq!(
            stale, 0,
            "read returns {stale} bytes of the stale upload instead of the rewrite"
        );
        assert_eq!(got, vec![0xCD; 1000]);
        vfs.release(ino, fh).await.unwrap();
    });
}

/// `Record::SetChunks` sets `ctime = mtime` (strata-core tree.rs), so an
/// upload that lands after a utimens to an old date moves ctime back to that
/// date (and an upload after a chmod moves ctime back to the write's time).
#[test]
fn upload_keeps_ctime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = setup(0).await;
        let vfs = &s.vfs;
        let (a, fh) = vfs.create(ROOT_INO, b"f", 0o644, 0, 0, 0).unwrap();
        let ino = a.ino;
        vfs.write(ino, fh, 0, b"data").await.unwrap();
        let old = 1_000_000_000_000_000_000i64; // 2001
        vfs.setattr(
            ino,
            SetAttr {
                mtime: Some(SetTime::At(old)),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
        let before = vfs.getattr(ino).unwrap();
        assert!(before.ctime > old);
        vfs.fsync(ino).await.unwrap(); // uploads → SetChunks { mtime: old }
        let after = vfs.getattr(ino).unwrap();
        assert_eq!(after.mtime, old);
        assert!(
            after.ctime >= before.ctime,
            "ctime went back from {} to {}",
            before.ctime,
            after.ctime
        );
        vfs.release(ino, fh).await.unwrap();
    });
}

/// `setattr` with an explicit mtime calls `flush_attr` (write lock on the
/// overlay), then `set_overlay_mtime`, which only tries `try_write`. If a
/// reader is queued behind `flush_attr`'s write lock (tokio's RwLock hands
/// it the lock on release), `try_write` fails and the explicit mtime is
/// silently not put into the overlay: `getattr` (max of tree and overlay)
/// keeps showing the time of the last write, and the next upload writes that
/// time into the tree (`SetChunks { mtime }`): `touch -d`/`cp -p`/`rsync -t`
/// on a file being read lose their mtime.
#[test]
fn utimens_during_reads_is_kept() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = setup(300).await;
        let vfs = s.vfs.clone();
        let (a, fh) = vfs.create(ROOT_INO, b"f", 0o644, 0, 0, 0).unwrap();
        let ino = a.ino;
        vfs.write(ino, fh, 0, &vec![1u8; CS]).await.unwrap();
        vfs.fsync(ino).await.unwrap(); // chunk 0 in the store
        vfs.write(ino, fh, CS as u64, b"tail").await.unwrap(); // an overlay with pending data
                                                               // reader A holds the overlay's read lock while it fetches chunk 0 (300 ms)
        let v = vfs.clone();
        let ra = tokio::spawn(async move { v.read(ino, fh, 0, 100).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // setattr waits for the write lock in flush_attr
        let old = 1_000_000_000_000_000_000i64;
        let v = vfs.clone();
        let sa = tokio::spawn(async move {
            v.setattr(
                ino,
                SetAttr {
                    mtime: Some(SetTime::At(old)),
                    ..SetAttr::default()
                },
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // reader B queues behind the writer and gets the lock when flush_attr drops it
        let v = vfs.clone();
        let rb = tokio::spawn(async move { v.read(ino, fh, 0, 100).await });
        let attr = sa.await.unwrap().unwrap();
        ra.await.unwrap().unwrap();
        rb.await.unwrap().unwrap();
        assert_eq!(attr.mtime, old, "setattr's reply lost the explicit mtime");
        vfs.fsync(ino).await.unwrap();
        assert_eq!(
            vfs.getattr(ino).unwrap().mtime,
            old,
            "the upload overwrote the explicit mtime"
        );
        vfs.release(ino, fh).await.unwrap();
    });
}
