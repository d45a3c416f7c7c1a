//! Layers stacked on any [`Store`]: [`RetryStore`] (exponential backoff with
//! full jitter on transient errors), [`ConcurrencyLimit`] (bounded in-flight
//! requests), [`MetricsStore`] (request and byte counters) and [`CapStore`]
//! (object-size cap and disabled range reads, to emulate primitive clouds).
//!
//! Every layer is generic over `S: Store`; `Arc<S>` (so also [`DynStore`])
//! implements [`Store`] too, so layers stack over shared handles.
//!
//! [`DynStore`]: crate::DynStore

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::Semaphore;

use crate::error::{StoreError, StoreErrorKind, StoreResult};
use crate::{Capabilities, ObjectMeta, Store};

/// A shared store is a store: lets layers wrap `Arc<dyn Store>` (= `DynStore`).
#[async_trait::async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        (**self).put(key, data).await
    }
    async fn put_deferred(&self, key: &str, data: Bytes) -> StoreResult<()> {
        (**self).put_deferred(key, data).await
    }
    async fn sync(&self) -> StoreResult<()> {
        (**self).sync().await
    }
    fn will_need(&self, key: &str) {
        (**self).will_need(key)
    }
    async fn prepare(&self) -> StoreResult<()> {
        (**self).prepare().await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        (**self).put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        (**self).get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        (**self).get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        (**self).list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        (**self).delete(key).await
    }
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        (**self).stat(key).await
    }
}

// ---------------------------------------------------------------------------
// Retry
// ---------------------------------------------------------------------------

/// How [`RetryStore`] retries transient errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = never retry).
    pub max_attempts: u32,
    /// Backoff cap for the first retry; doubles each retry.
    pub base_delay: Duration,
    /// Upper bound on any one backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff before retry number `retry` (0-based): uniformly random in
    /// `[0, min(max_delay, base_delay * 2^retry)]` ("full jitter").
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }
}

/// Retries operations that fail with a transient error
/// ([`StoreError::is_transient`]), with exponential backoff and full jitter.
/// Other errors are returned at once.
///
/// Note: a retried `put_if_absent` whose first attempt landed but whose reply
/// was lost reports `Ok(false)`.
#[derive(Debug, Clone)]
pub struct RetryStore<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S: Store> RetryStore<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryStore { inner, policy }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn retry<T, F, Fut>(&self, op: &'static str, key: &str, mut f: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let attempts = self.policy.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            match f().await {
                Err(e) if e.is_transient() && attempt < attempts => {
                    let delay = self.policy.backoff(attempt - 1);
                    tracing::warn!(
                        op,
                        key,
                        attempt,
                        max_attempts = attempts,
                        delay_ms = delay.as_millis() as u64,
                        error = %e,
                        "transient store error, retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for RetryStore<S> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.retry("put", key, || self.inner.put(key, data.clone()))
            .await
    }
    async fn put_deferred(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.retry("put", key, || self.inner.put_deferred(key, data.clone()))
            .await
    }
    async fn sync(&self) -> StoreResult<()> {
        self.retry("sync", "", || self.inner.sync()).await
    }
    fn will_need(&self, key: &str) {
        self.inner.will_need(key)
    }
    async fn prepare(&self) -> StoreResult<()> {
        self.retry("prepare", "", || self.inner.prepare()).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        self.retry("put_if_absent", key, || {
            self.inner.put_if_absent(key, data.clone())
        })
        .await
    }
    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        self.retry("get", key, || self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.retry("get_range", key, || {
            self.inner.get_range(key, range.clone())
        })
        .await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.retry("list", prefix, || self.inner.list(prefix)).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.retry("delete", key, || self.inner.delete(key)).await
    }
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.retry("stat", key, || self.inner.stat(key)).await
    }
}

// ---------------------------------------------------------------------------
// Concurrency limit
// ---------------------------------------------------------------------------

/// Bounds the number of requests in flight to the inner store.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    sem: Arc<Semaphore>,
    limit: usize,
}

impl<S: Store> ConcurrencyLimit<S> {
    /// Default bound on in-flight requests.
    pub const DEFAULT_LIMIT: usize = 16;

    /// At most `limit` (at least 1) requests in flight.
    pub fn new(inner: S, limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        ConcurrencyLimit {
            inner,
            sem: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn permit(
        &self,
        op: &'static str,
        key: &str,
    ) -> StoreResult<tokio::sync::SemaphorePermit<'_>> {
        self.sem.acquire().await.map_err(|_| {
            StoreError::new(
                StoreErrorKind::Other,
                self.inner.describe(),
                op,
                Some(key),
                "concurrency limiter closed",
            )
        })
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for ConcurrencyLimit<S> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let _p = self.permit("put", key).await?;
        self.inner.put(key, data).await
    }
    async fn put_deferred(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let _p = self.permit("put", key).await?;
        self.inner.put_deferred(key, data).await
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
        let _p = self.permit("put_if_absent", key).await?;
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        let _p = self.permit("get", key).await?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        let _p = self.permit("get_range", key).await?;
        self.inner.get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let _p = self.permit("list", prefix).await?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        let _p = self.permit("delete", key).await?;
        self.inner.delete(key).await
    }
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let _p = self.permit("stat", key).await?;
        self.inner.stat(key).await
    }
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    range_gets: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    stats: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    errors: AtomicU64,
}

/// Request and byte counters, shared by cheap clones.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    c: Arc<Counters>,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// `put` and `put_if_absent` requests.
    pub puts: u64,
    /// Whole-object `get` requests.
    pub gets: u64,
    /// `get_range` requests.
    pub range_gets: u64,
    pub lists: u64,
    pub deletes: u64,
    pub stats: u64,
    /// Bytes sent by puts (whether or not they succeeded).
    pub bytes_up: u64,
    /// Bytes returned by successful gets and range gets.
    pub bytes_down: u64,
    /// Requests that returned an error (including `NotFound` from `get`).
    pub errors: u64,
}

impl MetricsSnapshot {
    /// All requests of every kind.
    pub fn requests(&self) -> u64 {
        self.puts + self.gets + self.range_gets + self.lists + self.deletes + self.stats
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            puts: self.puts.saturating_sub(earlier.puts),
            gets: self.gets.saturating_sub(earlier.gets),
            range_gets: self.range_gets.saturating_sub(earlier.range_gets),
            lists: self.lists.saturating_sub(earlier.lists),
            deletes: self.deletes.saturating_sub(earlier.deletes),
            stats: self.stats.saturating_sub(earlier.stats),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
            errors: self.errors.saturating_sub(earlier.errors),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let c = &self.c;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            puts: r(&c.puts),
            gets: r(&c.gets),
            range_gets: r(&c.range_gets),
            lists: r(&c.lists),
            deletes: r(&c.deletes),
            stats: r(&c.stats),
            bytes_up: r(&c.bytes_up),
            bytes_down: r(&c.bytes_down),
            errors: r(&c.errors),
        }
    }

    /// Zero every counter.
    pub fn reset(&self) {
        let c = &self.c;
        for a in [
            &c.puts,
            &c.gets,
            &c.range_gets,
            &c.lists,
            &c.deletes,
            &c.stats,
            &c.bytes_up,
            &c.bytes_down,
            &c.errors,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    fn outcome<T>(&self, r: StoreResult<T>) -> StoreResult<T> {
        if r.is_err() {
            Self::add(&self.c.errors, 1);
        }
        r
    }
}

/// Counts every request that reaches it into a [`Metrics`].
#[derive(Debug, Clone)]
pub struct MetricsStore<S> {
    inner: S,
    metrics: Metrics,
}

impl<S: Store> MetricsStore<S> {
    pub fn new(inner: S, metrics: Metrics) -> Self {
        MetricsStore { inner, metrics }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for MetricsStore<S> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let c = &self.metrics.c;
        Metrics::add(&c.puts, 1);
        Metrics::add(&c.bytes_up, data.len() as u64);
        self.metrics.outcome(self.inner.put(key, data).await)
    }
    async fn put_deferred(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let c = &self.metrics.c;
        Metrics::add(&c.puts, 1);
        Metrics::add(&c.bytes_up, data.len() as u64);
        self.metrics
            .outcome(self.inner.put_deferred(key, data).await)
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
        let c = &self.metrics.c;
        Metrics::add(&c.puts, 1);
        Metrics::add(&c.bytes_up, data.len() as u64);
        self.metrics
            .outcome(self.inner.put_if_absent(key, data).await)
    }
    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        Metrics::add(&self.metrics.c.gets, 1);
        let r = self.metrics.outcome(self.inner.get(key).await);
        if let Ok(b) = &r {
            Metrics::add(&self.metrics.c.bytes_down, b.len() as u64);
        }
        r
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        Metrics::add(&self.metrics.c.range_gets, 1);
        let r = self.metrics.outcome(self.inner.get_range(key, range).await);
        if let Ok(b) = &r {
            Metrics::add(&self.metrics.c.bytes_down, b.len() as u64);
        }
        r
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        Metrics::add(&self.metrics.c.lists, 1);
        self.metrics.outcome(self.inner.list(prefix).await)
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        Metrics::add(&self.metrics.c.deletes, 1);
        self.metrics.outcome(self.inner.delete(key).await)
    }
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        Metrics::add(&self.metrics.c.stats, 1);
        self.metrics.outcome(self.inner.stat(key).await)
    }
}

// ---------------------------------------------------------------------------
// Capability caps
// ---------------------------------------------------------------------------

/// Emulates a primitive cloud: caps the object size and/or disables range
/// reads. Reported capabilities are the inner ones narrowed by these.
#[derive(Debug, Clone)]
pub struct CapStore<S> {
    inner: S,
    max_object_size: Option<u64>,
    range_reads: bool,
}

impl<S: Store> CapStore<S> {
    /// No caps yet (range reads allowed, no size limit).
    pub fn new(inner: S) -> Self {
        CapStore {
            inner,
            max_object_size: None,
            range_reads: true,
        }
    }

    /// Reject puts of objects larger than `max` bytes (`None` = no cap).
    pub fn with_max_object_size(mut self, max: Option<u64>) -> Self {
        self.max_object_size = max;
        self
    }

    /// `false` makes `get_range` fail with `Unsupported`.
    pub fn with_range_reads(mut self, enabled: bool) -> Self {
        self.range_reads = enabled;
        self
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn check_size(&self, op: &'static str, key: &str, len: usize) -> StoreResult<()> {
        match self.max_object_size {
            Some(limit) if len as u64 > limit => Err(StoreError::too_large(
                self.inner.describe(),
                op,
                key,
                len as u64,
                limit,
            )),
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for CapStore<S> {
    fn capabilities(&self) -> Capabilities {
        let inner = self.inner.capabilities();
        Capabilities {
            range_reads: inner.range_reads && self.range_reads,
            conditional_create: inner.conditional_create,
            max_object_size: match (inner.max_object_size, self.max_object_size) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.check_size("put", key, data.len())?;
        self.inner.put(key, data).await
    }
    async fn put_deferred(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.check_size("put", key, data.len())?;
        self.inner.put_deferred(key, data).await
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
        self.check_size("put_if_absent", key, data.len())?;
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        if !self.range_reads {
            return Err(StoreError::unsupported(
                self.inner.describe(),
                "get_range",
                Some(key),
                "range reads are disabled for this store; fetch whole objects",
            ));
        }
        self.inner.get_range(key, range).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.inner.stat(key).await
    }
}
