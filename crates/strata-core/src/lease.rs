//! The writer lease (FORMAT §13): at most one writer per vault.
//!
//! A writer holds `lease/<16 hex epoch>`, an object sealed with the lease
//! key that names it (random holder id, host, pid, a label such as
//! "mount at /mnt/x") and says until when it holds the vault. While the
//! writer is active (it committed or changed the store within the last
//! `ttl`), the holder rewrites its own object every `ttl / 3` with a
//! lifetime of `ttl`; while idle, with the longer lifetime
//! [`LeaseOptions::idle_ttl`] (10 × `ttl`), renewed when a third of it has
//! passed — so an idle mount makes a few requests every few minutes, not
//! nine a minute. Every commit first checks the lease is still ours. Only
//! the highest epoch counts.
//! Taking the vault over (a stale or broken lease) means creating the next
//! epoch, so on stores that enforce conditional create two writers can never
//! both win, and a renewal never overwrites someone else's lease. Without
//! conditional create the writer puts, waits a settle delay and reads back
//! (a residual race, documented in THREAT_MODEL.md §7) — before the open
//! returns, or in the background while it uploads (module `acquire`).
//!
//! A holder that finds its lease gone or superseded marks it *lost*: the
//! vault then refuses to commit (see [`crate::Vault::commit`]).

mod acquire;
pub mod handoff;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use strata_crypto::Keys;
use strata_store::{Bytes, DynStore, StoreErrorKind};
use tracing::{debug, info, warn};

use self::handoff::{HandoffObject, HandoffRequest};
use crate::error::{VaultError, VaultResult};

/// Prefix of lease objects.
pub const LEASE_PREFIX: &str = "lease/";
/// Magic and AD prefix of a lease object.
pub const LEASE_MAGIC: &[u8; 8] = b"STRLSE01";
/// Plaintext size of every lease (body length, body, zeros): fixed, so the
/// object's size says nothing about host name or label.
pub const LEASE_PLAINTEXT: usize = 512;
const MAX_LABEL: usize = 200;
const MAX_HOST: usize = 100;

/// `lease/<16 hex>`
pub fn lease_key(epoch: u64) -> String {
    format!("{LEASE_PREFIX}{epoch:016x}")
}

/// Parse a `lease/<16 hex>` key.
pub fn parse_lease_key(key: &str) -> Option<u64> {
    let v = key.strip_prefix(LEASE_PREFIX)?;
    if v.len() != 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(v, 16).ok()
}

/// Contents of a lease object (postcard, FORMAT §13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    /// Random per acquisition.
    pub holder: [u8; 16],
    /// Host name of the holder (display only).
    pub host: String,
    /// Keyed hash of boot id and pid namespace: equal values mean `pid` can
    /// be checked on this machine. All zeros when unknown.
    pub machine: [u8; 16],
    pub pid: u32,
    /// What holds it, e.g. "mount at /mnt/drive" or "strata put".
    pub label: String,
    /// Unix seconds.
    pub acquired: u64,
    /// Unix seconds (holder's clock).
    pub expires: u64,
    pub renewals: u64,
}

fn lease_ad(magic: &[u8; 8], vault_id: &[u8; 16], epoch: u64) -> Vec<u8> {
    let mut ad = magic.to_vec();
    ad.extend_from_slice(vault_id);
    ad.extend_from_slice(&epoch.to_be_bytes());
    ad
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Seal a lease: `magic ‖ nonce ‖ AES-GCM(lease key, len ‖ body ‖ zeros) ‖ tag`.
pub fn seal_lease(
    keys: &Keys,
    vault_id: &[u8; 16],
    epoch: u64,
    body: &LeaseBody,
) -> VaultResult<Vec<u8>> {
    let mut b = body.clone();
    b.label = truncate(&b.label, MAX_LABEL);
    b.host = truncate(&b.host, MAX_HOST);
    seal_sealed(keys, LEASE_MAGIC, vault_id, epoch, &b)
}

/// Open a lease object; `None` if it does not authenticate or decode.
pub fn open_lease(keys: &Keys, vault_id: &[u8; 16], epoch: u64, bytes: &[u8]) -> Option<LeaseBody> {
    open_sealed(keys, LEASE_MAGIC, vault_id, epoch, bytes)
}

/// Seal a small object of the `lease/` area (a lease, a handoff request or
/// answer): `magic ‖ nonce ‖ AES-GCM(lease key, AD = magic ‖ vault id ‖
/// epoch; len ‖ postcard ‖ zeros to 512 bytes) ‖ tag`.
pub(crate) fn seal_sealed<T: Serialize>(
    keys: &Keys,
    magic: &[u8; 8],
    vault_id: &[u8; 16],
    epoch: u64,
    body: &T,
) -> VaultResult<Vec<u8>> {
    let enc = postcard::to_stdvec(body)
        .map_err(|e| VaultError::Invalid(format!("cannot encode a lease object: {e}")))?;
    if enc.len() + 4 > LEASE_PLAINTEXT {
        return Err(VaultError::Invalid("lease object body too large".into()));
    }
    let mut pt = Vec::with_capacity(LEASE_PLAINTEXT);
    pt.extend_from_slice(&(enc.len() as u32).to_be_bytes());
    pt.extend_from_slice(&enc);
    pt.resize(LEASE_PLAINTEXT, 0);
    let sealed = keys.seal_lease(&lease_ad(magic, vault_id, epoch), pt)?;
    let mut out = magic.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Open what [`seal_sealed`] sealed; `None` if it does not authenticate or
/// decode.
pub(crate) fn open_sealed<T: for<'a> Deserialize<'a>>(
    keys: &Keys,
    magic: &[u8; 8],
    vault_id: &[u8; 16],
    epoch: u64,
    bytes: &[u8],
) -> Option<T> {
    let rest = bytes.strip_prefix(&magic[..])?;
    let pt = keys
        .open_lease(&lease_ad(magic, vault_id, epoch), rest)
        .ok()?;
    let len = u32::from_be_bytes(pt.get(..4)?.try_into().ok()?) as usize;
    postcard::from_bytes(pt.get(4..4 + len)?).ok()
}

/// Options of a writer's lease ([`crate::OpenOptions::lease`]).
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// Shown to a writer that is refused, e.g. "mount at /mnt/drive".
    pub label: String,
    /// Take the lease even if another writer holds it (that writer notices
    /// at its next renewal and stops committing).
    pub break_lease: bool,
    /// How long a lease holds without renewal while the writer is active;
    /// renewed every `ttl / 3`. An idle writer's lease holds
    /// [`LeaseOptions::idle_ttl`].
    pub ttl: Duration,
    /// Extra time another writer waits after a lease's expiry before taking
    /// it over (allows for clock differences between machines).
    pub clock_margin: Duration,
    /// Without enforced conditional create: wait this long after writing the
    /// lease, then read it back to see that no other writer overwrote it.
    pub settle: Duration,
    /// Without enforced conditional create: let the open return as soon as
    /// the lease is written and wait out `settle` (and read back) in the
    /// background; every store change that needs the lease waits for that
    /// confirmation and fails with the refusal if the lease was not ours
    /// (FORMAT §13). For a command that can upload content-addressed data
    /// meanwhile (`strata put`); a mount wants to know before it mounts.
    pub defer_settle: bool,
    /// Take over at once a lease held by a process of this machine that is
    /// gone (crashed), instead of waiting for its expiry. Tests of expiry
    /// turn it off.
    pub local_liveness: bool,
    /// Ask a live holder to hand the lease over (and wait for it) instead
    /// of failing at once (see [`handoff`]).
    pub take_over: bool,
    /// How often an idle holder looks at the lease area (a handoff
    /// request, a lease taken over): one listing each time, and the
    /// renewal rides on it.
    pub poll: Duration,
    /// How long an asker waits for the holder's first answer…
    pub handoff_answer: Duration,
    /// …and then for it to finish handing over.
    pub handoff_drain: Duration,
    /// How often an asker looks whether the holder has let go.
    pub handoff_poll: Duration,
    /// Told what an asker is waiting for (progress lines).
    pub on_wait: Option<WaitReport>,
}

/// A callback for an asker's progress lines.
#[derive(Clone)]
pub struct WaitReport(pub Arc<dyn Fn(&str) + Send + Sync>);

impl WaitReport {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        WaitReport(Arc::new(f))
    }
}

impl std::ops::Deref for WaitReport {
    type Target = dyn Fn(&str) + Send + Sync;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Debug for WaitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WaitReport")
    }
}

impl LeaseOptions {
    pub fn new(label: impl Into<String>) -> Self {
        LeaseOptions {
            label: label.into(),
            break_lease: false,
            ttl: Duration::from_secs(60),
            clock_margin: Duration::from_secs(30),
            settle: Duration::from_secs(2),
            defer_settle: false,
            local_liveness: true,
            take_over: false,
            poll: Duration::from_secs(60),
            handoff_answer: handoff::default_answer_wait(Duration::from_secs(60)),
            handoff_drain: Duration::from_secs(600),
            handoff_poll: Duration::from_secs(1),
            on_wait: None,
        }
    }
}

impl LeaseOptions {
    /// Lifetime of an idle writer's lease: 10 × `ttl` (10 minutes by
    /// default). A holder that dies while idle on another machine keeps
    /// other writers out for up to this long (plus the clock margin).
    pub fn idle_ttl(&self) -> Duration {
        self.ttl * 10
    }
}

/// The lease found in the store (for messages and `strata info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Object key.
    pub key: String,
    /// `None`: the object does not authenticate (damaged, forged, or
    /// written by a newer format).
    pub lease: Option<LeaseBody>,
}

impl Holder {
    /// "mount at /x on host (pid 12)", or a note that it is unreadable.
    pub fn describe(&self) -> String {
        match &self.lease {
            Some(l) => format!("{} on {} (pid {})", l.label, l.host, l.pid),
            None => format!("an unknown writer (its lease {} cannot be read)", self.key),
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-11-21 23:59:07 UTC`
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The text of [`VaultError::Locked`].
pub(crate) fn locked_message(h: &Holder, now: u64, margin: u64, note: Option<&str>) -> String {
    let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
    let Some(l) = &h.lease else {
        return format!(
            "vault is in use by a writer whose lease ({}) this strata cannot read (damaged, or written by a newer version){note}. \
             Mount with --read-only to read meanwhile, or, if no other writer is running, retry with --break-lease.",
            h.key
        );
    };
    let expiry = if now < l.expires {
        format!(
            "its lease expires at {} (in {}s)",
            format_utc(l.expires),
            l.expires - now
        )
    } else {
        format!(
            "its lease expired at {} ({}s ago) but is honoured for another {}s to allow for clock differences",
            format_utc(l.expires),
            now - l.expires,
            (l.expires + margin).saturating_sub(now).max(1)
        )
    };
    format!(
        "vault is in use by {} on {} (pid {}) since {}; {expiry}{note}. \
         Mount with --read-only to read meanwhile, or, if that writer is gone for sure, retry with --break-lease.",
        l.label,
        l.host,
        l.pid,
        format_utc(l.acquired)
    )
}

fn host_name() -> String {
    for p in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(p) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "unknown host".to_string()
}

/// Identifies "this kernel boot and pid namespace": only there does a pid
/// mean the same process.
fn machine_id() -> [u8; 16] {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok();
    let ns = std::fs::read_link("/proc/self/ns/pid").ok();
    let (Some(boot), Some(ns)) = (boot, ns) else {
        return [0; 16];
    };
    let mut h = blake3::Hasher::new();
    h.update(b"strata lease machine v1\0");
    h.update(boot.trim().as_bytes());
    h.update(b"\0");
    h.update(ns.to_string_lossy().as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Holder ids of the leases this process holds right now (a lease of this
/// pid that is not here was dropped without release: an in-process crash).
static LIVE: Mutex<Option<HashSet<[u8; 16]>>> = Mutex::new(None);

fn live() -> MutexGuard<'static, Option<HashSet<[u8; 16]>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers a holder id in [`LIVE`] from before its lease is written (so a
/// concurrent acquirer in this process never mistakes it for a leftover)
/// until dropped, unless kept.
struct LiveGuard([u8; 16], bool);

impl LiveGuard {
    fn new(holder: [u8; 16]) -> Self {
        live().get_or_insert_with(HashSet::new).insert(holder);
        LiveGuard(holder, false)
    }
    fn keep(mut self) {
        self.1 = true;
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if !self.1 {
            if let Some(set) = live().as_mut() {
                set.remove(&self.0);
            }
        }
    }
}

/// Lease duration in whole seconds, rounded up (others judge by the
/// written expiry; it must not be earlier than the holder's own view).
fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

/// This process as a lease holder (or asker) `holder`, valid for `lifetime`.
fn my_body(holder: [u8; 16], opts: &LeaseOptions, now: u64, lifetime: Duration) -> LeaseBody {
    LeaseBody {
        holder,
        host: host_name(),
        machine: machine_id(),
        pid: std::process::id(),
        label: opts.label.clone(),
        acquired: now,
        expires: now + ttl_secs(lifetime),
        renewals: 0,
    }
}

/// Why an existing lease may be taken over, or `None` if it is in force.
fn stale_reason(l: &LeaseBody, now: u64, opts: &LeaseOptions) -> Option<String> {
    if now > l.expires.saturating_add(opts.clock_margin.as_secs()) {
        return Some(format!("it expired at {}", format_utc(l.expires)));
    }
    let here = machine_id();
    if opts.local_liveness && here != [0; 16] && l.machine == here {
        if !pid_alive(l.pid) {
            return Some(format!("its process {} is gone", l.pid));
        }
        if l.pid == std::process::id() && !live().as_ref().is_some_and(|s| s.contains(&l.holder)) {
            return Some("it was left behind by this process".into());
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Held,
    Lost(String),
    Released,
}

struct State {
    epoch: u64,
    body: LeaseBody,
    /// Monotonic end of validity: start of the last successful write +
    /// the lifetime it wrote.
    valid_until: Instant,
    /// The last commit or other store change (see [`Lease::check_writable`]).
    last_active: Instant,
    phase: Phase,
    last_error: Option<String>,
    /// When an idle holder next looks at the lease area.
    next_poll: Instant,
    /// Requests already looked at (not fetched again).
    seen_asks: HashSet<String>,
}

/// What a mount shows about its lease (`strata status`).
#[derive(Debug, Clone, Serialize)]
pub struct LeaseStatus {
    /// `held`, `lost` or `released`.
    pub state: &'static str,
    pub key: String,
    pub expires: u64,
    pub renewals: u64,
    /// Why it was lost, or the last renewal error.
    pub error: Option<String>,
}

/// A held lease; renewed by a background task until released or dropped.
pub(crate) struct Lease {
    store: DynStore,
    keys: Arc<Keys>,
    vault_id: [u8; 16],
    opts: LeaseOptions,
    conditional: bool,
    /// Acquired with [`LeaseOptions::defer_settle`] (and no conditional
    /// create): confirmed in the background.
    deferred: bool,
    state: Mutex<State>,
    /// Serializes renewals, verifications and release.
    op: tokio::sync::Mutex<()>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Confirmed yet? (Always, unless `deferred`.)
    confirm: tokio::sync::watch::Sender<acquire::Confirm>,
    /// The deferred confirmation, while it runs.
    confirm_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// A handoff asked of this holder (the first valid request seen).
    handoff: tokio::sync::watch::Sender<Option<HandoffRequest>>,
}

enum Top {
    None,
    Found(u64, Holder),
}

async fn top_lease(store: &DynStore, keys: &Keys, vault_id: &[u8; 16]) -> VaultResult<Top> {
    loop {
        let epochs: BTreeMap<u64, String> = store
            .list(LEASE_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| parse_lease_key(&o.key).map(|e| (e, o.key)))
            .collect();
        let Some((&epoch, key)) = epochs.iter().next_back() else {
            return Ok(Top::None);
        };
        match store.get(key).await {
            Ok(b) => {
                return Ok(Top::Found(
                    epoch,
                    Holder {
                        key: key.clone(),
                        lease: open_lease(keys, vault_id, epoch, &b),
                    },
                ))
            }
            // released between list and get: look again
            Err(e) if e.kind == StoreErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The lease currently in the store, if any (for display).
pub(crate) async fn current(
    store: &DynStore,
    keys: &Keys,
    vault_id: &[u8; 16],
) -> VaultResult<Option<Holder>> {
    Ok(match top_lease(store, keys, vault_id).await? {
        Top::None => None,
        Top::Found(_, h) => Some(h),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lease {
    fn key(&self) -> String {
        lease_key(lock(&self.state).epoch)
    }

    /// Check that the lease in the store is still ours; mark it lost if not.
    /// Store errors are returned (the lease stays held until it expires).
    /// One LIST where conditional create is enforced (a taker always makes
    /// a higher epoch, never rewrites ours); otherwise also a GET of our
    /// object (racing acquirers may have written the same epoch).
    async fn verify(&self) -> VaultResult<()> {
        let (epoch, holder) = {
            let s = lock(&self.state);
            (s.epoch, s.body.holder)
        };
        let listing = self.store.list(LEASE_PREFIX).await?;
        lock(&self.state).next_poll = Instant::now() + self.opts.poll;
        let epochs: BTreeMap<u64, String> = listing
            .iter()
            .filter_map(|o| parse_lease_key(&o.key).map(|e| (e, o.key.clone())))
            .collect();
        let asks: Vec<String> = listing
            .into_iter()
            .filter(|o| {
                matches!(handoff::parse_handoff_key(&o.key),
                    Some((e, HandoffObject::Ask(_))) if e == epoch)
            })
            .map(|o| o.key)
            .collect();
        let top = epochs.keys().next_back().copied();
        let lost = if top.is_some_and(|t| t > epoch) {
            let who = match top_lease(&self.store, &self.keys, &self.vault_id).await {
                Ok(Top::Found(_, h)) => h.describe(),
                _ => "another writer".to_string(),
            };
            Some(format!("it was taken over by {who}"))
        } else if !epochs.contains_key(&epoch) {
            Some(format!(
                "its lease object {} was deleted from the store (broken by another writer, or removed)",
                lease_key(epoch)
            ))
        } else if self.conditional {
            None
        } else {
            match self.store.get(&lease_key(epoch)).await {
                Ok(b) => match open_lease(&self.keys, &self.vault_id, epoch, &b) {
                    Some(l) if l.holder == holder => None,
                    Some(l) => Some(format!(
                        "it was taken over by {} on {} (pid {})",
                        l.label, l.host, l.pid
                    )),
                    None => Some(format!(
                        "its lease object {} was replaced by one this strata cannot read",
                        lease_key(epoch)
                    )),
                },
                Err(e) if e.kind == StoreErrorKind::NotFound => Some(format!(
                    "its lease object {} was deleted from the store (broken by another writer, or removed)",
                    lease_key(epoch)
                )),
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(why) = lost {
            warn!("lost the writer lease: {why}");
            if top.is_some_and(|t| t > epoch) && epochs.contains_key(&epoch) {
                // a renewal that raced the taker brought our object back:
                // a lower epoch is history, never the lease
                let _ = self.store.delete(&lease_key(epoch)).await;
            }
            let mut s = lock(&self.state);
            if s.phase == Phase::Held {
                s.phase = Phase::Lost(why.clone());
            }
            return Err(VaultError::LeaseLost { detail: why });
        }
        self.look_at_asks(epoch, asks).await;
        Ok(())
    }

    /// Read handoff requests not seen before; the first valid one that has
    /// not expired is published to [`Lease::handoff_requested`]. Expired or
    /// unreadable ones are removed.
    async fn look_at_asks(&self, epoch: u64, asks: Vec<String>) {
        for key in asks {
            if !lock(&self.state).seen_asks.insert(key.clone()) {
                continue;
            }
            let body = match self.store.get(&key).await {
                Ok(b) => handoff::open_ask(&self.keys, &self.vault_id, epoch, &b),
                Err(e) => {
                    lock(&self.state).seen_asks.remove(&key);
                    debug!(error = %e, %key, "could not read a handoff request");
                    continue;
                }
            };
            match body {
                Some(asker)
                    if asker
                        .expires
                        .saturating_add(self.opts.clock_margin.as_secs())
                        > unix_now() =>
                {
                    let req = HandoffRequest { key, asker };
                    info!(asker = %req.describe(), "asked to hand the vault over");
                    self.handoff.send_if_modified(|h| {
                        if h.is_none() {
                            *h = Some(req);
                            true
                        } else {
                            false
                        }
                    });
                }
                _ => {
                    debug!(%key, "removing an expired or unreadable handoff request");
                    let _ = self.store.delete(&key).await;
                }
            }
        }
    }

    /// The first handoff asked of this holder (waits for one).
    pub(crate) async fn handoff_requested(&self) -> HandoffRequest {
        let mut rx = self.handoff.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Forget the handoff asked (its asker stopped waiting): the next
    /// request starts a new one.
    pub(crate) fn clear_handoff(&self) {
        self.handoff.send_replace(None);
    }

    /// Tell the asker what this holder is doing to hand over.
    pub(crate) async fn answer(&self, req: &HandoffRequest, state: &str) -> VaultResult<()> {
        let epoch = lock(&self.state).epoch;
        let a = handoff::HandoffAnswer {
            asker: req.asker.holder,
            state: state.to_string(),
            at: unix_now(),
        };
        let bytes = handoff::seal_answer(&self.keys, &self.vault_id, epoch, &a)?;
        self.store
            .put(&handoff::answer_key(epoch), Bytes::from(bytes))
            .await?;
        Ok(())
    }

    /// Verify, then extend the lease by `ttl` (by the idle lifetime if the
    /// writer is idle).
    pub(crate) async fn renew(&self) -> VaultResult<()> {
        self.confirmed().await?;
        let _op = self.op.lock().await;
        let lifetime = self.lifetime();
        self.renew_locked(lifetime, true).await
    }

    /// The lifetime a renewal writes now: `ttl` while active, the idle
    /// lifetime once nothing was committed for `ttl`.
    fn lifetime(&self) -> Duration {
        if lock(&self.state).last_active.elapsed() < self.opts.ttl {
            self.opts.ttl
        } else {
            self.opts.idle_ttl()
        }
    }

    /// The background task's tick. An active writer renews when a third of
    /// its lifetime has passed (a listing, the put, a listing). An idle one
    /// does one thing per [`LeaseOptions::poll`]: a listing (lease still
    /// ours? a handoff asked?), or, when its long lifetime is a third
    /// gone, a listing and the put, and then waits two polls — so it makes
    /// at most three requests in any three polls.
    async fn tick(&self) -> VaultResult<bool> {
        let _op = self.op.lock().await;
        self.phase_ok()?;
        let lifetime = self.lifetime();
        let now = Instant::now();
        let (remaining, poll_due) = {
            let s = lock(&self.state);
            (
                s.valid_until.saturating_duration_since(now),
                now >= s.next_poll,
            )
        };
        let renew_due = remaining <= lifetime * 2 / 3;
        if lifetime == self.opts.ttl {
            if renew_due {
                return self.renew_locked(lifetime, true).await.map(|()| true);
            }
            if poll_due {
                self.verify().await?;
            }
            return Ok(false);
        }
        // idle; renewed at once if the short lease of the active time is
        // about to run out
        if renew_due && (poll_due || remaining < self.opts.ttl * 2 / 3) {
            self.renew_locked(lifetime, false).await?;
            lock(&self.state).next_poll = Instant::now() + self.opts.poll * 2;
            return Ok(true);
        }
        if poll_due {
            self.verify().await?;
        }
        Ok(false)
    }

    /// Verify, put the lease with `lifetime`, and with `check_after` verify
    /// again (an idle holder leaves that to its next poll).
    async fn renew_locked(&self, lifetime: Duration, check_after: bool) -> VaultResult<()> {
        self.phase_ok()?;
        let res = async {
            self.verify().await?;
            let (epoch, body) = {
                let s = lock(&self.state);
                let mut b = s.body.clone();
                b.expires = unix_now() + ttl_secs(lifetime);
                b.renewals += 1;
                (s.epoch, b)
            };
            let bytes = Bytes::from(seal_lease(&self.keys, &self.vault_id, epoch, &body)?);
            let t0 = Instant::now();
            self.store.put(&lease_key(epoch), bytes).await?;
            {
                let mut s = lock(&self.state);
                s.body = body;
                s.valid_until = t0 + lifetime;
                s.last_error = None;
            }
            // A writer that took over between our check and our put has
            // deleted our object, which the put just brought back: look
            // again, so that leftover is never mistaken for the lease once
            // the taker is gone (`verify` removes it).
            if !check_after {
                return Ok(());
            }
            self.verify().await
        }
        .await;
        if let Err(e) = &res {
            if !matches!(e, VaultError::LeaseLost { .. }) {
                warn!(error = %e, "could not renew the writer lease; will retry");
                lock(&self.state).last_error = Some(e.to_string());
            }
        }
        res
    }

    fn phase_ok(&self) -> VaultResult<()> {
        match &lock(&self.state).phase {
            Phase::Held => Ok(()),
            Phase::Lost(why) => Err(VaultError::LeaseLost {
                detail: why.clone(),
            }),
            Phase::Released => Err(VaultError::LeaseLost {
                detail: "the writer lease was released (the vault was closed)".into(),
            }),
        }
    }

    /// Before a commit (or any other store change): the lease must be
    /// confirmed (waits for a deferred confirmation), held and comfortably
    /// valid (renewed inline if the background renewal is late), and still
    /// be ours in the store.
    pub(crate) async fn check_writable(&self) -> VaultResult<()> {
        self.confirmed().await?;
        let _op = self.op.lock().await;
        self.phase_ok()?;
        let remaining = {
            let mut s = lock(&self.state);
            s.last_active = Instant::now();
            s.valid_until.saturating_duration_since(Instant::now())
        };
        if remaining < self.opts.ttl / 3 {
            return self
                .renew_locked(self.opts.ttl, true)
                .await
                .map_err(|e| match e {
                    VaultError::LeaseLost { .. } => e,
                    other => VaultError::LeaseUnavailable {
                        detail: other.to_string(),
                    },
                });
        }
        // A lease broken by another writer is noticed here at the latest,
        // not only at the next renewal.
        self.verify().await.map_err(|e| match e {
            VaultError::LeaseLost { .. } => e,
            other => VaultError::LeaseUnavailable {
                detail: other.to_string(),
            },
        })
    }

    /// Delete the lease if it is still ours; afterwards nothing commits.
    pub(crate) async fn release(&self) -> VaultResult<()> {
        self.stop_confirming();
        let _op = self.op.lock().await;
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        let (phase, epoch, holder) = {
            let mut s = lock(&self.state);
            let p = std::mem::replace(&mut s.phase, Phase::Released);
            if let Phase::Lost(_) = &p {
                s.phase = p.clone();
            }
            (p, s.epoch, s.body.holder)
        };
        if let Some(set) = live().as_mut() {
            set.remove(&holder);
        }
        if phase != Phase::Held {
            return Ok(());
        }
        let key = lease_key(epoch);
        match self.store.get(&key).await {
            Ok(b) => {
                if open_lease(&self.keys, &self.vault_id, epoch, &b)
                    .is_some_and(|l| l.holder == holder)
                {
                    self.store.delete(&key).await?;
                    info!(%key, "released the writer lease");
                }
                if self.handoff.borrow().is_some() {
                    let _ = self.store.delete(&handoff::answer_key(epoch)).await;
                }
                Ok(())
            }
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn status(&self) -> LeaseStatus {
        let s = lock(&self.state);
        let (state, error) = match &s.phase {
            Phase::Held => ("held", s.last_error.clone()),
            Phase::Lost(why) => ("lost", Some(why.clone())),
            Phase::Released => ("released", None),
        };
        LeaseStatus {
            state,
            key: lease_key(s.epoch),
            expires: s.body.expires,
            renewals: s.body.renewals,
            error,
        }
    }

    pub(crate) fn is_released(&self) -> bool {
        lock(&self.state).phase == Phase::Released
    }

    pub(crate) fn is_lost(&self) -> bool {
        matches!(lock(&self.state).phase, Phase::Lost(_))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_confirming();
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        let holder = lock(&self.state).body.holder;
        if let Some(set) = live().as_mut() {
            set.remove(&holder);
        }
    }
}

async fn renew_loop(weak: Weak<Lease>, every: Duration) {
    let every = every.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(l) = weak.upgrade() else { return };
        match l.tick().await {
            Ok(true) => debug!(key = %l.key(), "renewed the writer lease"),
            Ok(false) => {}
            Err(VaultError::LeaseLost { .. }) => return,
            Err(_) => {} // logged; retried at the next tick
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_times() {
        assert_eq!(lease_key(1), "lease/0000000000000001");
        assert_eq!(parse_lease_key(&lease_key(0xabc)), Some(0xabc));
        assert_eq!(parse_lease_key("lease/12"), None);
        assert_eq!(parse_lease_key("lease/000000000000000g"), None);
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc(951_827_696), "2000-02-29 12:34:56 UTC");
    }

    #[test]
    fn seal_is_fixed_size_and_bound_to_vault_and_epoch() {
        let keys = Keys::derive(&strata_crypto::MasterKey::generate().unwrap()).unwrap();
        let id = [7u8; 16];
        let mk = |label: &str| LeaseBody {
            holder: [1; 16],
            host: "h".into(),
            machine: [0; 16],
            pid: 42,
            label: label.into(),
            acquired: 1,
            expires: 2,
            renewals: 3,
        };
        let a = seal_lease(&keys, &id, 5, &mk("x")).unwrap();
        let b = seal_lease(&keys, &id, 5, &mk(&"y".repeat(5000))).unwrap();
        assert_eq!(a.len(), b.len(), "size must not depend on the contents");
        assert_eq!(a.len(), 8 + 12 + LEASE_PLAINTEXT + 16);
        assert_eq!(open_lease(&keys, &id, 5, &a), Some(mk("x")));
        assert_eq!(
            open_lease(&keys, &id, 5, &b).unwrap().label.len(),
            MAX_LABEL
        );
        assert_eq!(open_lease(&keys, &id, 6, &a), None, "epoch in the AD");
        assert_eq!(open_lease(&keys, &[8; 16], 5, &a), None, "vault in the AD");
        let mut t = a.clone();
        t[30] ^= 1;
        assert_eq!(open_lease(&keys, &id, 5, &t), None);
    }
}
