//! `put` and `get` run again after an interruption, through the binary:
//! `put` killed with SIGKILL at random moments over the bundled server (a
//! shaped link) and over S3 (SeaweedFS), then run again until it finishes;
//! Ctrl-C then a rerun; what a rerun sends; files changed between runs;
//! `--checksum`; `get` skipping what is there and finishing a partial file.
//! Every run ends with the vault compared with the source (`get` back) and
//! `check --read-data`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{env_cmd, fill_random, snapshot, Served};
use strata_testkit::S3Server;

/// A tree of `n` random files of `size` bytes in two folders, plus a link.
fn make_tree(root: &Path, n: usize, size: u64) {
    for i in 0..n {
        let d = root.join(format!("d{}", i % 2));
        std::fs::create_dir_all(&d).unwrap();
        fill_random(&d.join(format!("f{i:03}")), size, i as u64 + 1);
    }
    std::os::unix::fs::symlink("d0/f000", root.join("link")).unwrap();
}

/// A vault on `url` in `dir`, initialised.
struct Vault {
    dir: PathBuf,
    url: String,
}

impl Vault {
    fn new(dir: &Path, url: String) -> Vault {
        let v = Vault {
            dir: dir.to_path_buf(),
            url,
        };
        ok(v.cmd(&["init"]).output().unwrap(), "init");
        v
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = env_cmd(&self.dir, &self.url);
        c.args(args).env("STRATA_STATS", "1");
        c
    }

    fn put(&self, src: &Path) -> Command {
        // into an existing directory, so that a rerun goes to the same place
        self.cmd(&["put", src.to_str().unwrap(), "/"])
    }

    /// `put` started in the background.
    fn spawn_put(&self, src: &Path) -> Child {
        self.put(src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Files committed under /src so far (a reader needs no lease).
    fn committed(&self) -> usize {
        let out = self.cmd(&["ls", "-R", "/src"]).output().unwrap();
        if !out.status.success() {
            return 0;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('f'))
            .count()
    }

    /// Wait until at least `n` files are committed (or the put exited).
    fn wait_committed(&self, child: &mut Child, n: usize) {
        let start = Instant::now();
        while self.committed() < n {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no progress committed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The vault's /src equals `src`, and every blob it needs is readable.
    fn assert_matches(&self, src: &Path) {
        let back = self.dir.join(format!(
            "back-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        ok(
            self.cmd(&["get", "/src", back.to_str().unwrap()])
                .output()
                .unwrap(),
            "get",
        );
        assert_eq!(snapshot(&back), snapshot(src), "the vault holds the source");
        std::fs::remove_dir_all(&back).unwrap();
        ok(
            self.cmd(&["check", "--read-data"]).output().unwrap(),
            "check",
        );
    }
}

fn ok(out: Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{err}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    err
}

/// The bytes a run sent or fetched, from its `STRATA_STATS` line.
fn bytes(stderr: &str, which: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("strata: store requests:"))
        .unwrap_or_else(|| panic!("no stats in {stderr}"));
    let before = line
        .split(", ")
        .find(|p| p.ends_with(which))
        .unwrap_or_else(|| panic!("no '{which}' in {line}"));
    before.split(' ').next().unwrap().parse().unwrap()
}

/// The counts of a put's or get's summary line: (added, replaced, skipped).
fn summary(stderr: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains(" added, "))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    let num = |word: &str| -> u64 {
        let i = line.find(word).unwrap();
        line[..i]
            .trim_end()
            .rsplit([' ', ':'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num(" added"), num(" replaced"), num(" skipped"))
}

/// Small deterministic random numbers for the kill moments.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Kill `put` with SIGKILL `rounds` times at random moments (some before
/// anything is committed, some after), then run it to the end: it must
/// exit 0 and the vault must hold the source exactly.
fn kill_and_resume(v: &Vault, src: &Path, rounds: usize, max_delay_ms: u64, seed: u64) {
    let mut rng = Rng(seed);
    for round in 0..rounds {
        let mut child = v.spawn_put(src);
        if round % 2 == 1 {
            v.wait_committed(&mut child, 1);
        }
        std::thread::sleep(Duration::from_millis(rng.below(max_delay_ms)));
        let _ = child.kill();
        let _ = child.wait();
    }
    let err = ok(v.put(src).output().unwrap(), "put after kills");
    let (added, replaced, skipped) = summary(&err);
    assert_eq!(added + replaced + skipped, 40, "{err}");
    v.assert_matches(src);
}

#[test]
fn killed_put_resumes_over_the_bundled_server() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        &dir.path().join("cloud"),
        &dir.path().join("token"),
        &["--bandwidth", "80mbit"],
    );
    let v = Vault::new(dir.path(), served.url.clone());
    let src = dir.path().join("src");
    make_tree(&src, 40, 1 << 20);
    kill_and_resume(&v, &src, 6, 3000, 0x5eed);
}

#[test]
fn killed_put_resumes_over_s3() {
    let server = S3Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = server.store_url(dir.path(), "vault");
    let v = Vault::new(dir.path(), url);
    let src = dir.path().join("src");
    make_tree(&src, 40, 1 << 20);
    kill_and_resume(&v, &src, 6, 1500, 0xfeed);
}

/// After a SIGKILL with part of the tree committed, the rerun sends only
/// what is missing: committed files are skipped, and blobs sent but not
/// committed are found in the store and not sent again.
#[test]
fn rerun_after_kill_sends_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        &dir.path().join("cloud"),
        &dir.path().join("token"),
        &["--bandwidth", "80mbit"],
    );
    let v = Vault::new(dir.path(), served.url.clone());
    let src = dir.path().join("src");
    // just over the largest packed item (1 MiB): each file is a blob of its
    // own, which a rerun finds in the store (packed items are sent again)
    make_tree(&src, 40, (1 << 20) + 4096);
    let total = 40u64 << 20;
    let mut child = v.spawn_put(&src);
    v.wait_committed(&mut child, 14);
    let _ = child.kill();
    let _ = child.wait();
    let committed = v.committed() as u64;
    assert!(committed < 40, "the put finished before it was killed");

    let err = ok(v.put(&src).output().unwrap(), "rerun");
    let (added, replaced, skipped) = summary(&err);
    assert!(skipped >= committed, "{err}");
    assert_eq!(added + replaced + skipped, 40, "{err}");
    let sent = bytes(&err, "bytes up");
    // What was committed is not sent again (blob padding and metadata
    // add a few percent to what is left).
    let left = (40 - committed) << 20;
    assert!(
        sent <= left + left / 8 + (1 << 20),
        "rerun sent {sent} bytes of {total}, {left} were left: {err}"
    );
    v.assert_matches(&src);

    // Nothing left: a third run sends no file data.
    let err = ok(v.put(&src).output().unwrap(), "third run");
    assert_eq!(summary(&err), (0, 0, 40), "{err}");
    assert!(bytes(&err, "bytes up") < 1 << 20, "{err}");
}

#[test]
fn ctrl_c_then_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        &dir.path().join("cloud"),
        &dir.path().join("token"),
        &["--bandwidth", "80mbit"],
    );
    let v = Vault::new(dir.path(), served.url.clone());
    let src = dir.path().join("src");
    make_tree(&src, 40, 1 << 20);
    let mut child = v
        .put(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    v.wait_committed(&mut child, 5);
    // SAFETY: kill(2) of our own child, which has not been waited for
    // yet (its pid cannot have been reused); no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // finished before the signal arrived: nothing to resume
        assert!(err.contains(" added, "), "{err}");
    } else {
        assert_eq!(out.status.code(), Some(130), "{err}");
        assert!(
            err.contains("run the same command again to resume"),
            "{err}"
        );
    }
    let err = ok(v.put(&src).output().unwrap(), "rerun");
    let (_, replaced, skipped) = summary(&err);
    assert_eq!(replaced, 0, "{err}");
    assert!(skipped >= 5, "{err}");
    v.assert_matches(&src);
}

fn file_vault(dir: &Path) -> Vault {
    let url = format!("file://{}", dir.join("store").display());
    let v = Vault {
        dir: dir.to_path_buf(),
        url,
    };
    ok(
        v.cmd(&["init", "--chunk-size", "64KiB"]).output().unwrap(),
        "init",
    );
    v
}

fn set_mtime(p: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn changed_files_are_replaced_and_checksum_catches_the_sneaky_one() {
    let dir = tempfile::tempdir().unwrap();
    let v = file_vault(dir.path());
    let src = dir.path().join("src");
    make_tree(&src, 6, 200_000);
    let err = ok(v.put(&src).output().unwrap(), "put");
    assert_eq!(summary(&err), (6, 0, 0), "{err}");

    // grown; same size but newer; same size and same mtime, other bytes
    let grown = src.join("d0/f000");
    let mut data = std::fs::read(&grown).unwrap();
    data.extend_from_slice(b"more");
    std::fs::write(&grown, &data).unwrap();
    let touched = src.join("d1/f001");
    let mut data = std::fs::read(&touched).unwrap();
    data[0] ^= 1;
    std::fs::write(&touched, &data).unwrap();
    let sneaky = src.join("d0/f002");
    let mtime = std::fs::metadata(&sneaky).unwrap().modified().unwrap();
    let mut data = std::fs::read(&sneaky).unwrap();
    data[150_000] ^= 1;
    std::fs::write(&sneaky, &data).unwrap();
    set_mtime(&sneaky, mtime);

    let err = ok(v.put(&src).output().unwrap(), "second put");
    assert_eq!(summary(&err), (0, 2, 4), "{err}");
    // size and mtime say the sneaky one is unchanged: its old bytes stay
    let out = v.cmd(&["cat", "/src/d0/f002"]).output().unwrap();
    assert_ne!(out.stdout, data);

    let err = ok(
        v.cmd(&["put", "--checksum", src.to_str().unwrap(), "/"])
            .output()
            .unwrap(),
        "put --checksum",
    );
    assert_eq!(summary(&err), (0, 1, 5), "{err}");
    // only the changed chunk went up (64 KiB chunks)
    assert!(bytes(&err, "bytes up") < 100_000, "{err}");
    v.assert_matches(&src);

    // --force replaces everything
    let err = ok(
        v.cmd(&["put", "--force", src.to_str().unwrap(), "/"])
            .output()
            .unwrap(),
        "put --force",
    );
    assert_eq!(summary(&err), (0, 6, 0), "{err}");
    v.assert_matches(&src);
}

#[test]
fn a_directory_in_the_way_is_reported_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let v = file_vault(dir.path());
    let src = dir.path().join("src");
    make_tree(&src, 4, 1000);
    ok(v.cmd(&["mkdir", "/src"]).output().unwrap(), "mkdir");
    ok(v.cmd(&["mkdir", "/src/d0"]).output().unwrap(), "mkdir");
    ok(v.cmd(&["mkdir", "/src/d0/f000"]).output().unwrap(), "mkdir");
    let out = v.put(&src).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("strata: error: /src/d0/f000: is a directory in the vault"),
        "{err}"
    );
    assert_eq!(summary(&err), (3, 0, 0), "{err}");
    assert!(err.contains("1 failed"), "{err}");
    let out = v.cmd(&["cat", "/src/d1/f003"]).output().unwrap();
    assert_eq!(out.stdout, std::fs::read(src.join("d1/f003")).unwrap());
}

#[test]
fn get_skips_what_is_there_and_finishes_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let v = file_vault(dir.path());
    let src = dir.path().join("src");
    make_tree(&src, 4, 1000);
    let big = src.join("big.bin");
    fill_random(&big, 2_000_000, 99);
    ok(v.put(&src).output().unwrap(), "put");

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let get = || {
        v.cmd(&["get", "/src", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let err = ok(get(), "get");
    assert_eq!(summary(&err), (5, 0, 0), "{err}");
    assert_eq!(snapshot(&out.join("src")), snapshot(&src));

    // again: everything is there
    let err = ok(get(), "second get");
    assert_eq!(summary(&err), (0, 0, 5), "{err}");
    assert!(bytes(&err, "bytes down") < 10_000, "{err}");

    // an interrupted download: the first 20 chunks (64 KiB) are there,
    // then bytes that are not the file's
    let local = out.join("src/big.bin");
    let mut part = std::fs::read(&local).unwrap();
    part.truncate(20 * 65536 + 1000);
    part[20 * 65536 + 10] ^= 1;
    std::fs::remove_file(&local).unwrap();
    let part_path = out.join("src/.big.bin.strata-part");
    std::fs::write(&part_path, &part).unwrap();
    // and a local file that differs is refused without --force
    std::fs::write(out.join("src/d0/f000"), "local edit").unwrap();
    let o = get();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("destination exists"));
    std::fs::remove_file(out.join("src/d0/f000")).unwrap();

    let err = ok(get(), "get after interruption");
    assert_eq!(summary(&err), (2, 0, 3), "{err}");
    let down = bytes(&err, "bytes down");
    assert!(
        down < 2_000_000 - 19 * 65536,
        "fetched {down} bytes for a file of 2 000 000 with 20 chunks kept: {err}"
    );
    assert!(!part_path.exists());
    assert_eq!(snapshot(&out.join("src")), snapshot(&src));
}
