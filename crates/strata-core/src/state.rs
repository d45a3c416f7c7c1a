//! Local memory of each vault this machine has opened: the newest metadata
//! version and head hash seen. Used to refuse rollbacks (an older copy of the
//! store served as current). Stored as small JSON documents under the state
//! directory (`$STRATA_STATE_DIR`, else `$XDG_STATE_HOME/strata`, else
//! `~/.local/state/strata`), named by vault id (`<id>.seen`), each in a
//! [`crate::slotfile`] so that recording a commit needs no free space on a
//! full disk. `<id>.json` (a plain JSON file, written by earlier versions)
//! is read when no `.seen` file exists. Contains no secrets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{VaultError, VaultResult};
use crate::slotfile::{self, SlotFile};

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
    dir.join(format!("{vault_id}.seen"))
}

fn old_path_for(dir: &Path, vault_id: &str) -> PathBuf {
    dir.join(format!("{vault_id}.json"))
}

fn damaged(p: &Path, e: impl std::fmt::Display) -> VaultError {
    VaultError::io(
        format!(
            "local state file {} is damaged (delete it to reset)",
            p.display()
        ),
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    )
}

pub fn load(dir: &Path, vault_id: &str) -> VaultResult<Option<SeenState>> {
    let p = path_for(dir, vault_id);
    let bytes = match slotfile::read(&p) {
        Ok(Some(b)) => b,
        Ok(None) => {
            let old = old_path_for(dir, vault_id);
            match std::fs::read(&old) {
                Ok(b) => {
                    return serde_json::from_slice(&b)
                        .map(Some)
                        .map_err(|e| damaged(&old, e))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(VaultError::io(format!("reading {}", old.display()), e)),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(damaged(&p, e)),
        Err(e) => return Err(VaultError::io(format!("reading {}", p.display()), e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| damaged(&p, e))
}

/// Where one vault's seen state is recorded; opened once, then every
/// [`SeenFile::save`] rewrites it in place.
#[derive(Debug)]
pub struct SeenFile {
    dir: PathBuf,
    file: SlotFile,
}

impl SeenFile {
    pub fn new(dir: &Path, vault_id: &str) -> SeenFile {
        SeenFile {
            dir: dir.to_path_buf(),
            file: SlotFile::new(path_for(dir, vault_id), 512),
        }
    }

    /// Record the newest state (synced: a lost update after a power cut
    /// would let a rollback to it pass unnoticed).
    pub fn save(&mut self, s: &SeenState) -> VaultResult<()> {
        let body = serde_json::to_vec(s).map_err(|e| VaultError::Invalid(e.to_string()))?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| VaultError::io(format!("creating {}", self.dir.display()), e))?;
        self.file.write(&body).map_err(|e| {
            VaultError::io(
                format!("writing the local state file in {}", self.dir.display()),
                e,
            )
        })
    }
}
