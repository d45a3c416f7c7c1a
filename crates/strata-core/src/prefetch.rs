//! Read-ahead: [`Prefetcher`] detects sequential runs of reads of one open
//! file handle and issues read-ahead into the read cache through
//! [`Chunks::prefetch`], sized to the store's measured delivery rate (see
//! the type's comment for the policy). It knows nothing of the vault: it
//! works on the data plane ([`Chunks`]) and the file's inode.

use std::time::{Duration, Instant};

use tokio::task::AbortHandle;
use tracing::{debug, trace};

use crate::chunks::Chunks;
use crate::format::blob::SEGMENT;
use crate::layout::round_to_segments;
use crate::tree::Inode;

/// Read-ahead settings of a [`Prefetcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Size of the first read-ahead request of a sequential run; each
    /// further request doubles up to the request size (a slow start on fast
    /// links, so a reader that stops early leaves little fetched for
    /// nothing). 256 KiB: the first one then covers a player's first large
    /// read after a small probe.
    pub first_request: u64,
    /// Smallest request size (also used while the read cache has no
    /// delivery-rate estimate yet).
    pub min_request: u64,
    /// Largest request size.
    pub max_request: u64,
    /// Requests are sized to take about this long at the store's measured
    /// delivery rate, between `min_request` and `max_request`.
    pub request_time: Duration,
    /// Read-ahead requests in flight at once: with two, the next one is on
    /// its way while the other is arriving, so the link does not idle.
    /// Twice as many on a link where even `max_request` takes under half of
    /// `request_time` (there, request latency rather than bandwidth limits).
    pub max_in_flight: usize,
    /// A read continues the current run if it starts at most this far past
    /// the read-ahead frontier, or at most `max(tolerance, 1 MiB)` before
    /// the end of the furthest read; anything else is a seek.
    pub tolerance: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            first_request: 256 * 1024,
            min_request: 256 * 1024,
            max_request: 4 << 20,
            request_time: Duration::from_millis(100),
            max_in_flight: 2,
            tolerance: 128 * 1024,
        }
    }
}

/// Sequential-read detection and read-ahead for one open file. Call
/// [`Prefetcher::on_read`] with every read before serving it and
/// [`Prefetcher::on_read_done`] once it is served.
///
/// Reads that follow each other form a *run*. A file keeps a few runs at
/// once (handles reading different places, or a player pulling two streams
/// from one file), each with its own read-ahead; a read that continues none
/// of them (a seek) starts a new run, replacing the least recently used one,
/// and cancels the read-ahead in flight of all others (a seek means the
/// reader wants other bytes now; a run that is continued later picks up its
/// read-ahead again). A run is sequential from its second read, or from its
/// first if it starts at offset 0. Read-ahead begins only once a read of
/// the run has been served, so the first read after an open or a seek has
/// the link to itself. It then issues requests in file order — the first one
/// small, each next one twice as large up to a size worth `request_time` at
/// the store's measured delivery rate — with at most `max_in_flight` of them
/// outstanding and the frontier at most that many requests past the
/// furthest read (on stores without range reads, where a request is a whole
/// chunk: one request at a time, at most one chunk past the furthest read).
/// So a reader that stops or seeks leaves at most about two requests' worth
/// fetched for nothing, while a reader as fast as the link always has a
/// request arriving and the next one on its way. Dropping it cancels.
#[derive(Debug)]
pub struct Prefetcher {
    cfg: PrefetchConfig,
    runs: Vec<Run>,
    /// Id of the next new run (reads report back with their run's id).
    next_id: u64,
    /// Clock for least-recently-used replacement of runs.
    clock: u64,
}

/// Runs a [`Prefetcher`] follows at once.
const MAX_RUNS: usize = 4;

/// One sequential run of reads and its read-ahead.
#[derive(Debug)]
struct Run {
    id: u64,
    last_use: u64,
    /// Where the run started.
    start: u64,
    /// End of the furthest read of the run.
    pos: u64,
    /// Reads in this run.
    reads: u64,
    /// A read of this run has been served.
    served: bool,
    /// File offset up to which read-ahead has been issued.
    ahead: u64,
    /// Size of the next request.
    next_request: u64,
    /// How far past the furthest read the frontier may be (last computed).
    window: u64,
    /// When the next request may start (requests are spaced so that two
    /// of them never arrive in lockstep).
    not_before: Option<Instant>,
    /// Requests in flight (a request crossing a chunk boundary is one
    /// task per chunk).
    tasks: Vec<Vec<AbortHandle>>,
}

impl Run {
    fn reap(&mut self) {
        self.tasks.retain(|r| r.iter().any(|t| !t.is_finished()));
    }

    /// Abort the read-ahead in flight; if the run is continued later, its
    /// read-ahead starts again (small) from the furthest read (what did
    /// arrive is in the cache and is not fetched again).
    fn cancel(&mut self, first_request: u64) {
        if self.tasks.is_empty() {
            return;
        }
        for t in self.tasks.drain(..).flatten() {
            t.abort();
        }
        self.not_before = None;
        self.ahead = self.pos;
        self.next_request = first_request;
    }

    /// Whether a read at `offset` continues this run.
    fn continued_by(&self, offset: u64, tolerance: u64) -> bool {
        let back = tolerance.max(1 << 20);
        offset.saturating_add(back) >= self.pos
            && offset <= self.ahead.max(self.pos).saturating_add(tolerance)
    }

    fn top_up(&mut self, cfg: &PrefetchConfig, chunks: &Chunks, node: &Inode) {
        if !self.served || !(self.start == 0 || self.reads >= 2) || !chunks.can_prefetch() {
            return;
        }
        let rate = chunks.delivery_rate();
        let cap = rate
            .map_or(cfg.min_request, |r| {
                (r * cfg.request_time.as_secs_f64()) as u64
            })
            .clamp(cfg.min_request, cfg.max_request);
        let cap = round_to_segments(cap);
        // On a link so fast that even the largest request takes under half
        // the request time, per-request latency is what limits a single
        // stream: keep twice as many requests in flight (like rclone's
        // multi-thread download). Slow links keep `max_in_flight`.
        let fast = rate
            .is_some_and(|r| r * cfg.request_time.as_secs_f64() >= 2.0 * cfg.max_request as f64);
        let (window, max_in_flight) = if chunks.range_reads() {
            let k = if fast {
                cfg.max_in_flight * 2
            } else {
                cfg.max_in_flight
            };
            (cap.saturating_mul(k as u64), k)
        } else {
            // A request brings a whole chunk: fetch the next chunk while the
            // reader is in this one, one at a time (two would share the link
            // and delay the one the reader waits for).
            (u64::from(node.chunk_size).max(cap), 1)
        };
        self.window = window;
        let now = Instant::now();
        while self.tasks.len() < max_in_flight && self.ahead < node.size {
            let n = self.next_request.min(cap);
            if self.ahead.saturating_add(n) > self.pos.saturating_add(window) {
                break;
            }
            let from = self.ahead;
            let to = round_to_segments(from.saturating_add(n)).min(node.size);
            let delay = self
                .not_before
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
            let req = chunks.prefetch(node, from..to, delay);
            if !req.is_empty() {
                trace!(from, to, ?delay, rate, cap, "read-ahead");
                self.tasks.push(req);
                // Two requests issued together share the link and arrive
                // together, and the link idles while the next two are on
                // their way: start the next one half a transfer later.
                self.not_before = rate
                    .and_then(|r| Duration::try_from_secs_f64((to - from) as f64 / r / 2.0).ok())
                    .map(|half| now + delay + half);
            }
            self.ahead = to;
            self.next_request = self.next_request.saturating_mul(2).min(cap);
        }
    }
}

impl Prefetcher {
    pub fn new(cfg: PrefetchConfig) -> Self {
        let first = round_to_segments(cfg.first_request.max(SEGMENT));
        let min = round_to_segments(cfg.min_request.max(first));
        let cfg = PrefetchConfig {
            first_request: first,
            min_request: min,
            max_request: round_to_segments(cfg.max_request.max(min)),
            request_time: cfg.request_time,
            max_in_flight: cfg.max_in_flight.max(1),
            tolerance: cfg.tolerance,
        };
        Prefetcher {
            cfg,
            runs: Vec::new(),
            next_id: 1,
            clock: 0,
        }
    }

    fn latest(&self) -> Option<&Run> {
        self.runs.iter().max_by_key(|r| r.last_use)
    }

    /// How far past its furthest read the most recently used run's
    /// read-ahead may reach now, in bytes (0 until that run is sequential
    /// and under way).
    pub fn window(&self) -> u64 {
        self.latest().map_or(0, |r| r.window)
    }

    /// File offset up to which the most recently used run has issued
    /// read-ahead.
    pub fn frontier(&self) -> u64 {
        self.latest().map_or(0, |r| r.ahead)
    }

    /// Runs followed now.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Read-ahead requests issued and not finished yet (all runs).
    pub fn in_flight(&mut self) -> usize {
        self.runs
            .iter_mut()
            .map(|r| {
                r.reap();
                r.tasks.len()
            })
            .sum()
    }

    /// Abort every read-ahead request in flight.
    pub fn cancel(&mut self) {
        let first = self.cfg.first_request;
        self.runs.iter_mut().for_each(|r| r.cancel(first));
    }

    /// Note a read of `len` bytes at `offset` of `node` (before serving it)
    /// and issue read-ahead. Returns the run the read belongs to, for
    /// [`Prefetcher::on_read_done`].
    pub fn on_read(&mut self, chunks: &Chunks, node: &Inode, offset: u64, len: u64) -> u64 {
        let end = offset.saturating_add(len).min(node.size).max(offset);
        self.clock += 1;
        let tol = self.cfg.tolerance;
        let found = self
            .runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.continued_by(offset, tol))
            .min_by_key(|(_, r)| offset.abs_diff(r.pos))
            .map(|(i, _)| i);
        let Some(i) = found else {
            // a seek, or a new stream
            let inflight = self.in_flight();
            if inflight > 0 {
                debug!(offset, tasks = inflight, "seek: cancelling read-ahead");
            }
            self.cancel();
            if self.runs.len() >= MAX_RUNS {
                if let Some(j) = (0..self.runs.len()).min_by_key(|&j| self.runs[j].last_use) {
                    self.runs.swap_remove(j);
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            self.runs.push(Run {
                id,
                last_use: self.clock,
                start: offset,
                pos: end,
                reads: 1,
                served: false,
                ahead: end,
                next_request: self.cfg.first_request,
                window: 0,
                not_before: None,
                tasks: Vec::new(),
            });
            return id;
        };
        let cfg = self.cfg;
        let run = &mut self.runs[i];
        run.last_use = self.clock;
        run.reap();
        run.reads += 1;
        run.pos = run.pos.max(end);
        run.ahead = run.ahead.max(run.pos);
        run.top_up(&cfg, chunks, node);
        run.id
    }

    /// A read noted with [`Prefetcher::on_read`] (which returned `run`) has
    /// been served: that run's read-ahead may start or continue — if it is
    /// still the run read last (a read that finishes after a seek must not
    /// restart the read-ahead the seek cancelled).
    pub fn on_read_done(&mut self, chunks: &Chunks, node: &Inode, run: u64) {
        let cfg = self.cfg;
        let clock = self.clock;
        if let Some(r) = self.runs.iter_mut().find(|r| r.id == run) {
            r.served = true;
            if r.last_use == clock {
                r.reap();
                r.top_up(&cfg, chunks, node);
            }
        }
    }
}

impl Default for Prefetcher {
    fn default() -> Self {
        Prefetcher::new(PrefetchConfig::default())
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.cancel();
    }
}
