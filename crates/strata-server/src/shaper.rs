//! The bandwidth shaper: one token bucket shared by every transfer, both
//! directions.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket in "debt" form: a reservation always succeeds at once and
/// returns how long the caller must wait before moving the bytes, so
/// concurrent transfers are served in reservation order and the long-run
/// rate never exceeds `rate`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket refilled at `rate` bytes per second that holds at most
    /// `burst` bytes (it starts full).
    pub(crate) fn new(rate: u64, burst: u64) -> Self {
        let rate = rate.max(1) as f64;
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// Takes `n` bytes' worth of tokens; returns how long to wait before
    /// sending them.
    pub(crate) fn reserve(&self, n: usize) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.burst);
        s.last = now;
        s.tokens -= n as f64;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_grows_with_reservations() {
        let b = TokenBucket::new(1000, 100);
        assert_eq!(b.reserve(100), Duration::ZERO);
        let w = b.reserve(500);
        assert!(
            w > Duration::from_millis(450) && w <= Duration::from_millis(510),
            "{w:?}"
        );
        let w2 = b.reserve(500);
        assert!(w2 > Duration::from_millis(950), "{w2:?}");
    }
}
