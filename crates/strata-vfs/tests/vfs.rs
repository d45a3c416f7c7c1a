//! VFS tests over real stores: a model-based random-operations test across
//! remounts, crash recovery from the journal and dirty chunks, and upload
//! traffic of random writes on a primitive (1 MiB objects, no ranges) store.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::{Vault, ROOT_INO};
use strata_crypto::KdfParams;
use strata_store::{open_url, DynStore, Metrics};
use strata_vfs::{CloseMode, Errno, SetAttr, Vfs, VfsOptions};

const PW: &[u8] = b"pw";
static N: AtomicU64 = AtomicU64::new(0);

struct Env {
    url: String,
    state: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Env {
    async fn new(query: &str, chunk: u32) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn")
            .try_init();
        let n = N.fetch_add(1, Ordering::SeqCst);
        let e = Env {
            url: format!("memory://vfs-{}-{n}{query}", std::process::id()),
            state: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        };
        let (store, _) = open_url(&e.url).unwrap();
        Vault::create(
            store,
            PW,
            CreateOptions {
                kdf: KdfParams::insecure_for_tests(),
                chunk_size: chunk,
            },
            e.open_opts(),
        )
        .await
        .unwrap();
        e
    }

    fn open_opts(&self) -> OpenOptions {
        OpenOptions {
            state_dir: Some(self.state.path().to_path_buf()),
            checkpoint_records: 500,
            ..Default::default()
        }
    }

    async fn mount(&self) -> (Arc<Vfs>, Metrics) {
        let (v, m, _) = self.mount_with(Duration::from_millis(50)).await;
        (v, m)
    }

    async fn mount_with(
        &self,
        delay: Duration,
    ) -> (Arc<Vfs>, Metrics, tokio::task::JoinHandle<()>) {
        self.mount_close(delay, CloseMode::Durable).await
    }

    async fn mount_close(
        &self,
        delay: Duration,
        close: CloseMode,
    ) -> (Arc<Vfs>, Metrics, tokio::task::JoinHandle<()>) {
        let (store, metrics): (DynStore, Metrics) = open_url(&self.url).unwrap();
        let vault = Arc::new(Vault::open(store, PW, self.open_opts()).await.unwrap());
        let mut o = VfsOptions::new(self.cache.path().to_path_buf());
        o.writeback_delay = delay;
        o.commit_interval = delay * 2;
        o.close = close;
        let vfs = Vfs::new(vault, o).unwrap();
        let h = vfs.start();
        (vfs, metrics, h)
    }
}

async fn unmount(v: Arc<Vfs>) {
    v.shutdown(Duration::from_secs(60), |_, _| {})
        .await
        .unwrap();
}

/// Compare contents with a short message (first difference) instead of a
/// dump of megabytes.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

async fn read_all(v: &Vfs, ino: u64) -> Vec<u8> {
    let size = v.getattr(ino).unwrap().size;
    v.read(ino, 0, 0, size as u32 + 10).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_based_random_operations_across_remounts() {
    // Model: path → content for files in a flat directory plus one subdir.
    let e = Env::new("", 256 * 1024).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    for round in 0..4 {
        let (v, _) = e.mount().await;
        // open-unlinked handles kept across operations in this round
        let mut held: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        for _ in 0..150 {
            let nm = &names[rng.gen_range(0..names.len())];
            let op = rng.gen_range(0..10);
            let exists = model.contains_key(nm);
            match op {
                0..=3 => {
                    // write at a random offset (creating if needed)
                    let ino = if exists {
                        v.lookup(ROOT_INO, nm.as_bytes()).unwrap().ino
                    } else {
                        let (a, fh) = v
                            .create(ROOT_INO, nm.as_bytes(), 0o644, 0o022, 0, 0)
                            .unwrap();
                        v.release(a.ino, fh).await.unwrap();
                        model.insert(nm.clone(), Vec::new());
                        a.ino
                    };
                    let m = model.get_mut(nm).unwrap();
                    let off = rng.gen_range(0..(m.len() as u64 + 600_000));
                    let len = rng.gen_range(1..300_000usize);
                    let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    assert_eq!(v.write(ino, 0, off, &data).await.unwrap() as usize, len);
                    let end = off as usize + len;
                    if m.len() < end {
                        m.resize(end, 0);
                    }
                    m[off as usize..end].copy_from_slice(&data);
                    if rng.gen_bool(0.3) {
                        v.flush(ino).await.unwrap();
                    }
                }
                4 if exists => {
                    let ino = v.lookup(ROOT_INO, nm.as_bytes()).unwrap().ino;
                    let m = model.get_mut(nm).unwrap();
                    let size = rng.gen_range(0..(m.len() as u64 * 2 + 10));
                    v.setattr(
                        ino,
                        SetAttr {
                            size: Some(size),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                    m.resize(size as usize, 0);
                }
                5 if exists => {
                    let to = &names[rng.gen_range(0..names.len())];
                    v.rename(ROOT_INO, nm.as_bytes(), ROOT_INO, to.as_bytes(), 0)
                        .unwrap();
                    let c = model.remove(nm).unwrap();
                    model.insert(to.clone(), c);
                }
                6 if exists => {
                    // unlink while open: still readable until release
                    let ino = v.lookup(ROOT_INO, nm.as_bytes()).unwrap().ino;
                    let fh = v.open(ino, false, true).await.unwrap();
                    v.unlink(ROOT_INO, nm.as_bytes()).unwrap();
                    let c = model.remove(nm).unwrap();
                    assert_eq!(read_all(&v, ino).await, c);
                    held.push((ino, fh, c));
                }
                7 if exists => {
                    let to = format!("{nm}-link");
                    if !model.contains_key(&to) && !names.contains(&to) {
                        let ino = v.lookup(ROOT_INO, nm.as_bytes()).unwrap().ino;
                        v.link(ino, ROOT_INO, to.as_bytes()).unwrap();
                        assert_eq!(v.getattr(ino).unwrap().nlink, 2);
                        // write through one name, see it through the other
                        v.write(ino, 0, 0, b"LINKED").await.unwrap();
                        let m = model.get_mut(nm).unwrap();
                        if m.len() < 6 {
                            m.resize(6, 0);
                        }
                        m[..6].copy_from_slice(b"LINKED");
                        assert_eq!(
                            read_all(&v, v.lookup(ROOT_INO, to.as_bytes()).unwrap().ino).await,
                            *m
                        );
                        v.unlink(ROOT_INO, to.as_bytes()).unwrap();
                    }
                }
                8 => {
                    if let Some(ino) = model
                        .get(nm)
                        .map(|_| v.lookup(ROOT_INO, nm.as_bytes()).unwrap().ino)
                    {
                        v.fsync(ino).await.unwrap();
                    }
                }
                _ => {
                    for (n, c) in &model {
                        let ino = v.lookup(ROOT_INO, n.as_bytes()).unwrap().ino;
                        same(
                            &read_all(&v, ino).await,
                            c,
                            &format!("round {round} file {n}"),
                        );
                    }
                }
            }
        }
        for (ino, fh, c) in held {
            v.write(ino, fh, 0, b"orphan write").await.unwrap();
            let mut c = c;
            if c.len() < 12 {
                c.resize(12, 0);
            }
            c[..12].copy_from_slice(b"orphan write");
            assert_eq!(read_all(&v, ino).await, c);
            v.release(ino, fh).await.unwrap();
            assert_eq!(v.getattr(ino), Err(Errno(libc::ENOENT)));
        }
        unmount(v).await;
        // after remount the tree matches the model exactly
        let (v, _) = e.mount().await;
        let listed: Vec<String> = v
            .readdir(ROOT_INO)
            .unwrap()
            .into_iter()
            .map(|d| String::from_utf8(d.name).unwrap())
            .collect();
        assert_eq!(
            listed,
            model.keys().cloned().collect::<Vec<_>>(),
            "round {round}"
        );
        for (n, c) in &model {
            let ino = v.lookup(ROOT_INO, n.as_bytes()).unwrap().ino;
            assert_eq!(v.getattr(ino).unwrap().size, c.len() as u64);
            same(
                &read_all(&v, ino).await,
                c,
                &format!("round {round} file {n} after remount"),
            );
        }
        unmount(v).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_replays_journal_and_dirty_chunks() {
    let e = Env::new("", 256 * 1024).await;
    // nothing gets uploaded or committed before the "crash"
    let (v, metrics, uploader) = e.mount_with(Duration::from_secs(3600)).await;
    let base = metrics.snapshot();
    let d = v
        .mknod(ROOT_INO, b"dir", libc::S_IFDIR | 0o755, 0, 0, 0, 0, None)
        .unwrap();
    let (a, _) = v.create(d.ino, b"closed.bin", 0o600, 0, 0, 0).unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    v.write(a.ino, 0, 0, &data).await.unwrap();
    v.flush(a.ino).await.unwrap(); // close: durable in the local journal + cache
    v.setxattr(a.ino, b"user.k", b"v", 0).unwrap();
    v.flush(a.ino).await.unwrap();
    // full chunks are uploaded at once, but no metadata was committed
    let (store, _) = open_url(&e.url).unwrap();
    let logs = store.list("meta/log.").await.unwrap();
    assert!(logs.is_empty(), "{logs:?}");
    assert!(metrics.snapshot().since(&base).puts <= 3);
    assert!(!dirty_files(e.cache.path()).is_empty());
    // "kill -9": the uploader stops and everything is dropped without any
    // shutdown or commit
    uploader.abort();
    let _ = uploader.await;
    drop(v);
    // the cache at rest holds neither the content nor the name
    assert_no_plaintext(e.cache.path(), &[b"closed.bin", &data[1000..1064]]);
    let (v, _) = e.mount().await;
    let d2 = v.lookup(ROOT_INO, b"dir").unwrap();
    assert_eq!(d2.ino, d.ino);
    let a2 = v.lookup(d.ino, b"closed.bin").unwrap();
    assert_eq!(a2.size, data.len() as u64);
    assert_eq!(a2.perm, 0o600);
    assert_eq!(read_all(&v, a2.ino).await, data);
    assert_eq!(v.getxattr(a2.ino, b"user.k").unwrap(), b"v");
    unmount(v).await;
    // after a clean unmount everything is in the store: a fresh cache works
    let fresh = tempfile::tempdir().unwrap();
    let (store, _) = open_url(&e.url).unwrap();
    let vault = Arc::new(Vault::open(store, PW, e.open_opts()).await.unwrap());
    let v = Vfs::new(vault, VfsOptions::new(fresh.path().to_path_buf())).unwrap();
    let a3 = v.lookup(d.ino, b"closed.bin").unwrap();
    assert_eq!(read_all(&v, a3.ino).await, data);
    assert!(
        dirty_files(e.cache.path()).is_empty(),
        "cache drained after unmount"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_close_syncs_later_and_a_crash_loses_nothing() {
    let e = Env::new("", 1 << 20).await;
    // a small file (its bytes in the journal) and a partial chunk in a
    // chunk file
    let small = b"closed, not synced".to_vec();
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    let write_both = |v: Arc<Vfs>, names: [&'static [u8]; 2]| {
        let (small, big) = (small.clone(), big.clone());
        async move {
            let mut inos = Vec::new();
            for (name, data) in names.into_iter().zip([small, big]) {
                let (a, _) = v.create(ROOT_INO, name, 0o644, 0, 0, 0).unwrap();
                v.write(a.ino, 0, 0, &data).await.unwrap();
                v.flush(a.ino).await.unwrap();
                inos.push(a.ino);
            }
            inos
        }
    };

    // durable close (the default): synced when close returns
    let (v, _, _) = e.mount_with(Duration::from_secs(3600)).await;
    write_both(v.clone(), [b"d-small", b"d-big"]).await;
    assert!(!v.status().close_unsynced);
    unmount(v).await;

    // buffered: close leaves the sync to the uploader (whose interval is
    // an hour here), and a crash of the process loses nothing
    let (v, _, uploader) = e
        .mount_close(Duration::from_secs(3600), CloseMode::Buffered)
        .await;
    let inos = write_both(v.clone(), [b"b-small", b"b-big"]).await;
    assert!(v.status().close_unsynced, "close did not wait for a sync");
    assert!(!dirty_files(e.cache.path()).is_empty());
    uploader.abort();
    let _ = uploader.await;
    drop(v);
    let (v, _) = e.mount().await;
    for (name, want) in [(&b"b-small"[..], &small), (b"b-big", &big)] {
        let n = v.lookup(ROOT_INO, name).unwrap();
        assert!(inos.contains(&n.ino));
        same(&read_all(&v, n.ino).await, want, "after a crash");
    }
    unmount(v).await;

    // with a short interval the uploader syncs what was closed
    let (v, _, _) = e
        .mount_close(Duration::from_millis(50), CloseMode::Buffered)
        .await;
    write_both(v.clone(), [b"s-small", b"s-big"]).await;
    let t = std::time::Instant::now();
    while v.status().close_unsynced {
        assert!(t.elapsed() < Duration::from_secs(20), "never synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unmount(v).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_file_goes_to_the_store_without_the_writeback_delay() {
    let e = Env::new("", 1 << 20).await;
    // an hour's delay: only a file no handle writes to is uploaded
    let (v, _, _) = e.mount_with(Duration::from_secs(3600)).await;
    let (open, open_fh) = v.create(ROOT_INO, b"open", 0o644, 0, 0, 0).unwrap();
    v.write(open.ino, 0, 0, b"still being written")
        .await
        .unwrap();
    v.flush(open.ino).await.unwrap();
    let (closed, fh) = v.create(ROOT_INO, b"closed", 0o644, 0, 0, 0).unwrap();
    v.write(closed.ino, 0, 0, b"done").await.unwrap();
    v.flush(closed.ino).await.unwrap();
    v.release(closed.ino, fh).await.unwrap();
    let t = std::time::Instant::now();
    while v.status().dirty_files > 1 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the closed file stays dirty"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the open file waits for its delay
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(v.status().dirty_files, 1);
    // closed too: both uploaded, and then (nothing left to upload, nothing
    // changing) committed
    v.release(open.ino, open_fh).await.unwrap();
    let (store, _) = open_url(&e.url).unwrap();
    let mut o = e.open_opts();
    o.accept_rollback = true;
    let t = std::time::Instant::now();
    loop {
        let other = Vault::open(store.clone(), PW, o.clone()).await.unwrap();
        let sizes = ["/closed", "/open"].map(|p| other.stat_path(p).map(|n| n.size).ok());
        if sizes == [Some(4), Some(19)] {
            let n = other.stat_path("/closed").unwrap();
            assert_eq!(other.read_at(&n, 0, 100).await.unwrap(), b"done");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(v.status().dirty_files, 0);
    drop(v);
}

/// No file under `dir` contains any of `needles`.
#[track_caller]
fn assert_no_plaintext(dir: &Path, needles: &[&[u8]]) {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&p).unwrap();
            for n in needles {
                assert!(
                    !bytes.windows(n.len()).any(|w| w == *n),
                    "{} holds plaintext ({} bytes of it)",
                    p.display(),
                    n.len()
                );
            }
        }
    }
    assert!(
        files >= 2,
        "expected a journal and chunk files in {}",
        dir.display()
    );
}

fn dirty_files(cache: &Path) -> Vec<String> {
    std::fs::read_dir(strata_vfs::writeback::dirty_dir(cache))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_in_cloud_mode_reaches_the_store() {
    let e = Env::new("", 1 << 20).await;
    let (v, _) = e.mount().await;
    let (a, _) = v.create(ROOT_INO, b"f", 0o644, 0, 0, 0).unwrap();
    v.write(a.ino, 0, 0, b"durable").await.unwrap();
    v.fsync(a.ino).await.unwrap();
    // a second, independent reader of the store sees it right away
    let (store, _) = open_url(&e.url).unwrap();
    let mut o = e.open_opts();
    o.accept_rollback = true;
    let other = Vault::open(store, PW, o).await.unwrap();
    let n = other.stat_path("/f").unwrap();
    assert_eq!(other.read_at(&n, 0, 100).await.unwrap(), b"durable");
    drop(v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_writes_reupload_only_touched_chunks_on_a_primitive_store() {
    let e = Env::new("?max-object-size=1MiB&range-reads=false", 4 << 20).await;
    let (v, metrics) = e.mount().await;
    let cs = u64::from(v.vault().chunk_size());
    assert!(cs <= 1 << 20);
    let (a, _) = v.create(ROOT_INO, b"big", 0o644, 0, 0, 0).unwrap();
    let size = 50u64 << 20;
    let mut model = vec![0u8; size as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    rng.fill(&mut model[..]);
    for off in (0..size).step_by(1 << 20) {
        v.write(
            a.ino,
            0,
            off,
            &model[off as usize..(off + (1 << 20)) as usize],
        )
        .await
        .unwrap();
    }
    v.fsync(a.ino).await.unwrap();
    let before = metrics.snapshot();
    // 5 random 4 KiB writes, each inside a distinct chunk
    let mut touched = std::collections::BTreeSet::new();
    while touched.len() < 5 {
        touched.insert(rng.gen_range(0..size / cs - 1));
    }
    for ci in &touched {
        let off = ci * cs + rng.gen_range(0..cs - 4096);
        let patch: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
        v.write(a.ino, 0, off, &patch).await.unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&patch);
    }
    v.fsync(a.ino).await.unwrap();
    let d = metrics.snapshot().since(&before);
    // each touched chunk: one whole-object download (fill) and one upload,
    // plus metadata logs; nothing else moves
    assert_eq!(d.gets, 5, "{d:?}");
    let data_puts = d.puts;
    assert!((5..=8).contains(&data_puts), "{d:?}");
    assert!(d.bytes_up < 5 * (1 << 20) + (256 << 10), "{d:?}");
    assert!(d.bytes_down <= 5 * (1 << 20), "{d:?}");
    // and the content is right after remount
    unmount(v).await;
    let (v, _) = e.mount().await;
    let ino = v.lookup(ROOT_INO, b"big").unwrap().ino;
    same(&read_all(&v, ino).await, &model, "big file after remount");
    unmount(v).await;
}

/// A power cut after the uploader put a blob with deferred durability (lost
/// with the crash) and a close synced the journal that references it: the
/// replayed reference must not make the chunk left in the cache count as
/// already stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_deferred_blob_is_uploaded_again_after_a_crash() {
    let e = Env::new("", 1 << 20).await;
    let (store, _) = open_url(&e.url).unwrap();
    let vault = Arc::new(Vault::open(store, PW, e.open_opts()).await.unwrap());
    let mut o = VfsOptions::new(e.cache.path().to_path_buf());
    o.writeback_delay = Duration::from_millis(10);
    o.commit_interval = Duration::from_secs(3600); // no commit before the "crash"
    let v = Vfs::new(vault, o).unwrap();
    let uploader = v.start();
    let (a, fh) = v.create(ROOT_INO, b"f", 0o644, 0, 0, 0).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    v.write(a.ino, fh, 0, &data).await.unwrap();
    for _ in 0..500 {
        if v.status().chunks_uploaded > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(v.status().chunks_uploaded, 1, "the chunk was uploaded");
    v.flush(a.ino).await.unwrap(); // the journal (with SetChunks) is synced
    v.release(a.ino, fh).await.unwrap();
    uploader.abort();
    let _ = uploader.await;
    drop(v);
    // the deferred put did not survive the power cut
    // (a small chunk goes into a pack, sent only by a commit: nothing of
    // it is in the store; the journal places it in that unsent pack)
    let (store, _) = open_url(&e.url).unwrap();
    let mut blobs = store.list("data/").await.unwrap();
    blobs.extend(store.list("pack/").await.unwrap());
    assert!(blobs.len() <= 1, "{blobs:?}");
    for b in blobs {
        store.delete(&b.key).await.unwrap();
    }
    let (v, _) = e.mount().await;
    unmount(v).await;
    let (store, _) = open_url(&e.url).unwrap();
    let fresh = Vault::open(store, PW, e.open_opts()).await.unwrap();
    let n = fresh.stat_path("/f").unwrap();
    same(
        &fresh.read_at(&n, 0, n.size).await.unwrap(),
        &data,
        "file after the crash",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_chunk_files_of_an_earlier_version_are_sealed_and_uploaded() {
    let e = Env::new("", 256 * 1024).await;
    let (v, _, uploader) = e.mount_with(Duration::from_secs(3600)).await;
    let (a, _) = v.create(ROOT_INO, b"old.txt", 0o644, 0, 0, 0).unwrap();
    v.write(a.ino, 0, 0, b"abcdefghij").await.unwrap();
    v.flush(a.ino).await.unwrap();
    uploader.abort();
    let _ = uploader.await;
    drop(v);
    // what a version without sealed cache files left behind (this version
    // kept the small chunk in memory and journaled it: a chunk file of the
    // same chunk is the later one and wins)
    let dirty = strata_vfs::writeback::dirty_dir(e.cache.path()).join(format!("{}.0", a.ino));
    std::fs::write(&dirty, b"ABCDEFGHIJ").unwrap();
    let (v, _) = e.mount().await;
    let f = v.lookup(ROOT_INO, b"old.txt").unwrap();
    assert_eq!(read_all(&v, f.ino).await, b"ABCDEFGHIJ");
    if let Ok(now) = std::fs::read(&dirty) {
        assert!(
            !now.windows(10).any(|w| w == b"ABCDEFGHIJ"),
            "still plaintext"
        );
    }
    unmount(v).await;
    let fresh = tempfile::tempdir().unwrap();
    let (store, _) = open_url(&e.url).unwrap();
    let vault = Arc::new(Vault::open(store, PW, e.open_opts()).await.unwrap());
    let v = Vfs::new(vault, VfsOptions::new(fresh.path().to_path_buf())).unwrap();
    let f = v.lookup(ROOT_INO, b"old.txt").unwrap();
    assert_eq!(read_all(&v, f.ino).await, b"ABCDEFGHIJ");
}
