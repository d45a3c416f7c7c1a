//! A read-only mount follows a writer elsewhere (needs root): the writer (a
//! vault holding the lease, as another device would) creates, rewrites,
//! renames and deletes; the follower, refreshing every second, shows each
//! change within refresh + 5 s — including new contents of a file it had
//! read before (its page cache is invalidated), a file rewritten in place
//! on a writer *mount*, and a follower of the bundled server (a remote
//! store, read through its read cache).

mod common;

use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use common::*;
use strata_core::data::FileMeta;
use strata_core::vault::OpenOptions;
use strata_core::{LeaseOptions, Vault};

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

/// The vault at `url` opened as a writer holding the lease, as another
/// device's mount would (it keeps freed blobs for followers a while).
async fn writer(url: &str, state: &Path) -> Vault {
    let (s, _) = strata_store::open_url(url).unwrap();
    let o = OpenOptions {
        state_dir: Some(state.to_path_buf()),
        lease: Some(LeaseOptions::new("writer on another device")),
        free_grace: Duration::from_secs(600),
        ..OpenOptions::default()
    };
    Vault::open(s, PASSWORD, o).await.unwrap()
}

/// Wait until `ok` holds, at most refresh (1 s) + 5 s.
#[track_caller]
fn within_refresh(what: &str, ok: impl Fn() -> bool) {
    wait_for(
        &format!("the follower showing {what} (refresh + 5 s)"),
        Duration::from_secs(6),
        ok,
    );
}

fn content(p: &Path) -> Option<Vec<u8>> {
    fs::read(p).ok()
}

#[test]
fn a_read_only_mount_follows_the_writer() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let rt = runtime();
    let writer_state = tempfile::tempdir().unwrap();
    let w = rt.block_on(async {
        let w = writer(&env.store_url, writer_state.path()).await;
        put(&w, "/a.txt", b"one").await;
        w.commit().await.unwrap();
        w
    });
    let m = env.mount_with(&env.mnt, |o| {
        o.read_only = true;
        o.refresh = Duration::from_secs(1);
    });
    let a = env.mnt.join("a.txt");
    assert_eq!(content(&a).unwrap(), b"one");
    // a rewrite (the follower has the old bytes in its page cache), a new
    // directory and file
    rt.block_on(async {
        put(&w, "/a.txt", b"two, and longer").await;
        w.mkdir("/d", 0o755, false).unwrap();
        put(&w, "/d/b.txt", b"bee").await;
        w.commit().await.unwrap();
    });
    within_refresh("the rewrite", || {
        content(&a).as_deref() == Some(&b"two, and longer"[..])
    });
    within_refresh("the new file", || {
        content(&env.mnt.join("d/b.txt")).as_deref() == Some(&b"bee"[..])
    });
    // a rename and a delete
    rt.block_on(async {
        w.rename("/d/b.txt", "/d/c.txt").unwrap();
        w.remove("/a.txt", false).unwrap();
        w.commit().await.unwrap();
    });
    within_refresh("the rename and the delete", || {
        !a.exists() && !env.mnt.join("d/b.txt").exists() && env.mnt.join("d/c.txt").exists()
    });
    let names: Vec<String> = fs::read_dir(env.mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["c.txt".to_string()]);
    // writes stay refused on the follower
    assert!(fs::write(env.mnt.join("x"), b"no").is_err());
    m.stop().unwrap();
    rt.block_on(w.release_lease()).unwrap();
}

#[test]
fn a_follower_sees_a_file_rewritten_in_place_on_a_writer_mount() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let wmnt = env.root.join("writer-mnt");
    fs::create_dir_all(&wmnt).unwrap();
    let writer = env.mount_with(&wmnt, |o| {
        o.cache_dir = Some(env.root.join("writer-cache"));
        o.state_dir = Some(env.root.join("writer-state"));
    });
    let f = wmnt.join("log.bin");
    let first = vec![1u8; 100_000];
    fs::write(&f, &first).unwrap();
    fs::File::open(&f).unwrap().sync_all().unwrap();
    let follower = env.mount_with(&env.mnt, |o| {
        o.read_only = true;
        o.refresh = Duration::from_secs(1);
    });
    let seen = env.mnt.join("log.bin");
    assert_eq!(content(&seen).unwrap(), first);
    // the same inode, same size, other bytes in the middle
    {
        use std::os::unix::fs::FileExt;
        let h = fs::OpenOptions::new().write(true).open(&f).unwrap();
        h.write_all_at(&[9u8; 1000], 50_000).unwrap();
        h.sync_all().unwrap();
    }
    let mut want = first.clone();
    want[50_000..51_000].fill(9);
    within_refresh("the rewrite in place", || {
        content(&seen).as_deref() == Some(&want[..])
    });
    follower.stop().unwrap();
    writer.stop().unwrap();
}

#[test]
fn a_follower_of_a_remote_store_sees_rewrites_through_its_read_cache() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let rt = runtime();
    // the bundled server: the follower has a read cache on disk
    let cloud = Cloud::start(&rt, &env, |_| {});
    let url = cloud.url("");
    let writer_state = tempfile::tempdir().unwrap();
    let reader_state = env.root.join("reader-state");
    create_vault(&rt, &url, writer_state.path());
    let w = rt.block_on(async {
        let w = writer(&url, writer_state.path()).await;
        put(&w, "/movie.bin", &vec![1u8; 600_000]).await;
        w.commit().await.unwrap();
        w
    });
    let m = env.mount_with(&env.mnt, |o| {
        o.store_url = url.clone();
        o.state_dir = Some(reader_state.clone());
        o.read_only = true;
        o.refresh = Duration::from_secs(1);
    });
    let f = env.mnt.join("movie.bin");
    assert_eq!(content(&f).unwrap(), vec![1u8; 600_000]);
    let new: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    rt.block_on(async {
        put(&w, "/movie.bin", &new).await;
        w.commit().await.unwrap();
    });
    within_refresh("the rewrite", || content(&f).as_deref() == Some(&new[..]));
    m.stop().unwrap();
    rt.block_on(w.release_lease()).unwrap();
    cloud.stop(&rt);
}

#[test]
fn a_file_deleted_on_the_writer_stays_readable_where_it_is_open() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let rt = runtime();
    let writer_state = tempfile::tempdir().unwrap();
    // whole chunks and a tail: blobs of their own and a packed item (whose
    // location leaves the follower's tree at the refresh); and a small
    // file, packed
    let body: Vec<u8> = (0..6 * CHUNK + 5000).map(|i| (i % 241) as u8).collect();
    let tiny: Vec<u8> = (0..3000u32).map(|i| (i % 199) as u8).collect();
    let w = rt.block_on(async {
        let w = writer(&env.store_url, writer_state.path()).await;
        put(&w, "/doomed.bin", &body).await;
        put(&w, "/tiny.bin", &tiny).await;
        put(&w, "/keep.txt", b"kept").await;
        w.commit().await.unwrap();
        w
    });
    let m = env.mount_with(&env.mnt, |o| {
        o.read_only = true;
        o.refresh = Duration::from_secs(1);
    });
    let p = env.mnt.join("doomed.bin");
    let mut f = fs::File::open(&p).unwrap();
    let mut head = vec![0u8; 1000];
    std::io::Read::read_exact(&mut f, &mut head).unwrap();
    assert_eq!(head, body[..1000]);
    let pt = env.mnt.join("tiny.bin");
    let mut t = fs::File::open(&pt).unwrap();
    rt.block_on(async {
        w.remove("/doomed.bin", false).unwrap();
        w.remove("/tiny.bin", false).unwrap();
        w.commit().await.unwrap();
    });
    within_refresh("the delete", || !p.exists() && !pt.exists());
    let mut small = Vec::new();
    std::io::Read::read_to_end(&mut t, &mut small).unwrap();
    assert_eq!(small, tiny, "an open packed file must stay readable");
    // the open handle still reads the whole file, and stat works on it
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut rest).unwrap();
    assert_eq!(rest, body[1000..], "the open file must stay readable");
    assert_eq!(f.metadata().unwrap().len(), body.len() as u64);
    drop(f);
    assert!(fs::File::open(&p).is_err(), "gone for new opens");
    // a checkpoint replaces the logs: names deleted before it are gone
    // from the kernel's cache too, at once, not after its 60 s TTL
    let k = env.mnt.join("keep.txt");
    assert_eq!(content(&k).unwrap(), b"kept");
    rt.block_on(async {
        w.remove("/keep.txt", false).unwrap();
        put(&w, "/new.txt", b"new").await;
        w.commit().await.unwrap();
        w.checkpoint().await.unwrap();
    });
    within_refresh("the delete across a checkpoint", || {
        !k.exists() && content(&env.mnt.join("new.txt")).as_deref() == Some(&b"new"[..])
    });
    m.stop().unwrap();
    rt.block_on(w.release_lease()).unwrap();
}
