//! The `sftp://` backend: [`SftpStore`], objects as files under a folder of
//! an SSH server, through the system's OpenSSH client (`openssh`, process
//! multiplexing) and `openssh-sftp-client`.
//!
//! URL: `sftp://[USER@]HOST[:PORT]/ABS/PATH?key=PATH&known-hosts=PATH`.
//! `key` is the private key to log in with (a local path, `~/` allowed;
//! only that key is offered; without it, ssh's defaults and agent apply);
//! `known-hosts` is the known_hosts file the server's host key must be
//! listed in (default: ssh's own, `~/.ssh/known_hosts`). Host keys are
//! checked strictly: an unknown or changed host key is refused, never
//! added. No password logins (batch mode). The user's ssh configuration
//! (`~/.ssh/config`) applies as for `ssh` itself. The store folder is
//! created if only it is missing (like `file://`).
//!
//! Why not opendal's sftp service: it cannot take a known_hosts file,
//! writes objects in place (a reader or a crash can see a partial object)
//! and has no enforced create-if-absent. Here, like the `file://` backend:
//!
//! * `put` writes `<root>/.strata-tmp/<random>.tmp` (pieces in parallel),
//!   fsyncs it when the server offers `fsync@openssh.com`, then renames it
//!   onto the key with `posix-rename@openssh.com` (atomic replace: readers
//!   see the old or the new object). Parent folders are created as needed.
//!   SFTP has no directory fsync, so the rename itself is as durable as the
//!   server's filesystem makes it. (Tried and measured: OpenSSH's server
//!   would fsync a folder's descriptor through `fsync@openssh.com`, but a
//!   folder can only be opened read-only, and `openssh-sftp-client` sends
//!   fsync only on handles opened for writing — it refuses before sending.
//!   Fixing that needs a raw fsync request on a read-only handle, which the
//!   client crate does not expose.)
//! * `put_if_absent` writes the temp file the same way, then hard-links it
//!   to the key (`hardlink@openssh.com`): the server's kernel refuses the
//!   link if the key exists. Declared (`conditional_create`) only when the
//!   server offers the extension.
//! * Reads open the file, take its size from the open handle and fetch the
//!   wanted bytes in parallel pieces (ranges clamped to the end).
//!
//! The connection is made on first use (or by [`Store::prepare`]) and
//! remade after it breaks: a failure of the connection itself is
//! `Transient` (the retry layer tries again, on a new connection), a
//! server's refusal is not.

use std::io::SeekFrom;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::file::File;
use openssh_sftp_client::openssh::{ControlPersist, KnownHosts, SessionBuilder};
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use tokio::io::AsyncSeekExt;

use crate::error::{StoreError, StoreErrorKind, StoreResult};
use crate::keys::validate_prefix;
use crate::{Capabilities, ObjectMeta, Store};

/// First key segment reserved for temp files.
const TMP_DIR: &str = ".strata-tmp";

/// Temp files older than this are crash leftovers, swept by `prepare`.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// Reads and writes are split into pieces of this size, sent concurrently.
const PIECE: usize = 1 << 20;

/// Pieces in flight per object.
const PIECES_IN_FLIGHT: usize = 8;

/// Directories read concurrently by `list`.
const LIST_CONCURRENCY: usize = 16;

/// TCP connect + SSH handshake limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Keepalive: a silent server is declared dead after 3 unanswered probes.
const ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The `sftp://` URL options.
pub(crate) const SFTP_OPTIONS: &[&str] = &["key", "known-hosts"];

/// Where and how to connect (from the URL).
#[derive(Debug, Clone)]
struct Target {
    user: Option<String>,
    host: String,
    port: u16,
    /// Absolute folder on the server, no trailing `/` (empty = `/`).
    root: String,
    key: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
}

/// One SFTP session and what the server offers.
struct Conn {
    sftp: Sftp,
    hardlink: bool,
    fsync: bool,
    posix_rename: bool,
}

/// An object store in a folder of an SFTP server (see the module docs).
pub struct SftpStore {
    target: Target,
    description: String,
    /// The live session, if any; connecting happens under this lock.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Learnt from the server on connecting.
    hardlink: AtomicBool,
    /// The root folder (and its temp folder) were checked/created.
    root_ready: AtomicBool,
    prepared: AtomicBool,
    /// Private folder for ssh's control sockets. Declared after `conn`, so
    /// sessions close before it is removed.
    control_dir: tempfile::TempDir,
}

impl std::fmt::Debug for SftpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpStore")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// A user or host name safe to hand to `ssh` (no option injection).
fn safe_name(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
}

/// Open an `sftp://` store from its URL: `base` is the URL without the
/// query; the `key` and `known-hosts` options are read from `url`'s query.
pub(crate) fn open_url(base: &str, url: &str, description: String) -> StoreResult<SftpStore> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let (mut key, mut known_hosts) = (None, None);
    for (name, value) in ::url::form_urlencoded::parse(query.as_bytes()) {
        match name.to_ascii_lowercase().as_str() {
            "key" => key = Some(value.into_owned()),
            "known-hosts" => known_hosts = Some(value.into_owned()),
            _ => {}
        }
    }
    SftpStore::open(base, key.as_deref(), known_hosts.as_deref(), description)
}

impl SftpStore {
    /// Parse `sftp://[USER@]HOST[:PORT]/ABS/PATH` (no query: `options` are
    /// the `key` / `known-hosts` values) and check the local files. Does not
    /// connect: that happens on first use or in [`Store::prepare`].
    /// `description` is used by `describe()` and in errors.
    pub(crate) fn open(
        base: &str,
        key: Option<&str>,
        known_hosts: Option<&str>,
        description: String,
    ) -> StoreResult<Self> {
        let invalid = |msg: String| StoreError::invalid_url(description.as_str(), msg);
        let parsed =
            ::url::Url::parse(base).map_err(|e| invalid(format!("not a valid sftp URL: {e}")))?;
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("sftp URLs need a host: sftp://USER@HOST:PORT/PATH".into()))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !safe_name(&host, b":") {
            return Err(invalid(format!("`{host}` is not a valid host name")));
        }
        let user = match parsed.username() {
            "" => None,
            u => {
                let u = ::url::form_urlencoded::parse(format!("u={u}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                if !safe_name(&u, b"") {
                    return Err(invalid(format!("`{u}` is not a valid user name")));
                }
                Some(u)
            }
        };
        if parsed.password().is_some() {
            return Err(invalid(
                "sftp URLs take no password: log in with a key (`?key=PATH`)".into(),
            ));
        }
        let port = parsed.port().unwrap_or(22);
        let path = parsed.path();
        if !path.starts_with('/')
            || !path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/~+@,=".contains(&b))
        {
            return Err(invalid(format!(
                "the store folder must be an absolute path of A-Z a-z 0-9 . _ - / ~ + @ , =, \
                 not `{path}`"
            )));
        }
        if path.split('/').any(|s| s == "..") {
            return Err(invalid("'..' is not allowed in the store folder".into()));
        }
        let root = path.trim_end_matches('/').to_owned();

        let file_opt = |name: &str, v: Option<&str>| -> StoreResult<Option<PathBuf>> {
            let Some(v) = v else { return Ok(None) };
            if v.is_empty() {
                return Err(invalid(format!("store option `{name}` needs a path")));
            }
            let p = crate::url::expand_home(v);
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() => Ok(Some(p)),
                Ok(_) => Err(invalid(format!("{name}: {} is not a file", p.display()))),
                Err(e) => Err(invalid(format!("{name}: cannot read {}: {e}", p.display()))),
            }
        };
        let key = file_opt("key", key)?;
        let known_hosts = file_opt("known-hosts", known_hosts)?;

        let control_dir = tempfile::Builder::new()
            .prefix("strata-ssh-")
            .tempdir()
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Other,
                    description.as_str(),
                    "open",
                    None,
                    format!("cannot create a private folder for ssh control sockets: {e}"),
                )
            })?;
        Ok(SftpStore {
            target: Target {
                user,
                host,
                port,
                root,
                key,
                known_hosts,
            },
            description,
            conn: tokio::sync::Mutex::new(None),
            hardlink: AtomicBool::new(false),
            root_ready: AtomicBool::new(false),
            prepared: AtomicBool::new(false),
            control_dir,
        })
    }

    fn err(
        &self,
        kind: StoreErrorKind,
        op: &'static str,
        key: Option<&str>,
        msg: impl Into<String>,
    ) -> StoreError {
        StoreError::new(kind, self.description.as_str(), op, key, msg)
    }

    /// `host:port` as ssh shows it in known_hosts terms.
    fn host_port(&self) -> String {
        format!("{}:{}", self.target.host, self.target.port)
    }

    fn path_of(&self, key: &str) -> String {
        format!("{}/{key}", self.target.root)
    }

    fn tmp_dir(&self) -> String {
        format!("{}/{TMP_DIR}", self.target.root)
    }

    fn check_key(&self, op: &'static str, key: &str) -> StoreResult<()> {
        crate::keys::validate_key(key)
            .and_then(|()| {
                if key.split('/').next() == Some(TMP_DIR) {
                    Err("keys under .strata-tmp/ are reserved")
                } else {
                    Ok(())
                }
            })
            .map_err(|why| StoreError::invalid_key(self.description.as_str(), op, key, why))
    }

    // -- connection ---------------------------------------------------------

    /// The live session, connecting (once, for all callers) when there is none.
    async fn conn(&self, op: &'static str, key: Option<&str>) -> StoreResult<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(self.connect(op, key).await?);
        *slot = Some(c.clone());
        drop(slot);
        if !self.root_ready.load(Ordering::SeqCst) {
            if let Err(e) = self.ensure_root(&c, op).await {
                self.broken(&c, &e).await;
                return Err(e);
            }
            self.root_ready.store(true, Ordering::SeqCst);
        }
        Ok(c)
    }

    async fn connect(&self, op: &'static str, key: Option<&str>) -> StoreResult<Conn> {
        let t = &self.target;
        let mut b = SessionBuilder::default();
        b.known_hosts_check(KnownHosts::Strict)
            .port(t.port)
            .connect_timeout(CONNECT_TIMEOUT)
            .server_alive_interval(ALIVE_INTERVAL)
            .control_directory(self.control_dir.path());
        if let Some(n) = NonZeroUsize::new(60) {
            // The master outlives a crashed Strata by at most a minute.
            b.control_persist(ControlPersist::IdleFor(n));
        }
        if let Some(u) = &t.user {
            b.user(u.clone());
        }
        if let Some(k) = &t.key {
            b.keyfile(k);
        }
        if let Some(kh) = &t.known_hosts {
            b.user_known_hosts_file(kh);
        }
        let session = b
            .connect(&t.host)
            .await
            .map_err(|e| self.connect_error(&e, op, key))?;
        let sftp = Sftp::from_session(session, SftpOptions::new())
            .await
            .map_err(|e| {
                self.err(
                    StoreErrorKind::Transient,
                    op,
                    key,
                    format!(
                        "connected to {} but could not start its sftp subsystem: {e}",
                        self.host_port()
                    ),
                )
            })?;
        let conn = Conn {
            hardlink: sftp.support_hardlink(),
            fsync: sftp.support_fsync(),
            posix_rename: sftp.support_posix_rename(),
            sftp,
        };
        self.hardlink.store(conn.hardlink, Ordering::SeqCst);
        tracing::debug!(
            store = %self.description,
            hardlink = conn.hardlink,
            fsync = conn.fsync,
            posix_rename = conn.posix_rename,
            "sftp connected"
        );
        Ok(conn)
    }

    /// An ssh connection failure as a store error saying what to do.
    fn connect_error(
        &self,
        e: &openssh_sftp_client::openssh::Error,
        op: &'static str,
        key: Option<&str>,
    ) -> StoreError {
        use openssh_sftp_client::openssh::Error as E;
        let detail = match e {
            E::Connect(io) | E::Master(io) => io.to_string(),
            E::Ssh(io) => {
                return self.err(
                    StoreErrorKind::Other,
                    op,
                    key,
                    format!(
                        "cannot run the ssh client ({io}); install OpenSSH's client \
                         (Debian package openssh-client)"
                    ),
                )
            }
            other => other.to_string(),
        };
        let lower = detail.to_ascii_lowercase();
        let d = ssh_said(&detail);
        let kh = self
            .target
            .known_hosts
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.ssh/known_hosts".to_owned());
        let (h, p) = (&self.target.host, self.target.port);
        let (kind, msg) = if lower.contains("remote host identification has changed")
            || lower.contains("host key for") && lower.contains("has changed")
        {
            let presented = detail
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("SHA256:"))
                .map(|fp| format!(" (the server presents {fp})"))
                .unwrap_or_default();
            (
                StoreErrorKind::PermissionDenied,
                format!(
                    "the host key of {h}:{p} does NOT match the one in {kh} (someone may be \
                     intercepting the connection, or the server's key changed); if the change \
                     is expected, remove the old entry with `ssh-keygen -R '[{h}]:{p}' -f {kh}` \
                     and add the new one after checking its fingerprint{presented}"
                ),
            )
        } else if lower.contains("host key verification failed")
            || lower.contains("no ") && lower.contains("host key is known")
        {
            (
                StoreErrorKind::PermissionDenied,
                format!(
                    "host key for {h}:{p} is not in {kh}; add it with \
                     `ssh-keyscan -p {p} {h} >> {kh}` after checking its fingerprint \
                     (ssh said: {d})"
                ),
            )
        } else if lower.contains("permission denied") || lower.contains("too many authentication") {
            let who = self
                .target
                .user
                .as_deref()
                .unwrap_or("(ssh's default user)");
            let with = match &self.target.key {
                Some(k) => format!("the key {}", k.display()),
                None => "ssh's default keys".to_owned(),
            };
            (
                StoreErrorKind::PermissionDenied,
                format!(
                    "authentication failed: {h}:{p} refused user {who} with {with} \
                     (ssh said: {d})"
                ),
            )
        } else if lower.contains("load key")
            || lower.contains("no such identity")
            || lower.contains("bad permissions")
        {
            (
                StoreErrorKind::PermissionDenied,
                format!("cannot use the private key: {d}"),
            )
        } else if lower.contains("connection refused")
            || lower.contains("timed out")
            || lower.contains("no route to host")
            || lower.contains("network is unreachable")
            || lower.contains("could not resolve")
            || lower.contains("connection closed")
            || lower.contains("connection reset")
            || lower.contains("kex_exchange_identification")
        {
            (
                StoreErrorKind::Transient,
                format!("cannot reach the SSH server at {h}:{p}: {d}"),
            )
        } else {
            (
                StoreErrorKind::Transient,
                format!("cannot connect to {h}:{p} over SSH: {d}"),
            )
        };
        self.err(kind, op, key, msg)
    }

    /// Forget `c` (if it is still the live session) after it failed, so the
    /// next operation reconnects. The session closes when its last user
    /// lets go of it.
    async fn broken(&self, c: &Arc<Conn>, why: &StoreError) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, c)) {
            tracing::debug!(store = %self.description, error = %why, "sftp session dropped");
            *slot = None;
        }
    }

    /// Make sure the root folder and its temp folder exist: the root is
    /// created when only it is missing (like `file://`), not its parents.
    async fn ensure_root(&self, c: &Conn, op: &'static str) -> StoreResult<()> {
        let root = if self.target.root.is_empty() {
            "/".to_owned()
        } else {
            self.target.root.clone()
        };
        let mut fs = c.sftp.fs();
        match fs.metadata(&root).await {
            Ok(m) if m.file_type().is_some_and(|t| t.is_dir()) => {}
            Ok(_) => {
                return Err(self.err(
                    StoreErrorKind::Other,
                    op,
                    None,
                    format!("{root} on the server is not a directory"),
                ))
            }
            Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => {
                let parent = Path::new(&root)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "/".into());
                match fs.create_dir(&root).await {
                    Ok(()) => {}
                    Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => {
                        return Err(self.err(
                            StoreErrorKind::NotFound,
                            op,
                            None,
                            format!(
                                "the store folder {root} does not exist on the server, nor its \
                                 parent {parent}; create it (e.g. `mkdir -p` over ssh) or fix \
                                 the path"
                            ),
                        ))
                    }
                    Err(e) if self.is_dir(&mut fs, &root).await => {
                        tracing::debug!(%e, "store folder created concurrently");
                    }
                    Err(e) => return Err(self.sftp_err(&e, op, None, "create the store folder")),
                }
            }
            Err(e) => return Err(self.sftp_err(&e, op, None, "look up the store folder")),
        }
        let tmp = self.tmp_dir();
        if !self.is_dir(&mut fs, &tmp).await {
            if let Err(e) = fs.create_dir(&tmp).await {
                if !self.is_dir(&mut fs, &tmp).await {
                    return Err(self.sftp_err(&e, op, None, "create the temp folder"));
                }
            }
        }
        Ok(())
    }

    async fn is_dir(&self, fs: &mut openssh_sftp_client::fs::Fs, path: &str) -> bool {
        matches!(fs.metadata(path).await, Ok(m) if m.file_type().is_some_and(|t| t.is_dir()))
    }

    /// An SFTP error as a store error (connection failures are `Transient`).
    fn sftp_err(
        &self,
        e: &SftpError,
        op: &'static str,
        key: Option<&str>,
        doing: &str,
    ) -> StoreError {
        let (kind, msg) = match e {
            SftpError::SftpError(k, m) => {
                let text = m.get().0;
                match k {
                    SftpErrorKind::NoSuchFile => {
                        (StoreErrorKind::NotFound, "object not found".to_owned())
                    }
                    SftpErrorKind::PermDenied => (
                        StoreErrorKind::PermissionDenied,
                        format!("the server denied permission to {doing}: {text}"),
                    ),
                    SftpErrorKind::OpUnsupported => (
                        StoreErrorKind::Unsupported,
                        format!("the server does not support what is needed to {doing}: {text}"),
                    ),
                    _ => (
                        StoreErrorKind::Other,
                        format!("the server could not {doing}: {text}"),
                    ),
                }
            }
            SftpError::UnsupportedExtension(x) => (
                StoreErrorKind::Unsupported,
                format!("the server lacks the SFTP extension {x}, needed to {doing}"),
            ),
            other => (
                StoreErrorKind::Transient,
                format!("connection to {} lost ({doing}): {other}", self.host_port()),
            ),
        };
        self.err(kind, op, key, msg)
    }

    /// Run `f` on the live session; a connection failure drops the session.
    async fn with_conn<T, F, Fut>(
        &self,
        op: &'static str,
        key: Option<&str>,
        f: F,
    ) -> StoreResult<T>
    where
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let c = self.conn(op, key).await?;
        let res = f(c.clone()).await;
        if let Err(e) = &res {
            if e.kind == StoreErrorKind::Transient {
                self.broken(&c, e).await;
            }
        }
        res
    }

    // -- data path ----------------------------------------------------------

    /// `mkdir -p` of the folders between the root and `dir` (a key's parent).
    async fn make_parents(&self, c: &Conn, op: &'static str, key: &str) -> StoreResult<()> {
        let mut fs = c.sftp.fs();
        let segs: Vec<&str> = key.split('/').collect();
        let mut path = self.target.root.clone();
        for seg in &segs[..segs.len().saturating_sub(1)] {
            path.push('/');
            path.push_str(seg);
            if let Err(e) = fs.create_dir(&path).await {
                if !self.is_dir(&mut fs, &path).await {
                    return Err(self.sftp_err(&e, op, Some(key), "create a folder"));
                }
            }
        }
        Ok(())
    }

    /// Write `data` to a fresh temp file (fsync'd when possible); returns its path.
    async fn write_tmp(
        &self,
        c: &Conn,
        op: &'static str,
        key: &str,
        data: &Bytes,
    ) -> StoreResult<String> {
        let tmp = format!(
            "{}/{:016x}{:016x}.tmp",
            self.tmp_dir(),
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let e = |e: SftpError| self.sftp_err(&e, op, Some(key), "write a temp file");
        let mut file = match c
            .sftp
            .options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
        {
            Ok(f) => f,
            Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => {
                // The temp folder went away (someone cleaned the store): remake it.
                let mut fs = c.sftp.fs();
                let _ = fs.create_dir(self.tmp_dir()).await;
                c.sftp
                    .options()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .await
                    .map_err(e)?
            }
            Err(err) => return Err(e(err)),
        };
        let written = async {
            let pieces = (0..data.len()).step_by(PIECE).map(|start| {
                let mut f = file.clone();
                let piece = data.slice(start..(start + PIECE).min(data.len()));
                async move {
                    f.seek(SeekFrom::Start(start as u64)).await?;
                    f.write_all_zero_copy(&mut [piece]).await
                }
            });
            stream::iter(pieces)
                .buffer_unordered(PIECES_IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await?;
            if c.fsync {
                file.sync_all().await?;
            }
            Ok::<(), SftpError>(())
        }
        .await;
        let closed = file.close().await;
        match written.and(closed) {
            Ok(()) => Ok(tmp),
            Err(err) => {
                self.remove_quietly(c, &tmp).await;
                Err(e(err))
            }
        }
    }

    async fn remove_quietly(&self, c: &Conn, path: &str) {
        let _ = c.sftp.fs().remove_file(path).await;
    }

    async fn put_inner(&self, op: &'static str, key: &str, data: Bytes) -> StoreResult<()> {
        self.check_key(op, key)?;
        self.with_conn(op, Some(key), |c| async move {
            let tmp = self.write_tmp(&c, op, key, &data).await?;
            let target = self.path_of(key);
            let res = self.rename_onto(&c, op, key, &tmp, &target).await;
            if res.is_err() {
                self.remove_quietly(&c, &tmp).await;
            }
            res
        })
        .await
    }

    async fn rename_onto(
        &self,
        c: &Conn,
        op: &'static str,
        key: &str,
        tmp: &str,
        target: &str,
    ) -> StoreResult<()> {
        let mut fs = c.sftp.fs();
        for attempt in 0..3 {
            if !c.posix_rename {
                // Plain SFTP rename refuses an existing target: not atomic then.
                let _ = fs.remove_file(target).await;
            }
            match fs.rename(tmp, target).await {
                Ok(()) => return Ok(()),
                Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) if attempt < 2 => {
                    self.make_parents(c, op, key).await?;
                }
                Err(e) => {
                    return Err(self.sftp_err(&e, op, Some(key), "rename the object into place"))
                }
            }
        }
        Err(self.err(
            StoreErrorKind::Other,
            op,
            Some(key),
            "could not create the object's folder",
        ))
    }

    /// `Some(size)` of the regular file at `key`, `None` if there is none.
    async fn stat_inner(&self, c: &Conn, op: &'static str, key: &str) -> StoreResult<Option<u64>> {
        let mut fs = c.sftp.fs();
        match fs.metadata(self.path_of(key)).await {
            Ok(m) if m.file_type().is_some_and(|t| t.is_file()) => Ok(Some(m.len().unwrap_or(0))),
            Ok(_) => Ok(None),
            Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => Ok(None),
            Err(e @ SftpError::SftpError(SftpErrorKind::Failure, _)) => {
                // ENOTDIR (a key's "folder" is a file) comes back as a
                // generic failure: no object there.
                if self.ancestor_is_file(&mut fs, key).await {
                    Ok(None)
                } else {
                    Err(self.sftp_err(&e, op, Some(key), "look up the object"))
                }
            }
            Err(e) => Err(self.sftp_err(&e, op, Some(key), "look up the object")),
        }
    }

    async fn ancestor_is_file(&self, fs: &mut openssh_sftp_client::fs::Fs, key: &str) -> bool {
        let mut path = self.target.root.clone();
        let segs: Vec<&str> = key.split('/').collect();
        for seg in &segs[..segs.len().saturating_sub(1)] {
            path.push('/');
            path.push_str(seg);
            match fs.metadata(&path).await {
                Ok(m) if m.file_type().is_some_and(|t| t.is_dir()) => {}
                Ok(_) => return true,
                Err(_) => return false,
            }
        }
        false
    }

    /// Read `range` (clamped; `None` = everything) of the object at `key`.
    async fn read(
        &self,
        op: &'static str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> StoreResult<Bytes> {
        self.check_key(op, key)?;
        self.with_conn(op, Some(key), |c| async move {
            let path = self.path_of(key);
            let not_found = || StoreError::not_found(self.description.as_str(), op, key);
            let mut file = match c.sftp.open(&path).await {
                Ok(f) => f,
                Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => return Err(not_found()),
                Err(e @ SftpError::SftpError(SftpErrorKind::Failure, _)) => {
                    let mut fs = c.sftp.fs();
                    return Err(if self.ancestor_is_file(&mut fs, key).await {
                        not_found()
                    } else {
                        self.sftp_err(&e, op, Some(key), "open the object")
                    });
                }
                Err(e) => return Err(self.sftp_err(&e, op, Some(key), "open the object")),
            };
            let meta = file
                .metadata()
                .await
                .map_err(|e| self.sftp_err(&e, op, Some(key), "read the object's size"))?;
            if !meta.file_type().is_some_and(|t| t.is_file()) {
                let _ = file.close().await;
                return Err(not_found());
            }
            let size = meta.len().unwrap_or(0);
            let (start, end) = match range {
                None => (0, size),
                Some(r) => {
                    let start = r.start.min(size);
                    (start, r.end.clamp(start, size))
                }
            };
            let res = read_pieces(&file, start, end).await;
            let _ = file.close().await;
            res.map_err(|e| self.sftp_err(&e, op, Some(key), "read the object"))
        })
        .await
    }

    /// Best effort: remove temp files left behind by crashed writers.
    async fn sweep_stale_tmp(&self, c: &Conn) {
        let mut fs = c.sftp.fs();
        let Ok(dir) = fs.open_dir(self.tmp_dir()).await else {
            return;
        };
        let entries: Vec<_> = dir
            .read_dir()
            .filter_map(|e| async { e.ok() })
            .collect()
            .await;
        for e in entries {
            let name = e.filename().to_string_lossy().into_owned();
            if !name.ends_with(".tmp") {
                continue;
            }
            let old = e
                .metadata()
                .modified()
                .and_then(|t| SystemTime::now().duration_since(t.as_system_time()).ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if old {
                let _ = fs.remove_file(format!("{}/{name}", self.tmp_dir())).await;
            }
        }
    }
}

/// The gist of ssh's error output on one line: its last two meaningful
/// lines (no warning banners).
fn ssh_said(out: &str) -> String {
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with("Warning:"))
        .collect();
    let s = lines[lines.len().saturating_sub(2)..].join(" ");
    s.strip_prefix("ssh: ").unwrap_or(&s).to_owned()
}

/// Read `[start, end)` of `file` in concurrent pieces.
async fn read_pieces(file: &File, start: u64, end: u64) -> Result<Bytes, SftpError> {
    let len = usize::try_from(end - start).map_err(|_| {
        SftpError::IOError(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            "object too large for memory",
        ))
    })?;
    if len == 0 {
        return Ok(Bytes::new());
    }
    let pieces = (0..len).step_by(PIECE).map(|off| {
        let mut f = file.clone();
        let n = PIECE.min(len - off);
        async move {
            f.seek(SeekFrom::Start(start + off as u64)).await?;
            f.read_all(n, BytesMut::with_capacity(n)).await
        }
    });
    let parts: Vec<BytesMut> = stream::iter(pieces)
        .buffered(PIECES_IN_FLIGHT)
        .try_collect()
        .await?;
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().unwrap_or_default().freeze());
    }
    let mut out = BytesMut::with_capacity(len);
    for p in parts {
        out.extend_from_slice(&p);
    }
    Ok(out.freeze())
}

#[async_trait::async_trait]
impl Store for SftpStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            range_reads: true,
            conditional_create: self.hardlink.load(Ordering::SeqCst),
            max_object_size: None,
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn prepare(&self) -> StoreResult<()> {
        if self.prepared.load(Ordering::SeqCst) {
            return Ok(());
        }
        let c = self.conn("prepare", None).await?;
        self.sweep_stale_tmp(&c).await;
        self.prepared.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.put_inner("put", key, data).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        const OP: &str = "put_if_absent";
        self.check_key(OP, key)?;
        self.with_conn(OP, Some(key), |c| async move {
            if !c.hardlink {
                return Err(self.err(
                    StoreErrorKind::Unsupported,
                    OP,
                    Some(key),
                    "this SFTP server lacks the hardlink@openssh.com extension, so conditional \
                     create cannot be enforced",
                ));
            }
            let tmp = self.write_tmp(&c, OP, key, &data).await?;
            let target = self.path_of(key);
            let mut fs = c.sftp.fs();
            let mut res = Err(self.err(StoreErrorKind::Other, OP, Some(key), "link failed"));
            for attempt in 0..3 {
                match fs.hard_link(&tmp, &target).await {
                    Ok(()) => {
                        res = Ok(true);
                        break;
                    }
                    Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) if attempt < 2 => {
                        if let Err(e) = self.make_parents(&c, OP, key).await {
                            res = Err(e);
                            break;
                        }
                    }
                    // EEXIST comes back as a generic failure: look.
                    Err(e @ SftpError::SftpError(SftpErrorKind::Failure, _)) => {
                        match self.stat_inner(&c, OP, key).await {
                            Ok(Some(_)) => {
                                res = Ok(false);
                                break;
                            }
                            // Gone again meanwhile: try once more.
                            Ok(None) if attempt < 2 => {}
                            Ok(None) => {
                                res = Err(self.sftp_err(&e, OP, Some(key), "link the object"));
                                break;
                            }
                            Err(e) => {
                                res = Err(e);
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        res = Err(self.sftp_err(&e, OP, Some(key), "link the object"));
                        break;
                    }
                }
            }
            self.remove_quietly(&c, &tmp).await;
            res
        })
        .await
    }

    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        self.read("get", key, None).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.read("get_range", key, Some(range)).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        validate_prefix(prefix).map_err(|why| {
            StoreError::invalid_key(self.description.as_str(), "list", prefix, why)
        })?;
        self.with_conn("list", Some(prefix), |c| async move {
            // Start at the deepest folder holding every match.
            let start = match prefix.rfind('/') {
                Some(i) => prefix[..i].to_owned(),
                None => String::new(),
            };
            let mut out = Vec::new();
            let mut level = vec![start];
            while !level.is_empty() {
                let read = stream::iter(level.drain(..).map(|dir| {
                    let c = c.clone();
                    async move { self.read_dir(&c, prefix, dir).await }
                }))
                .buffer_unordered(LIST_CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await?;
                for (files, dirs) in read {
                    out.extend(files);
                    level.extend(dirs);
                }
            }
            out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.check_key("delete", key)?;
        self.with_conn("delete", Some(key), |c| async move {
            let mut fs = c.sftp.fs();
            match fs.remove_file(self.path_of(key)).await {
                Ok(()) | Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => Ok(()),
                Err(e @ SftpError::SftpError(SftpErrorKind::Failure, _)) => {
                    // A folder, or a path through a file: no object to delete.
                    match self.stat_inner(&c, "delete", key).await? {
                        None => Ok(()),
                        Some(_) => Err(self.sftp_err(&e, "delete", Some(key), "delete the object")),
                    }
                }
                Err(e) => Err(self.sftp_err(&e, "delete", Some(key), "delete the object")),
            }
        })
        .await
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.check_key("stat", key)?;
        self.with_conn("stat", Some(key), |c| async move {
            Ok(self
                .stat_inner(&c, "stat", key)
                .await?
                .map(|size| ObjectMeta {
                    key: key.to_owned(),
                    size,
                }))
        })
        .await
    }
}

impl SftpStore {
    /// One folder of a listing: `dir` is a key prefix without trailing `/`
    /// (empty = the root). Returns the matching files and the subfolders
    /// worth descending into.
    async fn read_dir(
        &self,
        c: &Conn,
        prefix: &str,
        dir: String,
    ) -> StoreResult<(Vec<ObjectMeta>, Vec<String>)> {
        let mut fs = c.sftp.fs();
        let path = if dir.is_empty() {
            if self.target.root.is_empty() {
                "/".to_owned()
            } else {
                self.target.root.clone()
            }
        } else {
            self.path_of(&dir)
        };
        let handle = match fs.open_dir(&path).await {
            Ok(h) => h,
            // A missing folder (or a file where the prefix expects one): nothing.
            Err(SftpError::SftpError(SftpErrorKind::NoSuchFile | SftpErrorKind::Failure, _)) => {
                return Ok((Vec::new(), Vec::new()))
            }
            Err(e) => return Err(self.sftp_err(&e, "list", Some(prefix), "list a folder")),
        };
        let entries: Vec<_> = handle
            .read_dir()
            .try_collect()
            .await
            .map_err(|e| self.sftp_err(&e, "list", Some(prefix), "list a folder"))?;
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for e in entries {
            let name = e.filename().to_string_lossy();
            if name == "." || name == ".." {
                continue;
            }
            let key = if dir.is_empty() {
                name.into_owned()
            } else {
                format!("{dir}/{name}")
            };
            if dir.is_empty() && key == TMP_DIR {
                continue;
            }
            match e.file_type() {
                Some(t) if t.is_dir() => {
                    let as_dir = format!("{key}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        dirs.push(key);
                    }
                }
                Some(t)
                    if t.is_file()
                        && key.starts_with(prefix)
                        && crate::keys::validate_key(&key).is_ok() =>
                {
                    files.push(ObjectMeta {
                        size: e.metadata().len().unwrap_or(0),
                        key,
                    });
                }
                _ => {}
            }
        }
        Ok((files, dirs))
    }
}
