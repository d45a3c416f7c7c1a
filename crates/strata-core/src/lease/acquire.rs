//! Taking the writer lease (FORMAT §13, *Taking it*).
//!
//! An attempt *claims* the next epoch (steps 1–3 up to the write of our
//! object). Where the store enforces conditional create the claim is the
//! proof. Elsewhere the claim must *settle*: wait [`LeaseOptions::settle`],
//! then read back that our object is still the highest and ours. That wait
//! happens before [`Lease::acquire`] returns, or — with
//! [`LeaseOptions::defer_settle`] — in the background: the caller gets a
//! lease that is not confirmed yet and may meanwhile do what needs no lease
//! (read the vault, upload content-addressed objects nothing references
//! yet), while everything that needs it ([`Lease::check_writable`], hence
//! every commit and every deletion) first waits for the confirmation, and
//! fails with the refusal if the claim did not hold.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use strata_crypto::Keys;
use strata_store::{Bytes, DynStore, StoreError};
use tracing::{debug, info, warn};

use super::{
    handoff, lease_key, lock, my_body, open_lease, parse_lease_key, renew_loop, seal_lease,
    stale_reason, top_lease, unix_now, Holder, Lease, LeaseBody, LeaseOptions, LiveGuard, Phase,
    State, Top, LEASE_PREFIX,
};
use crate::error::{VaultError, VaultResult};

/// Whether the lease is confirmed (see the module docs).
#[derive(Debug, Clone)]
pub(crate) enum Confirm {
    /// Claimed; the read-back after the settle delay has not happened yet.
    Pending,
    Confirmed,
    Refused(Refusal),
}

/// Why a claim whose confirmation was deferred did not become the lease.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    /// Another writer claimed the same epoch at the same moment and won.
    Locked {
        holder: Box<Holder>,
        now: u64,
        margin: u64,
    },
    /// Our object vanished and nobody else holds the lease.
    Contended(String),
    /// The read-back failed: the store's error…
    Store(StoreError),
    /// …or another one.
    Unconfirmed(String),
    /// Released (or dropped) before it was confirmed.
    Released,
}

impl Refusal {
    pub(crate) fn to_error(&self) -> VaultError {
        match self {
            Refusal::Locked {
                holder,
                now,
                margin,
            } => VaultError::Locked {
                holder: holder.clone(),
                now: *now,
                margin: *margin,
                note: None,
            },
            Refusal::Contended(store) => contended(store),
            Refusal::Store(e) => VaultError::Store(e.clone()),
            Refusal::Unconfirmed(detail) => VaultError::LeaseUnavailable {
                detail: detail.clone(),
            },
            Refusal::Released => VaultError::LeaseLost {
                detail: "the writer lease was released (the vault was closed)".into(),
            },
        }
    }
}

fn contended(store: &str) -> VaultError {
    VaultError::Invalid(format!(
        "could not take the writer lease of {store}: other writers kept taking it; try again"
    ))
}

/// Our object, just written as the next epoch.
struct Claim {
    epoch: u64,
    body: LeaseBody,
    /// Start of the write: validity counts from here.
    t0: Instant,
    registered: LiveGuard,
}

/// What one attempt at a claim came to.
enum Step {
    Claimed(Claim),
    /// Look again (a handoff released the lease, or another writer created
    /// the same epoch first where conditional create is enforced).
    Again,
}

/// What the read-back after the settle delay found.
enum ReadBack {
    Ours,
    /// Another writer's object (it won the race), or none at all.
    Lost(Option<Holder>),
}

struct Ctx<'a> {
    store: &'a DynStore,
    keys: &'a Keys,
    vault_id: &'a [u8; 16],
    opts: &'a LeaseOptions,
    conditional: bool,
}

impl Ctx<'_> {
    /// Steps 1–3 up to the write of our object.
    async fn claim(&self, asked: &mut bool) -> VaultResult<Step> {
        let (store, keys, vault_id, opts) = (self.store, self.keys, self.vault_id, self.opts);
        let name = store.describe();
        let now = unix_now();
        let next = match top_lease(store, keys, vault_id).await? {
            Top::None => 1,
            Top::Found(epoch, h) => {
                let stale = h.lease.as_ref().and_then(|l| stale_reason(l, now, opts));
                if opts.break_lease {
                    warn!(store = %name, holder = %h.describe(), "breaking the writer lease");
                } else if let Some(why) = stale {
                    warn!(
                        "taking over the stale writer lease of {} ({why}); if that writer left \
                         uncommitted changes (a crashed mount keeps them in its cache), they \
                         can no longer be applied once this writer commits",
                        h.describe()
                    );
                } else if opts.take_over && !*asked && h.lease.is_some() {
                    *asked = true;
                    let mut id = [0u8; 16];
                    strata_crypto::random_bytes(&mut id)?;
                    let me = my_body(id, opts, now, Duration::ZERO);
                    return match handoff::ask(store, keys, vault_id, epoch, &h, &me, opts).await? {
                        handoff::Asked::Released => Ok(Step::Again),
                        handoff::Asked::Failed(e) => Err(e),
                    };
                } else {
                    return Err(VaultError::Locked {
                        holder: Box::new(h),
                        now,
                        margin: opts.clock_margin.as_secs(),
                        note: asked.then(|| {
                            "it had handed over, but another writer that asked took the lease first"
                                .to_string()
                        }),
                    });
                }
                epoch
                    .checked_add(1)
                    .ok_or_else(|| VaultError::Invalid("lease epoch overflow".into()))?
            }
        };
        let mut holder = [0u8; 16];
        strata_crypto::random_bytes(&mut holder)?;
        let registered = LiveGuard::new(holder);
        let body = my_body(holder, opts, now, opts.ttl);
        let key = lease_key(next);
        let bytes = Bytes::from(seal_lease(keys, vault_id, next, &body)?);
        let t0 = Instant::now();
        if self.conditional {
            if !store.put_if_absent(&key, bytes).await? {
                debug!(%key, "another writer created the same lease epoch first");
                return Ok(Step::Again);
            }
        } else {
            store.put(&key, bytes).await?;
        }
        Ok(Step::Claimed(Claim {
            epoch: next,
            body,
            t0,
            registered,
        }))
    }
}

/// Step 3's read-back (after the settle delay): `epoch` must be the highest
/// and hold `holder`. If another writer won, our object is deleted if it is
/// still there and ours; the winner is left alone.
async fn read_back(
    store: &DynStore,
    keys: &Keys,
    vault_id: &[u8; 16],
    epoch: u64,
    holder: [u8; 16],
) -> VaultResult<ReadBack> {
    let key = lease_key(epoch);
    match top_lease(store, keys, vault_id).await? {
        Top::Found(e, h) if e == epoch && h.lease.as_ref().is_some_and(|l| l.holder == holder) => {
            Ok(ReadBack::Ours)
        }
        Top::Found(_, h) => {
            debug!(%key, winner = %h.describe(), "lost the race for the writer lease");
            if let Ok(b) = store.get(&key).await {
                if open_lease(keys, vault_id, epoch, &b).is_some_and(|l| l.holder == holder) {
                    let _ = store.delete(&key).await;
                }
            }
            Ok(ReadBack::Lost(Some(h)))
        }
        Top::None => Ok(ReadBack::Lost(None)),
    }
}

/// Step 4: lower epochs are history now (best effort).
async fn drop_older(store: &DynStore, epoch: u64) {
    if let Ok(list) = store.list(LEASE_PREFIX).await {
        for o in list {
            if parse_lease_key(&o.key).is_some_and(|e| e < epoch) {
                let _ = store.delete(&o.key).await;
            }
        }
    }
}

impl Lease {
    /// Take the writer lease, or fail with [`VaultError::Locked`]. With
    /// [`LeaseOptions::defer_settle`] on a store without enforced
    /// conditional create, returns once our object is written; see the
    /// module docs.
    pub(crate) async fn acquire(
        store: DynStore,
        keys: Arc<Keys>,
        vault_id: [u8; 16],
        opts: LeaseOptions,
    ) -> VaultResult<Arc<Lease>> {
        let conditional = store.capabilities().conditional_create;
        let name = store.describe();
        let mut last_locked = None;
        let mut asked = false;
        for _attempt in 0..4 {
            let ctx = Ctx {
                store: &store,
                keys: &keys,
                vault_id: &vault_id,
                opts: &opts,
                conditional,
            };
            let Step::Claimed(c) = ctx.claim(&mut asked).await? else {
                continue;
            };
            if !conditional && opts.defer_settle {
                let lease = Lease::new(store, keys, vault_id, opts, conditional, c, true);
                let settle = lease.opts.settle;
                let task = tokio::spawn(confirm_later(Arc::downgrade(&lease), settle));
                *lock(&lease.confirm_task) = Some(task);
                info!(store = %name, key = %lease.key(), "claimed the writer lease (confirmed after the settle delay)");
                return Ok(lease);
            }
            if !conditional {
                if !opts.settle.is_zero() {
                    tokio::time::sleep(opts.settle).await;
                }
                match read_back(&store, &keys, &vault_id, c.epoch, c.body.holder).await? {
                    ReadBack::Ours => {}
                    ReadBack::Lost(h) => {
                        if h.is_some() {
                            last_locked = h;
                        }
                        continue;
                    }
                }
            }
            drop_older(&store, c.epoch).await;
            let lease = Lease::new(store, keys, vault_id, opts, conditional, c, false);
            lease.start_renewing();
            info!(store = %name, key = %lease.key(), "took the writer lease");
            return Ok(lease);
        }
        match last_locked {
            Some(h) => Err(VaultError::Locked {
                holder: Box::new(h),
                now: unix_now(),
                margin: opts.clock_margin.as_secs(),
                note: None,
            }),
            None => Err(contended(&name)),
        }
    }

    fn new(
        store: DynStore,
        keys: Arc<Keys>,
        vault_id: [u8; 16],
        opts: LeaseOptions,
        conditional: bool,
        c: Claim,
        deferred: bool,
    ) -> Arc<Lease> {
        c.registered.keep();
        let confirm = if deferred {
            Confirm::Pending
        } else {
            Confirm::Confirmed
        };
        Arc::new(Lease {
            store,
            keys,
            vault_id,
            conditional,
            deferred,
            state: Mutex::new(State {
                epoch: c.epoch,
                body: c.body,
                valid_until: c.t0 + opts.ttl,
                last_active: c.t0,
                phase: Phase::Held,
                last_error: None,
                next_poll: c.t0 + opts.poll,
                seen_asks: std::collections::HashSet::new(),
            }),
            opts,
            op: tokio::sync::Mutex::new(()),
            task: Mutex::new(None),
            confirm: tokio::sync::watch::Sender::new(confirm),
            confirm_task: Mutex::new(None),
            handoff: tokio::sync::watch::Sender::new(None),
        })
    }

    /// Start the background renewal.
    fn start_renewing(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let tick = (self.opts.ttl / 3).min(self.opts.poll);
        *lock(&self.task) = Some(tokio::spawn(renew_loop(weak, tick)));
    }

    /// Whether the confirmation of this lease was deferred (see the module
    /// docs); the vault then checks, before its first commit, that nobody
    /// committed while it was read.
    pub(crate) fn deferred(&self) -> bool {
        self.deferred
    }

    /// Wait until the lease is confirmed; its refusal otherwise.
    pub(crate) async fn confirmed(&self) -> VaultResult<()> {
        let mut rx = self.confirm.subscribe();
        loop {
            let now = rx.borrow_and_update().clone();
            match now {
                Confirm::Confirmed => return Ok(()),
                Confirm::Refused(r) => return Err(r.to_error()),
                Confirm::Pending => {}
            }
            if rx.changed().await.is_err() {
                return Err(Refusal::Released.to_error());
            }
        }
    }

    /// The lease was refused after a deferred confirmation.
    pub(crate) fn refused(&self) -> bool {
        matches!(*self.confirm.borrow(), Confirm::Refused(_))
    }

    /// Stop a pending confirmation (release or drop): whoever waits for it
    /// is told the lease was released.
    pub(super) fn stop_confirming(&self) {
        if let Some(t) = lock(&self.confirm_task).take() {
            t.abort();
        }
        self.confirm.send_if_modified(|c| {
            if matches!(c, Confirm::Pending) {
                *c = Confirm::Refused(Refusal::Released);
                true
            } else {
                false
            }
        });
    }
}

/// The deferred step 3: after the settle delay, read back; then step 4 and
/// the renewals, or the refusal.
async fn confirm_later(weak: Weak<Lease>, settle: Duration) {
    tokio::time::sleep(settle).await;
    let Some(l) = weak.upgrade() else { return };
    let _op = l.op.lock().await;
    let (epoch, holder) = {
        let s = lock(&l.state);
        (s.epoch, s.body.holder)
    };
    let outcome = match read_back(&l.store, &l.keys, &l.vault_id, epoch, holder).await {
        Ok(ReadBack::Ours) => {
            drop_older(&l.store, epoch).await;
            l.start_renewing();
            info!(key = %lease_key(epoch), "confirmed the writer lease");
            Confirm::Confirmed
        }
        Ok(ReadBack::Lost(winner)) => {
            let why = match &winner {
                Some(h) => format!(
                    "another writer took it at the same moment: {}",
                    h.describe()
                ),
                None => "its lease object vanished while it settled".to_string(),
            };
            warn!("the writer lease was not confirmed: {why}");
            lock(&l.state).phase = Phase::Lost(why);
            Confirm::Refused(match winner {
                Some(h) => Refusal::Locked {
                    holder: Box::new(h),
                    now: unix_now(),
                    margin: l.opts.clock_margin.as_secs(),
                },
                None => Refusal::Contended(l.store.describe()),
            })
        }
        // our object may be in the store: the phase stays held, so a
        // release deletes it if it is ours
        Err(e) => {
            warn!(error = %e, "could not confirm the writer lease");
            Confirm::Refused(match e {
                VaultError::Store(e) => Refusal::Store(e),
                e => Refusal::Unconfirmed(e.to_string()),
            })
        }
    };
    l.confirm.send_replace(outcome);
}
