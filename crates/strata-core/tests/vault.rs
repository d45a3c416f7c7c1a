//! Vault-level tests against real store backends (memory and file), with the
//! store's object-size cap and range reads varied to emulate primitive clouds.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::{Rng, RngCore, SeedableRng};
use strata_core::data::FileMeta;
use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::{Vault, VaultError};
use strata_crypto::KdfParams;
use strata_store::{open_url, Bytes, DynStore, FaultPlan, FaultStore, Store};

const PW: &[u8] = b"correct horse battery staple";
static COUNTER: AtomicU64 = AtomicU64::new(0);

struct Env {
    url: String,
    store: DynStore,
    state: tempfile::TempDir,
}

fn env(query: &str) -> Env {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let url = format!("memory://vault-test-{}-{n}{query}", std::process::id());
    let (store, _) = open_url(&url).unwrap();
    Env {
        url,
        store,
        state: tempfile::tempdir().unwrap(),
    }
}

fn opts(e: &Env) -> OpenOptions {
    OpenOptions {
        state_dir: Some(e.state.path().to_path_buf()),
        ..Default::default()
    }
}

fn create_opts(chunk: u32) -> CreateOptions {
    CreateOptions {
        kdf: KdfParams::insecure_for_tests(),
        chunk_size: chunk,
    }
}

async fn create(e: &Env, chunk: u32) -> Vault {
    Vault::create(e.store.clone(), PW, create_opts(chunk), opts(e))
        .await
        .unwrap()
}

async fn reopen(e: &Env) -> Result<Vault, VaultError> {
    let (store, _) = open_url(&e.url).unwrap();
    Vault::open(store, PW, opts(e)).await
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

async fn snapshot(s: &DynStore) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for o in s.list("").await.unwrap() {
        m.insert(o.key.clone(), s.get(&o.key).await.unwrap().to_vec());
    }
    m
}

async fn keys_with(s: &DynStore, prefix: &str) -> Vec<String> {
    s.list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

const SEG: usize = 64 * 1024;

async fn roundtrip_sizes(query: &str, chunk: u32) {
    let e = env(query);
    let v = create(&e, chunk).await;
    let cs = v.chunk_size() as usize;
    let sizes = [
        0,
        1,
        SEG - 1,
        SEG,
        SEG + 1,
        cs - 1,
        cs,
        cs + 1,
        3 * cs + 17,
        5 * cs,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        put(&v, &format!("/f{i}"), &random(n, i as u64)).await;
    }
    v.commit().await.unwrap();
    drop(v);
    let v = reopen(&e).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for (i, &n) in sizes.iter().enumerate() {
        let want = random(n, i as u64);
        let path = format!("/f{i}");
        assert_eq!(get(&v, &path).await.unwrap(), want, "size {n}");
        let node = v.stat_path(&path).unwrap();
        assert_eq!(node.size, n as u64);
        for _ in 0..8 {
            let off = rng.gen_range(0..=n as u64);
            let len = rng.gen_range(0..=(2 * SEG) as u64);
            let got = v.read_at(&node, off, len).await.unwrap();
            let end = (off + len).min(n as u64) as usize;
            assert_eq!(got, want[off as usize..end], "size {n} off {off} len {len}");
        }
    }
    if let Some(max) = e.store.capabilities().max_object_size {
        for o in e.store.list("").await.unwrap() {
            assert!(o.size <= max, "{} is {} bytes > cap {max}", o.key, o.size);
        }
    }
}

#[tokio::test]
async fn roundtrip_default_store() {
    roundtrip_sizes("", 1 << 20).await;
}

#[tokio::test]
async fn roundtrip_capped_store_without_ranges() {
    // A primitive cloud: 1 MiB objects, whole-object downloads only; files
    // are many times the object size.
    roundtrip_sizes("?max-object-size=1MiB&range-reads=false", 4 << 20).await;
}

#[tokio::test]
async fn roundtrip_capped_store_with_ranges() {
    roundtrip_sizes("?max-object-size=300KiB", 4 << 20).await;
}

#[tokio::test]
async fn file_store_roundtrip_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("vault").display());
    let (store, _) = open_url(&url).unwrap();
    let state = tempfile::tempdir().unwrap();
    let o = OpenOptions {
        state_dir: Some(state.path().to_path_buf()),
        ..Default::default()
    };
    let v = Vault::create(store.clone(), PW, create_opts(1 << 20), o.clone())
        .await
        .unwrap();
    let data = random(3 * (1 << 20) + 5, 1);
    put(&v, "/big.bin", &data).await;
    v.commit().await.unwrap();
    drop(v);
    let (store, _) = open_url(&url).unwrap();
    let v = Vault::open(store, PW, o).await.unwrap();
    assert_eq!(get(&v, "/big.bin").await.unwrap(), data);
    let root = dir.path().join("vault");
    assert!(root.join("strata.vault").is_file());
    let blobs: Vec<_> = walk(&root.join("data"));
    assert_eq!(blobs.len(), 3, "three full chunks, three blobs");
    let packs: Vec<_> = walk(&root.join("pack"));
    assert_eq!(packs.len(), 1, "the 5-byte tail is in a pack");
    for p in &packs {
        let rel = p
            .strip_prefix(root.join("pack"))
            .unwrap()
            .to_string_lossy()
            .to_string();
        let (a, rest) = rel.split_once('/').unwrap();
        assert_eq!(
            (a.len(), rest.len()),
            (2, 62),
            "pack/<2 hex>/<62 hex>: {rel}"
        );
    }
    for b in blobs {
        let rel = b
            .strip_prefix(root.join("data"))
            .unwrap()
            .to_string_lossy()
            .to_string();
        let (a, rest) = rel.split_once('/').unwrap();
        assert_eq!(
            (a.len(), rest.len()),
            (2, 62),
            "data/<2 hex>/<62 hex>: {rel}"
        );
    }
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test]
async fn tree_operations_survive_reopen() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    v.mkdir("/a/b/c", 0o750, true).unwrap();
    put(&v, "/a/b/c/file", b"hello").await;
    v.symlink("/a/link", b"b/c/file").unwrap();
    v.rename("/a/b/c/file", "/a/moved").unwrap();
    put(&v, "/a/gone", b"bye").await;
    v.remove("/a/gone", false).unwrap();
    assert!(matches!(
        v.remove("/a", false),
        Err(VaultError::DirNotEmpty { .. })
    ));
    assert!(matches!(
        v.mkdir("/a/moved/x", 0o755, false),
        Err(VaultError::NotADirectory { .. })
    ));
    v.commit().await.unwrap();
    let before = v.with_tree(|t| t.to_image().inodes);
    drop(v);
    let v = reopen(&e).await.unwrap();
    assert_eq!(v.with_tree(|t| t.to_image().inodes), before);
    assert_eq!(get(&v, "/a/moved").await.unwrap(), b"hello");
    assert_eq!(
        v.stat_path("/a/link").unwrap().target(),
        Some(&b"b/c/file"[..])
    );
    assert_eq!(v.stat_path("/a/b/c").unwrap().perm, 0o750);
    assert!(matches!(
        v.stat_path("/a/gone"),
        Err(VaultError::NotFound { .. })
    ));
    v.remove("/a", true).unwrap();
    v.commit().await.unwrap();
    assert!(v.list_dir("/").unwrap().is_empty());
}

#[tokio::test]
async fn checkpoints_split_into_parts_and_drop_covered_logs() {
    // 128 KiB objects: the tree of 1500 long-named files needs several parts.
    let e = env("?max-object-size=128KiB");
    let mut o = opts(&e);
    o.checkpoint_records = 400;
    let v = Vault::create(e.store.clone(), PW, create_opts(1 << 20), o.clone())
        .await
        .unwrap();
    for i in 0..1500 {
        let name = format!("/{i:05}-{}", "n".repeat(150));
        put(&v, &name, format!("content {i}").as_bytes()).await;
        if i % 100 == 99 {
            v.commit().await.unwrap();
        }
    }
    v.commit().await.unwrap();
    v.checkpoint().await.unwrap();
    let version = v.version();
    let image = v.with_tree(|t| t.to_image().inodes);
    drop(v);
    let ckpts = keys_with(&e.store, "meta/checkpoint.").await;
    assert!(ckpts.len() > 1, "checkpoint split into parts: {ckpts:?}");
    assert!(
        ckpts.iter().all(|k| k.contains(&format!("{version:016x}"))),
        "old checkpoints removed"
    );
    assert!(
        keys_with(&e.store, "meta/log.").await.is_empty(),
        "covered logs deleted"
    );
    let v = Vault::open(e.store.clone(), PW, o).await.unwrap();
    assert_eq!(v.with_tree(|t| t.to_image().inodes), image);
    assert_eq!(
        get(&v, &format!("/01234-{}", "n".repeat(150)))
            .await
            .unwrap(),
        b"content 1234"
    );
}

#[tokio::test]
async fn store_holds_no_plaintext() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    let marker = b"ZQXJ-MARKER-7781";
    let mut content = Vec::new();
    for _ in 0..5000 {
        content.extend_from_slice(marker);
    }
    let name = String::from_utf8_lossy(marker).to_string();
    v.mkdir(&format!("/dir-{name}"), 0o755, false).unwrap();
    put(&v, &format!("/dir-{name}/file-{name}.txt"), &content).await;
    v.symlink(&format!("/link-{name}"), marker).unwrap();
    v.commit().await.unwrap();
    v.checkpoint().await.unwrap();
    for (key, bytes) in snapshot(&e.store).await {
        assert!(!key.contains(&name), "object name {key} leaks the marker");
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "object {key} contains the plaintext marker"
        );
        assert!(
            !bytes.windows(8).any(|w| w == b"file-ZQX"),
            "object {key} leaks a name"
        );
    }
}

#[tokio::test]
async fn identical_files_are_stored_once() {
    let e = env("");
    let v = create(&e, 4 << 20).await;
    let data = random(50 << 20, 7);
    put(&v, "/one", &data).await;
    v.commit().await.unwrap();
    let blobs = keys_with(&e.store, "data/").await;
    assert_eq!(blobs.len(), 13);
    put(&v, "/two", &data).await;
    v.commit().await.unwrap();
    assert_eq!(
        keys_with(&e.store, "data/").await,
        blobs,
        "second copy adds no data blobs"
    );
    let info = v.info().await.unwrap();
    assert_eq!(info.files, 2);
    assert_eq!(info.bytes, 100 << 20);
    assert!(
        info.dedup_saved >= 50 << 20,
        "dedup savings counted: {info:?}"
    );
    // Removing one copy keeps the blobs; removing both frees them.
    v.remove("/one", false).unwrap();
    v.commit().await.unwrap();
    assert_eq!(keys_with(&e.store, "data/").await.len(), 13);
    v.remove("/two", false).unwrap();
    v.commit().await.unwrap();
    assert!(
        keys_with(&e.store, "data/").await.is_empty(),
        "unreferenced blobs deleted after commit"
    );
}

#[tokio::test]
async fn overwrite_frees_old_blobs_and_holes_cost_nothing() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    put(&v, "/f", &random(2 << 20, 1)).await;
    v.commit().await.unwrap();
    let old = keys_with(&e.store, "data/").await;
    put(&v, "/f", &random(2 << 20, 2)).await;
    v.commit().await.unwrap();
    let new = keys_with(&e.store, "data/").await;
    assert_eq!(new.len(), 2);
    assert!(old.iter().all(|k| !new.contains(k)));
    // a sparse file: zeros are holes, not blobs
    put(&v, "/zeros", &vec![0u8; 3 << 20]).await;
    v.commit().await.unwrap();
    assert_eq!(keys_with(&e.store, "data/").await.len(), 2);
    assert_eq!(get(&v, "/zeros").await.unwrap(), vec![0u8; 3 << 20]);
}

#[tokio::test]
async fn wrong_password_changes_nothing() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    put(&v, "/f", b"data").await;
    v.commit().await.unwrap();
    drop(v);
    let before = snapshot(&e.store).await;
    let err = Vault::open(e.store.clone(), b"not the password", opts(&e))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, VaultError::WrongPassword { .. }), "{err}");
    assert!(err.to_string().contains("wrong password"));
    assert_eq!(snapshot(&e.store).await, before);
}

#[tokio::test]
async fn create_refuses_existing_or_foreign_store() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    drop(v);
    let err = Vault::create(e.store.clone(), PW, create_opts(1 << 20), opts(&e))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, VaultError::AlreadyAVault { .. }), "{err}");
    let f = env("");
    f.store
        .put("somefile", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let err = Vault::create(f.store.clone(), PW, create_opts(1 << 20), opts(&f))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, VaultError::NotEmpty { .. }), "{err}");
    let err = Vault::open(f.store.clone(), PW, opts(&f))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, VaultError::NotAVault { .. }), "{err}");
}

#[tokio::test]
async fn password_change_rewraps_only_the_header() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    put(&v, "/f", b"data").await;
    v.commit().await.unwrap();
    let before = snapshot(&e.store).await;
    assert!(v.change_password(b"bad", b"new", None).await.is_err());
    v.change_password(PW, b"new password", None).await.unwrap();
    let after = snapshot(&e.store).await;
    let changed: Vec<_> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert_eq!(changed, vec!["strata.vault"]);
    drop(v);
    assert!(matches!(
        reopen(&e).await,
        Err(VaultError::WrongPassword { .. })
    ));
    let v = Vault::open(e.store.clone(), b"new password", opts(&e))
        .await
        .unwrap();
    assert_eq!(get(&v, "/f").await.unwrap(), b"data");
}

// ---------- tamper detection ----------

async fn vault_with_files(e: &Env) -> Vault {
    let v = create(e, 1 << 20).await;
    put(&v, "/a.bin", &random(3 << 20, 1)).await;
    v.commit().await.unwrap();
    put(&v, "/b.bin", &random(1 << 20, 2)).await;
    v.commit().await.unwrap();
    v.mkdir("/d", 0o755, false).unwrap();
    v.commit().await.unwrap();
    v
}

async fn blob_of(v: &Vault, path: &str, index: usize) -> String {
    let n = v.stat_path(path).unwrap();
    strata_core::format::blob_key(&n.chunks()[index].unwrap().id)
}

#[tokio::test]
async fn flipped_byte_in_blob_is_detected() {
    let e = env("");
    let v = vault_with_files(&e).await;
    let key = blob_of(&v, "/a.bin", 1).await;
    let mut bytes = e.store.get(&key).await.unwrap().to_vec();
    bytes[200_000] ^= 0x01;
    e.store.put(&key, Bytes::from(bytes)).await.unwrap();
    let err = get(&v, "/a.bin").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VaultError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains(&key) && msg.contains("/a.bin") && msg.contains("bytes "),
        "{msg}"
    );
    // an untouched segment of the same blob still reads fine (segment-granular)
    let node = v.stat_path("/a.bin").unwrap();
    assert!(v.read_at(&node, (1 << 20) + 10, 100).await.is_ok());
    let report = v.check(true, None).await.unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].files, vec!["/a.bin".to_string()]);
    assert!(
        v.check(false, None).await.unwrap().damaged.is_empty(),
        "size still right"
    );
}

#[tokio::test]
async fn swapped_blobs_are_detected() {
    let e = env("");
    let v = vault_with_files(&e).await;
    let k1 = blob_of(&v, "/a.bin", 0).await;
    let k2 = blob_of(&v, "/b.bin", 0).await;
    let b1 = e.store.get(&k1).await.unwrap();
    let b2 = e.store.get(&k2).await.unwrap();
    e.store.put(&k1, b2).await.unwrap();
    e.store.put(&k2, b1).await.unwrap();
    assert!(matches!(
        get(&v, "/a.bin").await,
        Err(VaultError::Corrupt { .. })
    ));
    assert!(matches!(
        get(&v, "/b.bin").await,
        Err(VaultError::Corrupt { .. })
    ));
    assert_eq!(v.check(true, None).await.unwrap().damaged.len(), 2);
}

#[tokio::test]
async fn truncated_and_missing_blobs_are_detected() {
    let e = env("");
    let v = vault_with_files(&e).await;
    let k = blob_of(&v, "/a.bin", 2).await;
    let b = e.store.get(&k).await.unwrap();
    e.store.put(&k, b.slice(..b.len() / 2)).await.unwrap();
    let err = get(&v, "/a.bin").await.unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let k2 = blob_of(&v, "/b.bin", 0).await;
    e.store.delete(&k2).await.unwrap();
    let err = get(&v, "/b.bin").await.unwrap_err();
    assert!(matches!(err, VaultError::Missing { .. }), "{err}");
    assert!(err.to_string().contains(&k2) && err.to_string().contains("/b.bin"));
    let report = v.check(false, None).await.unwrap();
    let problems: Vec<_> = report
        .damaged
        .iter()
        .map(|d| (d.files[0].clone(), d.problem.clone()))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems
        .iter()
        .any(|(f, p)| f == "/a.bin" && p.contains("truncated")));
    assert!(problems
        .iter()
        .any(|(f, p)| f == "/b.bin" && p.contains("missing")));
}

#[tokio::test]
async fn deleted_middle_log_is_detected() {
    let e = env("");
    drop(vault_with_files(&e).await);
    e.store.delete("meta/log.0000000000000002").await.unwrap();
    let err = reopen(&e).await.err().unwrap();
    assert!(matches!(err, VaultError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("log.0000000000000002"), "{err}");
}

#[tokio::test]
async fn deleted_last_log_is_a_rollback() {
    let e = env("");
    drop(vault_with_files(&e).await);
    e.store.delete("meta/log.0000000000000003").await.unwrap();
    let err = reopen(&e).await.err().unwrap();
    assert!(
        matches!(err, VaultError::Rollback { seen: 3, found: 2 }),
        "{err}"
    );
    // explicitly accepted (e.g. a restored backup) it opens
    let mut o = opts(&e);
    o.accept_rollback = true;
    assert!(Vault::open(e.store.clone(), PW, o).await.is_ok());
}

#[tokio::test]
async fn reordered_or_replayed_logs_are_detected() {
    let e = env("");
    drop(vault_with_files(&e).await);
    let l2 = e.store.get("meta/log.0000000000000002").await.unwrap();
    let l3 = e.store.get("meta/log.0000000000000003").await.unwrap();
    // reorder
    e.store
        .put("meta/log.0000000000000002", l3.clone())
        .await
        .unwrap();
    e.store
        .put("meta/log.0000000000000003", l2.clone())
        .await
        .unwrap();
    let err = reopen(&e).await.err().unwrap();
    assert!(matches!(err, VaultError::Corrupt { .. }), "{err}");
    // replay: an old log presented as a new version
    e.store
        .put("meta/log.0000000000000002", l2.clone())
        .await
        .unwrap();
    e.store.put("meta/log.0000000000000003", l3).await.unwrap();
    assert!(reopen(&e).await.is_ok());
    e.store.put("meta/log.0000000000000004", l2).await.unwrap();
    let err = reopen(&e).await.err().unwrap();
    assert!(matches!(err, VaultError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("log.0000000000000004"));
}

#[tokio::test]
async fn rollback_to_older_checkpoint_is_detected() {
    let e = env("");
    let v = vault_with_files(&e).await;
    v.checkpoint().await.unwrap();
    let old = snapshot(&e.store).await;
    put(&v, "/c.bin", b"newer").await;
    v.commit().await.unwrap();
    v.checkpoint().await.unwrap();
    drop(v);
    // the attacker (or a careless restore) puts the old state back
    for o in e.store.list("").await.unwrap() {
        e.store.delete(&o.key).await.unwrap();
    }
    for (k, b) in old {
        e.store.put(&k, Bytes::from(b)).await.unwrap();
    }
    let err = reopen(&e).await.err().unwrap();
    assert!(matches!(err, VaultError::Rollback { .. }), "{err}");
    assert!(err.to_string().contains("rollback"));
}

#[tokio::test]
async fn tampered_checkpoint_and_header_are_detected() {
    let e = env("");
    let v = vault_with_files(&e).await;
    v.checkpoint().await.unwrap();
    drop(v);
    let ck = keys_with(&e.store, "meta/checkpoint.").await;
    let mut b = e.store.get(&ck[0]).await.unwrap().to_vec();
    let n = b.len();
    b[n / 2] ^= 0x40;
    e.store.put(&ck[0], Bytes::from(b)).await.unwrap();
    let err = reopen(&e).await.err().unwrap();
    assert!(
        matches!(err, VaultError::Corrupt { .. }) && err.to_string().contains(&ck[0]),
        "{err}"
    );
    // a header with edited KDF parameters no longer unlocks
    let h = e.store.get("strata.vault").await.unwrap();
    let edited = String::from_utf8(h.to_vec())
        .unwrap()
        .replace("\"t\": 1", "\"t\": 2");
    e.store
        .put("strata.vault", Bytes::from(edited))
        .await
        .unwrap();
    assert!(matches!(
        reopen(&e).await,
        Err(VaultError::WrongPassword { .. })
    ));
}

// ---------- crash consistency ----------

#[tokio::test]
async fn crash_between_blob_upload_and_log_commit() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    put(&v, "/kept", b"committed before the crash").await;
    v.commit().await.unwrap();
    drop(v);
    // Reopen through a store that fails every metadata write.
    let plan = FaultPlan::new();
    let faulty: DynStore = Arc::new(FaultStore::new(e.store.clone(), plan.clone()));
    let v = Vault::open(faulty, PW, opts(&e)).await.unwrap();
    plan.fail_puts_after("meta/", 0);
    put(&v, "/lost", &random(3 << 20, 5)).await;
    assert!(
        keys_with(&e.store, "data/").await.len() >= 3,
        "blobs were uploaded"
    );
    let err = v.commit().await.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(v.commit().await.is_err(), "still failing");
    assert_eq!(v.uncommitted_records(), 3);
    drop(v); // the process dies with the log unsent
             // Reopen: consistent, without the uncommitted file; gc removes orphans.
    let v = reopen(&e).await.unwrap();
    assert_eq!(
        get(&v, "/kept").await.unwrap(),
        b"committed before the crash"
    );
    assert!(matches!(
        v.stat_path("/lost"),
        Err(VaultError::NotFound { .. })
    ));
    let before = v.check(true, None).await.unwrap();
    assert!(before.damaged.is_empty());
    assert_eq!(before.unreferenced, 3);
    let gc = v.gc().await.unwrap();
    assert_eq!(gc.blobs_deleted, 3);
    let after = v.check(true, None).await.unwrap();
    assert!(
        after.damaged.is_empty() && after.unreferenced == 0,
        "{after:?}"
    );
    assert_eq!(
        get(&v, "/kept").await.unwrap(),
        b"committed before the crash"
    );
}

/// A store error in the middle of a many-chunk file ends the write with
/// that error. (It used to hang: the file reader stayed blocked on the full
/// chunk channel while the writer waited for it to finish.)
#[tokio::test(flavor = "multi_thread")]
async fn upload_error_mid_file_is_reported_not_hung() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    drop(v);
    let plan = FaultPlan::new();
    let faulty: DynStore = Arc::new(FaultStore::new(e.store.clone(), plan.clone()));
    let v = Vault::open(faulty, PW, opts(&e)).await.unwrap();
    plan.fail_puts_after("data/", 2);
    let write = v.write_file(
        "/big",
        Box::new(Cursor::new(random(24 << 20, 9))),
        FileMeta::default(),
        true,
        None,
    );
    // A guard against the hang, not a performance bound.
    let res = tokio::time::timeout(std::time::Duration::from_secs(120), write)
        .await
        .expect("write_file must return, not hang");
    let err = res.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(matches!(
        v.stat_path("/big"),
        Err(VaultError::NotFound { .. })
    ));
}

#[tokio::test]
async fn failed_commit_is_resent_when_the_store_recovers() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    drop(v);
    let plan = FaultPlan::new();
    let faulty: DynStore = Arc::new(FaultStore::new(e.store.clone(), plan.clone()));
    let v = Vault::open(faulty, PW, opts(&e)).await.unwrap();
    // the first log put lands but its reply is lost; then the store is down
    plan.lose_put_replies(1);
    v.mkdir("/d1", 0o755, false).unwrap();
    assert!(v.commit().await.is_err());
    plan.crash();
    v.mkdir("/d2", 0o755, false).unwrap();
    assert!(v.commit().await.is_err());
    plan.clear();
    v.mkdir("/d3", 0o755, false).unwrap();
    v.commit().await.unwrap();
    assert_eq!(v.uncommitted_records(), 0);
    let seq = v.writer_seq();
    assert_eq!(seq, 3);
    drop(v);
    let v = reopen(&e).await.unwrap();
    let names: Vec<_> = v
        .list_dir("/")
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![b"d1".to_vec(), b"d2".to_vec(), b"d3".to_vec()]);
    assert_eq!(v.writer_seq(), seq);
}

#[tokio::test]
async fn crash_during_checkpoint_keeps_the_vault_openable() {
    let e = env("?max-object-size=128KiB");
    let v = create(&e, 1 << 20).await;
    for i in 0..900 {
        put(&v, &format!("/{i}-{}", "x".repeat(200)), b"x").await;
    }
    v.commit().await.unwrap();
    let image = v.with_tree(|t| t.to_image().inodes);
    drop(v);
    let plan = FaultPlan::new();
    let faulty: DynStore = Arc::new(FaultStore::new(e.store.clone(), plan.clone()));
    let v = Vault::open(faulty, PW, opts(&e)).await.unwrap();
    // only the first part of the new checkpoint lands
    plan.fail_puts_after("meta/checkpoint.", 1);
    assert!(v.checkpoint().await.is_err());
    drop(v);
    let v = reopen(&e).await.unwrap();
    assert_eq!(v.with_tree(|t| t.to_image().inodes), image);
    let gc = v.gc().await.unwrap();
    assert_eq!(gc.meta_deleted, 1, "the partial checkpoint is cleaned up");
    v.checkpoint().await.unwrap();
    drop(v);
    assert_eq!(
        reopen(&e).await.unwrap().with_tree(|t| t.to_image().inodes),
        image
    );
}

#[tokio::test]
async fn transient_faults_are_retried() {
    let e = env("");
    let v = create(&e, 1 << 20).await;
    drop(v);
    // The retry layer sits in the stack returned by open_url; put a flaky
    // store underneath it.
    let plan = FaultPlan::new();
    plan.random_failures(0.2, 42);
    let flaky: DynStore = Arc::new(FaultStore::new(e.store.clone(), plan.clone()));
    let retrying: DynStore = Arc::new(strata_store::RetryStore::new(
        flaky,
        strata_store::RetryPolicy {
            max_attempts: 20,
            base_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(5),
        },
    ));
    let v = Vault::open(retrying, PW, opts(&e)).await.unwrap();
    let data = random(5 << 20, 3);
    put(&v, "/f", &data).await;
    v.commit().await.unwrap();
    assert_eq!(get(&v, "/f").await.unwrap(), data);
    assert!(plan.injected() > 0);
}

#[tokio::test]
async fn stale_checkpoint_parts_of_the_same_version_do_not_hide_the_good_set() {
    let e = env("?max-object-size=128KiB");
    let v = create(&e, 1 << 20).await;
    put(&v, "/f", b"data").await;
    v.commit().await.unwrap();
    v.checkpoint().await.unwrap();
    let ck = keys_with(&e.store, "meta/checkpoint.").await;
    // a leftover of an interrupted checkpoint of the same version, other count
    let version = &ck[0]["meta/checkpoint.".len().."meta/checkpoint.".len() + 16];
    let stale = format!("meta/checkpoint.{version}.0000.0002");
    e.store
        .put(&stale, Bytes::from_static(b"junk"))
        .await
        .unwrap();
    drop(v);
    let v = reopen(&e).await.unwrap();
    assert_eq!(get(&v, "/f").await.unwrap(), b"data");
    v.gc().await.unwrap();
    assert!(
        e.store.stat(&stale).await.unwrap().is_none(),
        "stale part removed"
    );
}

#[tokio::test]
async fn a_record_too_large_for_one_object_is_refused_and_nothing_breaks() {
    let e = env("?max-object-size=128KiB");
    let v = create(&e, 1 << 20).await;
    put(&v, "/f", b"data").await;
    let ino = v.resolve("/f").unwrap();
    let huge = strata_core::Record::SetXattr {
        ino,
        name: b"user.big".to_vec(),
        value: vec![7u8; 200 * 1024],
        time: 1,
    };
    assert_eq!(v.apply(huge), Err(strata_core::tree::ApplyError::TooLarge));
    v.commit().await.unwrap();
    drop(v);
    let v = reopen(&e).await.unwrap();
    assert!(v.stat_path("/f").unwrap().xattrs().is_empty());
    assert_eq!(get(&v, "/f").await.unwrap(), b"data");
}
