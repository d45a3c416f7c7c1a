//! Loading the metadata state from the store, and following it: the
//! newest complete checkpoint plus the logs after it (what [`crate::Vault::open`]
//! does), and [`crate::Vault::refresh`], which lets a read-only vault catch up
//! with a writer elsewhere — the logs committed since it looked, or, when
//! the writer has checkpointed and removed them, the new checkpoint. The
//! same chain checks apply as at open: every log must chain to the one
//! before it, and the store must never go back to an older version
//! (rollback) or another history (fork).

use crate::error::{VaultError, VaultResult};
use crate::format::{self, meta, MetaName, META_PREFIX};
use crate::record::Record;
use crate::state::SeenState;
use crate::tree::Tree;
use std::collections::BTreeMap;
use strata_crypto::Keys;
use strata_store::DynStore;
use tracing::debug;

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
    let first_part = parts.first().map(|p| p.0.clone()).unwrap_or_default();
    let body = meta::open_checkpoint(keys, vault_id, cv, parts)?;
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

/// What [`crate::Vault::refresh`] did.
#[derive(Debug)]
pub enum Refresh {
    /// The store holds nothing newer.
    Unchanged,
    /// These records (of the logs after ours, in order) were applied.
    Applied(Vec<Record>),
    /// The logs after ours are gone (the writer checkpointed): the whole
    /// tree was loaded again from the new checkpoint. Holds the tree it
    /// replaced (so a front end can forget names that are gone).
    Reloaded(Box<crate::Tree>),
}

/// What `list meta/` found.
pub(crate) struct MetaListing {
    pub(crate) logs: BTreeMap<u64, String>,
    /// version → (count, parts present)
    /// (version, part count) → parts present. Keyed by both, so a stale
    /// part set of the same version (other count) never hides a good one.
    pub(crate) checkpoints: BTreeMap<(u64, u32), BTreeMap<u32, String>>,
}

impl MetaListing {
    /// Complete part sets, oldest first.
    pub(crate) fn complete_checkpoints(&self) -> Vec<(u64, u32)> {
        self.checkpoints
            .iter()
            .filter(|((_, count), parts)| {
                parts.len() as u32 == *count && parts.keys().all(|p| p < count)
            })
            .map(|(k, _)| *k)
            .collect()
    }
}

pub(crate) async fn list_meta(store: &DynStore) -> VaultResult<MetaListing> {
    let mut l = MetaListing {
        logs: BTreeMap::new(),
        checkpoints: BTreeMap::new(),
    };
    for o in store.list(META_PREFIX).await? {
        match format::parse_meta_key(&o.key) {
            Some(MetaName::Log(v)) => {
                l.logs.insert(v, o.key);
            }
            Some(MetaName::Checkpoint {
                version,
                part,
                count,
            }) => {
                l.checkpoints
                    .entry((version, count))
                    .or_default()
                    .insert(part, o.key);
            }
            None => debug!(key = %o.key, "ignoring unknown metadata object"),
        }
    }
    Ok(l)
}

/// What the store holds beyond `(version, head)`, for a follower.
pub(crate) enum Update {
    Unchanged,
    /// The logs after ours: `(version, head after it, writer_seq, records)`.
    Logs(Vec<(u64, [u8; 32], u64, Vec<Record>)>),
    /// Our next log is gone (the writer checkpointed past it): the state
    /// loaded anew.
    Reload(Box<Loaded>),
}

/// One listing of `meta/`, and what a follower at `(version, head)` must
/// apply to catch up. A store that went back below `version` is a
/// rollback (unless `accept_rollback`).
pub(crate) async fn update_since(
    store: &DynStore,
    keys: &Keys,
    vault_id: &[u8; 16],
    (version, head): (u64, [u8; 32]),
    accept_rollback: bool,
) -> VaultResult<Update> {
    let listing = list_meta(store).await?;
    let newest_log = listing.logs.keys().next_back().copied().unwrap_or(0);
    let newest_cp = listing
        .complete_checkpoints()
        .last()
        .map(|c| c.0)
        .unwrap_or(0);
    let newest = newest_log.max(newest_cp);
    if newest < version && !accept_rollback {
        return Err(VaultError::Rollback {
            seen: version,
            found: newest,
        });
    }
    if newest <= version {
        return Ok(Update::Unchanged);
    }
    if listing.logs.contains_key(&(version + 1)) {
        let logs = fetch_logs(store, keys, vault_id, &listing, version + 1, head).await?;
        return Ok(Update::Logs(logs));
    }
    let seen = SeenState {
        version,
        head: hex::encode(head),
    };
    let l = load(
        store,
        keys,
        vault_id,
        &listing,
        Some(&seen),
        accept_rollback,
    )
    .await?;
    Ok(Update::Reload(Box::new(l)))
}
