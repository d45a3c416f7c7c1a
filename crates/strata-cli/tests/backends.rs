//! One vault smoke test on every real backend, through the `strata` binary:
//! S3 (SeaweedFS), WebDAV (Apache mod_dav and `rclone serve webdav`), SFTP
//! (OpenSSH sshd) and the bundled primitive cloud — all started on
//! 127.0.0.1 by `strata-testkit` (or the test) and stopped after.
//!
//! For each: `init`, `put` a tree, `get` it back and compare; then mount,
//! copy a tree in with `cp -a`, unmount, remount, compare byte for byte, and
//! `check --read-data` at the end. Mounts are unmounted even on failure (the
//! `Mount` guard).

mod common;

use std::path::Path;

use common::{fill_random, sh, snapshot, Env};
use strata_testkit::{S3Server, SftpServer, WebDavServer};

/// A small tree with the shapes that matter: nested folders, empty file,
/// a file spanning several chunks, a symlink, odd names.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    fill_random(&root.join("a/big.bin"), 9 * 1024 * 1024 + 123, 7);
    fill_random(&root.join("a/b/small"), 4096, 8);
    std::fs::write(root.join("a/b/c/empty"), b"").unwrap();
    std::fs::write(root.join("ünïcode name.txt"), "hello\n").unwrap();
    std::os::unix::fs::symlink("a/b/small", root.join("link")).unwrap();
    // the small-file workload: these go into packs
    std::fs::create_dir_all(root.join("many")).unwrap();
    for i in 0..200u64 {
        fill_random(
            &root.join(format!("many/f{i:03}")),
            100 + (i * 7919) % 8000,
            100 + i,
        );
    }
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn smoke(url: String) {
    let e = Env::with_store(Some(url));
    let src = e.p("work/src");
    make_tree(&src);

    // CLI round trip.
    ok(
        e.cmd()
            .args(["put", src.to_str().unwrap(), "/cli"])
            .output()
            .unwrap(),
        "put",
    );
    let back = e.p("work/back");
    ok(
        e.cmd()
            .args(["get", "/cli", back.to_str().unwrap()])
            .output()
            .unwrap(),
        "get",
    );
    assert_eq!(
        snapshot(&back),
        snapshot(&src),
        "get returns what put stored"
    );
    // 204 small files and a tail: a few packs, not an object each
    let info = ok(e.cmd().args(["info"]).output().unwrap(), "info");
    let objects: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("store total:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no store total in: {info}"));
    assert!(
        objects <= 20,
        "{objects} objects for 204 small files: {info}"
    );

    // Mount: copy in, remount, compare.
    {
        let m = e.mount(&[]);
        sh(&e.mnt(), &format!("cp -a '{}' tree && sync", src.display()));
        assert_eq!(snapshot(&e.mnt().join("tree")), snapshot(&src));
        m.unmount();
    }
    {
        let m = e.mount(&[]);
        assert_eq!(
            snapshot(&e.mnt().join("tree")),
            snapshot(&src),
            "after remount: {}",
            e.log()
        );
        assert_eq!(snapshot(&e.mnt().join("cli")), snapshot(&src));
        m.unmount();
    }
    let out = ok(
        e.cmd().args(["check", "--read-data"]).output().unwrap(),
        "check",
    );
    assert!(!out.is_empty());
}

#[test]
fn s3_seaweedfs_vault_and_mount() {
    let server = S3Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    smoke(server.store_url(dir.path(), "vault"));
}

fn webdav_url(server: &WebDavServer, dir: &Path) -> String {
    let pw = dir.join("dav-password");
    std::fs::write(&pw, &server.password).unwrap();
    format!(
        "webdav+http://{}@{}vault/?password-file={}",
        server.user,
        server.url.trim_start_matches("http://"),
        pw.display()
    )
}

#[test]
fn webdav_apache_vault_and_mount() {
    let server = WebDavServer::start_apache().unwrap();
    let dir = tempfile::tempdir().unwrap();
    smoke(webdav_url(&server, dir.path()));
}

#[test]
fn webdav_rclone_vault_and_mount() {
    let server = WebDavServer::start_rclone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    smoke(webdav_url(&server, dir.path()));
}

#[test]
fn sftp_vault_and_mount() {
    let server = SftpServer::start().unwrap();
    smoke(server.store_url());
}

/// Wrong credentials, missing bucket, unreachable server: `strata ls` exits
/// non-zero with one clear line naming the store and the cause, and the
/// vault is untouched (`check` passes after).
#[test]
fn bad_credentials_and_endpoints_give_clear_errors() {
    let server = S3Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = server.store_url(dir.path(), "vault");
    let e = Env::with_store(Some(url.clone()));
    let run = |store: &str| {
        let out = e
            .cmd()
            .args(["ls", "/"])
            .env("STRATA_STORE", store)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{store} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let wrong = dir.path().join("wrong-credentials");
    std::fs::write(
        &wrong,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = wrong-secret\n",
            server.access_key
        ),
    )
    .unwrap();
    let bad_creds = url.replace(
        &format!(
            "credentials-file={}",
            dir.path().join("aws-credentials").display()
        ),
        &format!("credentials-file={}", wrong.display()),
    );
    let msg = run(&bad_creds);
    assert!(msg.contains("rejected the credentials"), "{msg}");
    assert!(!msg.contains("wrong-secret"), "{msg}");

    let msg = run(&url.replace(&server.bucket, "missing-bucket"));
    assert!(
        msg.contains("bucket `missing-bucket` does not exist"),
        "{msg}"
    );

    let port = strata_testkit::free_port();
    let msg = run(&format!("webdav+http://u@127.0.0.1:{port}/dav/?retries=1"));
    assert!(msg.contains("cannot reach"), "{msg}");
    // Retries are logged as warnings; the error itself is one line.
    assert_eq!(
        msg.lines()
            .filter(|l| l.starts_with("strata: error"))
            .count(),
        1,
        "{msg}"
    );

    ok(e.cmd().args(["check"]).output().unwrap(), "check");
}

/// The writer lease on a real S3 server, with conditional create enforced
/// (SeaweedFS) and ignored (the same server behind a proxy that hides
/// `If-None-Match`, as Garage behaves): while a mount holds the vault, a CLI
/// writer is refused with the holder named, a reader still works, and once
/// the mount is gone the writer gets through; the vault checks clean.
fn lease_guards(url: String, enforced: bool) {
    let e = Env::with_store(Some(url));
    // `info` says what the probe found.
    let info = ok(e.cmd().args(["info"]).output().unwrap(), "info");
    let want = format!(
        "create-if-absent enforced: {}",
        if enforced { "yes" } else { "no" }
    );
    assert!(info.contains(&want), "{info}");
    let f = e.p("work/f.txt");
    std::fs::write(&f, "x\n").unwrap();
    {
        let m = e.mount(&[]);
        sh(&e.mnt(), "echo mounted > m.txt && sync");
        let out = e
            .cmd()
            .args(["put", f.to_str().unwrap(), "/f.txt"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("vault is in use by mount at"), "{err}");
        assert!(err.contains("--read-only"), "{err}");
        ok(
            e.cmd().args(["ls", "/"]).output().unwrap(),
            "ls while mounted",
        );
        m.unmount();
    }
    ok(
        e.cmd()
            .args(["put", f.to_str().unwrap(), "/f.txt"])
            .output()
            .unwrap(),
        "put after unmount",
    );
    let ls = ok(e.cmd().args(["ls", "/"]).output().unwrap(), "ls");
    assert!(ls.contains("m.txt") && ls.contains("f.txt"), "{ls}");
    ok(e.cmd().args(["check"]).output().unwrap(), "check");
}

#[test]
fn lease_on_s3_with_enforced_conditional_create() {
    let server = S3Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    lease_guards(server.store_url(dir.path(), "leased"), true);
}

#[test]
fn lease_on_s3_that_ignores_conditional_create() {
    let server = S3Server::start_without_auth().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy =
        strata_testkit::ignore_if_none_match_proxy(server.endpoint.trim_start_matches("http://"))
            .unwrap();
    let url = server
        .store_url(dir.path(), "leased")
        .replace(&server.endpoint, &proxy);
    lease_guards(url, false);
}
