//! [`Gate`]: keeps few FUSE threads waiting in the kernel for a request.
//!
//! The kernel hands each request to the FUSE thread that has waited
//! longest (its waiters are a FIFO), so with 8 threads waiting, a series of
//! one-at-a-time requests (`ls -lR`: a `getxattr` per file) wakes all 8 in
//! turn, each a cold thread, often on the other CPU: about twice the daemon
//! CPU time and context switches of a single thread. So a thread that
//! finishes a request while another already waits in the kernel parks on a
//! condition variable instead of reading again. One thread (two after data
//! I/O, see below) keeps reading, and the others are called back when the
//! requests stop being quick:
//!
//! - a request that can block on I/O on the FUSE thread (read, write and
//!   flush of a local store) first releases a parked thread when no other
//!   thread is left reading, so concurrent I/O is served at once as before;
//!   after such a request two threads keep reading, so a stream of them
//!   alternates between two threads without a release each time;
//! - a parked thread goes back to reading after [`PARK`] anyway: a quick
//!   request that blocks after all (a lock held longer than expected)
//!   delays the next one by that much at most, never for good, and when the
//!   mount falls idle every thread ends up reading (nothing wakes an idle
//!   daemon), which is also how the threads end at unmount.
//!
//! Only performance depends on the counts here being right: every
//! request is still answered by the thread that read it.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a thread stays parked at most.
pub const PARK: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Counts {
    /// Threads inside a request.
    busy: usize,
    /// Threads parked and not yet released.
    parked: usize,
    /// Releases not yet taken by a parked thread.
    released: usize,
}

pub struct Gate {
    threads: usize,
    counts: Mutex<Counts>,
    cv: Condvar,
}

fn lock(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gate {
    /// A gate for `threads` FUSE threads (1: nothing ever parks).
    pub fn new(threads: usize) -> Self {
        Gate {
            threads: threads.max(1),
            counts: Mutex::new(Counts::default()),
            cv: Condvar::new(),
        }
    }

    /// Threads reading from the kernel (or on their way back to it).
    fn readers(&self, c: &Counts) -> usize {
        self.threads.saturating_sub(c.busy + c.parked)
    }

    /// A request starts on this thread; `may_block`: it can wait for I/O.
    /// The request's work goes between this and the guard's drop.
    pub fn enter(&self, may_block: bool) -> Pass<'_> {
        let mut c = lock(&self.counts);
        c.busy += 1;
        if may_block && c.parked > 0 && self.readers(&c) == 0 {
            c.parked -= 1;
            c.released += 1;
            self.cv.notify_one();
        }
        Pass {
            gate: self,
            may_block,
        }
    }

    /// The request is done (answered, or handed to a task): go back to
    /// reading, or park while enough other threads read.
    fn leave(&self, may_block: bool) {
        let keep = if may_block { 2 } else { 1 };
        let mut c = lock(&self.counts);
        c.busy = c.busy.saturating_sub(1);
        // `readers` counts this thread now
        if self.readers(&c) <= keep {
            return;
        }
        c.parked += 1;
        let (mut c, _) = self
            .cv
            .wait_timeout_while(c, PARK, |c| c.released == 0)
            .unwrap_or_else(|e| e.into_inner());
        if c.released > 0 {
            c.released -= 1; // a release is for any parked thread
        } else {
            c.parked = c.parked.saturating_sub(1);
        }
    }
}

/// A request in progress on this thread (see [`Gate::enter`]).
pub struct Pass<'a> {
    gate: &'a Gate,
    may_block: bool,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.leave(self.may_block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_thread_never_parks() {
        let g = Gate::new(1);
        drop(g.enter(false));
        drop(g.enter(true));
        let c = lock(&g.counts);
        assert_eq!((c.busy, c.parked, c.released), (0, 0, 0));
    }

    #[test]
    fn a_blocking_request_releases_a_parked_thread() {
        let g = Arc::new(Gate::new(2));
        // thread 1 finishes a quick request while thread 2 reads: it parks
        let g1 = g.clone();
        let parked = std::thread::spawn(move || drop(g1.enter(false)));
        while lock(&g.counts).parked == 0 {
            std::thread::yield_now();
        }
        // thread 2 starts a read: nobody else reads, so thread 1 is called back
        let pass = g.enter(true);
        parked.join().unwrap();
        {
            let c = lock(&g.counts);
            assert_eq!((c.busy, c.parked, c.released), (1, 0, 0));
        }
        // and after it two threads keep reading: thread 2 does not park
        drop(pass);
        let c = lock(&g.counts);
        assert_eq!((c.busy, c.parked, c.released), (0, 0, 0));
    }

    #[test]
    fn a_parked_thread_comes_back_by_itself() {
        let g = Gate::new(3);
        // two others read: this one parks, with nobody to call it back
        drop(g.enter(false));
        let c = lock(&g.counts);
        assert_eq!((c.busy, c.parked, c.released), (0, 0, 0));
    }
}
