//! `strata mount`, `unmount`, `status` and `demo`: the FUSE front end.
//! Mounting runs outside the CLI's async runtime (the mount brings its own);
//! `--daemon` re-runs this program in the background and waits until the
//! mount is up.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use strata_fuse::{control, run_mount, CloseMode, FsyncMode, MountOptions};
use zeroize::Zeroizing;

use crate::cli::{
    CloseArg, CloudServerArgs, DemoArgs, FsyncArg, Global, MountArgs, StatusArgs, UnmountArgs,
};
use crate::config;
use crate::password::{self, Secret};
use crate::session::password_sources;

/// `--cache-size`: (dirty data limit, read cache size) — 3/4 and 1/4.
pub fn cache_budget(cache_size: &str) -> Result<(u64, u64)> {
    let total = strata_store::parse_size(cache_size)
        .map_err(|e| anyhow::anyhow!("--cache-size {cache_size}: {e}"))?;
    if total < 64 << 20 {
        bail!("--cache-size {cache_size} is too small: use at least 64MiB");
    }
    Ok((total / 4 * 3, total / 4))
}

fn mount_options(g: &Global, a: &MountArgs, url: String) -> Result<MountOptions> {
    let mut o = MountOptions::new(url, a.mountpoint.clone());
    o.cache_dir = a.cache_dir.clone();
    (o.cache_size, o.read_cache_size) = cache_budget(&a.cache_size)?;
    o.read_only = a.read_only;
    o.refresh = Duration::from_secs(a.refresh);
    o.allow_other = a.allow_other;
    o.fsync = match a.fsync {
        FsyncArg::Cloud => FsyncMode::Cloud,
        FsyncArg::Local => FsyncMode::Local,
    };
    o.close = match a.close {
        CloseArg::Durable => CloseMode::Durable,
        CloseArg::Buffered => CloseMode::Buffered,
    };
    o.state_dir = g.state_dir.clone();
    o.accept_rollback = g.accept_rollback;
    o.break_lease = a.lease.break_lease;
    (o.lease_ttl, o.lease_poll) = crate::session::lease_timing(a.lease_poll);
    Ok(o)
}

fn read_password_stdin() -> Result<Secret> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.trim_end_matches(['\n', '\r']);
    Ok(Zeroizing::new(pw.as_bytes().to_vec()))
}

/// `strata mount`.
pub fn mount(g: &Global, a: &MountArgs) -> Result<()> {
    let url = config::resolve_store(g.store.as_deref())?;
    let opts = mount_options(g, a, url.clone())?;
    if a.lease.break_lease && a.read_only {
        bail!("--break-lease and --read-only do not go together: a read-only mount takes no writer lease");
    }
    if a.lease.break_lease && !a.password_stdin {
        eprintln!("{}", crate::session::BREAK_LEASE_WARNING);
    }
    let pw = if a.password_stdin {
        read_password_stdin()?
    } else {
        password::existing(password_sources(g), &format!("Password for {url}: "))?
    };
    if a.daemon {
        return spawn_daemon(&a.mountpoint, &pw);
    }
    let quiet = g.quiet;
    run_mount(opts, pw, |mp| {
        if !quiet {
            eprintln!(
                "strata: mounted at {}; stop with Ctrl-C or `strata unmount {}`",
                mp.display(),
                mp.display()
            );
        }
    })
}

/// Run this program again without `--daemon`, detached, with the password
/// on a pipe; return once the mount is up (or report why it failed).
fn spawn_daemon(mountpoint: &Path, pw: &Secret) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the strata executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .chain(std::iter::once("--password-stdin".into()))
        .collect();
    let log_path = std::env::temp_dir().join(format!(
        "strata-mount-{}.log",
        blake3::hash(mountpoint.to_string_lossy().as_bytes()).to_hex()[..12].to_owned()
    ));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create the log file {}", log_path.display()))?;
    let mut child = Command::new(exe)
        .args(args)
        .env_remove("STRATA_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start the background mount")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(pw)?;
        stdin.write_all(b"\n")?;
    }
    let start = Instant::now();
    loop {
        if control::is_strata_mount(mountpoint) {
            eprintln!(
                "strata: mounted at {} in the background (pid {}, log {})",
                mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the background mount exited ({st}):\n{}", log.trim_end());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "the background mount did not come up within 2 minutes; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `strata unmount`.
pub fn unmount(a: &UnmountArgs) -> Result<()> {
    control::unmount(&a.mountpoint, Duration::from_secs(a.timeout))
}

fn human(bytes: u64) -> String {
    crate::display::size(bytes)
}

/// `strata status`.
pub fn status(a: &StatusArgs) -> Result<()> {
    let v = control::status(&a.mountpoint)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let m = |k: &str| {
        v.get("metrics")
            .and_then(|x| x.get(k))
            .and_then(|x| x.as_u64())
            .unwrap_or(0)
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
    println!("mountpoint:        {}", s("mountpoint"));
    println!("store:             {}", s("store"));
    println!("daemon pid:        {}", n("pid"));
    println!("cache dir:         {}", s("cache_dir"));
    if let Some(free) = v.get("cache_free").and_then(|x| x.as_u64()) {
        let full = v.get("cache_full").and_then(|x| x.as_bool()) == Some(true);
        println!(
            "cache disk:        {} free{}",
            human(free),
            if full {
                " — cache disk full: pending data is uploaded and released first, new writes wait for it"
            } else {
                ""
            }
        );
    }
    println!(
        "pending upload:    {} in {} chunks of {} files; {} metadata records",
        human(n("dirty_bytes")),
        n("dirty_chunks"),
        n("dirty_files"),
        n("uncommitted_records")
    );
    println!(
        "uploaded:          {} in {} chunks, {} commits (metadata version {})",
        human(n("bytes_uploaded")),
        n("chunks_uploaded"),
        n("commits"),
        n("metadata_version")
    );
    if let Some(rc) = v.get("read_cache") {
        let g = |k: &str| rc.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        println!(
            "read cache:        {} of {} ({} hits, {} misses)",
            human(g("size")),
            human(g("cap")),
            g("hits"),
            g("misses")
        );
    }
    println!(
        "store traffic:     {} requests, {} up, {} down, {} errors",
        m("requests"),
        human(m("bytes_up")),
        human(m("bytes_down")),
        m("errors")
    );
    println!("open files:        {}", n("open_files"));
    if v.get("close_mode").and_then(|x| x.as_str()) == Some("Buffered") {
        let unsynced = v.get("close_unsynced").and_then(|x| x.as_bool()) == Some(true);
        println!(
            "close:             buffered ({})",
            if unsynced {
                "closed files not yet synced to the cache disk"
            } else {
                "everything closed is synced"
            }
        );
    }
    match v.get("lease") {
        Some(l) if l.is_object() => {
            let ls = |k: &str| l.get(k).and_then(|x| x.as_str()).unwrap_or("?");
            let expires = l.get("expires").and_then(|x| x.as_u64()).unwrap_or(0);
            match ls("state") {
                "held" => println!(
                    "writer lease:      held ({}, renewed {} times, expires {})",
                    ls("key"),
                    l.get("renewals").and_then(|x| x.as_u64()).unwrap_or(0),
                    strata_core::lease::format_utc(expires)
                ),
                other => println!("writer lease:      {}", other.to_uppercase()),
            }
            if let Some(e) = l.get("error").and_then(|x| x.as_str()) {
                println!("lease problem:     {e}");
            }
        }
        _ => println!("writer lease:      none (read-only mount)"),
    }
    if let Some(f) = v.get("follow").filter(|f| f.is_object()) {
        let when = f
            .get("last_refresh")
            .and_then(|x| x.as_u64())
            .map(strata_core::lease::format_utc)
            .unwrap_or_else(|| "not yet".into());
        println!(
            "role:              follower of the writer (metadata version {}, last refresh {when})",
            n("metadata_version")
        );
        if let Some(e) = f.get("refresh_error").and_then(|x| x.as_str()) {
            println!("refresh problem:   {e}");
        }
    }
    if let Some(h) = v.get("handoff").and_then(|x| x.as_str()) {
        println!("handoff:           {h}");
    }
    if let Some(b) = v.get("blocked").and_then(|x| x.as_str()) {
        println!("uploads:           {b}");
    }
    if let Some(e) = v.get("last_error").and_then(|x| x.as_str()) {
        println!("last error:        {e}");
    }
    Ok(())
}

/// The demo's folder: `$STRATA_DEMO_DIR`, else `<data dir>/strata/demo-cloud`.
/// It holds the bundled server's objects (`objects/`) and its token.
fn demo_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STRATA_DEMO_DIR") {
        return PathBuf::from(d);
    }
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from(".local/share"))
        .join("strata")
        .join("demo-cloud")
}

/// Read the bearer token from `path`, or create it (random, mode 0600).
fn load_or_create_token(path: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => bail!(
            "token file {} is empty; delete it to get a new token",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read token file {}", path.display()))
        }
    }
    let mut raw = [0u8; 32];
    strata_crypto::random_bytes(&mut raw)?;
    let token = hex_string(&raw);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create token file {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(token)
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn server_config(a: &CloudServerArgs, token: String) -> Result<strata_server::ServerConfig> {
    let mut cfg = strata_server::ServerConfig::new(a.dir.clone(), a.listen, token);
    if let Some(m) = &a.max_object_size {
        cfg.max_object_size = Some(
            strata_store::parse_size(m)
                .map_err(|e| anyhow::anyhow!("--max-object-size {m}: {e}"))?,
        );
    }
    cfg.range = !a.no_range;
    if let Some(b) = &a.bandwidth {
        cfg.bandwidth = Some(
            strata_server::parse_rate(b).map_err(|e| anyhow::anyhow!("--bandwidth {b}: {e}"))?,
        );
    }
    cfg.latency = Duration::from_millis(a.latency_ms);
    if !(0.0..=1.0).contains(&a.fail_rate) {
        bail!("--fail-rate must be between 0 and 1");
    }
    cfg.fail_rate = a.fail_rate;
    if a.idle_timeout_secs == 0 {
        bail!("--idle-timeout-secs must be at least 1");
    }
    cfg.idle_timeout = Duration::from_secs(a.idle_timeout_secs);
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        cfg.tls = Some(strata_server::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    Ok(cfg)
}

/// The store URL of a running `strata cloud-server`, usable as is: it
/// carries the server's object-size limit and range setting (the client
/// also learns them from the server, but the URL then says so too).
fn store_url(
    h: &strata_server::ServerHandle,
    a: &CloudServerArgs,
    (max, range): &(Option<u64>, bool),
) -> String {
    // An absolute token path, so the URL works from any directory.
    let token = std::fs::canonicalize(&a.token_file).unwrap_or_else(|_| a.token_file.clone());
    let scheme = if a.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let mut url = format!(
        "basic+{scheme}://{}/?token-file={}",
        h.addr,
        token.display()
    );
    if let Some(m) = max {
        url.push_str(&format!("&max-object-size={m}"));
    }
    if !range {
        url.push_str("&no-range");
    }
    url
}

/// `strata cloud-server`.
pub async fn cloud_server(a: &CloudServerArgs) -> Result<()> {
    let token = load_or_create_token(&a.token_file)?;
    let cfg = server_config(a, token)?;
    let cfg_limits = (cfg.max_object_size, cfg.range);
    let h = strata_server::spawn(cfg)
        .await
        .with_context(|| format!("cannot serve on {}", a.listen))?;
    let (scheme, ca_note) = if a.tls_cert.is_some() {
        (
            "https",
            "\n        (a certificate from a private CA: add &ca-file=CA.pem to the URL)",
        )
    } else {
        ("http", "")
    };
    eprintln!(
        "strata: serving {} at {scheme}://{}\n        store URL: {}{ca_note}\n        stop with Ctrl-C",
        a.dir.display(),
        h.addr,
        store_url(&h, a, &cfg_limits),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    h.shutdown().await;
    Ok(())
}

/// `strata demo`: the bundled primitive cloud server on a loopback port, a
/// vault on it (created on first use), mounted.
pub fn demo(g: &Global, a: &DemoArgs) -> Result<()> {
    let base = demo_dir();
    let objects = base.join("objects");
    std::fs::create_dir_all(&objects)
        .with_context(|| format!("cannot create {}", objects.display()))?;
    let token_file = base.join("token");
    let token = load_or_create_token(&token_file)?;
    let mountpoint = a
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("StrataDrive"));
    if !mountpoint.exists() {
        std::fs::create_dir_all(&mountpoint)
            .with_context(|| format!("cannot create the mountpoint {}", mountpoint.display()))?;
    }
    // The server lives on its own runtime while the mount runs on this thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("strata-demo-server")
        .enable_all()
        .build()?;
    let listen: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let server = rt
        .block_on(strata_server::spawn(strata_server::ServerConfig::new(
            objects.clone(),
            listen,
            token,
        )))
        .context("cannot start the bundled cloud server")?;
    let url = format!(
        "basic+http://{}/?token-file={}",
        server.addr,
        token_file.display()
    );
    let (store, _) = strata_store::open_url(&url)?;
    let exists = rt
        .block_on(store.stat(strata_core::format::HEADER_KEY))?
        .is_some();
    let pw = if exists {
        password::existing(password_sources(g), "Password for the demo vault: ")?
    } else {
        eprintln!(
            "strata: creating the demo vault (objects in {})",
            objects.display()
        );
        let pw = password::new(password_sources(g), "New password for the demo vault: ")?;
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
        let c = strata_core::CreateOptions {
            kdf: super::init::kdf_params(env("STRATA_KDF_MEMORY_KIB"), env("STRATA_KDF_TIME"))?,
            ..Default::default()
        };
        let opts = strata_core::OpenOptions {
            state_dir: g.state_dir.clone(),
            ..Default::default()
        };
        rt.block_on(strata_core::Vault::create(store, &pw, c, opts))?;
        pw
    };
    let args = MountArgs {
        mountpoint: mountpoint.clone(),
        cache_dir: None,
        cache_size: "2GiB".into(),
        read_only: false,
        refresh: 60,
        lease_poll: 60,
        lease: Default::default(),
        allow_other: false,
        fsync: FsyncArg::Cloud,
        close: CloseArg::Durable,
        daemon: false,
        password_stdin: false,
    };
    let opts = mount_options(g, &args, url.clone())?;
    let quiet = g.quiet;
    let addr = server.addr;
    let res = run_mount(opts, pw, |mp| {
        if !quiet {
            eprintln!(
                "\nStrata demo: your encrypted drive is mounted at {mp}\n\
                 \n  cloud server: http://{addr} (objects in {obj})\n\
                 \nTry:\n  cp -r /etc/ssh {mp}/          # copy files in\n  ls -l {mp}\n  \
                 ls -R {obj} | head            # what the cloud stores: only encrypted objects\n\
                 \nPress Ctrl-C to upload what is pending, unmount and stop the server.\n\
                 Afterwards: strata --store file://{obj} ls -l -R /\n",
                mp = mp.display(),
                obj = objects.display(),
            );
        }
    });
    rt.block_on(server.shutdown());
    res
}
