//! A read-only vault following a writer through the store (`Vault::refresh`):
//! new logs are applied, a checkpoint that replaced them is loaded, a
//! rollback is refused, and a writer cannot "follow".

use std::io::Cursor;
use std::time::Duration;

use strata_core::data::FileMeta;
use strata_core::follow::Refresh;
use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::{LeaseOptions, Vault, VaultError};
use strata_crypto::KdfParams;
use strata_store::open_url;

const PW: &[u8] = b"follow test password";

struct Env {
    url: String,
    _dir: tempfile::TempDir,
    writer_state: tempfile::TempDir,
    reader_state: tempfile::TempDir,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let e = Env {
            url: format!("file://{}", dir.path().display()),
            _dir: dir,
            writer_state: tempfile::tempdir().unwrap(),
            reader_state: tempfile::tempdir().unwrap(),
        };
        let (s, _) = open_url(&e.url).unwrap();
        Vault::create(
            s,
            PW,
            CreateOptions {
                kdf: KdfParams::insecure_for_tests(),
                chunk_size: 64 << 10,
            },
            e.writer_opts(),
        )
        .await
        .unwrap();
        e
    }

    fn writer_opts(&self) -> OpenOptions {
        OpenOptions {
            state_dir: Some(self.writer_state.path().to_path_buf()),
            checkpoint_records: 40,
            lease: Some(LeaseOptions {
                ttl: Duration::from_secs(5),
                ..LeaseOptions::new("writer")
            }),
            ..Default::default()
        }
    }

    async fn writer(&self) -> Vault {
        let (s, _) = open_url(&self.url).unwrap();
        Vault::open(s, PW, self.writer_opts()).await.unwrap()
    }

    async fn reader(&self) -> Vault {
        let (s, _) = open_url(&self.url).unwrap();
        let o = OpenOptions {
            state_dir: Some(self.reader_state.path().to_path_buf()),
            ..Default::default()
        };
        Vault::open(s, PW, o).await.unwrap()
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

#[tokio::test]
async fn a_reader_follows_the_writer_across_logs_and_checkpoints() {
    let e = Env::new().await;
    let w = e.writer().await;
    put(&w, "/a.txt", b"first").await;
    w.commit().await.unwrap();
    let r = e.reader().await;
    assert!(matches!(r.refresh().await.unwrap(), Refresh::Unchanged));
    assert_eq!(read(&r, "/a.txt").await, b"first");

    // creates, rewrites, renames, deletes: applied from the new logs
    put(&w, "/a.txt", b"second").await;
    w.mkdir("/d", 0o755, false).unwrap();
    put(&w, "/d/b.txt", b"bee").await;
    w.rename("/d/b.txt", "/d/c.txt").unwrap();
    w.commit().await.unwrap();
    match r.refresh().await.unwrap() {
        Refresh::Applied(recs) => assert!(!recs.is_empty()),
        other => panic!("expected new records, got {other:?}"),
    }
    assert_eq!(r.version(), w.version());
    assert_eq!(read(&r, "/a.txt").await, b"second");
    assert_eq!(read(&r, "/d/c.txt").await, b"bee");
    assert!(r.stat_path("/d/b.txt").is_err());

    // many changes: the writer checkpoints and removes the logs the reader
    // has not seen; the reader loads the checkpoint instead
    for i in 0..20 {
        put(&w, &format!("/many{i}"), format!("n{i}").as_bytes()).await;
        w.commit().await.unwrap();
    }
    w.remove("/a.txt", false).unwrap();
    w.commit().await.unwrap();
    let (s, _) = open_url(&e.url).unwrap();
    let logs = s.list("meta/log.").await.unwrap();
    let have_next = logs
        .iter()
        .any(|o| o.key == strata_core::format::log_key(r.version() + 1));
    assert!(
        !have_next,
        "the writer kept the logs: no checkpoint in {logs:?}"
    );
    let outcome = r.refresh().await.unwrap();
    assert!(matches!(outcome, Refresh::Reloaded(_)), "{outcome:?}");
    assert_eq!(r.version(), w.version());
    assert!(r.stat_path("/a.txt").is_err());
    for i in 0..20 {
        assert_eq!(
            read(&r, &format!("/many{i}")).await,
            format!("n{i}").as_bytes()
        );
    }
    // a writer does not follow
    assert!(matches!(w.refresh().await, Err(VaultError::Invalid(_))));
    w.release_lease().await.unwrap();
}

#[tokio::test]
async fn a_rollback_of_the_store_is_refused_while_following() {
    let e = Env::new().await;
    let w = e.writer().await;
    put(&w, "/x", b"x").await;
    w.commit().await.unwrap();
    let r = e.reader().await;
    put(&w, "/y", b"y").await;
    w.commit().await.unwrap();
    r.refresh().await.unwrap();
    let v = r.version();
    // the store loses its newest log (served from an old backup)
    let (s, _) = open_url(&e.url).unwrap();
    s.delete(&strata_core::format::log_key(v)).await.unwrap();
    match r.refresh().await {
        Err(VaultError::Rollback { seen, found }) => {
            assert_eq!(seen, v);
            assert!(found < v);
        }
        other => panic!("expected a rollback error, got {other:?}"),
    }
    // what the reader shows stays as it was
    assert_eq!(read(&r, "/y").await, b"y");
    w.release_lease().await.unwrap();
}

#[tokio::test]
async fn a_writer_keeps_freed_blobs_for_followers_until_the_grace_is_over() {
    let e = Env::new().await;
    let (s, _) = open_url(&e.url).unwrap();
    let o = OpenOptions {
        free_grace: Duration::from_secs(600),
        ..e.writer_opts()
    };
    let w = Vault::open(s, PW, o).await.unwrap();
    put(&w, "/movie.bin", &vec![7u8; 200_000]).await;
    w.commit().await.unwrap();
    let r = e.reader().await;
    let ghost = r.stat_path("/movie.bin").unwrap(); // a follower has it open
    w.remove("/movie.bin", false).unwrap();
    w.commit().await.unwrap();
    let mut out = Vec::new();
    r.export(&ghost, &mut out, None).await.unwrap();
    assert_eq!(out, vec![7u8; 200_000], "still readable within the grace");
    // at the end of the session they go (a reader that opens them now
    // finds nothing; `r` may still read the objects it holds open on a
    // file:// store, like an unlinked file held open)
    w.delete_freed_now().await.unwrap();
    let fresh = e.reader().await;
    let mut out = Vec::new();
    assert!(fresh.export(&ghost, &mut out, None).await.is_err());
    let report = w.check(false, None).await.unwrap();
    assert_eq!(report.unreferenced, 0, "nothing left for gc");
    w.release_lease().await.unwrap();
}
