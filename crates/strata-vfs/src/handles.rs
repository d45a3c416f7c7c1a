//! Open file handles. Every `open`/`create` makes a [`Handle`] with its own
//! number (the FUSE `fh`), which later reads, writes and the release name.
//! A handle holds the state that belongs to one opener rather than to the
//! file: its read-ahead ([`Prefetcher`]), so two programs reading one file
//! in different places each get their own read-ahead. The table also counts
//! open handles per inode (a file unlinked while open lives until the last
//! one is released).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use strata_core::prefetch::Prefetcher;

use crate::lock;

/// One open file handle.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) ino: u64,
    /// Sequential-read detection and read-ahead of this handle's reads.
    pub(crate) prefetcher: Mutex<Prefetcher>,
}

/// The table of open handles.
#[derive(Debug, Default)]
pub(crate) struct Handles {
    by_fh: Mutex<HashMap<u64, Arc<Handle>>>,
    /// Open handles per inode.
    per_ino: Mutex<HashMap<u64, u32>>,
    next: AtomicU64,
}

impl Handles {
    /// A new handle on `ino`; returns its number (never 0).
    pub(crate) fn open(&self, ino: u64) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let h = Arc::new(Handle {
            ino,
            prefetcher: Mutex::new(Prefetcher::default()),
        });
        // count first: a handle found in the table is always counted
        *lock(&self.per_ino).entry(ino).or_default() += 1;
        lock(&self.by_fh).insert(fh, h);
        fh
    }

    /// The handle `fh`, if it is open and on `ino`.
    pub(crate) fn get(&self, ino: u64, fh: u64) -> Option<Arc<Handle>> {
        lock(&self.by_fh).get(&fh).filter(|h| h.ino == ino).cloned()
    }

    /// Release handle `fh` of `ino` (its read-ahead in flight is cancelled).
    /// Returns how many handles on `ino` are left open. A handle number
    /// that is not open (already released) changes nothing.
    pub(crate) fn close(&self, ino: u64, fh: u64) -> u32 {
        let removed = {
            let mut m = lock(&self.by_fh);
            match m.get(&fh) {
                Some(h) if h.ino == ino => m.remove(&fh),
                _ => None,
            }
        };
        let mut per = lock(&self.per_ino);
        let Some(c) = per.get_mut(&ino) else {
            return 0;
        };
        if removed.is_some() {
            *c = c.saturating_sub(1);
        }
        let left = *c;
        if left == 0 {
            per.remove(&ino);
        }
        left
    }

    /// Open handles on `ino`.
    pub(crate) fn open_count(&self, ino: u64) -> u32 {
        lock(&self.per_ino).get(&ino).copied().unwrap_or(0)
    }

    /// Open handles in all.
    pub(crate) fn total(&self) -> u64 {
        lock(&self.per_ino).values().map(|v| u64::from(*v)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_counted_per_inode_and_released_once() {
        let t = Handles::default();
        let a = t.open(5);
        let b = t.open(5);
        let c = t.open(6);
        assert!(a != b && a != 0);
        assert_eq!((t.open_count(5), t.open_count(6), t.total()), (2, 1, 3));
        assert!(t.get(5, a).is_some());
        assert!(t.get(6, a).is_none(), "a handle is only found on its inode");
        assert_eq!(t.close(5, a), 1);
        assert_eq!(t.close(5, a), 1, "releasing twice changes nothing");
        assert_eq!(
            t.close(6, b),
            1,
            "a handle of another inode is not released"
        );
        assert_eq!(t.close(5, b), 0);
        assert_eq!(t.close(6, c), 0);
        assert_eq!(t.total(), 0);
    }
}
