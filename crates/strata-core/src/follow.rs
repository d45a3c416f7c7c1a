//! Loading the metadata state from the store, and following it: the
//! newest complete checkpoint plus the logs after it (what [`Vault::open`]
//! does), and [`Vault::refresh`], which lets a read-only vault catch up
//! with a writer elsewhere — the logs committed since it looked, or, when
//! the writer has checkpointed and removed them, the new checkpoint. The
//! same chain checks apply as at open: every log must chain to the one
//! before it, and the store must never go back to an older version
//! (rollback) or another history (fork).

use crate::error::{VaultError, VaultResult};
use crate::format::{self, meta};
use crate::record::Record;
use crate::state::SeenState;
use crate::tree::Tree;
use crate::vault::{list_meta, MetaListing, Vault};
use strata_crypto::Keys;
use strata_store::DynStore;
use tracing::{debug, info};

/// The metadata state read from the store.
pub(crate) struct Loaded {
    pub(crate) tree: Tree,
    pub(crate) version: u64,
    pub(crate) head: [u8; 32],
    pub(crate) checkpoint_version: u64,
    pub(crate) writer_seq: u64,
    /// Records and logs replayed after the checkpoint.
    pub(crate) records: u64,
    pub(crate) logs: u64,
}

fn check_seen(
    seen: Option<&SeenState>,
    version: u64,
    head: &[u8; 32],
    accept: bool,
) -> VaultResult<()> {
    if let Some(s) = seen {
        if s.version == version && s.head != hex::encode(head) && !accept {
            return Err(VaultError::Fork { version });
        }
    }
    Ok(())
}

/// Logs `from..` of `listing`, fetched, opened and checked to chain from
/// `head`: `(version, head after it, writer_seq, records)` each.
async fn fetch_logs(
    store: &DynStore,
    keys: &Keys,
    vault_id: &[u8; 16],
    listing: &MetaListing,
    from: u64,
    mut head: [u8; 32],
) -> VaultResult<Vec<(u64, [u8; 32], u64, Vec<Record>)>> {
    let mut out = Vec::new();
    let mut version = from - 1;
    for (&v, key) in listing.logs.range(from..) {
        if v != version + 1 {
            return Err(VaultError::Missing {
                object: format::log_key(version + 1),
                file: None,
                hint: format!(
                    "the metadata log chain has a gap before {key}; the vault cannot be opened safely"
                ),
            });
        }
        let bytes = store
            .get(key)
            .await
            .map_err(|e| VaultError::from_get(e, key, "restore it from a backup"))?;
        let log = meta::open_log(keys, vault_id, v, &bytes, key)?;
        if log.prev != head {
            return Err(VaultError::corrupt(
                key,
                "log does not chain to the previous log (replayed, reordered or from another history)",
            ));
        }
        head = meta::object_hash(&bytes);
        version = v;
        out.push((v, head, log.writer_seq, log.records));
    }
    Ok(out)
}

/// The newest complete checkpoint of `listing` and the logs after it,
/// checked against the seen state `seen` (rollback, fork).
pub(crate) async fn load(
    store: &DynStore,
    keys: &Keys,
    vault_id: &[u8; 16],
    listing: &MetaListing,
    seen: Option<&SeenState>,
    accept_rollback: bool,
) -> VaultResult<Loaded> {
    let name = store.describe();
    let Some(&(cv, count)) = listing.complete_checkpoints().last() else {
        return Err(VaultError::Missing {
            object: format!("{name}/meta/checkpoint.*"),
            file: None,
            hint: "the vault has no complete checkpoint; restore meta/ from a backup".into(),
        });
    };
    let mut parts = Vec::new();
    if let Some(names) = listing.checkpoints.get(&(cv, count)) {
        for key in names.values() {
            let bytes = store
                .get(key)
                .await
                .map_err(|e| VaultError::from_get(e, key, "restore it from a backup"))?;
            parts.push((key.clone(), bytes.to_vec()));
        }
    }
    let body = meta::open_checkpoint(keys, vault_id, cv, &parts)?;
    let first_part = parts.first().map(|p| p.0.clone()).unwrap_or_default();
    let mut tree = Tree::from_image(body.tree).map_err(|e| VaultError::corrupt(&first_part, e))?;
    check_seen(seen, cv, &body.head, accept_rollback)?;
    let (mut version, mut head, mut writer_seq) = (cv, body.head, body.writer_seq);
    let (mut records_n, mut logs_n) = (0u64, 0u64);
    for (v, h, seq, records) in
        fetch_logs(store, keys, vault_id, listing, cv + 1, body.head).await?
    {
        let key = format::log_key(v);
        for r in &records {
            tree.apply(r).map_err(|e| {
                VaultError::corrupt(&key, format!("record cannot be replayed: {e}"))
            })?;
            records_n += 1;
        }
        (version, head, writer_seq) = (v, h, seq);
        logs_n += 1;
        check_seen(seen, v, &h, accept_rollback)?;
    }
    if let Some(s) = seen {
        if version < s.version && !accept_rollback {
            return Err(VaultError::Rollback {
                seen: s.version,
                found: version,
            });
        }
    }
    Ok(Loaded {
        tree,
        version,
        head,
        checkpoint_version: cv,
        writer_seq,
        records: records_n,
        logs: logs_n,
    })
}

/// What [`Vault::refresh`] did.
#[derive(Debug)]
pub enum Refresh {
    /// The store holds nothing newer.
    Unchanged,
    /// These records (of the logs after ours, in order) were applied.
    Applied(Vec<Record>),
    /// The logs after ours are gone (the writer checkpointed): the whole
    /// tree was loaded again from the new checkpoint.
    Reloaded,
}

impl Vault {
    /// Catch up with the store (a read-only vault following a writer
    /// elsewhere): one listing of `meta/`; if there are newer logs, fetch
    /// and apply them, or load the newer checkpoint that replaced them.
    /// Refused for a vault with a writer lease (it is the writer) and for
    /// one with changes of its own not yet committed.
    pub async fn refresh(&self) -> VaultResult<Refresh> {
        if self.holds_lease() {
            return Err(VaultError::Invalid(
                "a writer does not follow the store: it is the one that writes it".into(),
            ));
        }
        if self.uncommitted_records() > 0 {
            return Err(VaultError::Invalid(
                "this vault has changes of its own that are not committed".into(),
            ));
        }
        let listing = list_meta(&self.store).await?;
        let (version, head) = (self.version(), self.head());
        let newest_log = listing.logs.keys().next_back().copied().unwrap_or(0);
        let newest_cp = listing
            .complete_checkpoints()
            .last()
            .map(|c| c.0)
            .unwrap_or(0);
        let newest = newest_log.max(newest_cp);
        if newest < version && !self.opts.accept_rollback {
            return Err(VaultError::Rollback {
                seen: version,
                found: newest,
            });
        }
        if newest <= version {
            return Ok(Refresh::Unchanged);
        }
        if listing.logs.contains_key(&(version + 1)) {
            let logs = fetch_logs(
                &self.store,
                &self.keys,
                self.vault_id_bytes(),
                &listing,
                version + 1,
                head,
            )
            .await?;
            let mut applied = Vec::new();
            {
                let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if g.version != version {
                    return Ok(Refresh::Unchanged); // a concurrent refresh did it
                }
                for (v, head, writer_seq, records) in logs {
                    let key = format::log_key(v);
                    for r in &records {
                        g.tree.apply(r).map_err(|e| {
                            VaultError::corrupt(&key, format!("record cannot be replayed: {e}"))
                        })?;
                    }
                    g.set_position(v, head, writer_seq);
                    applied.extend(records);
                }
            }
            self.save_seen()?;
            debug!(
                from = version,
                to = self.version(),
                records = applied.len(),
                "followed the store"
            );
            return Ok(Refresh::Applied(applied));
        }
        // our next log is gone: the writer wrote a checkpoint past it
        let seen = SeenState {
            version,
            head: hex::encode(head),
        };
        let l = load(
            &self.store,
            &self.keys,
            self.vault_id_bytes(),
            &listing,
            Some(&seen),
            self.opts.accept_rollback,
        )
        .await?;
        {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if g.version != version {
                return Ok(Refresh::Unchanged);
            }
            g.tree = l.tree;
            g.set_position(l.version, l.head, l.writer_seq);
        }
        self.save_seen()?;
        info!(
            from = version,
            to = l.version,
            "followed the store to a new checkpoint"
        );
        Ok(Refresh::Reloaded)
    }
}
