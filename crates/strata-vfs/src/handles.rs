//! Open file handles. Every `open`/`create` makes a [`Handle`] with its own
//! number (the FUSE `fh`), which later reads, writes and the release name.
//! A handle holds the state that belongs to one opener rather than to the
//! file: its read-ahead ([`Prefetcher`]), so two programs reading one file
//! in different places each get their own read-ahead. The table also counts
//! open handles per inode (a file unlinked while open lives until the last
//! one is released), and handles open for writing (a handoff waits until
//! none is left, then shuts the gate on new ones).
//!
//! It also decides when plaintext that a read decrypted beyond what was
//! asked may be handed to the kernel's page cache ([`Handles::if_unchanged`]):
//! only while no handle is open for writing on that file, and only if
//! nothing changed file contents since the read began (a write handle was
//! opened or released, a file was truncated, the follower applied the
//! writer's changes). The kernel locks a file's pages while it waits for a
//! write request to it; a push waits for those page locks; so the guard is
//! the absence of writers of the file, taken with the lock that opening a
//! writer takes, never a lock that a write request needs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use strata_core::prefetch::Prefetcher;

use crate::lock;

/// One open file handle.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) ino: u64,
    /// Opened for writing.
    pub(crate) write: bool,
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
    writers: Mutex<WriteGate>,
    /// Bumped (under `writers`) by every change of file contents that does
    /// not come through a write handle, and by opening and releasing one.
    contents_gen: AtomicU64,
}

/// Handles open for writing, and whether new ones are refused.
#[derive(Debug, Default)]
struct WriteGate {
    open: u64,
    /// The same, per inode.
    by_ino: HashMap<u64, u32>,
    shut: bool,
}

impl Handles {
    /// A new handle on `ino`; returns its number (never 0), or `None` for
    /// a handle to write with once the gate is shut ([`Handles::shut_writes`]).
    pub(crate) fn open(&self, ino: u64, write: bool) -> Option<u64> {
        if write {
            let mut g = lock(&self.writers);
            if g.shut {
                return None;
            }
            g.open += 1;
            *g.by_ino.entry(ino).or_default() += 1;
            self.contents_gen.fetch_add(1, Ordering::SeqCst);
        }
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let h = Arc::new(Handle {
            ino,
            write,
            prefetcher: Mutex::new(Prefetcher::default()),
        });
        // count first: a handle found in the table is always counted
        *lock(&self.per_ino).entry(ino).or_default() += 1;
        lock(&self.by_fh).insert(fh, h);
        Some(fh)
    }

    /// File contents changed without a write handle (a truncate, the
    /// follower's catch-up): spare plaintext read before is stale.
    pub(crate) fn contents_changed(&self) {
        let _g = lock(&self.writers);
        self.contents_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// The state of file contents now, for [`Handles::if_unchanged`]
    /// (taken before a read looks at the file; no lock).
    pub(crate) fn contents_token(&self) -> u64 {
        self.contents_gen.load(Ordering::SeqCst)
    }

    /// Run `f` if no handle is open for writing on `ino` and no file's
    /// contents changed since `token` was taken; nothing changes them
    /// while `f` runs. Returns whether `f` ran.
    pub(crate) fn if_unchanged(&self, token: u64, ino: u64, f: impl FnOnce()) -> bool {
        let g = lock(&self.writers);
        if g.by_ino.contains_key(&ino) || self.contents_gen.load(Ordering::SeqCst) != token {
            return false;
        }
        f();
        drop(g);
        true
    }

    /// Whether a handle is open for writing on `ino`.
    pub(crate) fn writing(&self, ino: u64) -> bool {
        lock(&self.writers).by_ino.contains_key(&ino)
    }

    /// Handles open for writing.
    pub(crate) fn writers(&self) -> u64 {
        lock(&self.writers).open
    }

    /// Refuse new handles to write with, if none is open now.
    pub(crate) fn shut_writes(&self) -> bool {
        let mut g = lock(&self.writers);
        g.shut = g.open == 0;
        g.shut
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
        if removed.as_ref().is_some_and(|h| h.write) {
            let mut g = lock(&self.writers);
            g.open = g.open.saturating_sub(1);
            if let Some(n) = g.by_ino.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    g.by_ino.remove(&ino);
                }
            }
            // a read that began while it was open may hold old bytes of
            // what it wrote
            self.contents_gen.fetch_add(1, Ordering::SeqCst);
        }
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

    /// Inodes with open handles.
    pub(crate) fn open_inodes(&self) -> Vec<u64> {
        lock(&self.per_ino).keys().copied().collect()
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
    fn spare_plaintext_is_vouched_for_only_without_writers_or_changes() {
        let t = Handles::default();
        let tok = t.contents_token();
        let r = t.open(1, false).unwrap();
        assert!(t.if_unchanged(tok, 1, || {}), "a reader changes nothing");
        t.contents_changed();
        assert!(
            !t.if_unchanged(tok, 1, || panic!("stale")),
            "a truncate since"
        );
        let tok = t.contents_token();
        let w = t.open(1, true).unwrap();
        assert!(
            !t.if_unchanged(tok, 1, || panic!("writer")),
            "a writer opened since"
        );
        let tok = t.contents_token();
        assert!(
            !t.if_unchanged(tok, 1, || panic!("writer")),
            "a writer is open"
        );
        assert!(t.if_unchanged(tok, 2, || {}), "a writer of another file");
        let w2 = t.open(1, true).unwrap();
        t.close(1, w);
        let tok = t.contents_token();
        assert!(
            !t.if_unchanged(tok, 1, || panic!("writer")),
            "a second writer is open"
        );
        t.close(1, w2);
        assert!(
            !t.if_unchanged(tok, 1, || panic!("written")),
            "a read during its writes"
        );
        let tok = t.contents_token();
        t.close(1, r);
        assert!(
            t.if_unchanged(tok, 1, || {}),
            "a reader's release changes nothing"
        );
    }

    #[test]
    fn handles_are_counted_per_inode_and_released_once() {
        let t = Handles::default();
        let a = t.open(5, false).unwrap();
        let b = t.open(5, true).unwrap();
        let c = t.open(6, false).unwrap();
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

    #[test]
    fn the_write_gate_shuts_only_when_no_writer_is_open() {
        let t = Handles::default();
        let w = t.open(5, true).unwrap();
        assert_eq!(t.writers(), 1);
        assert!(!t.shut_writes(), "a writer is open");
        let w2 = t.open(6, true).expect("still open for writers");
        t.close(6, w2);
        t.close(5, w);
        assert_eq!(t.writers(), 0);
        assert!(t.shut_writes());
        assert!(t.open(5, true).is_none(), "no new writer once shut");
        assert!(t.open(5, false).is_some(), "readers still open");
    }
}
