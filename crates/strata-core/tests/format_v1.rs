//! A vault written by format version 1 (checked in under tests/fixtures,
//! made with `strata init --chunk-size 64KiB` + put/mkdir/mv) must keep
//! opening and reading with every later build: this catches accidental
//! format changes. A deliberate change bumps FORMAT_VERSION and keeps a
//! reader for this fixture.

use std::path::Path;

use strata_core::vault::OpenOptions;
use strata_core::{Kind, LeaseOptions, Vault};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

async fn read(v: &Vault, path: &str) -> Vec<u8> {
    let n = v.stat_path(path).unwrap();
    let mut out = Vec::new();
    v.export(&n, &mut out, None).await.unwrap();
    out
}

#[tokio::test]
async fn version_1_fixture_opens_reads_and_accepts_new_writes() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-vault");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vault");
    copy_dir(&fixture, &root);
    let state = tmp.path().join("state");
    let opts = OpenOptions {
        state_dir: Some(state.clone()),
        ..Default::default()
    };
    let url = format!("file://{}", root.display());
    let (store, _) = strata_store::open_url(&url).unwrap();
    let header = Vault::read_header(&store).await.unwrap();
    assert_eq!(header.version, 1);
    let v = Vault::open(store, b"fixture-password", opts.clone())
        .await
        .unwrap();

    let multi = read(&v, "/multi.bin").await;
    assert_eq!(multi.len(), 200_000);
    assert_eq!(
        blake3::hash(&multi).to_hex().as_str(),
        "dca1dc9ac418196cc2199cee968a4b3e9865637b6d4decf798041bb4102bea94",
        "content of /multi.bin (4 chunks of 64 KiB)"
    );
    assert_eq!(read(&v, "/dir/renamed.txt").await, b"hello, format v1\n");
    assert!(v.stat_path("/dir/hello.txt").is_err(), "renamed away");
    assert_eq!(v.stat_path("/empty").unwrap().size, 0);
    let link = v.stat_path("/link").unwrap();
    assert_eq!(link.kind, Kind::Symlink);
    assert_eq!(link.target(), Some(&b"dir/hello.txt"[..]));
    assert_eq!(v.stat_path("/later").unwrap().kind, Kind::Dir);
    let report = v.check(true, None).await.unwrap();
    assert!(
        report.damaged.is_empty() && report.unreferenced == 0,
        "{report:?}"
    );

    // today's code can extend an old vault, checkpoint it, and reopen it
    v.mkdir("/new", 0o755, false).unwrap();
    v.commit().await.unwrap();
    v.checkpoint().await.unwrap();
    drop(v);
    let (store, _) = strata_store::open_url(&url).unwrap();
    let v = Vault::open(store, b"fixture-password", opts).await.unwrap();
    assert!(v.stat_path("/new").is_ok());
    assert_eq!(read(&v, "/multi.bin").await, multi);
}

/// The writer lease (`lease/…`) is an addition within version 1: the
/// fixture has no lease object, a writer takes one, and a released vault
/// is exactly a version 1 vault again (older builds never read `lease/`).
#[tokio::test]
async fn version_1_fixture_takes_and_releases_a_writer_lease() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-vault");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vault");
    copy_dir(&fixture, &root);
    let url = format!("file://{}", root.display());
    let opts = |lease| OpenOptions {
        state_dir: Some(tmp.path().join("state")),
        lease,
        ..Default::default()
    };
    let (store, _) = strata_store::open_url(&url).unwrap();
    assert!(store.list("lease/").await.unwrap().is_empty());
    let v = Vault::open(
        store.clone(),
        b"fixture-password",
        opts(Some(LeaseOptions::new("format test"))),
    )
    .await
    .unwrap();
    assert_eq!(store.list("lease/").await.unwrap().len(), 1);
    assert_eq!(Vault::read_header(&store).await.unwrap().version, 1);
    v.mkdir("/leased", 0o755, false).unwrap();
    v.commit().await.unwrap();
    v.release_lease().await.unwrap();
    assert!(store.list("lease/").await.unwrap().is_empty());
    let v = Vault::open(store, b"fixture-password", opts(None))
        .await
        .unwrap();
    assert!(v.stat_path("/leased").is_ok());
}

/// Packs need format version 2. A version-1 vault stays version 1 (and
/// readable by older builds) while nothing is packed; the first commit that
/// references a pack rewrites its header at version 2 (same password, same
/// salt), before the log, so a build that predates packs refuses it
/// ("format version 2 is not supported … upgrade strata") instead of
/// misreading it. Old blobs and new packed items are read side by side,
/// and dedup spans both.
#[tokio::test]
async fn version_1_fixture_upgrades_to_version_2_at_its_first_pack() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-vault");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vault");
    copy_dir(&fixture, &root);
    let url = format!("file://{}", root.display());
    let opts = OpenOptions {
        state_dir: Some(tmp.path().join("state")),
        ..Default::default()
    };
    let (store, _) = strata_store::open_url(&url).unwrap();
    let v = Vault::open(store.clone(), b"fixture-password", opts.clone())
        .await
        .unwrap();
    assert_eq!(v.format_version(), 1);
    // a file identical to an old (unpacked) one is deduplicated against it
    let old = read(&v, "/dir/renamed.txt").await;
    let blobs_before = store.list("data/").await.unwrap().len();
    v.write_file(
        "/copy.txt",
        Box::new(std::io::Cursor::new(old.clone())),
        Default::default(),
        false,
        None,
    )
    .await
    .unwrap();
    v.mkdir("/still-v1", 0o755, false).unwrap();
    v.commit().await.unwrap();
    assert_eq!(
        Vault::read_header(&store).await.unwrap().version,
        1,
        "nothing packed yet"
    );
    assert!(store.list("pack/").await.unwrap().is_empty());
    assert_eq!(store.list("data/").await.unwrap().len(), blobs_before);
    // a new small file goes into a pack: the header moves to version 2
    v.write_file(
        "/small.txt",
        Box::new(std::io::Cursor::new(
            b"packed in a version-2 vault".to_vec(),
        )),
        Default::default(),
        false,
        None,
    )
    .await
    .unwrap();
    v.commit().await.unwrap();
    assert_eq!(v.format_version(), 2);
    let header = Vault::read_header(&store).await.unwrap();
    assert_eq!(header.version, 2);
    assert_eq!(store.list("pack/").await.unwrap().len(), 1);
    drop(v);
    // the same password opens it; old and new data read back
    let v = Vault::open(store.clone(), b"fixture-password", opts.clone())
        .await
        .unwrap();
    assert_eq!(read(&v, "/small.txt").await, b"packed in a version-2 vault");
    assert_eq!(read(&v, "/copy.txt").await, old);
    assert_eq!(read(&v, "/multi.bin").await.len(), 200_000);
    v.checkpoint().await.unwrap();
    let report = v.check(true, None).await.unwrap();
    assert!(
        report.damaged.is_empty() && report.unreferenced == 0,
        "{report:?}"
    );
    // what a reader that predates packs does: it accepts only version 1
    let bytes = store.get("strata.vault").await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["version"], 2);
    assert!(Vault::open(store, b"wrong", opts).await.is_err());
}
