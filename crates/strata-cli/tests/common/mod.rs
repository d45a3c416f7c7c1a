//! Shared helpers of the mount tests: a vault in a temp dir, the `strata`
//! binary with test settings, mounts that are always unmounted.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_strata");

pub struct Env {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl Env {
    pub fn new() -> Env {
        Env::with_store(None)
    }

    /// A vault on `url` (default: a file:// store in the temp dir).
    pub fn with_store(url: Option<String>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let url = url.unwrap_or_else(|| format!("file://{}", dir.path().join("store").display()));
        let e = Env { dir, url };
        for d in ["mnt", "cache", "state", "work"] {
            std::fs::create_dir_all(e.dir.path().join(d)).unwrap();
        }
        let out = e.cmd().args(["init", &e.store()]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        e
    }
    pub fn store(&self) -> String {
        self.url.clone()
    }
    pub fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    pub fn mnt(&self) -> PathBuf {
        self.p("mnt")
    }
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("STRATA_PASSWORD", "pw")
            .env("STRATA_KDF_MEMORY_KIB", "64")
            .env("STRATA_KDF_TIME", "1")
            .env("STRATA_STATE_DIR", self.p("state"))
            .env("STRATA_RUNTIME_DIR", self.p("run"))
            .env("STRATA_STORE", self.store())
            // a mount looks for handoff requests every second
            .env("STRATA_LEASE_POLL", "1")
            .stdin(Stdio::null());
        c
    }
    /// Start `strata mount` in the foreground as a child; wait until mounted.
    pub fn mount(&self, extra: &[&str]) -> Mount<'_> {
        let log = std::fs::File::create(self.p("mount.log")).unwrap();
        let child = self
            .cmd()
            .args(["mount", self.mnt().to_str().unwrap(), "--cache-dir"])
            .arg(self.p("cache"))
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut m = Mount {
            env: self,
            child: Some(child),
        };
        let start = Instant::now();
        while !mounted(&self.mnt()) {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("mount exited early ({st}): {}", self.log());
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "mount did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.p("mount.log")).unwrap_or_default()
    }
}

pub fn mounted(p: &Path) -> bool {
    let want = p.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

pub struct Mount<'a> {
    pub env: &'a Env,
    pub child: Option<Child>,
}

impl Mount<'_> {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    /// Clean unmount through `strata unmount` (waits for uploads).
    pub fn unmount(mut self) {
        let out = self
            .env
            .cmd()
            .args(["unmount", self.env.mnt().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "unmount: {} / {}",
            String::from_utf8_lossy(&out.stderr),
            self.env.log()
        );
        if let Some(mut c) = self.child.take() {
            let st = c.wait().unwrap();
            assert!(st.success(), "mount exited with {st}: {}", self.env.log());
        }
        assert!(!mounted(&self.env.mnt()));
    }
    /// Simulate a crash: SIGKILL the daemon, then detach the dead mount.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.env.mnt());
    }
}

pub fn force_unmount(p: &Path) {
    for _ in 0..50 {
        if !mounted(p) {
            return;
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(p)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.env.mnt());
    }
}

pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for GiBs.
pub fn fill_random(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Every file under `root`: relative path → (mode, size, content hash or link target).
pub fn snapshot(root: &Path) -> BTreeMap<String, (u32, u64, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            } else if m.is_file() {
                let mut h = blake3::Hasher::new();
                let mut f = std::fs::File::open(&p).unwrap();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                h.finalize().to_hex().to_string()
            } else {
                stack.push(p.clone());
                String::from("dir")
            };
            let size = if m.is_dir() { 0 } else { m.size() };
            out.insert(rel, (m.mode(), size, what));
        }
    }
    out
}

pub fn crate_archive() -> PathBuf {
    // A real source archive: a .crate (tar.gz) from the cargo registry cache.
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let mut found: Vec<PathBuf> = Vec::new();
    for reg in std::fs::read_dir(home.join("registry/cache"))
        .unwrap()
        .flatten()
    {
        for c in std::fs::read_dir(reg.path()).unwrap().flatten() {
            let n = c.file_name().to_string_lossy().to_string();
            if n.starts_with("tokio-1.") && n.ends_with(".crate") {
                found.push(c.path());
            }
        }
    }
    found.sort();
    found.pop().expect("tokio .crate in the cargo cache")
}

/// `strata cloud-server` as a child, with the store URL it printed.
pub struct Served {
    child: Child,
    pub url: String,
}

impl Served {
    /// Start `strata cloud-server ROOT` on a free 127.0.0.1 port with `extra`
    /// flags; wait for the printed store URL.
    pub fn start(root: &Path, token: &Path, extra: &[&str]) -> Served {
        let mut child = Command::new(BIN)
            .arg("cloud-server")
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(token)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(u) = line.trim().strip_prefix("store URL: ") {
                    let _ = tx.send(u.to_owned());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cloud-server printed no store URL");
            }
        };
        Served { child, url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn env_cmd(dir: &Path, url: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("STRATA_PASSWORD", "pw")
        .env("STRATA_KDF_MEMORY_KIB", "64")
        .env("STRATA_KDF_TIME", "1")
        .env("STRATA_STATE_DIR", dir.join("state"))
        .env("STRATA_RUNTIME_DIR", dir.join("run"))
        .env("STRATA_STORE", url)
        .env_remove("STRATA_CLOUD_TOKEN")
        .stdin(Stdio::null());
    c
}

pub fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
