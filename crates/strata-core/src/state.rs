//! Local memory of each vault this machine has opened: the newest metadata
//! version and head hash seen. Used to refuse rollbacks (an older copy of the
//! store served as current). Stored as small JSON files under the state
//! directory (`$STRATA_STATE_DIR`, else `$XDG_STATE_HOME/strata`, else
//! `~/.local/state/strata`), named by vault id. Contains no secrets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{VaultError, VaultResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenState {
    pub version: u64,
    /// hex of the head hash at `version`
    pub head: String,
}

/// Default state directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STRATA_STATE_DIR") {
        return PathBuf::from(d);
    }
    dirs::state_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("strata")
}

fn path_for(dir: &Path, vault_id: &str) -> PathBuf {
    dir.join(format!("{vault_id}.json"))
}

pub fn load(dir: &Path, vault_id: &str) -> VaultResult<Option<SeenState>> {
    let p = path_for(dir, vault_id);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            VaultError::io(
                format!(
                    "local state file {} is damaged (delete it to reset)",
                    p.display()
                ),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VaultError::io(format!("reading {}", p.display()), e)),
    }
}

/// Record the newest state (write to a temp file, then rename).
pub fn save(dir: &Path, vault_id: &str, s: &SeenState) -> VaultResult<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| VaultError::io(format!("creating {}", dir.display()), e))?;
    let p = path_for(dir, vault_id);
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec(s).map_err(|e| VaultError::Invalid(e.to_string()))?;
    // synced: a torn state file after a power cut would block opening
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()
    };
    write().map_err(|e| VaultError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &p)
        .map_err(|e| VaultError::io(format!("renaming {}", tmp.display()), e))?;
    Ok(())
}
