//! Packs (format version 2): small files and short tails are written into
//! pack objects, each item authenticated and readable on its own. Store
//! requests are counted with the store stack's metrics.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::{RngCore, SeedableRng};
use strata_core::data::FileMeta;
use strata_core::format::pack::{item_len, parse_pack_key, FIRST_ITEM, PACK_PREFIX};
use strata_core::maint::GcOptions;
use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::{Vault, VaultError};
use strata_crypto::KdfParams;
use strata_store::{open_url, Bytes, DynStore, FaultPlan, FaultStore, Metrics, Store};

const PW: &[u8] = b"pack test password";
static COUNTER: AtomicU64 = AtomicU64::new(0);

struct Env {
    url: String,
    store: DynStore,
    metrics: Metrics,
    state: tempfile::TempDir,
    pack_size: u64,
}

fn env_with(query: &str, pack_size: u64) -> Env {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let url = format!("memory://packs-test-{}-{n}{query}", std::process::id());
    let (store, metrics) = open_url(&url).unwrap();
    Env {
        url,
        store,
        metrics,
        state: tempfile::tempdir().unwrap(),
        pack_size,
    }
}

fn env(query: &str) -> Env {
    env_with(query, strata_core::format::pack::DEFAULT_PACK_SIZE)
}

fn opts(e: &Env) -> OpenOptions {
    OpenOptions {
        state_dir: Some(e.state.path().to_path_buf()),
        pack_size: e.pack_size,
        ..Default::default()
    }
}

async fn create(e: &Env) -> Vault {
    Vault::create(
        e.store.clone(),
        PW,
        CreateOptions {
            kdf: KdfParams::insecure_for_tests(),
            chunk_size: 1 << 20,
        },
        opts(e),
    )
    .await
    .unwrap()
}

async fn reopen(e: &Env) -> Result<Vault, VaultError> {
    let (store, _) = open_url(&e.url).unwrap();
    Vault::open(store, PW, opts(e)).await
}

/// Reopen over the same store, counting requests with `e.metrics`.
async fn reopen_counted(e: &Env) -> Vault {
    Vault::open(e.store.clone(), PW, opts(e)).await.unwrap()
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
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

async fn get(v: &Vault, path: &str) -> Result<Vec<u8>, VaultError> {
    let node = v.stat_path(path)?;
    let mut out = Vec::new();
    v.export(&node, &mut out, None)
        .await
        .map_err(|e| e.in_file(path))?;
    Ok(out)
}

async fn keys_with(s: &DynStore, prefix: &str) -> Vec<String> {
    s.list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

async fn store_bytes(s: &DynStore) -> u64 {
    s.list("").await.unwrap().iter().map(|o| o.size).sum()
}

fn small(i: usize) -> Vec<u8> {
    random(100 + (i * 7919) % 8000, i as u64)
}

/// The pack holding `path`'s first chunk, and the item's location.
fn loc_of(v: &Vault, path: &str) -> strata_core::tree::PackLoc {
    let n = v.stat_path(path).unwrap();
    let c = n.chunks()[0].unwrap();
    v.with_tree(|t| t.packed(&c.id)).expect("packed")
}

#[tokio::test]
async fn small_files_go_into_few_packs_and_read_back() {
    let e = env("");
    let v = create(&e).await;
    let before = e.metrics.snapshot();
    for i in 0..300 {
        put(&v, &format!("/f{i}"), &small(i)).await;
    }
    // a large file's short tail is packed too, its full chunks are not
    let big = random((1 << 20) * 2 + 777, 99);
    put(&v, "/big", &big).await;
    v.commit().await.unwrap();
    let d = e.metrics.snapshot().since(&before);
    let packs = keys_with(&e.store, PACK_PREFIX).await;
    let blobs = keys_with(&e.store, "data/").await;
    assert_eq!(blobs.len(), 2, "the two full chunks of /big");
    assert_eq!(packs.len(), 1, "300 small files and a tail in one pack");
    assert!(d.puts <= 6, "{d:?}");
    assert!(loc_of(&v, "/f0").pack == parse_pack_key(&packs[0]).unwrap());
    let tail = v.stat_path("/big").unwrap().chunks()[2].unwrap();
    assert!(v.with_tree(|t| t.packed(&tail.id)).is_some());
    for i in 0..300 {
        assert_eq!(get(&v, &format!("/f{i}")).await.unwrap(), small(i));
    }
    assert_eq!(get(&v, "/big").await.unwrap(), big);
    drop(v);
    let v = reopen(&e).await.unwrap();
    assert_eq!(v.format_version(), 2);
    assert_eq!(get(&v, "/f7").await.unwrap(), small(7));
    // after a checkpoint (the pack table is in it) too
    v.checkpoint().await.unwrap();
    drop(v);
    let v = reopen_counted(&e).await;
    let info = v.info().await.unwrap();
    assert_eq!((info.packs, info.packed_blobs), (1, 301));
    // one small file from a cold start: one range request
    let before = e.metrics.snapshot();
    assert_eq!(get(&v, "/f123").await.unwrap(), small(123));
    let d = e.metrics.snapshot().since(&before);
    assert_eq!((d.range_gets, d.gets), (1, 0), "{d:?}");
    let report = v.check(true, None).await.unwrap();
    assert!(
        report.damaged.is_empty() && report.unreferenced == 0,
        "{report:?}"
    );
    assert_eq!(report.blobs_checked, 303);
}

#[tokio::test]
async fn pack_boundaries() {
    // room for exactly three items of 1000 bytes (1016 stored each)
    let item = item_len(1000);
    let e = env_with("", FIRST_ITEM + 3 * item);
    let v = create(&e).await;
    for i in 0..4 {
        put(&v, &format!("/x{i}"), &random(1000, i)).await;
    }
    // an item larger than the space left in the second pack starts a third
    put(&v, "/y", &random(1200, 9)).await;
    put(&v, "/z", &random(1400, 10)).await;
    v.commit().await.unwrap();
    let (a, b, c, d) = (
        loc_of(&v, "/x0"),
        loc_of(&v, "/x2"),
        loc_of(&v, "/x3"),
        loc_of(&v, "/z"),
    );
    assert_eq!(a.pack, b.pack);
    assert_eq!(
        u64::from(b.offset) + item,
        FIRST_ITEM + 3 * item,
        "the last item ends the pack exactly"
    );
    assert_ne!(b.pack, c.pack, "the fourth item starts a new pack");
    assert_eq!(u64::from(c.offset), FIRST_ITEM);
    assert_ne!(
        d.pack, c.pack,
        "an item larger than the space left goes to the next pack"
    );
    assert_eq!(keys_with(&e.store, PACK_PREFIX).await.len(), 3);
    drop(v);
    let v = reopen(&e).await.unwrap();
    for i in 0..4 {
        assert_eq!(get(&v, &format!("/x{i}")).await.unwrap(), random(1000, i));
    }
    assert_eq!(get(&v, "/y").await.unwrap(), random(1200, 9));
    assert_eq!(get(&v, "/z").await.unwrap(), random(1400, 10));
}

#[tokio::test]
async fn packs_under_a_1mib_cap_without_range_reads() {
    let e = env("?max-object-size=1MiB&range-reads=false");
    let v = create(&e).await;
    // ~3.5 MB of small files: several packs, none above the cap
    for i in 0..800 {
        put(&v, &format!("/s{i}"), &small(i)).await;
    }
    let big = random(3 * 1000 * 1000, 3);
    put(&v, "/big", &big).await;
    v.commit().await.unwrap();
    for o in e.store.list("").await.unwrap() {
        assert!(o.size <= 1 << 20, "{} is {} bytes", o.key, o.size);
    }
    assert!(keys_with(&e.store, PACK_PREFIX).await.len() >= 4);
    drop(v);
    let v = reopen_counted(&e).await;
    // without ranges a pack is fetched whole once and serves its other items
    let before = e.metrics.snapshot();
    let p = loc_of(&v, "/s0").pack;
    let same: Vec<usize> = (0..800)
        .filter(|i| loc_of(&v, &format!("/s{i}")).pack == p)
        .collect();
    assert!(same.len() > 10);
    for &i in &same {
        assert_eq!(get(&v, &format!("/s{i}")).await.unwrap(), small(i));
    }
    let d = e.metrics.snapshot().since(&before);
    assert_eq!((d.gets, d.range_gets), (1, 0), "{d:?}");
    for i in 0..800 {
        assert_eq!(get(&v, &format!("/s{i}")).await.unwrap(), small(i));
    }
    assert_eq!(get(&v, "/big").await.unwrap(), big);
    let report = v.check(true, None).await.unwrap();
    assert!(report.damaged.is_empty(), "{report:?}");
}

#[tokio::test]
async fn dedup_across_packed_and_unpacked_data() {
    let e = env("");
    let v = create(&e).await;
    put(&v, "/a", b"the same small content").await;
    v.commit().await.unwrap();
    let packs = keys_with(&e.store, PACK_PREFIX).await;
    put(&v, "/b", b"the same small content").await;
    put(&v, "/c", b"the same small content").await;
    v.commit().await.unwrap();
    assert_eq!(keys_with(&e.store, PACK_PREFIX).await, packs, "no new pack");
    assert_eq!(loc_of(&v, "/a"), loc_of(&v, "/c"));
    let info = v.info().await.unwrap();
    assert_eq!(info.packed_blobs, 1);
    // a full chunk equal to a big file's chunk is deduplicated as before,
    // and a file whose tail is an already packed item reuses it
    let chunk = random(1 << 20, 5);
    let mut big = chunk.clone();
    big.extend_from_slice(b"the same small content");
    put(&v, "/big", &big).await;
    v.commit().await.unwrap();
    assert_eq!(keys_with(&e.store, PACK_PREFIX).await, packs);
    assert_eq!(v.with_tree(|t| t.pack_table().len()), 1);
    // deleting every copy but one keeps the item; the last one frees the pack
    v.remove("/a", false).unwrap();
    v.remove("/b", false).unwrap();
    v.remove("/c", false).unwrap();
    v.commit().await.unwrap();
    assert_eq!(keys_with(&e.store, PACK_PREFIX).await, packs);
    assert_eq!(get(&v, "/big").await.unwrap(), big);
    v.remove("/big", false).unwrap();
    v.commit().await.unwrap();
    assert!(
        keys_with(&e.store, PACK_PREFIX).await.is_empty(),
        "emptied pack deleted"
    );
    assert!(keys_with(&e.store, "data/").await.is_empty());
}

#[tokio::test]
async fn flipped_byte_in_one_item_names_that_file_only() {
    let e = env("");
    let v = create(&e).await;
    for i in 0..20 {
        put(&v, &format!("/f{i}"), &small(i)).await;
    }
    v.commit().await.unwrap();
    let l = loc_of(&v, "/f5");
    let key = strata_core::format::pack::pack_key(&l.pack);
    let mut bytes = e.store.get(&key).await.unwrap().to_vec();
    bytes[l.offset as usize + 10] ^= 1;
    e.store.put(&key, Bytes::from(bytes)).await.unwrap();
    drop(v);
    let v = reopen(&e).await.unwrap();
    let err = get(&v, "/f5").await.unwrap_err().to_string();
    assert!(err.contains(&key) && err.contains("/f5"), "{err}");
    for i in (0..20).filter(|&i| i != 5) {
        assert_eq!(get(&v, &format!("/f{i}")).await.unwrap(), small(i));
    }
    let r = v.check(true, None).await.unwrap();
    assert_eq!(r.damaged.len(), 1, "{r:?}");
    assert_eq!(r.damaged[0].object, key);
    assert_eq!(r.damaged[0].files, vec!["/f5".to_string()]);
    // gc does not copy a damaged item into a new pack
    let g = v
        .gc_with(GcOptions {
            repack_below: 1.0,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(g.packs_repacked, 0);
}

#[tokio::test]
async fn swapped_packs_are_detected() {
    let e = env_with("", 64 * 1024);
    let v = create(&e).await;
    for i in 0..40 {
        put(&v, &format!("/f{i}"), &random(2000, i)).await;
    }
    v.commit().await.unwrap();
    let packs = keys_with(&e.store, PACK_PREFIX).await;
    assert!(packs.len() >= 2);
    let (a, b) = (&packs[0], &packs[1]);
    let (ba, bb) = (e.store.get(a).await.unwrap(), e.store.get(b).await.unwrap());
    e.store.put(a, bb).await.unwrap();
    e.store.put(b, ba).await.unwrap();
    drop(v);
    let v = reopen(&e).await.unwrap();
    let mut failed = 0;
    for i in 0..40 {
        match get(&v, &format!("/f{i}")).await {
            Ok(d) => assert_eq!(d, random(2000, i), "never misread"),
            Err(e) => {
                assert!(matches!(e, VaultError::Corrupt { .. }), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0);
    let r = v.check(true, None).await.unwrap();
    assert!(!r.damaged.is_empty());
}

#[tokio::test]
async fn crash_between_pack_upload_and_log() {
    let e = env("");
    let v = create(&e).await;
    put(&v, "/kept", b"committed before the crash").await;
    v.commit().await.unwrap();
    drop(v);
    let plan = FaultPlan::new();
    let faulty: DynStore = Arc::new(FaultStore::new(e.store.clone(), plan.clone()));
    let v = Vault::open(faulty, PW, opts(&e)).await.unwrap();
    plan.fail_puts_after("meta/", 0);
    for i in 0..10 {
        put(&v, &format!("/lost{i}"), &small(i)).await;
    }
    assert!(v.commit().await.is_err());
    assert_eq!(
        keys_with(&e.store, PACK_PREFIX).await.len(),
        2,
        "the pack was sent"
    );
    drop(v);
    let v = reopen(&e).await.unwrap();
    assert_eq!(
        get(&v, "/kept").await.unwrap(),
        b"committed before the crash"
    );
    assert!(v.stat_path("/lost0").is_err());
    let c = v.check(true, None).await.unwrap();
    assert!(c.damaged.is_empty());
    assert_eq!(c.unreferenced, 1, "the orphaned pack");
    let g = v.gc().await.unwrap();
    assert_eq!(g.packs_deleted, 1);
    assert_eq!(keys_with(&e.store, PACK_PREFIX).await.len(), 1);
    assert_eq!(
        get(&v, "/kept").await.unwrap(),
        b"committed before the crash"
    );
}

/// Delete half of many small files, then gc: the store shrinks to about
/// half, at every crash point of the repack the vault stays whole, and the
/// next gc finishes the job.
#[tokio::test]
async fn gc_repacks_and_a_crash_mid_repack_loses_nothing() {
    for stop in [Some(1u8), Some(2), None] {
        let e = env_with("", 256 * 1024);
        let v = create(&e).await;
        for i in 0..400 {
            put(&v, &format!("/f{i}"), &small(i)).await;
        }
        v.commit().await.unwrap();
        v.checkpoint().await.unwrap();
        let full = store_bytes(&e.store).await;
        for i in (0..400).step_by(2) {
            v.remove(&format!("/f{i}"), false).unwrap();
        }
        v.commit().await.unwrap();
        let g = v
            .gc_with(GcOptions {
                stop_after: stop,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(g.packs_written > 0, "{g:?}");
        drop(v); // a crash at that step
        let v = reopen(&e).await.unwrap();
        for i in (1..400).step_by(2) {
            assert_eq!(
                get(&v, &format!("/f{i}")).await.unwrap(),
                small(i),
                "stop {stop:?}"
            );
        }
        let c = v.check(true, None).await.unwrap();
        assert!(c.damaged.is_empty(), "{c:?}");
        if stop.is_some() {
            assert!(c.unreferenced > 0, "leftovers of the crash: {c:?}");
        }
        let g = v.gc().await.unwrap();
        if stop == Some(1) {
            assert!(g.packs_deleted > 0 && g.packs_repacked > 0, "{g:?}");
        }
        v.checkpoint().await.unwrap();
        v.gc().await.unwrap();
        let c = v.check(true, None).await.unwrap();
        assert!(c.damaged.is_empty() && c.unreferenced == 0, "{c:?}");
        let now = store_bytes(&e.store).await;
        assert!(
            (now as f64) <= 0.65 * full as f64,
            "stop {stop:?}: {now} of {full} bytes"
        );
        for i in (1..400).step_by(2) {
            assert_eq!(get(&v, &format!("/f{i}")).await.unwrap(), small(i));
        }
    }
}

#[tokio::test]
async fn a_future_version_is_refused_with_a_clear_message() {
    let e = env("");
    let v = create(&e).await;
    drop(v);
    let mut h = Vault::read_header(&e.store).await.unwrap();
    assert_eq!(h.version, 2);
    h.version = 3;
    e.store
        .put("strata.vault", Bytes::from(h.to_bytes().unwrap()))
        .await
        .unwrap();
    let err = reopen(&e).await.err().unwrap().to_string();
    assert!(
        err.contains("format version 3") && err.contains("upgrade strata"),
        "{err}"
    );
}

#[tokio::test]
async fn replacing_a_packed_file_with_the_same_bytes_keeps_it_readable() {
    let e = env("");
    let v = create(&e).await;
    let body = small(3);
    put(&v, "/a.txt", &body).await;
    v.commit().await.unwrap();
    // the same content over itself: the chunk is deduplicated against the
    // file being replaced, and must keep its place in the pack
    put(&v, "/a.txt", &body).await;
    v.commit().await.unwrap();
    assert_eq!(get(&v, "/a.txt").await.unwrap(), body);
    drop(v);
    let v = reopen(&e).await.unwrap();
    assert_eq!(get(&v, "/a.txt").await.unwrap(), body, "after reopen");
    v.checkpoint().await.unwrap();
    let v = reopen(&e).await.unwrap();
    assert_eq!(get(&v, "/a.txt").await.unwrap(), body, "after a checkpoint");
    let r = v.check(true, None).await.unwrap();
    assert!(r.damaged.is_empty(), "{:?}", r.damaged);
}
