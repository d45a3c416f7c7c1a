//! Free space on the cache disk. The uploader samples it on every tick;
//! when it falls under a margin (or a local write got ENOSPC) the cache is
//! *short of space*: the read cache gives its space back, dirty chunks are
//! uploaded at once and their files released as soon as the journal holds
//! their records (not only after a commit), and writers wait — a bounded
//! time without progress — instead of failing at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Free space under which the cache counts as short of space: an eighth of
/// the filesystem, at least 4 MiB and at most 64 MiB.
fn margin(total: u64) -> u64 {
    (total / 8).clamp(4 << 20, 64 << 20)
}

pub(crate) struct Space {
    dir: PathBuf,
    /// Bytes free for us at the last sample (`u64::MAX`: not sampled yet).
    free: AtomicU64,
    total: AtomicU64,
    low: AtomicBool,
}

impl Space {
    pub(crate) fn new(dir: PathBuf) -> Space {
        let s = Space {
            dir,
            free: AtomicU64::new(u64::MAX),
            total: AtomicU64::new(0),
            low: AtomicBool::new(false),
        };
        s.sample();
        s
    }

    /// Measure the free space. Returns `Some(low)` when the short-of-space
    /// state changed.
    pub(crate) fn sample(&self) -> Option<bool> {
        let st = rustix::fs::statvfs(&self.dir).ok()?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        let total = st.f_blocks.saturating_mul(st.f_frsize);
        self.free.store(free, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        let low = free < margin(total);
        (self.low.swap(low, Ordering::Relaxed) != low).then_some(low)
    }

    /// A local write got ENOSPC: short of space until a sample says otherwise.
    pub(crate) fn hit_full(&self) {
        self.free.store(0, Ordering::Relaxed);
        self.low.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Dirty bytes a writer may keep adding while the cache is short of
    /// space (about the chunk being written): half the margin.
    pub(crate) fn slack(&self) -> u64 {
        margin(self.total.load(Ordering::Relaxed)) / 2
    }

    /// Bytes free at the last sample (`None` if never measured).
    pub(crate) fn free(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|f| *f != u64::MAX)
    }
}

impl crate::Vfs {
    /// Dirty bytes writers may have before they wait for uploads: the
    /// configured limit, but at most ¾ of what the pending data and the
    /// cache disk's free space add up to (the budget adapts to the disk).
    pub(crate) fn dirty_budget(&self) -> u64 {
        let bytes = self.wb.bytes.load(Ordering::Relaxed);
        let free = self.space.free().unwrap_or(u64::MAX);
        self.opts
            .dirty_limit
            .min(bytes.saturating_add(free) / 4 * 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_bounded() {
        assert_eq!(margin(0), 4 << 20);
        assert_eq!(margin(64 << 20), 8 << 20);
        assert_eq!(margin(1 << 40), 64 << 20);
    }

    #[test]
    fn enospc_makes_it_low_until_sampled() {
        let d = tempfile::tempdir().unwrap();
        let s = Space::new(d.path().to_path_buf());
        assert!(s.free().is_some());
        s.hit_full();
        assert!(s.is_low());
        assert_eq!(s.free(), Some(0));
        s.sample();
        assert!(s.free().unwrap() > 0);
    }
}
