//! Handing the writer lease over between devices (FORMAT §13.1).
//!
//! A writer that finds the lease held by a live writer elsewhere may *ask*
//! for it: it writes a sealed request `lease/<epoch>.ask.<id>` next to the
//! holder's `lease/<epoch>` and waits. The holder sees the request in the
//! listing it makes anyway (renewal, the idle poll, the check before every
//! commit), answers with `lease/<epoch>.answer` (a sealed line saying what
//! it is doing: waiting for files open for writing, uploading, committing),
//! and when everything it accepted is in the store it releases the lease.
//! The asker then takes the lease the ordinary way (the next epoch, created
//! conditionally where the store can), so two askers at once never both
//! win: the other one is refused. A holder that never answers leaves the
//! asker to fail after a bounded wait with the usual "vault is in use"
//! message.
//!
//! This module holds the object names, their sealing and the asker's wait;
//! the holder's side (noticing a request) is in [`crate::lease`], what it
//! does about it in the front end (`strata-vfs`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_crypto::Keys;
use strata_store::{Bytes, DynStore, StoreErrorKind};
use tracing::{debug, info};

use super::{
    lease_key, open_lease, open_sealed, parse_lease_key, seal_sealed, unix_now, Holder, LeaseBody,
    LeaseOptions, LEASE_PREFIX,
};
use crate::error::{VaultError, VaultResult};

/// Magic and AD prefix of a handoff request.
pub const ASK_MAGIC: &[u8; 8] = b"STRASK01";
/// Magic and AD prefix of a holder's answer.
pub const ANSWER_MAGIC: &[u8; 8] = b"STRANS01";

/// `lease/<16 hex epoch>.ask.<32 hex>`: a request to the holder of `epoch`.
pub fn ask_key(epoch: u64, asker: &[u8; 16]) -> String {
    format!("{}.ask.{}", lease_key(epoch), hex::encode(asker))
}

/// `lease/<16 hex epoch>.answer`: the holder of `epoch` answering.
pub fn answer_key(epoch: u64) -> String {
    format!("{}.answer", lease_key(epoch))
}

/// The epoch a handoff object (request or answer) belongs to.
pub fn parse_handoff_key(key: &str) -> Option<(u64, HandoffObject)> {
    let rest = key.strip_prefix(LEASE_PREFIX)?;
    let (epoch, kind) = rest.split_at_checked(16)?;
    let epoch = parse_lease_key(&format!("{LEASE_PREFIX}{epoch}"))?;
    if kind == ".answer" {
        return Some((epoch, HandoffObject::Answer));
    }
    let id = kind.strip_prefix(".ask.")?;
    let mut asker = [0u8; 16];
    hex::decode_to_slice(id, &mut asker).ok()?;
    Some((epoch, HandoffObject::Ask(asker)))
}

/// What a `lease/<epoch>.…` object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffObject {
    Ask([u8; 16]),
    Answer,
}

/// A request seen by the holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffRequest {
    pub key: String,
    /// Who asks (its label, host and pid; `expires`: when it stops waiting).
    pub asker: LeaseBody,
}

impl HandoffRequest {
    /// "mount at /x on host (pid 12)"
    pub fn describe(&self) -> String {
        let a = &self.asker;
        format!("{} on {} (pid {})", a.label, a.host, a.pid)
    }
}

/// The holder's answer: what it is doing to hand over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffAnswer {
    /// The request being answered.
    pub asker: [u8; 16],
    /// e.g. "waiting for 1 file open for writing", "uploading 3.1 MiB".
    pub state: String,
    /// Unix seconds (holder's clock).
    pub at: u64,
}

pub(crate) fn seal_ask(
    keys: &Keys,
    vault_id: &[u8; 16],
    epoch: u64,
    body: &LeaseBody,
) -> VaultResult<Vec<u8>> {
    seal_sealed(keys, ASK_MAGIC, vault_id, epoch, body)
}

pub(crate) fn open_ask(
    keys: &Keys,
    vault_id: &[u8; 16],
    epoch: u64,
    bytes: &[u8],
) -> Option<LeaseBody> {
    open_sealed(keys, ASK_MAGIC, vault_id, epoch, bytes)
}

pub(crate) fn seal_answer(
    keys: &Keys,
    vault_id: &[u8; 16],
    epoch: u64,
    a: &HandoffAnswer,
) -> VaultResult<Vec<u8>> {
    let mut a = a.clone();
    a.state = super::truncate(&a.state, 300);
    seal_sealed(keys, ANSWER_MAGIC, vault_id, epoch, &a)
}

fn open_answer(
    keys: &Keys,
    vault_id: &[u8; 16],
    epoch: u64,
    bytes: &[u8],
) -> Option<HandoffAnswer> {
    open_sealed(keys, ANSWER_MAGIC, vault_id, epoch, bytes)
}

/// How the asker's wait ended.
pub(crate) enum Asked {
    /// The holder let go (or its lease went away): try to take the lease.
    Released,
    /// Give up with this error (the request is removed).
    Failed(VaultError),
}

/// Ask the holder of `epoch` to hand the lease over and wait until it lets
/// go, reporting its answers through [`LeaseOptions::on_wait`]. `me` is the
/// asker's identity (its lease body, without a meaningful expiry).
pub(crate) async fn ask(
    store: &DynStore,
    keys: &Keys,
    vault_id: &[u8; 16],
    epoch: u64,
    holder: &Holder,
    me: &LeaseBody,
    opts: &LeaseOptions,
) -> VaultResult<Asked> {
    let key = ask_key(epoch, &me.holder);
    let mut body = me.clone();
    body.expires = unix_now() + (opts.handoff_answer + opts.handoff_drain).as_secs();
    store
        .put(&key, Bytes::from(seal_ask(keys, vault_id, epoch, &body)?))
        .await?;
    info!(holder = %holder.describe(), "asked the writer to hand the vault over");
    let say = |s: &str| {
        if let Some(f) = &opts.on_wait {
            f(s)
        }
    };
    say(&format!(
        "the vault is in use by {}; asked it to hand over, waiting for its answer…",
        holder.describe()
    ));
    let start = Instant::now();
    let margin = opts.clock_margin.as_secs();
    // the holder's expiry as last read: a holder that dies while handing
    // over is taken over once its lease runs out, as any stale lease
    let mut expires = holder.lease.as_ref().map_or(u64::MAX, |l| l.expires);
    let mut answered: Option<Instant> = None;
    let mut last_state = String::new();
    let outcome = loop {
        tokio::time::sleep(opts.handoff_poll).await;
        let list = match store.list(LEASE_PREFIX).await {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "could not look at the lease while waiting for a handoff");
                if start.elapsed() > opts.handoff_answer + opts.handoff_drain {
                    break Asked::Failed(e.into());
                }
                continue;
            }
        };
        let top = list.iter().filter_map(|o| parse_lease_key(&o.key)).max();
        if top != Some(epoch) {
            break Asked::Released;
        }
        if unix_now() > expires.saturating_add(margin) {
            match store.get(&lease_key(epoch)).await {
                Ok(b) => match open_lease(keys, vault_id, epoch, &b) {
                    Some(l) if unix_now() > l.expires.saturating_add(margin) => {
                        break Asked::Released
                    }
                    Some(l) => expires = l.expires,
                    None => {}
                },
                Err(e) if e.kind == StoreErrorKind::NotFound => break Asked::Released,
                Err(e) => debug!(error = %e, "could not read the holder's lease"),
            }
        }
        if list.iter().any(|o| o.key == answer_key(epoch)) {
            match store.get(&answer_key(epoch)).await {
                Ok(b) => {
                    if let Some(a) = open_answer(keys, vault_id, epoch, &b) {
                        answered.get_or_insert_with(Instant::now);
                        if a.state != last_state {
                            let to = if a.asker == me.holder {
                                "to us"
                            } else {
                                "to another device that asked too"
                            };
                            say(&format!(
                                "{} is handing over {to}: {}",
                                holder.describe(),
                                a.state
                            ));
                            last_state = a.state;
                        }
                    }
                }
                Err(e) if e.kind == StoreErrorKind::NotFound => {}
                Err(e) => debug!(error = %e, "could not read the handoff answer"),
            }
        }
        let waited = start.elapsed();
        let why = match answered {
            None if waited > opts.handoff_answer => Some(format!(
                "it did not answer a request to hand over within {} s (it may be gone, or a version without handoff)",
                opts.handoff_answer.as_secs()
            )),
            Some(t) if t.elapsed() > opts.handoff_drain => Some(format!(
                "it answered but did not finish handing over within {} s (last: {last_state})",
                opts.handoff_drain.as_secs()
            )),
            _ => None,
        };
        if let Some(note) = why {
            break Asked::Failed(VaultError::Locked {
                holder: Box::new(holder.clone()),
                now: unix_now(),
                margin: opts.clock_margin.as_secs(),
                note: Some(note),
            });
        }
    };
    // the request has served (or failed); a holder that already let go
    // no longer looks at it
    if let Err(e) = store.delete(&key).await {
        debug!(error = %e, %key, "could not remove the handoff request");
    }
    Ok(outcome)
}

/// Default wait for a holder's first answer: a few of its idle polls.
pub fn default_answer_wait(poll: Duration) -> Duration {
    poll * 3 + Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let id = [0xab; 16];
        assert_eq!(
            parse_handoff_key(&ask_key(7, &id)),
            Some((7, HandoffObject::Ask(id)))
        );
        assert_eq!(
            parse_handoff_key(&answer_key(7)),
            Some((7, HandoffObject::Answer))
        );
        assert_eq!(parse_handoff_key(&lease_key(7)), None);
        assert_eq!(parse_handoff_key("lease/0000000000000007.ask.zz"), None);
        assert_eq!(parse_lease_key(&ask_key(7, &id)), None, "never a lease");
    }
}
