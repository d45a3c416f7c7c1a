//! `strata serve webdav` / `strata serve http` against real clients on
//! 127.0.0.1 (ports picked by the server: `--listen 127.0.0.1:0`, the URL is
//! read from its stdout): rclone's WebDAV backend, curl, ffprobe and the
//! litmus WebDAV test suite; auth, TLS, Range edge cases, interrupted
//! uploads, the writer lease and crash recovery. Every server is stopped by
//! its test (SIGTERM, or killed when the test fails). The programs come from
//! scripts/test.sh; a missing one fails the test, saying which.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fill_random, sh, Env};

fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is not installed: run scripts/test.sh, which installs it"
    );
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A running `strata serve`.
struct Server {
    child: Option<Child>,
    url: String,
    log: std::path::PathBuf,
}

fn start(env: &Env, args: &[&str], cache: &str) -> Server {
    let log = env.p(&format!("serve-{}.log", rand_suffix()));
    let logf = std::fs::File::create(&log).unwrap();
    let mut child = env
        .cmd()
        .arg("serve")
        .args(args)
        .arg("--cache-dir")
        .arg(env.p(cache))
        .stdout(Stdio::piped())
        .stderr(logf)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let url = line.trim().to_string();
    if !url.starts_with("http") {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "strata serve did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Server {
        child: Some(child),
        url,
        log,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// SIGTERM and wait: it uploads what is pending and exits 0.
    fn stop(mut self) {
        let mut c = self.child.take().unwrap();
        unsafe_kill(c.id(), libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(st.success(), "serve exited with {st}: {}", self.log());
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                panic!("serve did not stop: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// Simulate a crash.
    fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn port(&self) -> u16 {
        self.url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-s", "-S", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap()
}

/// HTTP status of a curl request (`-o /dev/null -w %{http_code}` added).
fn status(args: &[&str]) -> u16 {
    let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    a.extend_from_slice(args);
    let o = curl(&a);
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn htpasswd(env: &Env, user: &str, pw: &str) -> String {
    need("htpasswd");
    let p = env.p("htpasswd");
    let o = Command::new("htpasswd")
        .args(["-B", "-b", "-c"])
        .arg(&p)
        .args([user, pw])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    p.to_string_lossy().to_string()
}

fn ok(env: &Env, args: &[&str]) -> String {
    let o = env.cmd().args(args).output().unwrap();
    assert!(o.status.success(), "strata {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn put(env: &Env, local: &Path, remote: &str) {
    if let Some((dir, _)) = remote.rsplit_once('/').filter(|(d, _)| !d.is_empty()) {
        ok(env, &["mkdir", "-p", dir]);
    }
    ok(env, &["put", local.to_str().unwrap(), remote]);
}

fn rclone(url: &str, user: &str, pw: &str, args: &[&str]) -> Output {
    let obscured = Command::new("rclone")
        .args(["obscure", pw])
        .output()
        .unwrap();
    let obscured = String::from_utf8_lossy(&obscured.stdout).trim().to_string();
    Command::new("rclone")
        .args(args)
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_DAV_TYPE", "webdav")
        .env("RCLONE_CONFIG_DAV_URL", url)
        .env("RCLONE_CONFIG_DAV_VENDOR", "other")
        .env("RCLONE_CONFIG_DAV_USER", user)
        .env("RCLONE_CONFIG_DAV_PASS", obscured)
        .output()
        .unwrap()
}

fn rclone_ok(url: &str, args: &[&str]) -> String {
    let o = rclone(url, "alice", "wonder", args);
    assert!(o.status.success(), "rclone {args:?}: {}", text(&o));
    text(&o)
}

#[test]
fn rclone_copies_a_tree_in_checks_it_and_renames_and_deletes_land() {
    need("rclone");
    let env = Env::new();
    let src = env.p("work/src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::create_dir_all(src.join("gone")).unwrap();
    fill_random(&src.join("big.bin"), 9 << 20, 1); // spans chunks
    fill_random(&src.join("a/small.bin"), 1000, 2);
    fill_random(&src.join("a/b/empty.bin"), 0, 3);
    std::fs::write(src.join("a/b/näme with space.txt"), "hello\n").unwrap();
    std::fs::write(src.join("gone/x.txt"), "x").unwrap();
    std::fs::write(src.join("move-me.txt"), "moving\n").unwrap();
    let pwfile = htpasswd(&env, "alice", "wonder");
    let s = start(
        &env,
        &["webdav", "--listen", "127.0.0.1:0", "--htpasswd", &pwfile],
        "cache",
    );
    let url = s.url.clone();
    rclone_ok(&url, &["copy", src.to_str().unwrap(), "dav:dst"]);
    // --download: compare the bytes (the server offers no hash)
    rclone_ok(
        &url,
        &["check", "--download", src.to_str().unwrap(), "dav:dst"],
    );
    // a wrong password is refused by rclone's requests too
    let o = rclone(&url, "alice", "nope", &["lsf", "dav:dst"]);
    assert!(!o.status.success(), "wrong password accepted: {}", text(&o));
    rclone_ok(
        &url,
        &["moveto", "dav:dst/move-me.txt", "dav:dst/a/moved.txt"],
    );
    rclone_ok(&url, &["moveto", "dav:dst/a/b", "dav:dst/b-renamed"]);
    rclone_ok(&url, &["deletefile", "dav:dst/a/small.bin"]);
    rclone_ok(&url, &["purge", "dav:dst/gone"]);
    let listing = rclone_ok(&url, &["lsf", "-R", "dav:dst"]);
    for want in [
        "a/moved.txt",
        "b-renamed/näme with space.txt",
        "b-renamed/empty.bin",
        "big.bin",
    ] {
        assert!(listing.contains(want), "{want} missing: {listing}");
    }
    for gone in ["move-me.txt", "small.bin", "gone/"] {
        assert!(!listing.contains(gone), "{gone} still listed: {listing}");
    }
    s.stop();
    // after the stop, the CLI sees every change
    let ls = ok(&env, &["ls", "-R", "/dst"]);
    assert!(ls.contains("moved.txt") && ls.contains("b-renamed"), "{ls}");
    assert!(!ls.contains("small.bin") && !ls.contains("gone"), "{ls}");
    let out = env.p("work/big.out");
    ok(&env, &["get", "/dst/big.bin", out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()
    );
    let out = env.p("work/moved.out");
    ok(&env, &["get", "/dst/a/moved.txt", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "moving\n");
    let out = env.p("work/name.out");
    ok(
        &env,
        &[
            "get",
            "/dst/b-renamed/näme with space.txt",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
}

#[test]
fn http_serves_ranges_etags_types_and_an_index_behind_basic_auth() {
    need("curl");
    let env = Env::new();
    let data = env.p("work/clip.mp4");
    fill_random(&data, 300_000, 7);
    put(&env, &data, "/media/clip.mp4");
    let bytes = std::fs::read(&data).unwrap();
    let pwfile = htpasswd(&env, "alice", "wonder");
    let s = start(
        &env,
        &["http", "--listen", "127.0.0.1:0", "--htpasswd", &pwfile],
        "cache",
    );
    let f = format!("{}media/clip.mp4", s.url);
    // no credentials, wrong password, unknown user: 401
    assert_eq!(status(&[&f]), 401);
    assert_eq!(status(&["-u", "alice:wrong", &f]), 401);
    assert_eq!(status(&["-u", "bob:wonder", &f]), 401);
    let au = ["-u", "alice:wonder"];
    // a plain range: 206 with exactly those bytes
    let o = curl(&[
        au[0],
        au[1],
        "-r",
        "1000-1999",
        "-w",
        "%{http_code}",
        "-o",
        "-",
        &f,
    ]);
    let (body, code) = o.stdout.split_at(o.stdout.len() - 3);
    assert_eq!(code, b"206");
    assert_eq!(body, &bytes[1000..2000]);
    // a suffix range
    let o = curl(&[au[0], au[1], "-r", "-500", &f]);
    assert_eq!(o.stdout, &bytes[bytes.len() - 500..]);
    // open-ended to the end
    let o = curl(&[au[0], au[1], "-r", "299990-", &f]);
    assert_eq!(o.stdout, &bytes[299_990..]);
    // past the end: 416
    assert_eq!(status(&[au[0], au[1], "-r", "400000-400010", &f]), 416);
    // two ranges: multipart/byteranges holding both
    let o = curl(&[au[0], au[1], "-r", "0-9,100-109", "-D", "-", &f]);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.contains("206") && t.to_lowercase().contains("multipart/byteranges"),
        "{t}"
    );
    assert!(
        t.contains("Content-Range: bytes 0-9/300000") && t.contains("bytes 100-109/300000"),
        "{t}"
    );
    // the whole file, with type, ETag and Last-Modified
    let o = curl(&[au[0], au[1], "-D", env.p("work/h").to_str().unwrap(), &f]);
    assert_eq!(o.stdout, bytes);
    let h = std::fs::read_to_string(env.p("work/h"))
        .unwrap()
        .to_lowercase();
    assert!(h.contains("content-type: video/mp4"), "{h}");
    assert!(h.contains("etag:") && h.contains("last-modified:"), "{h}");
    assert!(h.contains("accept-ranges: bytes"), "{h}");
    let etag = h
        .lines()
        .find_map(|l| l.strip_prefix("etag:"))
        .map(|v| v.trim().to_string())
        .unwrap();
    assert_eq!(
        status(&[au[0], au[1], "-H", &format!("If-None-Match: {etag}"), &f]),
        304
    );
    // an HTML index of the folder
    let o = curl(&[au[0], au[1], &format!("{}media/", s.url)]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("<html") && t.contains("clip.mp4"), "{t}");
    // read-only: no PUT, no DELETE
    let put = status(&[
        au[0],
        au[1],
        "-X",
        "PUT",
        "--data-binary",
        "x",
        &format!("{}new.txt", s.url),
    ]);
    assert!(put == 405 || put == 403, "PUT answered {put}");
    assert!(matches!(
        status(&[au[0], au[1], "-X", "DELETE", &f]),
        405 | 403
    ));
    s.stop();
    assert!(!ok(&env, &["ls", "/"]).contains("new.txt"));
}

#[test]
fn ffprobe_reads_a_video_by_url() {
    need("ffmpeg");
    need("ffprobe");
    let env = Env::new();
    let video = env.p("work/test.mp4");
    sh(
        &env.p("work"),
        "ffmpeg -loglevel error -f lavfi -i testsrc=duration=3:size=320x240:rate=25 \
         -c:v mpeg4 -movflags +faststart -y test.mp4",
    );
    put(&env, &video, "/videos/test.mp4");
    let s = start(&env, &["http", "--listen", "127.0.0.1:0"], "cache");
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name,width,height",
        ])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(format!("{}videos/test.mp4", s.url))
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("codec_name=mpeg4") && t.contains("width=320"),
        "{t}"
    );
    let dur: f64 = t
        .lines()
        .find_map(|l| l.strip_prefix("duration="))
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    assert!((dur - 3.0).abs() < 0.2, "duration {dur}: {t}");
    s.stop();
}

#[test]
fn listening_off_loopback_needs_a_password_file_and_bcrypt_entries() {
    let env = Env::new();
    let o = env
        .cmd()
        .args(["serve", "http", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("refusing to listen on 0.0.0.0") && t.contains("--htpasswd"),
        "{t}"
    );
    // an MD5 (apr1) entry is refused at the start, naming the file and the fix
    need("htpasswd");
    let p = env.p("htpasswd-md5");
    let h = Command::new("htpasswd")
        .args(["-m", "-b", "-c"])
        .arg(&p)
        .args(["bob", "pw"])
        .output()
        .unwrap();
    assert!(h.status.success());
    let o = env
        .cmd()
        .args(["serve", "webdav", "--listen", "127.0.0.1:0", "--htpasswd"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("not a bcrypt entry") && t.contains("htpasswd -B"),
        "{t}"
    );
}

#[test]
fn tls_with_a_certificate_made_here() {
    need("openssl");
    need("curl");
    let env = Env::new();
    std::fs::write(env.p("work/hello.txt"), "over tls\n").unwrap();
    put(&env, &env.p("work/hello.txt"), "/hello.txt");
    sh(
        &env.p("work"),
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
         -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
         -keyout key.pem -out cert.pem 2>/dev/null",
    );
    let (cert, key) = (env.p("work/cert.pem"), env.p("work/key.pem"));
    let s = start(
        &env,
        &[
            "webdav",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        "cache",
    );
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let o = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        &format!("{}hello.txt", s.url),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, b"over tls\n");
    // plain HTTP to the TLS port gets nothing useful
    let plain = format!("http://127.0.0.1:{}/hello.txt", s.port());
    assert_ne!(curl(&[&plain]).stdout, b"over tls\n");
    s.stop();
}

#[test]
fn an_interrupted_upload_never_becomes_visible() {
    let env = Env::new();
    let s = start(&env, &["webdav", "--listen", "127.0.0.1:0"], "cache");
    // a PUT announcing 1 MB that sends 1000 bytes and hangs up
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    c.write_all(b"PUT /partial.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    c.write_all(&[7u8; 1000]).unwrap();
    drop(c);
    // a complete one beside it
    let full = env.p("work/full.bin");
    fill_random(&full, 200_000, 9);
    let url = format!("{}full.bin", s.url);
    assert_eq!(status(&["-T", full.to_str().unwrap(), &url]), 201);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&[&format!("{}partial.bin", s.url)]), 404);
    let o = curl(&["-X", "PROPFIND", "-H", "Depth: 1", &s.url]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("full.bin") && !t.contains("partial") && !t.contains(".strata-upload"),
        "{t}"
    );
    // an upload replacing a file: the old content stays until the new is whole
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    c.write_all(b"PUT /full.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\nabc")
        .unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&[&url]).stdout, std::fs::read(&full).unwrap());
    s.stop();
    let ls = ok(&env, &["ls", "/"]);
    assert!(
        ls.contains("full.bin") && !ls.contains("partial") && !ls.contains(".strata-upload"),
        "{ls}"
    );
}

#[test]
fn a_read_write_server_holds_the_writer_lease() {
    let env = Env::new();
    let first = start(&env, &["webdav", "--listen", "127.0.0.1:0"], "cache0");
    let f = env.p("work/before.txt");
    std::fs::write(&f, b"accepted by the first server").unwrap();
    assert_eq!(
        status(&[
            "-T",
            f.to_str().unwrap(),
            &format!("{}before.txt", first.url)
        ]),
        201
    );
    // another writer with its own cache (another device) asks the first to
    // hand over, and gets the vault; the first serves read-only from then on
    let s = start(&env, &["webdav", "--listen", "127.0.0.1:0"], "cache");
    assert_eq!(
        curl(&[&format!("{}before.txt", s.url)]).stdout,
        b"accepted by the first server"
    );
    let put = status(&["-T", "/etc/hostname", &format!("{}late.txt", first.url)]);
    assert!(
        put >= 400,
        "the first server accepted a PUT after the handoff: {put}"
    );
    first.stop();
    // a CLI writer without --take-over is refused, naming the server
    let o = env.cmd().args(["mkdir", "/x"]).output().unwrap();
    assert!(!o.status.success(), "CLI writer allowed: {}", text(&o));
    assert!(text(&o).contains("strata serve webdav"), "{}", text(&o));
    // the same cache directory: refused by its lock
    let o = env
        .cmd()
        .args([
            "serve",
            "webdav",
            "--read-only",
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
        ])
        .arg(env.p("cache"))
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("already mounted or served"),
        "{}",
        text(&o)
    );
    // a read-only server (own cache) takes no lease: it runs beside it
    let ro = start(
        &env,
        &["webdav", "--read-only", "--listen", "127.0.0.1:0"],
        "cache-ro",
    );
    let put = status(&["-T", "/etc/hostname", &format!("{}h.txt", ro.url)]);
    assert!(put == 403 || put == 405, "read-only PUT answered {put}");
    ro.stop();
    s.stop();
    ok(&env, &["mkdir", "/x"]);
}

#[test]
fn data_put_before_a_crash_is_there_after_the_next_serve() {
    let env = Env::new();
    let s = start(&env, &["webdav", "--listen", "127.0.0.1:0"], "cache");
    let f = env.p("work/crash.bin");
    fill_random(&f, 5 << 20, 11);
    assert_eq!(
        status(&["-T", f.to_str().unwrap(), &format!("{}crash.bin", s.url)]),
        201
    );
    assert_eq!(status(&["-X", "MKCOL", &format!("{}dir", s.url)]), 201);
    // and an upload in progress when the process dies
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    c.write_all(b"PUT /dir/cut.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n")
        .unwrap();
    c.write_all(&[1u8; 2 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.kill9();
    drop(c);
    // the next serve replays the journal and uploads the dirty chunks
    let s = start(&env, &["webdav", "--listen", "127.0.0.1:0"], "cache");
    s.stop();
    let out = env.p("work/crash.out");
    ok(&env, &["get", "/crash.bin", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&f).unwrap());
    // the cut-off upload left nothing behind
    let ls = ok(&env, &["ls", "-R", "/"]);
    assert!(
        ls.contains("dir") && !ls.contains("cut.bin") && !ls.contains(".strata-upload"),
        "{ls}"
    );
}

#[test]
fn a_server_that_loses_its_lease_stops_and_says_so() {
    let env = Env::new();
    let mut c = env.cmd();
    c.env("STRATA_LEASE_TTL", "3"); // renewed every second
    let log = env.p("lost.log");
    let mut child = c
        .args(["serve", "webdav", "--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(env.p("cache"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let url = line.trim().to_string();
    assert!(
        url.starts_with("http://"),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(status(&["-X", "MKCOL", &format!("{url}before")]), 201);
    let o = env
        .cmd()
        .args(["mkdir", "--break-lease", "/by-breaker"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let start = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve kept running without its lease");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!st.success(), "{out}");
    assert!(
        out.contains("lost the vault's writer lease") && out.contains("stopping the server"),
        "{out}"
    );
    // nothing listens there any more
    assert_eq!(status(&["--connect-timeout", "2", &url]), 0);
    assert!(ok(&env, &["ls", "/"]).contains("by-breaker"));
}

/// The litmus summary line of a group: (passed, failed).
fn litmus_group(out: &str, group: &str) -> Option<(u32, u32)> {
    // "<- summary for `basic': of 16 tests run: 16 passed, 0 failed. 100.0%"
    let l = out
        .lines()
        .find(|l| l.contains(&format!("summary for `{group}'")))?;
    let nums: Vec<u32> = l
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    Some((*nums.get(1)?, *nums.get(2)?))
}

#[test]
fn litmus_basic_copymove_props_and_locks_pass() {
    need("litmus");
    let env = Env::new();
    let s = start(&env, &["webdav", "--listen", "127.0.0.1:0"], "cache");
    let o = Command::new("litmus")
        .env("TESTS", "basic copymove props locks")
        .current_dir(env.p("work"))
        .arg(&s.url)
        .output()
        .unwrap();
    let out = text(&o);
    eprintln!("{out}");
    for g in ["basic", "copymove", "props"] {
        let (passed, failed) =
            litmus_group(&out, g).unwrap_or_else(|| panic!("no {g} summary: {out}"));
        assert!(
            passed > 0 && failed == 0,
            "litmus {g}: {passed} passed, {failed} failed:\n{out}"
        );
    }
    // locks: dav-server's in-memory lock system (locks last while the
    // server runs)
    let (passed, failed) =
        litmus_group(&out, "locks").unwrap_or_else(|| panic!("no locks summary: {out}"));
    assert!(
        passed > 0 && failed == 0,
        "litmus locks: {passed} passed, {failed} failed:\n{out}"
    );
    s.stop();
}

#[test]
fn a_read_only_server_follows_the_writer() {
    need("curl");
    let env = Env::new();
    let first = env.p("work/a.txt");
    std::fs::create_dir_all(env.p("work")).unwrap();
    std::fs::write(&first, b"first version").unwrap();
    put(&env, &first, "/a.txt");
    let s = start(
        &env,
        &["http", "--listen", "127.0.0.1:0", "--refresh", "1"],
        "cache",
    );
    let f = format!("{}a.txt", s.url);
    assert_eq!(curl(&[&f]).stdout, b"first version");
    // the writer (the CLI, with the lease) changes the vault meanwhile
    std::fs::write(&first, b"second version, longer").unwrap();
    ok(&env, &["put", "--force", first.to_str().unwrap(), "/a.txt"]);
    let b = env.p("work/b.txt");
    std::fs::write(&b, b"bee").unwrap();
    put(&env, &b, "/b.txt");
    let start_t = Instant::now();
    while curl(&[&f]).stdout != b"second version, longer"
        || curl(&[&format!("{}b.txt", s.url)]).stdout != b"bee"
    {
        assert!(
            start_t.elapsed() < Duration::from_secs(6),
            "the read-only server did not follow within refresh + 5 s: {}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.stop();
}
