//! Opening stores and vaults from the global options: store resolution,
//! password sources and vault open options.

use anyhow::{Context, Result};
use strata_core::{OpenOptions, Vault};
use strata_store::DynStore;

use crate::cli::Global;
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

/// Vault open options from the global flags.
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

/// Open the vault on the store given by the global options. Returns the
/// password too (for `passwd`).
pub async fn open_vault(g: &Global) -> Result<(Vault, Secret)> {
    let store = open_store(g.store.as_deref())?;
    // Fail on "not a vault" before asking for a password.
    Vault::read_header(&store).await?;
    let pw = password::existing(
        password_sources(g),
        &format!("Password for {}: ", store.describe()),
    )?;
    let vault = Vault::open(store, &pw, open_options(g)).await?;
    Ok((vault, pw))
}

/// Commit pending changes, naming what failed.
pub async fn commit(vault: &Vault) -> Result<()> {
    vault
        .commit()
        .await
        .context("saving the changes to the vault failed")
}
