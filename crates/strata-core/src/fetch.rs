//! Getting stored bytes of data blobs: [`Fetcher`] sends every data-blob
//! request of a vault (reads, read-ahead, the read cache's fills), checks
//! that the store returned as many bytes as asked for, and measures how fast the store delivers ([`LinkMeter`]), which
//! the read-ahead sizes its requests by.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_store::{Bytes, Capabilities, DynStore};
use tracing::trace;

use crate::error::{VaultError, VaultResult};

/// What a failed data read tells the user to do.
pub(crate) const HINT: &str = "run `strata check` to list affected files";

/// How fast the store delivers: the bytes of the last completed requests
/// over the time at least one of them was outstanding (the union of their
/// intervals). Requests that were cancelled or failed do not count.
#[derive(Debug, Default)]
pub(crate) struct LinkMeter {
    /// `(start, end, bytes)` of recently completed requests, oldest first.
    done: VecDeque<(Instant, Instant, u64)>,
}

/// Completed requests the rate estimate looks at, and how old they may be.
const METER_REQUESTS: usize = 16;
const METER_AGE: Duration = Duration::from_secs(5);

impl LinkMeter {
    pub(crate) fn record_span(&mut self, start: Instant, end: Instant, bytes: u64) {
        self.done.push_back((start, end, bytes));
        while self.done.len() > METER_REQUESTS
            || self
                .done
                .front()
                .is_some_and(|r| end.saturating_duration_since(r.1) > METER_AGE)
        {
            self.done.pop_front();
        }
    }

    /// Bytes per second, once there is enough to go by.
    pub(crate) fn rate(&self) -> Option<f64> {
        let mut spans: Vec<(Instant, Instant)> = self.done.iter().map(|r| (r.0, r.1)).collect();
        spans.sort();
        let mut busy = Duration::ZERO;
        let mut cur: Option<(Instant, Instant)> = None;
        for (a, b) in spans {
            cur = match cur {
                Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    busy += cb - ca;
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        if let Some((ca, cb)) = cur {
            busy += cb - ca;
        }
        let bytes: u64 = self.done.iter().map(|r| r.2).sum();
        let secs = busy.as_secs_f64();
        (secs >= 0.02 && bytes >= 128 * 1024).then(|| bytes as f64 / secs)
    }
}

/// Sends data-blob requests to the store (see the module comment).
pub struct Fetcher {
    store: DynStore,
    caps: Capabilities,
    meter: Mutex<LinkMeter>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    pub(crate) fn new(store: DynStore) -> Fetcher {
        Fetcher {
            caps: store.capabilities(),
            store,
            meter: Mutex::new(LinkMeter::default()),
        }
    }

    /// The store's capabilities.
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// How fast the store has been delivering lately, in bytes per second;
    /// `None` until there is enough to go by.
    pub fn delivery_rate(&self) -> Option<f64> {
        self.meter.lock().unwrap_or_else(|e| e.into_inner()).rate()
    }

    /// Bytes `range` of object `key`: one range request, or with `whole`
    /// a get of the whole object cut to `range` (for stores without range
    /// reads). A reply shorter than asked is a truncated object.
    pub async fn get(&self, key: &str, range: Range<u64>, whole: bool) -> VaultResult<Bytes> {
        trace!(blob = %key, ?range, whole, "fetch");
        let started = Instant::now();
        let res = if whole {
            self.store.get(key).await
        } else {
            self.store.get_range(key, range.clone()).await
        };
        let bytes = res.map_err(|e| VaultError::from_get(e, key, HINT))?;
        self.meter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_span(started, Instant::now(), bytes.len() as u64);
        let need = if whole {
            range.end
        } else {
            range.end - range.start
        };
        if (bytes.len() as u64) < need {
            return Err(VaultError::Corrupt {
                object: key.to_string(),
                range: Some(range),
                file: None,
                detail: format!(
                    "object is truncated (got {} of {} bytes)",
                    bytes.len(),
                    need
                ),
            });
        }
        Ok(if whole {
            bytes.slice(range.start as usize..need as usize)
        } else {
            bytes.slice(..need as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_rate_counts_overlapping_requests_once() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let mut m = LinkMeter::default();
        assert_eq!(m.rate(), None);
        // two overlapping requests (0..100, 50..200 ms) and one after a
        // gap (300..400 ms): 300 KB over 300 ms of busy time
        m.record_span(ms(0), ms(100), 100_000);
        m.record_span(ms(50), ms(200), 100_000);
        m.record_span(ms(300), ms(400), 100_000);
        let r = m.rate().unwrap();
        assert!((r - 1e6).abs() < 1e3, "{r}");
        // only the most recent requests count
        for i in 0..METER_REQUESTS as u64 {
            m.record_span(ms(1000 + 10 * i), ms(1010 + 10 * i), 50_000);
        }
        let r = m.rate().unwrap();
        assert!((r - 5e6).abs() < 5e3, "{r}");
    }
}
