//! # strata-serve — the vault over the network
//!
//! Owns `strata serve webdav` and `strata serve http`: the vault for
//! devices without FUSE (a phone's video player, Windows, macOS) and for
//! the LAN. A front end beside `strata-fuse`, over the same
//! [`strata_vfs::Vfs`] and the same session lifecycle
//! ([`strata_vfs::session`]: cache lock, writer lease, journal replay and
//! crash recovery, write-back uploader, flush on stop):
//! - [`davfs`]: dav-server's `DavFileSystem` over the VFS (whole-file
//!   uploads land under their name only when complete; dead properties as
//!   extended attributes);
//! - [`auth`]: Basic authentication against a bcrypt htpasswd file;
//! - [`listen`]: the listener, TLS (rustls), the auth gate, graceful stop;
//! - [`run_serve`] (here): the checks (no open listener on a non-loopback
//!   address without a password file), opening the session, serving until
//!   a signal or [`StopHandle::stop`], then uploading what is pending.
//!
//! The WebDAV protocol itself (PROPFIND, LOCK, Range, conditional
//! requests, the HTML index of `serve http`) is dav-server's.

pub mod auth;
pub mod davfs;
pub mod listen;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use dav_server::memls::MemLs;
use dav_server::{DavHandler, DavMethodSet};
pub use strata_vfs::session::StopHandle;
use strata_vfs::session::{bound_allocator, lease_lost, Session, SessionOptions, Signals};
use tracing::info;
use zeroize::Zeroizing;

use crate::auth::Htpasswd;
use crate::davfs::VfsDav;
use crate::listen::{tls_config, Server, Service};

/// Which protocol to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Read-write WebDAV (read-only with [`ServeOptions`]'s `read_only`).
    WebDav,
    /// Plain HTTP, read-only: GET/HEAD with Range, an HTML index per folder.
    Http,
}

impl Protocol {
    /// The default port of each protocol.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::WebDav => 8922,
            Protocol::Http => 8923,
        }
    }
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub protocol: Protocol,
    /// How the vault is opened (`read_only` is forced for [`Protocol::Http`]).
    pub session: SessionOptions,
    pub listen: SocketAddr,
    /// Apache htpasswd file (bcrypt entries); required off loopback.
    pub htpasswd: Option<PathBuf>,
    /// PEM certificate chain and private key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long the stop waits for uploads.
    pub flush_timeout: Duration,
    /// How long requests in flight may take to finish at the stop.
    pub grace: Duration,
    /// A read-only server looks for the writer's new changes this often
    /// (zero: never; it serves the vault as of its start).
    pub refresh: Duration,
    pub stop: StopHandle,
}

impl ServeOptions {
    pub fn new(protocol: Protocol, store_url: impl Into<String>) -> Self {
        ServeOptions {
            protocol,
            session: SessionOptions::new(store_url),
            listen: SocketAddr::from(([127, 0, 0, 1], protocol.default_port())),
            htpasswd: None,
            tls: None,
            flush_timeout: Duration::from_secs(600),
            grace: Duration::from_secs(10),
            refresh: Duration::from_secs(60),
            stop: StopHandle::new(),
        }
    }
}

/// Refuse an open server on the network: anyone who can reach the port
/// could read (and, over WebDAV, change) the decrypted vault.
pub fn check_listen(listen: SocketAddr, htpasswd: bool) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() && !htpasswd {
        bail!(
            "refusing to listen on {listen} without --htpasswd: anyone who can reach that address \
             would see the decrypted vault. Create a password file with `htpasswd -B -c FILE USER` \
             and pass --htpasswd FILE (and --tls-cert/--tls-key so the password and the data do \
             not cross the network in clear), or listen on 127.0.0.1"
        );
    }
    Ok(())
}

/// What a started server tells its caller.
#[derive(Debug, Clone)]
pub struct Ready {
    pub addr: SocketAddr,
    /// `http://ADDR/` or `https://ADDR/`.
    pub url: String,
    pub read_only: bool,
}

/// Serve the vault until SIGINT/SIGTERM/SIGHUP or [`ServeOptions::stop`],
/// then stop accepting, let requests finish, upload and commit what is
/// pending (progress on stderr), and give the writer lease back. `ready`
/// is called once the server accepts connections.
pub fn run_serve(
    opts: ServeOptions,
    password: Zeroizing<Vec<u8>>,
    ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    check_listen(opts.listen, opts.htpasswd.is_some())?;
    let auth = match &opts.htpasswd {
        Some(p) => Some(Arc::new(Htpasswd::load(p)?)),
        None => None,
    };
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let mut sopts = opts.session.clone();
    if opts.protocol == Protocol::Http {
        sopts.read_only = true;
    }
    let read_only = sopts.read_only;
    if read_only {
        // its own cache, so it can run beside a mount of the vault
        sopts.default_cache_suffix = "-ro".into();
    }
    if sopts.lease_owner.is_empty() {
        sopts.lease_owner = format!("strata serve webdav on {}", opts.listen);
    }
    bound_allocator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("strata-serve")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    let mut sess = Session::open(&rt, &sopts, password)?;

    let methods = match (opts.protocol, read_only) {
        (Protocol::Http, _) => DavMethodSet::HTTP_RO,
        (Protocol::WebDav, true) => DavMethodSet::WEBDAV_RO,
        (Protocol::WebDav, false) => DavMethodSet::WEBDAV_RW,
    };
    let davfs = VfsDav::new(sess.vfs.clone());
    if !read_only {
        let n = davfs.sweep_uploads();
        if n > 0 {
            info!(files = n, "removed uploads cut off by a crash");
        }
    }
    let mut builder = DavHandler::builder()
        .filesystem(Box::new(davfs))
        .methods(methods)
        .autoindex(true)
        .read_buf_size(1 << 20);
    if opts.protocol == Protocol::WebDav {
        builder = builder.locksystem(MemLs::new());
    }
    let svc = Service {
        dav: builder.build_handler(),
        auth,
    };
    let tls_on = tls.is_some();
    let server = match rt.block_on(Server::start(opts.listen, tls, svc)) {
        Ok(s) => s,
        Err(e) => {
            sess.abort(&rt);
            return Err(e);
        }
    };
    sess.start(&rt);
    // a read-only server follows the writer (each request reads the tree
    // afresh: nothing else to tell); a writer hands the vault over when
    // another device asks, and follows it from then on
    let follower = {
        let vfs = sess.vfs.clone();
        let every = opts.refresh;
        rt.spawn(async move {
            if !read_only {
                vfs.serve_handoff().await;
            }
            if !every.is_zero() {
                vfs.follow_every(every, |_| {}).await
            }
        })
    };
    let url = format!(
        "{}://{}/",
        if tls_on { "https" } else { "http" },
        server.addr
    );
    info!(%url, store = %sess.store_name, "serving");

    let mut signals = {
        let _g = rt.enter();
        Signals::new()?
    };
    ready(&Ready {
        addr: server.addr,
        url,
        read_only,
    });
    let stop = opts.stop.clone();
    let vault = sess.vault.clone();
    let (by_signal, lost) = rt.block_on(async {
        tokio::select! {
            sig = signals.next() => { info!(signal = sig, "stopping"); (true, None) }
            _ = stop.wait() => (false, None),
            // a writer whose changes can no longer be committed must not
            // go on accepting them
            why = lease_lost(&vault) => (false, Some(why)),
        }
    });
    if let Some(why) = &lost {
        eprintln!(
            "strata: lost the vault's writer lease ({why}): another writer took the vault over; \
             stopping the server"
        );
    }
    follower.abort();
    rt.block_on(server.stop(opts.grace));
    let flushed = sess.flush(&rt, opts.flush_timeout, &mut signals, by_signal);
    sess.finish(&rt);
    rt.shutdown_timeout(Duration::from_secs(5));
    flushed
        .map_err(|e| anyhow::anyhow!("stopped serving, but not everything reached the store: {e}"))
}
