//! A long-running session over a vault, shared by the front ends that keep
//! a [`Vfs`] open (the FUSE mount, `strata serve`): the per-vault cache
//! lock, opening the vault (read cache, writer lease), building the VFS,
//! the background uploader, the signals that stop a session, and the
//! orderly flush at the end. A front end adds only its own protocol.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_core::lease::WaitReport;
use strata_core::{LeaseOptions, OpenOptions as VaultOpenOptions, ReadCacheOptions, Vault};
use strata_store::Metrics;
use tracing::warn;
use zeroize::Zeroizing;

use crate::{CloseMode, FsyncMode, Vfs, VfsOptions};

/// `$XDG_CACHE_HOME/strata/<vault id>`, or `~/.cache/strata/<vault id>`.
pub fn default_cache_dir(vault_id: &str) -> PathBuf {
    dirs::cache_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("strata")
        .join(vault_id)
}

/// Whether a store (by its description) is on this machine's disk or in
/// memory, as fast as the cache disk: no read cache, the largest read-ahead.
pub fn is_local_store(store: &str) -> bool {
    store.starts_with("file://") || store.starts_with("memory://")
}

/// An exclusive `flock` on `<cache dir>/lock` holding the owner's pid: one
/// session (mount or serve) per cache directory at a time.
pub struct CacheLock {
    file: File,
}

impl CacheLock {
    pub fn acquire(path: &Path) -> anyhow::Result<CacheLock> {
        use anyhow::{bail, Context};
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        if let Err(e) =
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            let e = io::Error::from(e);
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                let who = match s.trim().parse::<u32>() {
                    Ok(pid) => format!("process {pid}"),
                    Err(_) => "another process".to_string(),
                };
                bail!(
                    "vault is already mounted or served by {who} (lock {}); stop that first",
                    path.display()
                );
            }
            bail!("cannot lock {}: {e}", path.display());
        }
        file.set_len(0)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        Ok(CacheLock { file })
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock);
    }
}

/// Keep a long-running session's memory bounded: glibc's malloc otherwise
/// raises its mmap threshold after the first multi-MiB chunk buffers are
/// freed and keeps later ones in per-thread arenas (measured: ~250 MiB RSS
/// copying 2 GiB under load). With a fixed threshold of 2 MiB, chunk
/// buffers (4 MiB) stay mmapped and go back to the system, while request
/// buffers (up to 1 MiB) are reused from the arenas; and few arenas are
/// used. Call before the session's threads start.
pub fn bound_allocator() {
    // SAFETY: mallopt only tunes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// SIGTERM, SIGINT and SIGHUP, as one stream.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Needs a runtime context.
    pub fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The name of the next signal received.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Asks a running session (a mount, a server) to flush and stop, like
/// SIGTERM does. Cheap to clone.
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

    /// Resolves once [`StopHandle::stop`] was called.
    pub async fn wait(&self) {
        loop {
            let n = self.0.notify.notified();
            if self.is_stopped() {
                return;
            }
            n.await;
        }
    }
}

/// Bytes as a human reads them (`1.5 GiB`).
pub fn human(bytes: u64) -> String {
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

/// How a session opens the vault.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Store URL (see `strata_store::open_url`).
    pub store_url: String,
    /// Journal, dirty chunks and read cache. Default: [`default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Appended to the default cache directory's name (e.g. `-ro`): a
    /// read-only session with its own directory runs beside a mount of
    /// the same vault (a directory serves one session at a time).
    pub default_cache_suffix: String,
    /// Dirty (not yet uploaded) data above this makes writers wait.
    pub cache_size: u64,
    /// Cache of downloaded ciphertext in `<cache dir>/read` (0 = none);
    /// remote stores only.
    pub read_cache_size: u64,
    /// Read-only: no writer lease, no uploads.
    pub read_only: bool,
    pub fsync: FsyncMode,
    pub close: CloseMode,
    pub state_dir: Option<PathBuf>,
    pub accept_rollback: bool,
    pub break_lease: bool,
    pub lease_ttl: Duration,
    /// How often an idle writer looks at the lease (handoff requests);
    /// askers wait a few of these for an answer.
    pub lease_poll: Duration,
    /// Who holds the writer lease, as other writers are told
    /// (e.g. `mount at /mnt/x`).
    pub lease_owner: String,
    /// How long a write waits for cache-disk space while nothing is freed
    /// before it fails with ENOSPC.
    pub space_wait: Duration,
    /// The flush at the end gives up when the store failed and took
    /// nothing for this long (what is pending stays in the cache).
    pub stall_timeout: Duration,
    /// Metadata records between checkpoints (`None`: the vault's default).
    pub checkpoint_records: Option<u64>,
}

impl SessionOptions {
    pub fn new(store_url: impl Into<String>) -> Self {
        SessionOptions {
            store_url: store_url.into(),
            cache_dir: None,
            default_cache_suffix: String::new(),
            cache_size: 1 << 30,
            read_cache_size: 512 << 20,
            read_only: false,
            fsync: FsyncMode::Cloud,
            close: CloseMode::Durable,
            state_dir: None,
            accept_rollback: false,
            break_lease: false,
            lease_ttl: LeaseOptions::new("").ttl,
            lease_poll: LeaseOptions::new("").poll,
            lease_owner: String::new(),
            space_wait: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            checkpoint_records: None,
        }
    }
}

/// An open vault with its VFS, cache lock and (read-write) writer lease.
/// End it with [`Session::finish`].
pub struct Session {
    pub vault: Arc<Vault>,
    pub vfs: Arc<Vfs>,
    pub cache_dir: PathBuf,
    /// The store as `describe()` names it.
    pub store_name: String,
    pub vault_id: String,
    pub metrics: Metrics,
    pub read_only: bool,
    uploader: Option<tokio::task::JoinHandle<()>>,
    lock: Option<CacheLock>,
}

impl Session {
    /// Lock the cache directory, open the vault (taking the writer lease
    /// unless read-only) and set up the VFS (journal replay, crash
    /// recovery). The uploader starts with [`Session::start`].
    pub fn open(
        rt: &tokio::runtime::Runtime,
        opts: &SessionOptions,
        password: Zeroizing<Vec<u8>>,
    ) -> anyhow::Result<Session> {
        use anyhow::{anyhow, Context};
        let (store, metrics) = strata_store::open_url(&opts.store_url)?;
        let store_name = store.describe();
        // The vault id (for the default cache dir and the lock) is public:
        // refuse a second session before asking the KDF for anything.
        let header = rt.block_on(Vault::read_header(&store))?;
        let cache_dir = opts.cache_dir.clone().unwrap_or_else(|| {
            default_cache_dir(&format!("{}{}", header.vault_id, opts.default_cache_suffix))
        });
        std::fs::create_dir_all(&cache_dir).with_context(|| {
            format!("cannot create the cache directory {}", cache_dir.display())
        })?;
        let lock = CacheLock::acquire(&cache_dir.join("lock"))?;
        // A read-write session is a writer: it holds the vault's writer
        // lease until it has flushed. A read-only one takes none.
        // A writer that finds another one live asks it to hand over, and
        // says so while it waits.
        let lease = (!opts.read_only).then(|| LeaseOptions {
            break_lease: opts.break_lease,
            take_over: !opts.break_lease,
            ttl: opts.lease_ttl,
            poll: opts.lease_poll,
            handoff_answer: strata_core::handoff::default_answer_wait(opts.lease_poll),
            on_wait: Some(WaitReport::new(|line| eprintln!("strata: {line}"))),
            ..LeaseOptions::new(opts.lease_owner.clone())
        });
        // A store on the local disk gets no read cache: measured, reading it
        // straight (the kernel's page cache keeps what is re-read) beat a
        // cache in memory by ~20 % on a cold sequential read.
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
            // a follower may be reading a file this writer deletes
            free_grace: Duration::from_secs(600),
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
        vfs_opts.close = opts.close;
        let vfs = match Vfs::new(vault.clone(), vfs_opts) {
            Ok(v) => v,
            Err(e) => {
                release_lease(rt, &vault);
                return Err(anyhow!(e));
            }
        };
        Ok(Session {
            vault,
            vfs,
            cache_dir,
            store_name,
            vault_id: header.vault_id,
            metrics,
            read_only: opts.read_only,
            uploader: None,
            lock: Some(lock),
        })
    }

    /// Start the background uploader (read-write sessions only: a
    /// read-only one never writes to the store; records replayed from the
    /// journal stay there for the next read-write session).
    pub fn start(&mut self, rt: &tokio::runtime::Runtime) {
        if !self.read_only && self.uploader.is_none() {
            let _g = rt.enter();
            self.uploader = Some(self.vfs.start());
        }
    }

    /// Give the lease back (on an error before serving).
    pub fn abort(mut self, rt: &tokio::runtime::Runtime) {
        release_lease(rt, &self.vault);
        self.lock.take();
    }

    /// Upload and commit everything pending (progress on stderr), up to
    /// `timeout`; a second signal or the loss of the writer lease stops
    /// the wait (what is left stays in the cache for the next session).
    pub fn flush(
        &self,
        rt: &tokio::runtime::Runtime,
        timeout: Duration,
        signals: &mut Signals,
        by_signal: bool,
    ) -> Result<(), String> {
        if self.read_only {
            return Ok(());
        }
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
                if last.get().is_none() && by_signal {
                    eprintln!("strata: (signal again to stop waiting; the rest is uploaded at the next mount)");
                }
                last.set(Some(Instant::now()));
            }
        };
        let cache_dir = &self.cache_dir;
        let r = rt.block_on(async {
            tokio::select! {
                r = self.vfs.shutdown(timeout, report) => r,
                why = lease_lost(&self.vault) => Err(format!(
                    "this session lost the vault's writer lease ({why}), so it cannot commit; what it has not \
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
    }

    /// Stop the uploader, delete the blobs kept for followers, give the
    /// lease back, unlock the cache directory.
    pub fn finish(mut self, rt: &tokio::runtime::Runtime) {
        if let Some(u) = self.uploader.take() {
            u.abort();
        }
        delete_freed(rt, &self.vault);
        release_lease(rt, &self.vault);
        self.lock.take();
    }
}

/// Resolves once the vault's writer lease is lost (never without a lease),
/// with the reason. Waits a second first, so a flush that can still finish
/// does.
pub async fn lease_lost(vault: &Vault) -> String {
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
/// Delete what the session's commits freed and kept for followers (a
/// writer that still holds its lease; a failure leaves them to `gc`).
fn delete_freed(rt: &tokio::runtime::Runtime, vault: &Vault) {
    if vault.lease_status().is_some_and(|l| l.state == "held") {
        if let Err(e) = rt.block_on(vault.delete_freed_now()) {
            warn!(error = %e, "could not delete freed blobs; `strata gc` removes them");
        }
    }
}

pub fn release_lease(rt: &tokio::runtime::Runtime, vault: &Vault) {
    if let Err(e) = rt.block_on(vault.release_lease()) {
        warn!(error = %e, "could not release the writer lease; it expires by itself");
    }
}
