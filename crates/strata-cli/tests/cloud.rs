//! The mount over the bundled primitive cloud server (`strata cloud-server`,
//! a real HTTP server on 127.0.0.1): random writes and reads on a store
//! without ranges and with 1 MiB objects, a flaky server, and a server that
//! goes away in the middle of a copy and comes back.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Server {
    child: Option<Child>,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn start(root: &Path, token: &Path, port: u16, extra: &[&str]) -> Server {
        let child = Command::new(BIN)
            .arg("cloud-server")
            .arg(root)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--token-file")
            .arg(token)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = child;
        let start = Instant::now();
        // ours answers once it wrote its token (another process may hold
        // the port if it was taken after `free_port` picked it)
        while !token.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("the cloud server exited at start ({st}); port {port} taken?");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child: Some(child),
            port,
        }
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server plus a vault on it (the temp dir lives as long as the tuple).
fn setup(
    extra: &[&str],
    url_opts: &str,
) -> (
    Env,
    Server,
    std::path::PathBuf,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cloud");
    let token = dir.path().join("token");
    let port = free_port();
    let server = Server::start(&root, &token, port, extra);
    let url = format!(
        "basic+http://127.0.0.1:{port}/?token-file={}{url_opts}",
        token.display()
    );
    let e = Env::with_store(Some(url));
    (e, server, root, token, dir)
}

/// The mount's status; the daemon rewrites it every second, so wait for a
/// fresh one.
fn status(e: &Env) -> serde_json::Value {
    std::thread::sleep(Duration::from_millis(1300));
    let out = e
        .cmd()
        .args(["status", "--json", e.mnt().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn metric(v: &serde_json::Value, k: &str) -> u64 {
    v["metrics"][k].as_u64().unwrap_or(0)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_writes_and_reads_over_a_whole_object_store_move_only_touched_chunks() {
    use std::os::unix::fs::FileExt;
    let (e, _server, _, _, _dir) = setup(
        &["--no-range", "--max-object-size", "1MiB"],
        "&range-reads=false&max-object-size=1MiB",
    );
    let m = e.mount(&["--cache-size", "256MiB"]);
    let path = e.mnt().join("big.bin");
    let size: u64 = 64 << 20;
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng(42);
    for b in model.iter_mut() {
        *b = rng.next() as u8;
    }
    std::fs::write(&path, &model).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    let before = status(&e);
    // random 4 KiB writes into 6 distinct ~1 MiB chunks, then fsync
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let chunk = 960 * 1024; // the largest chunk whose sealed blob fits 1 MiB
    let mut chunks = std::collections::BTreeSet::new();
    while chunks.len() < 6 {
        chunks.insert(rng.below(size / chunk - 1));
    }
    for c in &chunks {
        let off = c * chunk + rng.below(chunk - 4096);
        let patch: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
        f.write_all_at(&patch, off).unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&patch);
    }
    f.sync_all().unwrap();
    let after = status(&e);
    let up = metric(&after, "bytes_up") - metric(&before, "bytes_up");
    let down = metric(&after, "bytes_down") - metric(&before, "bytes_down");
    // each touched chunk: one whole-object download to fill it, one upload
    assert!(
        up <= 6 * (1 << 20) + (512 << 10),
        "uploaded {up} bytes for 6 touched chunks"
    );
    assert!(
        down <= 6 * (1 << 20),
        "downloaded {down} bytes for 6 touched chunks"
    );
    assert!(up >= 6 * chunk, "the 6 chunks were uploaded ({up})");
    eprintln!("6 random 4 KiB writes on a 64 MiB file, 1 MiB objects, no ranges: {up} bytes up, {down} bytes down");
    // random reads through the mount match
    for _ in 0..200 {
        let off = rng.below(size - 70_000);
        let len = 1 + rng.below(70_000) as usize;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf == model[off as usize..off as usize + len],
            "read at {off}+{len}"
        );
    }
    drop(f);
    m.unmount();
    // cold, after remount: byte for byte
    let m = e.mount(&[]);
    assert!(
        std::fs::read(&path).unwrap() == model,
        "content after remount"
    );
    m.unmount();
}

#[test]
fn copying_into_a_flaky_server_completes_and_verifies() {
    let (e, _server, _, _, _dir) = setup(&["--fail-rate", "0.1"], "&retries=12");
    let src = e.p("work/src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    let big: u64 = std::env::var("STRATA_FLAKY_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    fill_random(&src.join("big.bin"), big << 20, 3);
    for i in 0..2000 {
        std::fs::write(
            src.join(format!("small/{i}.txt")),
            format!("{i} ").repeat(i % 50 + 1),
        )
        .unwrap();
    }
    let m = e.mount(&[]);
    sh(
        &e.mnt(),
        &format!("cp -r '{}' ./copy && sync", src.display()),
    );
    m.unmount();
    let m = e.mount(&[]);
    sh(&e.mnt(), &format!("diff -r '{}' ./copy", src.display()));
    m.unmount();
    let check = e.cmd().args(["check", "--read-data"]).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn server_down_mid_copy_keeps_data_and_uploads_when_it_is_back() {
    let (e, mut server, root, token, _dir) = setup(&[], "&retries=2");
    let port = server.port;
    let m = e.mount(&["--fsync", "local"]);
    let src = e.p("work/data.bin");
    fill_random(&src, 30 << 20, 9);
    std::fs::write(
        e.mnt().join("before.txt"),
        b"uploaded while the server was up",
    )
    .unwrap();
    // the server goes away; the copy still completes into the local cache
    server.stop();
    sh(&e.mnt(), &format!("cp '{}' ./data.bin", src.display()));
    std::fs::write(
        e.mnt().join("during.txt"),
        b"written while the server was down",
    )
    .unwrap();
    // the mount says what is wrong and keeps the data
    let start = Instant::now();
    loop {
        let st = status(&e);
        if st["last_error"].as_str().is_some_and(|s| !s.is_empty())
            && st["dirty_bytes"].as_u64().unwrap_or(0) > 0
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no error reported: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // the server comes back: everything gets uploaded
    let _server = Server::start(&root, &token, port, &[]);
    let start = Instant::now();
    loop {
        let st = status(&e);
        if st["dirty_bytes"].as_u64() == Some(0) && st["uncommitted_records"].as_u64() == Some(0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "uploads did not resume: {st}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    m.unmount();
    // a fresh reader of the store (no local cache) sees everything
    let out = e.cmd().args(["cat", "/during.txt"]).output().unwrap();
    assert_eq!(out.stdout, b"written while the server was down");
    let dir = e.p("work/back");
    std::fs::create_dir_all(&dir).unwrap();
    let out = e
        .cmd()
        .args(["get", "/data.bin"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(dir.join("data.bin")).unwrap() == std::fs::read(&src).unwrap());
}
