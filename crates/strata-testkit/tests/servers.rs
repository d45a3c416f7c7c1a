//! Each server of the kit starts, does a real round trip, refuses bad
//! credentials, and is gone (process and directory) after drop.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

use opendal::{ErrorKind, Operator};
use strata_testkit::{S3Server, SftpServer, WebDavServer};

fn s3_op(s: &S3Server, bucket: &str, secret: &str) -> Operator {
    Operator::new(
        opendal::services::S3::default()
            .endpoint(&s.endpoint)
            .region(&s.region)
            .bucket(bucket)
            .access_key_id(&s.access_key)
            .secret_access_key(secret)
            .disable_config_load()
            .disable_ec2_metadata(),
    )
    .unwrap()
}

fn gone(port: u16, dir: PathBuf) {
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still open after drop"
    );
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

fn port_of(url: &str) -> u16 {
    let rest = url.split("127.0.0.1:").nth(1).unwrap();
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_round_trip_auth_and_if_none_match() {
    let s = S3Server::start().unwrap();
    let op = s3_op(&s, &s.bucket, &s.secret_key);
    op.write("dir/hello.txt", "hello s3").await.unwrap();
    assert_eq!(
        op.read("dir/hello.txt").await.unwrap().to_vec(),
        b"hello s3"
    );
    let listed = op.list_with("dir/").recursive(true).await.unwrap();
    assert!(listed.iter().any(|e| e.path() == "dir/hello.txt"));

    // Wrong secret: refused.
    let bad = s3_op(&s, &s.bucket, "not-the-secret");
    let e = bad.read("dir/hello.txt").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = bad.write("x", "y").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    // If-None-Match: * is enforced by this SeaweedFS (see S3Server's docs).
    op.write_with("lock", "first")
        .if_not_exists(true)
        .await
        .unwrap();
    let e = op
        .write_with("lock", "second")
        .if_not_exists(true)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConditionNotMatch, "{e}");
    assert_eq!(op.read("lock").await.unwrap().to_vec(), b"first");

    // A second bucket.
    s.create_bucket("strata-other").unwrap();
    let other = s3_op(&s, "strata-other", &s.secret_key);
    other.write("k", "v").await.unwrap();
    assert_eq!(other.read("k").await.unwrap().to_vec(), b"v");
    assert!(op.stat("k").await.is_err(), "buckets are separate");

    let port = port_of(&s.endpoint);
    drop(s);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

async fn webdav_round_trip(s: WebDavServer) {
    let op = |user: &str, pass: &str| {
        Operator::new(
            opendal::services::Webdav::default()
                .endpoint(&s.url)
                .username(user)
                .password(pass),
        )
        .unwrap()
    };
    let good = op(&s.user, &s.password);
    good.write("a/b/hello.txt", "hello dav").await.unwrap();
    assert_eq!(
        good.read("a/b/hello.txt").await.unwrap().to_vec(),
        b"hello dav"
    );
    assert_eq!(
        std::fs::read(s.root.join("a/b/hello.txt")).unwrap(),
        b"hello dav",
        "served from root"
    );
    assert_eq!(
        good.read_with("a/b/hello.txt")
            .range(6..9)
            .await
            .unwrap()
            .to_vec(),
        b"dav"
    );
    good.delete("a/b/hello.txt").await.unwrap();
    assert!(!s.root.join("a/b/hello.txt").exists());

    // Wrong password: refused (opendal's webdav service reports 401 as
    // `Unexpected`, so look at the status).
    let e = op(&s.user, "wrong").read("x").await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");

    let port = port_of(&s.url);
    let dir = s.root.parent().unwrap().to_owned();
    drop(s);
    gone(port, dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_apache_round_trip() {
    webdav_round_trip(WebDavServer::start_apache().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_rclone_round_trip() {
    webdav_round_trip(WebDavServer::start_rclone().unwrap()).await;
}

fn ssh(
    s: &SftpServer,
    key: &std::path::Path,
    known_hosts: &std::path::Path,
    cmd: &str,
) -> std::process::Output {
    Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ])
        .arg("-i")
        .arg(key)
        .args(["-p", &s.port.to_string()])
        .arg(format!("{}@{}", s.user, s.host))
        .arg(cmd)
        .output()
        .unwrap()
}

#[test]
fn sftp_server_accepts_its_key_only() {
    let mut s = SftpServer::start().unwrap();
    assert!(s.root.is_dir());
    assert_eq!(
        std::fs::read_dir(&s.root).unwrap().count(),
        0,
        "root is empty"
    );
    let out = ssh(&s, &s.key, &s.known_hosts, "true");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log_tail()
    );

    // sftp subsystem: put a file through `sftp -b`.
    let local = s.root.parent().unwrap().join("upload.txt");
    std::fs::write(&local, "via sftp").unwrap();
    let batch = s.root.parent().unwrap().join("batch");
    std::fs::write(
        &batch,
        format!("put {} {}/up.txt\n", local.display(), s.root.display()),
    )
    .unwrap();
    let out = Command::new("sftp")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", s.known_hosts.display()))
        .arg("-i")
        .arg(&s.key)
        .args(["-P", &s.port.to_string(), "-b"])
        .arg(&batch)
        .arg(format!("{}@{}", s.user, s.host))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(s.root.join("up.txt")).unwrap(), b"via sftp");

    // Another key: refused.
    let other = s.root.parent().unwrap().join("other_key");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap()
        .success());
    let out = ssh(&s, &other, &s.known_hosts, "true");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown host key: refused by the client.
    let empty = s.root.parent().unwrap().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let out = ssh(&s, &s.key, &empty, "true");
    assert!(!out.status.success());

    // Stop (connections die) and restart on the same port.
    s.stop();
    assert!(TcpStream::connect(("127.0.0.1", s.port)).is_err());
    s.restart().unwrap();
    assert!(ssh(&s, &s.key, &s.known_hosts, "true").status.success());

    let port = s.port;
    let dir = s.root.parent().unwrap().to_owned();
    drop(s);
    gone(port, dir);
}
