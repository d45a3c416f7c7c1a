//! The mount lifecycle: [`run_mount`] checks the mountpoint and FUSE, locks
//! the cache directory, opens the vault, mounts, publishes a status file,
//! waits for a signal (or an external unmount) and then flushes and
//! unmounts.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use fuser::{BackgroundSession, MountOption, SessionACL};
use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;
use rustix::process::geteuid;
use serde_json::{json, Value};
use strata_core::{LeaseOptions, OpenOptions as VaultOpenOptions, ReadCacheOptions, Vault};
use strata_store::Metrics;
use strata_vfs::{FsyncMode, Vfs, VfsOptions};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::control;
use crate::fs::{StrataFs, MAX_READAHEAD};

/// How a mount is set up. Foreground/daemon mode is the caller's business
/// (daemonize before calling [`run_mount`]: it creates threads).
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Store URL (see `strata_store::open_url`).
    pub store_url: String,
    pub mountpoint: PathBuf,
    /// Journal, dirty chunks and read cache. Default:
    /// `$XDG_CACHE_HOME/strata/<vault id>` (or `~/.cache/strata/<vault id>`).
    pub cache_dir: Option<PathBuf>,
    /// Dirty (not yet uploaded) data above this makes writers wait.
    pub cache_size: u64,
    /// Cache of downloaded ciphertext in `<cache dir>/read`, in bytes
    /// (0 = none); read-ahead works through it. Remote stores only: a store
    /// on the local disk is read straight. Default: 512 MiB.
    pub read_cache_size: u64,
    pub read_only: bool,
    /// Let other users access the mount (needs `user_allow_other` in
    /// /etc/fuse.conf when not root).
    pub allow_other: bool,
    pub fsync: FsyncMode,
    /// Rollback-detection state (default: `strata_core::state::default_state_dir`).
    pub state_dir: Option<PathBuf>,
    pub accept_rollback: bool,
    /// Take the writer lease even if another writer holds it (read-write
    /// mounts only; a read-only mount takes no lease).
    pub break_lease: bool,
    /// Lifetime of the writer lease (renewed every third of it).
    pub lease_ttl: Duration,
    /// FUSE event-loop threads.
    pub threads: usize,
    /// How long unmount waits for uploads before giving up (what is left
    /// stays in the cache and is uploaded at the next mount).
    pub flush_timeout: Duration,
    /// How long a write waits for cache-disk space while nothing is freed
    /// before it fails with ENOSPC.
    pub space_wait: Duration,
    /// Unmount gives up when the store failed and took nothing for this
    /// long (what is pending stays in the cache for the next mount).
    pub stall_timeout: Duration,
    /// Metadata records between checkpoints (`None`: the vault's default).
    pub checkpoint_records: Option<u64>,
    /// Stops the mount like SIGTERM does (for embedding and tests).
    pub stop: StopHandle,
}

impl MountOptions {
    pub fn new(store_url: impl Into<String>, mountpoint: impl Into<PathBuf>) -> Self {
        MountOptions {
            store_url: store_url.into(),
            mountpoint: mountpoint.into(),
            cache_dir: None,
            cache_size: 1 << 30,
            read_cache_size: 512 << 20,
            read_only: false,
            allow_other: false,
            fsync: FsyncMode::Cloud,
            state_dir: None,
            accept_rollback: false,
            break_lease: false,
            lease_ttl: LeaseOptions::new("").ttl,
            threads: 8,
            flush_timeout: Duration::from_secs(600),
            space_wait: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            checkpoint_records: None,
            stop: StopHandle::new(),
        }
    }
}

/// Asks a running [`run_mount`] to flush and unmount. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    stopped: AtomicBool,
    notify: tokio::sync::Notify,
}

impl StopHandle {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    async fn wait(&self) {
        loop {
            let n = self.0.notify.notified();
            if self.is_stopped() {
                return;
            }
            n.await;
        }
    }
}

/// `$XDG_CACHE_HOME/strata/<vault id>`, or `~/.cache/strata/<vault id>`.
pub fn default_cache_dir(vault_id: &str) -> PathBuf {
    dirs::cache_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("strata")
        .join(vault_id)
}

/// The mountpoint must exist and be an empty directory. Returns it canonical.
fn check_mountpoint(p: &Path) -> anyhow::Result<PathBuf> {
    let shown = p.display();
    match std::fs::metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("mountpoint {shown} does not exist"),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mountpoint {shown} is a stale FUSE mount whose process is gone; run `strata unmount {shown}` \
             (or `fusermount3 -u {shown}`) first"
        ),
        Err(e) => bail!("cannot use mountpoint {shown}: {e}"),
        Ok(m) if !m.is_dir() => bail!("mountpoint {shown} is not a directory"),
        Ok(_) => {}
    }
    if p.canonicalize().is_ok_and(|c| control::is_strata_mount(&c)) {
        bail!("{shown} is already a Strata mount (see `strata status {shown}`)");
    }
    let mut rd = std::fs::read_dir(p).with_context(|| format!("cannot read mountpoint {shown}"))?;
    if rd.next().is_some() {
        bail!("mountpoint {shown} is not empty");
    }
    p.canonicalize()
        .with_context(|| format!("cannot resolve mountpoint {shown}"))
}

const NO_FUSE: &str = "FUSE is not available: install the fuse3 package (apt-get install fuse3)";

fn check_fuse() -> anyhow::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("{NO_FUSE}; /dev/fuse is missing (in a container, pass --device /dev/fuse)");
    }
    if control::fusermount_path().is_none() {
        bail!("{NO_FUSE}; fusermount3 was not found");
    }
    Ok(())
}

/// An exclusive `flock` on `<cache dir>/lock` holding the owner's pid.
struct MountLock {
    file: File,
}

impl MountLock {
    fn acquire(path: &Path) -> anyhow::Result<MountLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e == Errno::WOULDBLOCK {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                let who = match s.trim().parse::<u32>() {
                    Ok(pid) => format!("process {pid}"),
                    Err(_) => "another process".to_string(),
                };
                bail!(
                    "vault is already mounted by {who} (lock {})",
                    path.display()
                );
            }
            bail!("cannot lock {}: {}", path.display(), io::Error::from(e));
        }
        file.set_len(0)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        Ok(MountLock { file })
    }
}

impl Drop for MountLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = flock(&self.file, FlockOperation::Unlock);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `<runtime dir>/<hash>.json` for `strata status` / `strata unmount`.
struct StatusFile {
    path: PathBuf,
    base: serde_json::Map<String, Value>,
    vfs: Arc<Vfs>,
    metrics: Metrics,
    state: Mutex<&'static str>,
}

impl StatusFile {
    fn render(&self) -> Value {
        let mut m = self.base.clone();
        m.insert(
            "state".into(),
            json!(*self.state.lock().unwrap_or_else(|e| e.into_inner())),
        );
        m.insert("updated".into(), json!(unix_now()));
        if let Ok(Value::Object(vs)) = serde_json::to_value(self.vfs.status()) {
            m.extend(vs);
        }
        if let Some(l) = self.vfs.vault().lease_status() {
            if l.state == "lost" {
                // an error that no retry fixes: say so first
                m.insert(
                    "last_error".into(),
                    json!(format!(
                        "lost the writer lease ({}); nothing more is committed. Changes made since stay in the cache directory; unmount, and mount again when the other writer is done",
                        l.error.as_deref().unwrap_or("taken over by another writer")
                    )),
                );
            }
            m.insert("lease".into(), json!(l));
        }
        let s = self.metrics.snapshot();
        m.insert(
            "metrics".into(),
            json!({
                "requests": s.requests(),
                "puts": s.puts,
                "gets": s.gets,
                "range_gets": s.range_gets,
                "lists": s.lists,
                "deletes": s.deletes,
                "stats": s.stats,
                "bytes_up": s.bytes_up,
                "bytes_down": s.bytes_down,
                "errors": s.errors,
            }),
        );
        if let Some(rc) = self.vfs.vault().chunks().read_cache() {
            let st = rc.stats();
            m.insert(
                "read_cache".into(),
                json!({"hits": st.hits, "misses": st.misses, "size": st.size, "cap": st.cap}),
            );
        }
        Value::Object(m)
    }

    fn write(&self) -> io::Result<()> {
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let body = serde_json::to_vec_pretty(&self.render()).map_err(io::Error::other)?;
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &self.path)
    }

    fn set_state(&self, s: &'static str) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
        let _ = self.write();
    }
}

impl Drop for StatusFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// SIGTERM, SIGINT and SIGHUP, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Needs a runtime context.
    fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Signal(&'static str),
    Requested,
    SessionEnded,
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Keep the daemon's memory bounded: glibc's malloc otherwise raises its mmap
/// threshold after the first multi-MiB chunk buffers are freed and keeps
/// later ones in per-thread arenas (measured: ~250 MiB RSS copying 2 GiB
/// under load). With a fixed threshold of 2 MiB, chunk buffers (4 MiB) stay
/// mmapped and go back to the system, while the buffers of FUSE requests and
/// segment runs (up to 1 MiB and a few tags) are reused from the arenas
/// instead of being mapped, faulted in and unmapped on every request; and
/// few arenas are used.
fn bound_allocator() {
    // SAFETY: mallopt only tunes allocator parameters; called before the
    // mount's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20);
        // and freed buffers stay with the process instead of being given
        // back (and faulted in again) after every request
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Whether a store (by its description) is on this machine's disk or in
/// memory, as fast as the cache disk: no read cache, the largest kernel
/// read-ahead.
fn is_local_store(store: &str) -> bool {
    store.starts_with("file://") || store.starts_with("memory://")
}

/// Kernel read-ahead of a mount of a remote store (the kernel's own default).
/// The mount's prefetcher does the read-ahead over the network, sized to the
/// link; larger kernel windows only add bytes a reader that stops or seeks
/// never uses (every kernel read-ahead request has to be fetched in full) and
/// delay the first reply after an open or a seek (a FUSE read is answered
/// whole: 1 MiB takes 0.4 s at 20 Mbit/s).
const REMOTE_READAHEAD: u32 = 128 * 1024;

/// Set the kernel read-ahead of the mount's bdi: [`MAX_READAHEAD`] for a
/// store on local disk (`file://`, `memory://`: fewer, larger FUSE reads),
/// [`REMOTE_READAHEAD`] for anything reached over a network. Root only;
/// best effort.
fn tune_readahead(mountpoint: &Path, store: &str) {
    let Ok(md) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = md.dev();
    let p = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let local = is_local_store(store);
    let want = u64::from(
        if local {
            MAX_READAHEAD
        } else {
            REMOTE_READAHEAD
        } / 1024,
    );
    match std::fs::read_to_string(&p) {
        Ok(cur) if cur.trim().parse::<u64>().is_ok_and(|c| c == want) => {}
        Ok(_) => {
            if let Err(e) = std::fs::write(&p, format!("{want}\n")) {
                debug!(path = %p, error = %e, "could not set the read-ahead");
            }
        }
        Err(e) => debug!(path = %p, error = %e, "no bdi read-ahead setting"),
    }
}

fn fuse_config(opts: &MountOptions, store: &str) -> fuser::Config {
    let mut cfg = fuser::Config::default();
    // The fsname goes into a comma-separated option list (fusermount3).
    let fsname = format!("strata:{}", store.replace(',', "%2C"));
    cfg.mount_options = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("strata".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(opts.threads.max(1));
    cfg
}

/// Mount the vault on `opts.store_url` at `opts.mountpoint` and serve it
/// until SIGINT/SIGTERM/SIGHUP, [`MountOptions::stop`], or an external
/// unmount. Then: unmount (a busy mount is flushed first and then detached,
/// its open files fail afterwards), upload and commit everything (progress on
/// stderr, up to `flush_timeout`), remove the status file, release the lock.
/// `ready` is called with the canonical mountpoint once the mount serves
/// requests.
pub fn run_mount(
    opts: MountOptions,
    password: Zeroizing<Vec<u8>>,
    ready: impl FnOnce(&Path),
) -> anyhow::Result<()> {
    let mountpoint = check_mountpoint(&opts.mountpoint)?;
    check_fuse()?;
    bound_allocator();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("strata-io")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;

    let (store, metrics) = strata_store::open_url(&opts.store_url)?;
    let store_name = store.describe();
    // The vault id (for the default cache dir and the lock) is public:
    // refuse a second mount before asking the KDF for anything.
    let header = rt.block_on(Vault::read_header(&store))?;
    let cache_dir = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&header.vault_id));
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cannot create the cache directory {}", cache_dir.display()))?;
    let lock = MountLock::acquire(&cache_dir.join("lock"))?;

    // A read-write mount is a writer: it holds the vault's writer lease
    // until it has flushed and unmounted. A read-only mount takes none.
    let lease = (!opts.read_only).then(|| LeaseOptions {
        break_lease: opts.break_lease,
        ttl: opts.lease_ttl,
        ..LeaseOptions::new(format!("mount at {}", mountpoint.display()))
    });
    // A store on the local disk gets no read cache: measured, reading it
    // straight (the kernel's page cache keeps what is re-read) beat a
    // cache in memory by ~20 % on a cold sequential read, at the same
    // random-read rate, and a disk cache only copies the disk to itself.
    let read_cache =
        (opts.read_cache_size > 0 && !is_local_store(&store_name)).then(|| ReadCacheOptions {
            dir: Some(cache_dir.join("read")),
            cap: opts.read_cache_size,
        });
    let defaults = VaultOpenOptions::default();
    let vopts = VaultOpenOptions {
        state_dir: opts.state_dir.clone(),
        accept_rollback: opts.accept_rollback,
        lease,
        read_cache,
        checkpoint_records: opts
            .checkpoint_records
            .unwrap_or(defaults.checkpoint_records),
        ..defaults
    };
    let vault = Arc::new(rt.block_on(Vault::open(store, &password, vopts))?);
    drop(password);
    let mut vfs_opts = VfsOptions::new(cache_dir.clone());
    vfs_opts.dirty_limit = opts.cache_size;
    vfs_opts.space_wait = opts.space_wait;
    vfs_opts.stall_timeout = opts.stall_timeout;
    vfs_opts.read_only = opts.read_only;
    vfs_opts.fsync = opts.fsync;
    let vfs = match Vfs::new(vault.clone(), vfs_opts) {
        Ok(v) => v,
        Err(e) => {
            release_lease(&rt, &vault);
            return Err(anyhow!(e));
        }
    };

    let fs = StrataFs::new(vfs.clone(), rt.handle().clone());
    let session = fuser::spawn_mount(fs, &mountpoint, &fuse_config(&opts, &store_name))
        .map_err(|e| {
            release_lease(&rt, &vault);
            let hint = if e.kind() == io::ErrorKind::PermissionDenied && !geteuid().is_root() {
                " (a non-root user needs read-write access to /dev/fuse: mode 0666, as the fuse3 package sets it)"
            } else {
                ""
            };
            anyhow!("cannot mount {}: {e}{hint}", mountpoint.display())
        })?;
    info!(mountpoint = %mountpoint.display(), store = %store_name, "mounted");

    // A read-only mount never writes to the store: records replayed from the
    // journal stay in the journal for the next read-write mount.
    let uploader = if opts.read_only {
        None
    } else {
        let _g = rt.enter();
        Some(vfs.start())
    };

    let mut guard = MountedGuard {
        mountpoint: mountpoint.clone(),
        session: Some(session),
    };
    tune_readahead(&mountpoint, &store_name);

    let mut base = serde_json::Map::new();
    base.insert("pid".into(), json!(std::process::id()));
    base.insert(
        "start_time".into(),
        json!(control::process_start_time(std::process::id())),
    );
    base.insert("mountpoint".into(), json!(mountpoint.to_string_lossy()));
    base.insert("store".into(), json!(store_name));
    base.insert("cache_dir".into(), json!(cache_dir.to_string_lossy()));
    base.insert("vault_id".into(), json!(header.vault_id));
    base.insert("started".into(), json!(unix_now()));
    let status = Arc::new(StatusFile {
        path: control::runtime_dir()?.join(control::status_file_name(&mountpoint)),
        base,
        vfs: vfs.clone(),
        metrics,
        state: Mutex::new("mounted"),
    });
    status
        .write()
        .with_context(|| format!("cannot write the status file {}", status.path.display()))?;
    let status_task = {
        let status = status.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = status.write() {
                    debug!(error = %e, "could not write the status file");
                }
            }
        })
    };

    let (mut signals, reason) = {
        let _g = rt.enter();
        let mut signals = Signals::new()?;
        ready(&mountpoint);
        let stop = opts.stop.clone();
        let session = guard.session.as_ref().map(|s| &s.guard);
        let reason = rt.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    sig = signals.next() => break StopReason::Signal(sig),
                    _ = stop.wait() => break StopReason::Requested,
                    _ = tick.tick() => {
                        if session.is_none_or(|g| g.is_finished()) {
                            break StopReason::SessionEnded;
                        }
                    }
                }
            }
        });
        (signals, reason)
    };
    info!(?reason, "unmounting");
    status.set_state("unmounting");

    // Unmount first so nothing changes while flushing. A busy mount (open
    // files) stays attached until the flush is done.
    let mut busy = false;
    if reason != StopReason::SessionEnded {
        match control::unmount_now(&mountpoint, false) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => busy = true,
            Err(e) => {
                warn!(error = %e, "unmount failed");
                busy = true;
            }
        }
        if busy {
            eprintln!(
                "strata: {} is busy (files are open); they stay usable until the cache is flushed, then the mount is detached",
                mountpoint.display()
            );
        }
    }

    let flushed = if opts.read_only {
        Ok(())
    } else {
        status.set_state("flushing");
        let last = Cell::new(None::<Instant>);
        let report = |bytes: u64, chunks: u64| {
            if last
                .get()
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            {
                if bytes == 0 {
                    eprintln!("strata: committing metadata to the store…");
                } else {
                    eprintln!(
                        "strata: flushing {bytes} bytes ({}, {chunks} chunks) to the store…",
                        human(bytes)
                    );
                }
                if last.get().is_none() && matches!(reason, StopReason::Signal(_)) {
                    eprintln!("strata: (signal again to stop waiting; the rest is uploaded at the next mount)");
                }
                last.set(Some(Instant::now()));
            }
        };
        let r = rt.block_on(async {
            tokio::select! {
                r = vfs.shutdown(opts.flush_timeout, report) => r,
                why = lease_lost(&vault) => Err(format!(
                    "this mount lost the vault's writer lease ({why}), so it cannot commit; what it has not \
                     committed stays in the local cache ({}), and a later read-write mount uploads it only if \
                     no other writer has changed the vault meanwhile",
                    cache_dir.display()
                )),
                sig = signals.next() => Err(format!(
                    "interrupted by {sig}: what is not uploaded yet stays in the local cache ({}) and is uploaded at the next mount",
                    cache_dir.display()
                )),
            }
        });
        if r.is_ok() && last.get().is_some() {
            eprintln!("strata: everything is in the store");
        }
        r
    };

    // What stays pending, for `strata unmount` (another process) to show:
    // written before the mount goes away, which is what it waits for.
    let note = cache_dir.join(control::UNFLUSHED_NOTE);
    match &flushed {
        Ok(()) => {
            let _ = std::fs::remove_file(&note);
        }
        Err(e) => {
            let _ = std::fs::write(&note, e);
        }
    }

    // Without root a detached busy mount cannot be aborted: its session
    // lingers until the files are closed (or this process exits).
    let can_abort = geteuid().is_root();
    if busy {
        guard.detach(true);
    }
    guard.finish(if busy && !can_abort {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    });
    drop(guard);
    status.set_state("unmounted");
    status_task.abort();
    if let Some(u) = uploader {
        u.abort();
    }
    release_lease(&rt, &vault);
    drop(status);
    drop(vfs);
    drop(lock);
    rt.shutdown_timeout(Duration::from_secs(5));
    flushed.map_err(|e| {
        anyhow!(
            "unmounted {}, but not everything reached the store: {e}",
            mountpoint.display()
        )
    })
}

/// Resolves once the vault's writer lease is lost (never without a lease),
/// with the reason. Waits a second first, so a flush that can still finish
/// does.
async fn lease_lost(vault: &Vault) -> String {
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        if let Some(l) = vault.lease_status().filter(|l| l.state == "lost") {
            return l
                .error
                .unwrap_or_else(|| "taken over by another writer".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Give the writer lease back (a failure only delays the next writer until
/// the lease expires).
fn release_lease(rt: &tokio::runtime::Runtime, vault: &Vault) {
    if let Err(e) = rt.block_on(vault.release_lease()) {
        warn!(error = %e, "could not release the writer lease; it expires by itself");
    }
}

/// Owns the FUSE session: makes sure the mount is gone however `run_mount`
/// ends (error, panic, busy mountpoint).
struct MountedGuard {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl MountedGuard {
    /// Detach the mount; `abort` also ends the FUSE connection so open
    /// files stop working and the session can end.
    fn detach(&mut self, abort: bool) {
        if abort && geteuid().is_root() && control::is_mounted(&self.mountpoint) {
            // MNT_FORCE aborts the FUSE connection (and usually still fails with EBUSY)
            let _ = control::force_abort(&self.mountpoint);
        }
        if control::is_strata_mount(&self.mountpoint) {
            if let Err(e) = control::unmount_now(&self.mountpoint, true) {
                warn!(error = %e, mountpoint = %self.mountpoint.display(), "lazy unmount failed");
            }
        }
    }

    /// Wait (up to `wait`) for the session threads to end, then drop the session.
    fn finish(&mut self, wait: Duration) {
        let Some(s) = self.session.take() else { return };
        let start = Instant::now();
        while !s.guard.is_finished() && start.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(20));
        }
        if s.guard.is_finished() {
            if let Err(e) = s.join() {
                debug!(error = %e, "FUSE session ended with an error");
            }
        } else {
            warn!("FUSE session did not end; leaving it behind");
            drop(s);
        }
    }
}

impl Drop for MountedGuard {
    fn drop(&mut self) {
        if self.session.is_some() {
            // an early return or panic: take the mount down without flushing
            if control::unmount_now(&self.mountpoint, false).is_err() {
                self.detach(true);
            }
            self.finish(Duration::from_secs(10));
        }
    }
}
