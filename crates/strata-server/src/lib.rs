//! Strata's bundled "primitive cloud": a small HTTP server whose whole API
//! is `upload_file`, `download_file`, `list_files` and `delete_file` web
//! endpoints over a local folder, like the bare-bones storage APIs Strata is
//! meant to turn into a drive.
//!
//! This crate owns that server and nothing else: the HTTP API (bearer-token
//! authentication, multipart uploads written atomically through `<root>/.tmp`,
//! streamed and optionally ranged downloads, paginated listings, deletes),
//! the mapping of object names onto the folder (validated names, never
//! outside the root), and the knobs that make it behave like a poor cloud
//! in tests and benchmarks: object-size limit, no range reads, a shared
//! bandwidth limit, added latency and injected failures. It depends on no
//! other Strata crate; the matching client lives in `strata-store`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let cfg = strata_server::ServerConfig::new(
//!     "/srv/cloud".into(),
//!     "127.0.0.1:0".parse().unwrap(),
//!     "secret".into(),
//! );
//! let server = strata_server::spawn(cfg).await?;
//! println!("serving on http://{}", server.addr);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # HTTP API
//!
//! Every request needs `Authorization: Bearer <token>` (else 401). Errors
//! are JSON `{"error": "..."}`.
//!
//! - `POST /upload_file`: `multipart/form-data` with a text field `name`
//!   and a file field `file`; replaces the whole object atomically. 200
//!   `{"name": ..., "size": N}`; 413 above the object-size limit, with the
//!   limit in the reply: `{"error": ..., "max_object_size": N}`.
//! - `GET /download_file?name=NAME`: the object; with range reads on, a
//!   single `Range: bytes=...` gives 206 (or 416). 404 when missing.
//! - `GET /list_files?prefix=P&page_token=T&limit=N`: `{"files": [{"name",
//!   "size", "mtime"}], "next_page_token": "..." | null}`, names in byte
//!   order, recursive, plain string prefix; `limit` defaults to 1000, at
//!   most 10000.
//! - `POST /delete_file?name=NAME`: 200 `{"deleted": true}`; 404 when
//!   missing.
//! - `GET /server_info`: what a client cannot guess, `{"api":
//!   "strata-basic", "version": 1, "max_object_size": N | null, "range":
//!   true | false}`. The `basic+http(s)://` client reads it when it opens a
//!   vault, so a vault created on a limited server picks chunks that fit.
//!
//! Object names are 1 to 1024 bytes of `/`-separated segments made of
//! `[A-Za-z0-9._-]` (no empty, `.` or `..` segment, no leading `/`, not
//! starting with `.tmp`); anything else is a 400.
//!
//! # https
//!
//! With [`ServerConfig::tls`] (`strata cloud-server --tls-cert --tls-key`)
//! every connection is TLS (rustls; TLS 1.2 and 1.3, HTTP/1.1); the TLS
//! handshake must finish within the 30 s header timeout. Clients of a
//! private CA trust it with `ca-file=PATH` in the store URL.
//!
//! # Limits
//!
//! Request bodies are capped at the object-size limit plus 64 KiB of
//! multipart framing (16 GiB without a limit; `Content-Length` is checked up
//! front, the body is counted while it streams). Headers must arrive within
//! 30 s; a connection on which nothing moved for 120 s
//! ([`ServerConfig::idle_timeout`], `--idle-timeout-secs`) is closed, so a
//! client that stalls mid-upload stores nothing and holds nothing; at most
//! 1024 connections are served at once; on shutdown, requests in flight
//! get 10 s. Uploads and downloads stream with bounded memory whatever the
//! object size.
//!
//! # Test knobs
//!
//! Injected failures (`fail_rate`) are decided when a request arrives,
//! after authentication and before it has any effect: a 500 reply, a
//! dropped connection, or (downloads only) a body cut short of its
//! `Content-Length`. An injected failure never stores or deletes anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod api;
mod conn;
mod fsops;
mod names;
mod rate;
mod shaper;

pub use rate::parse_rate;

/// Room for the multipart framing and the `name` field on top of the
/// object itself, in the request body limit.
const MULTIPART_OVERHEAD: u64 = 64 << 10;
/// Request body limit when objects are unlimited.
const UNLIMITED_BODY: u64 = 16 << 30;
/// Largest piece a shaped transfer moves at once.
const SHAPED_PIECE: usize = 16 << 10;
/// Read size of unshaped downloads.
pub(crate) const UNSHAPED_PIECE: usize = 256 << 10;

/// How to run a server. Build it with [`ServerConfig::new`] and set the
/// knobs you need.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Folder holding the objects (created if missing).
    pub root: PathBuf,
    /// Address to listen on, e.g. `127.0.0.1:0` for a free port.
    pub listen: SocketAddr,
    /// Bearer token required on every request (must not be empty).
    pub token: String,
    /// Largest object accepted; bigger uploads get 413.
    pub max_object_size: Option<u64>,
    /// Honour `Range` headers on downloads (`false` = whole objects only).
    pub range: bool,
    /// Bytes per second shared by all transfers, both directions.
    pub bandwidth: Option<u64>,
    /// Delay added once per request before it is handled.
    pub latency: Duration,
    /// Probability (0.0..=1.0) that a request gets an injected failure.
    pub fail_rate: f64,
    /// Seed of the failure-injection RNG.
    pub seed: u64,
    /// Serve https with this certificate and key instead of plain http.
    pub tls: Option<TlsFiles>,
    /// A connection on which no byte moved either way for this long is
    /// closed (a stalled upload leaves nothing behind). Default 120 s.
    pub idle_timeout: Duration,
}

/// PEM files for https: the certificate chain (server certificate first,
/// then intermediates) and its private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerConfig {
    /// A config with no limits, range reads on, no latency and no failures.
    pub fn new(root: PathBuf, listen: SocketAddr, token: String) -> Self {
        ServerConfig {
            root,
            listen,
            token,
            max_object_size: None,
            range: true,
            bandwidth: None,
            latency: Duration::ZERO,
            fail_rate: 0.0,
            seed: 0,
            tls: None,
            idle_timeout: conn::IDLE_TIMEOUT,
        }
    }
}

/// Counters since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Requests received (all of them, also rejected ones).
    pub requests: u64,
    /// Request-body bytes read.
    pub bytes_in: u64,
    /// Object bytes sent by downloads.
    pub bytes_out: u64,
    /// Requests that got an injected failure.
    pub failures_injected: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) failures_injected: AtomicU64,
}

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Canonical root folder.
    pub(crate) root: PathBuf,
    /// `<root>/.tmp`.
    pub(crate) tmp: PathBuf,
    pub(crate) token: Vec<u8>,
    pub(crate) max_object_size: Option<u64>,
    /// Largest request body read.
    pub(crate) body_limit: u64,
    pub(crate) range: bool,
    pub(crate) bucket: Option<shaper::TokenBucket>,
    /// Piece size of shaped transfers.
    pub(crate) piece: usize,
    pub(crate) latency: Duration,
    pub(crate) fail_rate: f64,
    pub(crate) rng: Mutex<StdRng>,
    pub(crate) stats: Arc<Counters>,
}

/// A running server. Dropping it stops the server too (without waiting);
/// prefer [`ServerHandle::shutdown`].
#[derive(Debug)]
pub struct ServerHandle {
    /// The address the server listens on (with the real port).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Stops accepting connections, lets requests in flight finish (for up
    /// to 10 s, then cuts them) and returns when the server is gone.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!("server task failed: {e}");
            }
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.stats;
        ServerStats {
            requests: c.requests.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            failures_injected: c.failures_injected.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// Prepares the root (creating it and `.tmp`, removing stale temp files),
/// binds `cfg.listen` and serves in a tokio task; returns at once.
pub async fn spawn(cfg: ServerConfig) -> std::io::Result<ServerHandle> {
    if cfg.token.is_empty() {
        return Err(invalid("the token must not be empty"));
    }
    if !(0.0..=1.0).contains(&cfg.fail_rate) {
        return Err(invalid("fail_rate must be within 0.0..=1.0"));
    }
    if cfg.idle_timeout.is_zero() {
        return Err(invalid("idle_timeout must be above zero"));
    }
    if cfg.bandwidth == Some(0) {
        return Err(invalid("bandwidth must be at least 1 byte per second"));
    }
    let tls = match &cfg.tls {
        Some(files) => Some(conn::tls_acceptor(files)?),
        None => None,
    };
    let root_in = cfg.root.clone();
    let root = tokio::task::spawn_blocking(move || fsops::prepare_root(&root_in))
        .await
        .map_err(std::io::Error::other)??;
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    // Shaped transfers move pieces of at most 16 KiB, and smaller ones at
    // low rates (about 1/8 s of traffic) so that pacing stays smooth.
    let piece = cfg.bandwidth.map_or(SHAPED_PIECE, |r| {
        (r / 8).clamp(1024, SHAPED_PIECE as u64) as usize
    });
    // Burst: 50 ms of traffic, at least one piece.
    let bucket = cfg
        .bandwidth
        .map(|r| shaper::TokenBucket::new(r, (r / 20).max(piece as u64)));
    let body_limit = cfg
        .max_object_size
        .map_or(UNLIMITED_BODY, |m| m.saturating_add(MULTIPART_OVERHEAD));
    let shared = Arc::new(Shared {
        tmp: root.join(names::TMP_DIR),
        root,
        token: cfg.token.into_bytes(),
        max_object_size: cfg.max_object_size,
        body_limit,
        range: cfg.range,
        bucket,
        piece,
        latency: cfg.latency,
        fail_rate: cfg.fail_rate,
        rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
        stats: Arc::new(Counters::default()),
    });
    let router = api::router(shared.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(conn::serve(
        listener,
        router,
        tls,
        cfg.idle_timeout,
        shutdown.clone(),
    ));
    tracing::info!("strata-server listening on {addr}");
    Ok(ServerHandle {
        addr,
        shared,
        shutdown,
        task: Some(task),
    })
}
