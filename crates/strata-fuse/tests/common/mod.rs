//! Shared scaffolding of the FUSE mount tests: a vault on a `file://`
//! store in a temp dir ([`Env`]), mounted by `run_mount` on a background
//! thread and owned by a [`Mounted`] guard whose `Drop` stops the mount
//! and, if it is still there, runs `fusermount3 -u -z`, so a failed
//! assertion never leaves a mount behind.
#![allow(dead_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_core::{CreateOptions, OpenOptions, Vault};
use strata_crypto::KdfParams;
use strata_fuse::{run_mount, MountOptions, StopHandle};
use zeroize::Zeroizing;

pub const PASSWORD: &[u8] = b"correct horse battery staple";
pub const CHUNK: u32 = 256 * 1024;

pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// These tests mount for real: they need root (chown, MNT_FORCE, bdi
/// settings) and /dev/fuse. Elsewhere they fail with a clear message (a
/// skipped test must never count as passed); scripts/test.sh runs as root.
pub fn can_mount() -> bool {
    let root = rustix::process::geteuid().is_root();
    let dev = Path::new("/dev/fuse").exists();
    assert!(
        root && dev,
        "FUSE mount tests need root and /dev/fuse (root: {root}, /dev/fuse: {dev}); run scripts/test.sh as root"
    );
    true
}

/// Create a vault at `url` (test KDF, [`CHUNK`]) with its seen state in
/// `state`.
pub fn create_vault(rt: &tokio::runtime::Runtime, url: &str, state: &Path) {
    rt.block_on(async {
        let (s, _) = strata_store::open_url(url).unwrap();
        let c = CreateOptions {
            kdf: KdfParams::insecure_for_tests(),
            chunk_size: CHUNK,
        };
        let o = OpenOptions {
            state_dir: Some(state.to_path_buf()),
            ..OpenOptions::default()
        };
        Vault::create(s, PASSWORD, c, o).await.unwrap();
    });
}

/// A runtime for a test's own async work (servers, a writer vault).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The bundled primitive cloud server on 127.0.0.1 (a free port), its
/// objects in `<env>/cloud`, its token in `<env>/token`.
pub struct Cloud {
    pub server: strata_server::ServerHandle,
    pub token_file: PathBuf,
}

const CLOUD_TOKEN: &str = "fuse-test-token";

impl Cloud {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        env: &Env,
        tweak: impl FnOnce(&mut strata_server::ServerConfig),
    ) -> Cloud {
        let mut cfg = strata_server::ServerConfig::new(
            env.root.join("cloud"),
            "127.0.0.1:0".parse().unwrap(),
            CLOUD_TOKEN.into(),
        );
        tweak(&mut cfg);
        let server = rt.block_on(strata_server::spawn(cfg)).unwrap();
        let token_file = env.root.join("token");
        fs::write(&token_file, CLOUD_TOKEN).unwrap();
        Cloud { server, token_file }
    }

    /// `basic+http://ADDR/?token-file=…` plus `extra` (`&name=value…`).
    pub fn url(&self, extra: &str) -> String {
        format!(
            "basic+http://{}/?token-file={}{extra}",
            self.server.addr,
            self.token_file.display()
        )
    }

    pub fn stop(self, rt: &tokio::runtime::Runtime) {
        rt.block_on(self.server.shutdown());
    }
}

pub struct Env {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub store_url: String,
    pub state: PathBuf,
    pub cache: PathBuf,
    pub mnt: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let store = root.join("store");
        let state = root.join("state");
        let cache = root.join("cache");
        let mnt = root.join("mnt");
        for d in [&store, &state, &cache, &mnt] {
            fs::create_dir_all(d).unwrap();
        }
        let store_url = format!("file://{}", store.display());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        create_vault(&rt, &store_url, &state);
        Env {
            _dir: dir,
            root,
            store_url,
            state,
            cache,
            mnt,
        }
    }

    pub fn options(&self, mnt: &Path) -> MountOptions {
        let mut o = MountOptions::new(self.store_url.clone(), mnt);
        o.cache_dir = Some(self.cache.clone());
        o.state_dir = Some(self.state.clone());
        o.flush_timeout = Duration::from_secs(120);
        o
    }

    pub fn mount(&self) -> Mounted {
        self.mount_with(&self.mnt, |_| {})
    }

    pub fn mount_with(&self, mnt: &Path, tweak: impl FnOnce(&mut MountOptions)) -> Mounted {
        let mut o = self.options(mnt);
        tweak(&mut o);
        Mounted::start(o).unwrap_or_else(|e| panic!("mount failed: {e:#}"))
    }
}

/// A running mount. Dropping it stops the mount and makes sure it is gone.
pub struct Mounted {
    pub mp: PathBuf,
    pub stop: StopHandle,
    pub thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Mounted {
    pub fn start(opts: MountOptions) -> anyhow::Result<Mounted> {
        let mp = opts
            .mountpoint
            .canonicalize()
            .unwrap_or(opts.mountpoint.clone());
        let stop = opts.stop.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            run_mount(opts, Zeroizing::new(PASSWORD.to_vec()), move |_| {
                let _ = tx.send(());
            })
        });
        let mut m = Mounted {
            mp,
            stop,
            thread: Some(thread),
        };
        let start = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return Ok(m),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let r = m
                        .thread
                        .take()
                        .unwrap()
                        .join()
                        .expect("mount thread panicked");
                    return Err(r
                        .err()
                        .unwrap_or_else(|| anyhow::anyhow!("run_mount returned before ready")));
                }
                Err(mpsc::RecvTimeoutError::Timeout)
                    if start.elapsed() > Duration::from_secs(60) =>
                {
                    panic!("mount did not become ready in 60 s");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Stop (flush + unmount) and return what `run_mount` returned.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.stop();
        let r = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("mount thread panicked");
        assert!(
            !mounted(&self.mp),
            "{} still mounted after run_mount returned",
            self.mp.display()
        );
        r
    }

    /// Wait for `run_mount` to return on its own (external unmount, signal).
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<()> {
        let t = self.thread.take().unwrap();
        let start = Instant::now();
        while !t.is_finished() {
            assert!(
                start.elapsed() < timeout,
                "run_mount did not return in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.join().expect("mount thread panicked")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.stop.stop();
        let start = Instant::now();
        while !t.is_finished() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if mounted(&self.mp) {
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mp)
                .status();
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

pub fn mounted(mp: &Path) -> bool {
    strata_fuse::control::is_mounted(mp)
}

pub fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {e}")),
    }
}

/// Wait until `ok` holds; fail naming `what` after `limit`.
#[track_caller]
pub fn wait_for(what: &str, limit: Duration, ok: impl Fn() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` random bytes, the same for the same `seed`.
pub fn random(seed: u64, n: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}
