//! Fault injection for tests: [`FaultStore`] wraps a store and consults a
//! shared, runtime-changeable [`FaultPlan`] before (and, for corruption and
//! lost replies, after) each operation.
//!
//! Injected errors say "injected fault" in their message. Kinds: `fail_next`
//! uses the kind asked for; random failures and lost put replies are
//! `Transient` (so retries can recover); crash-like faults (`crash`,
//! `fail_puts_after`) are `Other`, so retries don't hide them.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{StoreError, StoreErrorKind, StoreResult};
use crate::{Capabilities, DynStore, ObjectMeta, Store};

/// The operation kinds a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// `put` and `put_if_absent`.
    Put,
    Get,
    GetRange,
    List,
    Delete,
    Stat,
    /// Any operation.
    Any,
}

impl FaultOp {
    fn matches(self, op: FaultOp) -> bool {
        self == FaultOp::Any || self == op
    }

    fn is_write(self) -> bool {
        matches!(self, FaultOp::Put | FaultOp::Delete)
    }
}

#[derive(Debug)]
struct PrefixFault {
    prefix: String,
    allowed: u64,
    seen: u64,
}

#[derive(Debug, Default)]
struct FaultState {
    fail_next: Vec<(FaultOp, u32, StoreErrorKind)>,
    prefix_puts: Vec<PrefixFault>,
    crashed: bool,
    random: Option<(f64, StdRng)>,
    corrupt_prefix: Option<String>,
    lose_put_replies: u32,
    injected: u64,
}

/// What [`FaultStore`] should break. Cheap to clone; clones share state, so
/// a test keeps one and changes it while the store is in use.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    state: Arc<Mutex<FaultState>>,
}

impl FaultPlan {
    /// A plan that injects nothing (yet).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fail the next `n` operations matching `op` with an error of `kind`
    /// (nothing reaches the inner store).
    pub fn fail_next(&self, op: FaultOp, n: u32, kind: StoreErrorKind) {
        self.lock().fail_next.push((op, n, kind));
    }

    /// Let the first `allowed` puts of keys starting with `prefix` through,
    /// then fail every later one (non-transient, nothing written).
    pub fn fail_puts_after(&self, prefix: &str, allowed: u64) {
        self.lock().prefix_puts.push(PrefixFault {
            prefix: prefix.to_owned(),
            allowed,
            seen: 0,
        });
    }

    /// Simulate a crash: every write (put, put_if_absent, delete) fails from
    /// now on (non-transient, nothing written) until [`FaultPlan::clear`].
    pub fn crash(&self) {
        self.lock().crashed = true;
    }

    /// Whether [`FaultPlan::crash`] is in force.
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Fail each operation with probability `rate` (0.0..=1.0) with a
    /// transient error, drawing from an RNG seeded with `seed`.
    pub fn random_failures(&self, rate: f64, seed: u64) {
        self.lock().random = Some((rate.clamp(0.0, 1.0), StdRng::seed_from_u64(seed)));
    }

    /// Flip one byte of the data returned by every `get`/`get_range` of a key
    /// starting with `prefix` (`""` = every key).
    pub fn corrupt_reads(&self, prefix: &str) {
        self.lock().corrupt_prefix = Some(prefix.to_owned());
    }

    /// The next `n` puts reach the inner store (and land), but report a
    /// transient error, as when a cloud's reply is lost.
    pub fn lose_put_replies(&self, n: u32) {
        self.lock().lose_put_replies = n;
    }

    /// Remove every fault (and end a crash). The injected count is kept.
    pub fn clear(&self) {
        let mut s = self.lock();
        let injected = s.injected;
        *s = FaultState {
            injected,
            ..FaultState::default()
        };
    }

    /// How many faults have been injected so far (errors and corruptions).
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// The fault to inject before `op` on `key`, if any.
    fn before(&self, op: FaultOp, key: &str) -> Option<(StoreErrorKind, String)> {
        let mut s = self.lock();
        let fault = Self::pick(&mut s, op, key);
        if fault.is_some() {
            s.injected += 1;
        }
        fault
    }

    fn pick(s: &mut FaultState, op: FaultOp, key: &str) -> Option<(StoreErrorKind, String)> {
        if s.crashed && op.is_write() {
            return Some((
                StoreErrorKind::Other,
                "injected fault: store crashed".into(),
            ));
        }
        if op == FaultOp::Put {
            for pf in s
                .prefix_puts
                .iter_mut()
                .filter(|pf| key.starts_with(&pf.prefix))
            {
                pf.seen += 1;
                if pf.seen > pf.allowed {
                    return Some((
                        StoreErrorKind::Other,
                        format!(
                            "injected fault: puts under {:?} fail after {}",
                            pf.prefix, pf.allowed
                        ),
                    ));
                }
            }
        }
        if let Some(i) = s
            .fail_next
            .iter()
            .position(|(o, n, _)| *n > 0 && o.matches(op))
        {
            let entry = &mut s.fail_next[i];
            entry.1 -= 1;
            let kind = entry.2;
            if entry.1 == 0 {
                s.fail_next.remove(i);
            }
            return Some((kind, "injected fault".into()));
        }
        if let Some((rate, rng)) = &mut s.random {
            if rng.gen_bool(*rate) {
                return Some((
                    StoreErrorKind::Transient,
                    "injected fault: random transient failure".into(),
                ));
            }
        }
        None
    }

    fn corrupts(&self, key: &str) -> bool {
        let mut s = self.lock();
        let hit = s
            .corrupt_prefix
            .as_deref()
            .is_some_and(|p| key.starts_with(p));
        if hit {
            s.injected += 1;
        }
        hit
    }

    fn loses_put_reply(&self) -> bool {
        let mut s = self.lock();
        if s.lose_put_replies > 0 {
            s.lose_put_replies -= 1;
            s.injected += 1;
            true
        } else {
            false
        }
    }
}

/// A store that injects the faults of a [`FaultPlan`] into another store.
#[derive(Clone)]
pub struct FaultStore {
    inner: DynStore,
    plan: FaultPlan,
}

impl FaultStore {
    pub fn new(inner: DynStore, plan: FaultPlan) -> Self {
        FaultStore { inner, plan }
    }

    /// The (shared) plan; change it at any time.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    fn check(&self, fop: FaultOp, op: &'static str, key: &str) -> StoreResult<()> {
        match self.plan.before(fop, key) {
            None => Ok(()),
            Some((kind, message)) => Err(StoreError::new(
                kind,
                self.inner.describe(),
                op,
                Some(key),
                message,
            )),
        }
    }

    fn maybe_corrupt(&self, key: &str, data: Bytes) -> Bytes {
        if data.is_empty() || !self.plan.corrupts(key) {
            return data;
        }
        let mut b = BytesMut::from(&data[..]);
        let i = b.len() / 2;
        b[i] ^= 0xFF;
        b.freeze()
    }

    fn after_put(&self, op: &'static str, key: &str) -> StoreResult<()> {
        if self.plan.loses_put_reply() {
            return Err(StoreError::transient(
                self.inner.describe(),
                op,
                Some(key),
                "injected fault: reply lost (the write landed)",
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for FaultStore {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.check(FaultOp::Put, "put", key)?;
        self.inner.put(key, data).await?;
        self.after_put("put", key)
    }
    async fn put_deferred(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.check(FaultOp::Put, "put", key)?;
        self.inner.put_deferred(key, data).await?;
        self.after_put("put", key)
    }
    async fn sync(&self) -> StoreResult<()> {
        self.inner.sync().await
    }
    fn will_need(&self, key: &str) {
        self.inner.will_need(key)
    }
    async fn prepare(&self) -> StoreResult<()> {
        self.inner.prepare().await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        self.check(FaultOp::Put, "put_if_absent", key)?;
        let created = self.inner.put_if_absent(key, data).await?;
        self.after_put("put_if_absent", key)?;
        Ok(created)
    }
    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        self.check(FaultOp::Get, "get", key)?;
        let data = self.inner.get(key).await?;
        Ok(self.maybe_corrupt(key, data))
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.check(FaultOp::GetRange, "get_range", key)?;
        let data = self.inner.get_range(key, range).await?;
        Ok(self.maybe_corrupt(key, data))
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.check(FaultOp::List, "list", prefix)?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.check(FaultOp::Delete, "delete", key)?;
        self.inner.delete(key).await
    }
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.check(FaultOp::Stat, "stat", key)?;
        self.inner.stat(key).await
    }
}
