//! The `sftp://` backend against a real OpenSSH server on 127.0.0.1
//! (`strata_testkit::SftpServer`): the conformance suite and many objects,
//! enforced conditional create, the error a user sees for a wrong key, an
//! unknown host key and an unreachable server, and recovery after the
//! server is killed and comes back.

mod common;

use std::time::Duration;

use common::{bytes_of, conformance, many_objects};
use strata_store::{open_url, Bytes, DynStore, StoreErrorKind};
use strata_testkit::SftpServer;

/// `server`'s store URL for the folder `sub` of its root, plus `extra` options.
fn url(server: &SftpServer, sub: &str, extra: &str) -> String {
    format!(
        "sftp://{}@127.0.0.1:{}{}/{sub}?key={}&known-hosts={}{extra}",
        server.user,
        server.port,
        server.root.display(),
        server.key.display(),
        server.known_hosts.display()
    )
}

async fn open_prepared(url: &str) -> DynStore {
    let (store, _) = open_url(url).unwrap();
    store.prepare().await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_conformance() {
    let server = SftpServer::start().unwrap();
    let store = open_prepared(&url(&server, "conf", "")).await;
    assert!(
        store.capabilities().conditional_create,
        "OpenSSH offers hardlink@openssh.com"
    );
    let d = store.describe();
    assert!(
        d.starts_with(&format!(
            "sftp://{}@127.0.0.1:{}{}/conf",
            server.user,
            server.port,
            server.root.display()
        )),
        "{d}"
    );
    conformance(store.clone()).await;
    // Objects are plain files under the folder; no temp files are left.
    assert!(server.root.join("conf/meta/config").is_file());
    let tmp = server.root.join("conf/.strata-tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temp files left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_many_objects() {
    let server = SftpServer::start().unwrap();
    many_objects(open_prepared(&url(&server, "many", "")).await, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_put_if_absent_is_enforced() {
    let server = SftpServer::start().unwrap();
    let a = open_prepared(&url(&server, "cc", "")).await;
    // A second client (its own SSH connection) races the first.
    let b = open_prepared(&url(&server, "cc", "")).await;
    assert!(a.put_if_absent("lock/1", bytes_of(10, 1)).await.unwrap());
    assert!(!b.put_if_absent("lock/1", bytes_of(20, 2)).await.unwrap());
    assert!(!a.put_if_absent("lock/1", bytes_of(30, 3)).await.unwrap());
    assert_eq!(
        b.get("lock/1").await.unwrap(),
        bytes_of(10, 1),
        "content unchanged"
    );
    let (ra, rb) = tokio::join!(
        a.put_if_absent("lock/2", bytes_of(64, 4)),
        b.put_if_absent("lock/2", bytes_of(64, 5))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one creator wins: {ra} {rb}");
    let winner = if ra { 4 } else { 5 };
    assert_eq!(a.get("lock/2").await.unwrap(), bytes_of(64, winner));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_wrong_key_is_an_auth_error() {
    let server = SftpServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other_key");
    assert!(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap()
        .success());
    let u = format!(
        "sftp://{}@127.0.0.1:{}{}/x?key={}&known-hosts={}",
        server.user,
        server.port,
        server.root.display(),
        other.display(),
        server.known_hosts.display()
    );
    let (store, _) = open_url(&u).unwrap();
    let e = store.prepare().await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::PermissionDenied, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(
        msg.contains(&other.display().to_string()),
        "names the key: {msg}"
    );
    assert!(msg.starts_with("store sftp://"), "names the store: {msg}");
    // Not retried as if it were a network hiccup: a get fails the same way.
    let e = store.get("k").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::PermissionDenied, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_unknown_host_key_is_refused() {
    let server = SftpServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let u = format!(
        "sftp://{}@127.0.0.1:{}{}/x?key={}&known-hosts={}",
        server.user,
        server.port,
        server.root.display(),
        server.key.display(),
        empty.display()
    );
    let (store, _) = open_url(&u).unwrap();
    let e = store.prepare().await.unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.kind(), StoreErrorKind::PermissionDenied, "{msg}");
    assert!(
        msg.contains(&format!(
            "host key for 127.0.0.1:{} is not in {}",
            server.port,
            empty.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("ssh-keyscan"), "{msg}");
    assert!(msg.contains("fingerprint"), "{msg}");
    // Nothing was added to the known_hosts file.
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");

    // A known_hosts file listing another key for this host: refused too.
    let wrong = dir.path().join("known_hosts_wrong");
    let other = dir.path().join("other_host_key");
    assert!(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap()
        .success());
    let pub_key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let pub_key: Vec<&str> = pub_key.split_whitespace().take(2).collect();
    std::fs::write(
        &wrong,
        format!("[127.0.0.1]:{} {}\n", server.port, pub_key.join(" ")),
    )
    .unwrap();
    let u = u.replace(&empty.display().to_string(), &wrong.display().to_string());
    let (store, _) = open_url(&u).unwrap();
    let e = store.prepare().await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("does NOT match"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_unreachable_and_missing_folder() {
    let server = SftpServer::start().unwrap();
    // Nothing listens on a fresh free port.
    let port = strata_testkit::free_port();
    let u = format!(
        "sftp://{}@127.0.0.1:{port}/srv/x?key={}&known-hosts={}&retries=0",
        server.user,
        server.key.display(),
        server.known_hosts.display()
    );
    let (store, _) = open_url(&u).unwrap();
    let e = store.prepare().await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("cannot reach the SSH server at 127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(msg.contains("Connection refused"), "{msg}");

    // A folder whose parent does not exist.
    let u = url(&server, "no/such/parent", "");
    let (store, _) = open_url(&u).unwrap();
    let e = store.prepare().await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains("does not exist on the server"),
        "{e}"
    );

    // Local files that are not there are caught at open.
    let u = format!(
        "sftp://{}@127.0.0.1:{}/x?key=/nonexistent/key",
        server.user, server.port
    );
    let e = open_url(&u).err().unwrap();
    assert_eq!(e.kind(), StoreErrorKind::InvalidUrl, "{e}");
    assert!(e.to_string().contains("/nonexistent/key"), "{e}");
    // No password in sftp URLs; no option-looking hosts.
    assert!(open_url("sftp://u:pw@127.0.0.1/x").is_err());
    assert!(open_url("sftp://-oProxyCommand=x/x").is_err());
    assert!(open_url("sftp://127.0.0.1/x?bogus=1").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_recovers_after_the_server_restarts() {
    let mut server = SftpServer::start().unwrap();
    // Without retries: each failure is seen as it is.
    let bare = open_prepared(&url(&server, "r", "&retries=0")).await;
    // With the default retry layer.
    let retried = open_prepared(&url(&server, "r", "")).await;
    bare.put("a", Bytes::from_static(b"one")).await.unwrap();
    assert_eq!(retried.get("a").await.unwrap(), Bytes::from_static(b"one"));

    server.stop();
    let e = bare.get("a").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    assert!(e.to_string().starts_with("store sftp://"), "{e}");
    // While down, reconnecting fails transiently too (and names the cause).
    let e = bare.put("b", Bytes::from_static(b"two")).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");

    // A retried read started while the server is down completes once it is back.
    let pending = tokio::spawn({
        let retried = retried.clone();
        async move { retried.get("a").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().unwrap();
    assert_eq!(
        pending.await.unwrap().unwrap(),
        Bytes::from_static(b"one"),
        "retry layer + reconnect"
    );
    // The store without retries reconnects on its next call.
    bare.put("b", Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(bare.get("b").await.unwrap(), Bytes::from_static(b"two"));
    assert_eq!(retried.list("").await.unwrap().len(), 2);
}
