//! Opening stores and vaults from the global options: store resolution,
//! password sources and vault open options.

use std::time::Duration;

use anyhow::{Context, Result};
use strata_core::lease::WaitReport;
use strata_core::{LeaseOptions, OpenOptions, Vault};
use strata_store::DynStore;

use crate::cli::{Global, LeaseArgs};
use crate::config;
use crate::password::{self, Secret, Sources};

/// Open the store named by `value` (a `--store` value, URL, path or saved name).
pub fn open_store(value: Option<&str>) -> Result<DynStore> {
    let url = config::resolve_store(value)?;
    let (store, metrics) = strata_store::open_url(&url)?;
    let _ = STORE_METRICS.set(metrics);
    Ok(store)
}

/// The request counters of the store this command opened (for `STRATA_STATS`).
pub static STORE_METRICS: std::sync::OnceLock<strata_store::Metrics> = std::sync::OnceLock::new();

/// With `STRATA_STATS` set, print the store requests and bytes this command
/// made to standard error (benchmarks use it to count requests).
pub fn print_store_stats() {
    if std::env::var_os("STRATA_STATS").is_none_or(|v| v.is_empty()) {
        return;
    }
    if let Some(m) = STORE_METRICS.get() {
        let s = m.snapshot();
        eprintln!(
            "strata: store requests: {} (put {}, get {}, range {}, list {}, delete {}, stat {}), \
             {} errors, {} bytes up, {} bytes down",
            s.requests(),
            s.puts,
            s.gets,
            s.range_gets,
            s.lists,
            s.deletes,
            s.stats,
            s.errors,
            s.bytes_up,
            s.bytes_down
        );
    }
}

/// The lease of a writer labelled `label` ("strata put", "mount at /x");
/// `take_over`: ask a live holder to hand over (progress on stderr).
/// `STRATA_LEASE_TTL` and `STRATA_LEASE_POLL` (seconds) shorten the lease
/// and the idle holder's poll for tests (the latter over `--lease-poll`).
pub fn lease_options(label: String, break_lease: bool, take_over: bool) -> LeaseOptions {
    let mut o = LeaseOptions::new(label);
    o.break_lease = break_lease;
    o.take_over = take_over && !break_lease;
    o.on_wait = Some(WaitReport::new(|line| eprintln!("strata: {line}")));
    let secs = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.max(1)))
    };
    if let Some(t) = secs("STRATA_LEASE_TTL") {
        o.ttl = t;
    }
    if let Some(p) = secs("STRATA_LEASE_POLL") {
        o.poll = p;
        o.handoff_answer = strata_core::handoff::default_answer_wait(p);
    }
    o
}

/// Lease lifetime and idle poll of a mount or server given `--lease-poll
/// SECS` (`STRATA_LEASE_TTL` / `STRATA_LEASE_POLL` win, for tests).
pub fn lease_timing(lease_poll: u64) -> (Duration, Duration) {
    let l = lease_options(String::new(), false, false);
    if std::env::var_os("STRATA_LEASE_POLL").is_some() {
        (l.ttl, l.poll)
    } else {
        (l.ttl, Duration::from_secs(lease_poll))
    }
}

/// The warning `--break-lease` prints.
pub const BREAK_LEASE_WARNING: &str = "strata: warning: --break-lease: taking the vault's writer lease from whoever holds it. If that writer is still running, it stops committing, and what it has not committed yet is not saved to the vault.";

/// Vault open options from the global flags (a reader: no lease).
pub fn open_options(g: &Global) -> OpenOptions {
    OpenOptions {
        state_dir: g.state_dir.clone(),
        accept_rollback: g.accept_rollback,
        ..OpenOptions::default()
    }
}

/// Where the (current) vault password comes from.
pub fn password_sources(g: &Global) -> Sources<'_> {
    Sources {
        file: g.password_file.as_deref(),
        file_flag: "--password-file",
        env: password::ENV_PASSWORD,
    }
}

/// Open the vault on the store given by the global options, as a reader
/// (no writer lease; commits are never made). Returns the password too.
pub async fn open_vault(g: &Global) -> Result<(Vault, Secret)> {
    open(g, None).await
}

/// Open the vault as the writer `strata <verb>`: takes the writer lease
/// (fails, naming the holder, if another writer has it). Give it back with
/// [`finish`] on every path.
pub async fn open_writer(g: &Global, verb: &str, l: &LeaseArgs) -> Result<(Vault, Secret)> {
    open_writer_with(g, verb, l, |_| {}).await
}

/// [`open_writer`] with changed open options (e.g. the checkpoint cadence).
pub async fn open_writer_with(
    g: &Global,
    verb: &str,
    l: &LeaseArgs,
    tune: impl FnOnce(&mut OpenOptions),
) -> Result<(Vault, Secret)> {
    if l.break_lease {
        eprintln!("{BREAK_LEASE_WARNING}");
    }
    let lease = lease_options(format!("strata {verb}"), l.break_lease, l.take_over);
    let mut opts = OpenOptions {
        lease: Some(lease),
        ..open_options(g)
    };
    tune(&mut opts);
    open_with(g, opts).await
}

/// Release the writer lease of a vault opened by [`open_writer`] and
/// return `res` (a failed release is only a warning: the lease expires).
pub async fn finish<T>(vault: &Vault, res: Result<T>) -> Result<T> {
    if let Err(e) = vault.release_lease().await {
        eprintln!(
            "strata: warning: could not release the writer lease ({e}); it expires by itself"
        );
    }
    res
}

async fn open(g: &Global, lease: Option<LeaseOptions>) -> Result<(Vault, Secret)> {
    let opts = OpenOptions {
        lease,
        ..open_options(g)
    };
    open_with(g, opts).await
}

async fn open_with(g: &Global, opts: OpenOptions) -> Result<(Vault, Secret)> {
    let store = open_store(g.store.as_deref())?;
    // Fail on "not a vault" before asking for a password.
    Vault::read_header(&store).await?;
    let pw = password::existing(
        password_sources(g),
        &format!("Password for {}: ", store.describe()),
    )?;
    let vault = Vault::open(store, &pw, opts).await?;
    Ok((vault, pw))
}

/// Commit pending changes, naming what failed.
pub async fn commit(vault: &Vault) -> Result<()> {
    vault
        .commit()
        .await
        .context("saving the changes to the vault failed")
}
