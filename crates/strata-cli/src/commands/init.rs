//! `strata init`: create a vault on an empty store.

use anyhow::{bail, Result};
use strata_core::{CreateOptions, Vault};
use strata_crypto::KdfParams;

use crate::cli::{Global, InitArgs};
use crate::display;
use crate::password;
use crate::progress::Ui;
use crate::session;

/// Smallest and largest chunk sizes accepted (memory use is chunk size ×
/// parallelism).
const MIN_CHUNK: u64 = 64 << 10;
const MAX_CHUNK: u64 = 256 << 20;

fn chunk_size(s: &str) -> Result<u32> {
    let n = strata_store::parse_size(s).map_err(|e| anyhow::anyhow!("--chunk-size: {e}"))?;
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&n) {
        bail!(
            "--chunk-size must be between {} and {}, not {}",
            display::size(MIN_CHUNK),
            display::size(MAX_CHUNK),
            display::size(n)
        );
    }
    Ok(n as u32)
}

/// Argon2id parameters: the defaults, with test overrides of memory and time.
pub(crate) fn kdf_params(memory_kib: Option<u32>, time: Option<u32>) -> Result<KdfParams> {
    let mut k = KdfParams::default();
    if let Some(m) = memory_kib {
        k.m_kib = m;
    }
    if let Some(t) = time {
        k.t = t;
    }
    k.validate().map_err(|e| {
        anyhow::anyhow!(
            "{e} (from --kdf-memory-kib/--kdf-time or STRATA_KDF_MEMORY_KIB/STRATA_KDF_TIME)"
        )
    })?;
    Ok(k)
}

pub async fn run(g: &Global, ui: Ui, a: &InitArgs) -> Result<()> {
    let chunk = chunk_size(&a.chunk_size)?;
    let kdf = kdf_params(a.kdf_memory_kib, a.kdf_time)?;
    let store = session::open_store(a.store.as_deref().or(g.store.as_deref()))?;
    let name = store.describe();
    // Refuse early (before asking for a password) when the store is in use;
    // create() checks again.
    if store.stat(strata_core::format::HEADER_KEY).await?.is_some() {
        return Err(strata_core::VaultError::AlreadyAVault { store: name }.into());
    }
    if !store.list("").await?.is_empty() {
        return Err(strata_core::VaultError::NotEmpty { store: name }.into());
    }
    let pw = password::new(
        session::password_sources(g),
        &format!("New password for {name}: "),
    )?;
    let vault = Vault::create(
        store,
        &pw,
        CreateOptions {
            kdf,
            chunk_size: chunk,
        },
        session::open_options(g),
    )
    .await?;
    ui.note(format!(
        "created vault {} on {} (chunk size {})",
        vault.vault_id(),
        vault.store_name(),
        display::size(u64::from(vault.chunk_size()))
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(chunk_size("64KiB").unwrap(), 64 << 10);
        assert!(chunk_size("1KiB").is_err());
        assert!(chunk_size("1GiB").is_err());
        assert!(chunk_size("lots").is_err());
    }
}
