//! The mount lifecycle: [`run_mount`] checks the mountpoint and FUSE, locks
//! the cache directory, opens the vault, mounts, publishes a status file,
//! waits for a signal (or an external unmount) and then flushes and
//! unmounts.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use fuser::{BackgroundSession, INodeNo, MountOption, SessionACL};
use rustix::process::geteuid;
use serde_json::{json, Value};
use strata_core::LeaseOptions;
use strata_store::Metrics;
use strata_vfs::session::{
    bound_allocator, is_local_store, Session, SessionOptions, Signals, StopHandle,
};
use strata_vfs::{CloseMode, FsyncMode, Vfs};
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::fs::{StrataFs, MAX_READAHEAD};
use crate::{control, push};

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
    /// When close returns (durable on local disk by default).
    pub close: CloseMode,
    /// Rollback-detection state (default: `strata_core::state::default_state_dir`).
    pub state_dir: Option<PathBuf>,
    pub accept_rollback: bool,
    /// Take the writer lease even if another writer holds it (read-write
    /// mounts only; a read-only mount takes no lease).
    pub break_lease: bool,
    /// Lifetime of the writer lease (renewed every third of it).
    pub lease_ttl: Duration,
    /// How often an idle writer looks for handoff requests.
    pub lease_poll: Duration,
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
    /// A read-only mount looks for new changes in the store this often
    /// (zero: never; it shows the vault as of mounting).
    pub refresh: Duration,
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
            close: CloseMode::Durable,
            state_dir: None,
            accept_rollback: false,
            break_lease: false,
            lease_ttl: LeaseOptions::new("").ttl,
            lease_poll: LeaseOptions::new("").poll,
            threads: 8,
            flush_timeout: Duration::from_secs(600),
            space_wait: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            checkpoint_records: None,
            refresh: Duration::from_secs(60),
            stop: StopHandle::new(),
        }
    }
}

impl MountOptions {
    /// How the mount at `mountpoint` opens the vault.
    fn session_options(&self, mountpoint: &Path) -> SessionOptions {
        SessionOptions {
            store_url: self.store_url.clone(),
            cache_dir: self.cache_dir.clone(),
            default_cache_suffix: String::new(),
            cache_size: self.cache_size,
            read_cache_size: self.read_cache_size,
            read_only: self.read_only,
            fsync: self.fsync,
            close: self.close,
            state_dir: self.state_dir.clone(),
            accept_rollback: self.accept_rollback,
            break_lease: self.break_lease,
            lease_ttl: self.lease_ttl,
            lease_poll: self.lease_poll,
            lease_owner: format!("mount at {}", mountpoint.display()),
            space_wait: self.space_wait,
            stall_timeout: self.stall_timeout,
            checkpoint_records: self.checkpoint_records,
        }
    }
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
        if let Some(f) = self.vfs.follow_status() {
            m.insert("follow".into(), json!(f));
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Signal(&'static str),
    Requested,
    SessionEnded,
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

    let mut sess = Session::open(&rt, &opts.session_options(&mountpoint), password)?;
    let (vfs, store_name, cache_dir) = (
        sess.vfs.clone(),
        sess.store_name.clone(),
        sess.cache_dir.clone(),
    );

    let mut fs = StrataFs::new(vfs.clone(), rt.handle().clone());
    fs.set_inline_io(is_local_store(&store_name));
    let config = fuse_config(&opts, &store_name);
    fs.set_threads(config.n_threads.unwrap_or(1));
    let (pusher, spare) = push::channel();
    fs.set_pusher(pusher);
    let session = match fuser::spawn_mount(fs, &mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            sess.abort(&rt);
            let hint = if e.kind() == io::ErrorKind::PermissionDenied && !geteuid().is_root() {
                " (a non-root user needs read-write access to /dev/fuse: mode 0666, as the fuse3 package sets it)"
            } else {
                ""
            };
            bail!("cannot mount {}: {e}{hint}", mountpoint.display());
        }
    };
    info!(mountpoint = %mountpoint.display(), store = %store_name, "mounted");
    if let Err(e) = push::start(vfs.clone(), session.notifier(), spare) {
        warn!(error = %e, "cannot start the page-cache thread; small reads stay uncached");
    }
    sess.start(&rt);
    // A read-only mount follows the writer; a writer hands the vault over
    // when another device asks, and follows it from then on.
    let follower = if opts.read_only {
        (!opts.refresh.is_zero())
            .then(|| rt.spawn(follow(vfs.clone(), session.notifier(), opts.refresh)))
    } else {
        let (vfs, notifier, every) = (vfs.clone(), session.notifier(), opts.refresh);
        Some(rt.spawn(async move {
            vfs.serve_handoff().await;
            if !every.is_zero() {
                follow(vfs, notifier, every).await
            }
        }))
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
    base.insert("vault_id".into(), json!(sess.vault_id));
    base.insert("started".into(), json!(unix_now()));
    let status = Arc::new(StatusFile {
        path: control::runtime_dir()?.join(control::status_file_name(&mountpoint)),
        base,
        vfs: vfs.clone(),
        metrics: sess.metrics.clone(),
        state: Mutex::new("mounted"),
    });
    status
        .write()
        .with_context(|| format!("cannot write the status file {}", status.path.display()))?;
    let status_task = {
        let (status, vfs) = (status.clone(), vfs.clone());
        rt.spawn(async move {
            // every second, and soon after the cache made progress (so
            // `strata status` sees an upload or commit that just ended)
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = vfs.progressed() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        tick.reset();
                    }
                }
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

    if !opts.read_only {
        status.set_state("flushing");
    }
    let flushed = sess.flush(
        &rt,
        opts.flush_timeout,
        &mut signals,
        matches!(reason, StopReason::Signal(_)),
    );

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
    if let Some(f) = follower {
        f.abort();
    }
    drop(status);
    drop(vfs);
    sess.finish(&rt);
    rt.shutdown_timeout(Duration::from_secs(5));
    flushed.map_err(|e| {
        anyhow!(
            "unmounted {}, but not everything reached the store: {e}",
            mountpoint.display()
        )
    })
}

/// A read-only mount following the writer: every `every`, catch up with
/// the store and make the kernel forget what changed (attributes, page
/// cache, directory entries), so the next access sees the new state.
async fn follow(vfs: Arc<Vfs>, notifier: fuser::Notifier, every: Duration) {
    vfs.follow_every(every, |changes| {
        use std::os::unix::ffi::OsStrExt;
        // writes to /dev/fuse; ENOENT: the kernel holds nothing of it
        tokio::task::block_in_place(|| {
            for (parent, name) in &changes.entries {
                let _ = notifier.inval_entry(INodeNo(*parent), std::ffi::OsStr::from_bytes(name));
            }
            for ino in &changes.inodes {
                let _ = notifier.inval_inode(INodeNo(*ino), 0, 0);
            }
        })
    })
    .await
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
