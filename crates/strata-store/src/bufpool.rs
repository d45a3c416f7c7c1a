//! A small process-wide pool of chunk-sized buffers.
//!
//! Buffers of a chunk's size (~4 MiB) are `mmap`ed by glibc (sessions fix
//! its mmap threshold at 2 MiB to keep RSS bounded), so each fresh one was a
//! fresh mapping whose every page faulted in on first touch and was unmapped
//! on free: a page fault per 4 KiB moved. The pool keeps up to [`KEEP`] such
//! buffers for reuse, so memory stays bounded (at most `KEEP` × [`MAX_CAP`])
//! and the pages stay mapped. Its users: a remote range read is received
//! into one (and `get` gives it back once written out); a mount's uploader
//! reads a dirty chunk back into one and seals the blob into another, which
//! goes to the store as a [`Bytes`] made by [`bytes`] and comes back when
//! the store drops it.
//!
//! Buffers are plain `Vec<u8>`: [`take`] hands out an empty one with at least
//! the wanted capacity, [`give`] takes one back (or frees it if the pool is
//! full or the buffer is outside the pooled sizes), and [`bytes`] wraps one
//! into a [`Bytes`] that returns it to the pool when its last clone drops.

use std::sync::Mutex;

use bytes::Bytes;

/// Buffers below this capacity are left to the allocator (its arenas reuse
/// them without mapping).
pub const MIN_CAP: usize = 1 << 20;
/// Buffers above this capacity are never kept.
pub const MAX_CAP: usize = 16 << 20;
/// Buffers kept at most (`get` has 8 chunks in flight plus a few queued).
pub const KEEP: usize = 12;

/// A pool of buffers (the process has one: [`take`], [`give`], [`bytes`]).
pub struct Pool {
    bufs: Mutex<Vec<Vec<u8>>>,
}

static POOL: Pool = Pool::new();

impl Pool {
    pub const fn new() -> Pool {
        Pool {
            bufs: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.bufs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty buffer with capacity for at least `cap` bytes: the
    /// smallest pooled one that is big enough, else a new one.
    pub fn take(&self, cap: usize) -> Vec<u8> {
        if (MIN_CAP..=MAX_CAP).contains(&cap) {
            let mut p = self.lock();
            let best = p
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= cap)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut b = p.swap_remove(i);
                b.clear();
                return b;
            }
        }
        Vec::with_capacity(cap)
    }

    /// Keep `buf` for reuse if its capacity is within
    /// `MIN_CAP..=MAX_CAP`; when the pool is full, it replaces the
    /// smallest pooled buffer if that one is smaller (so buffers of the
    /// sizes in use win over leftovers).
    pub fn give(&self, buf: Vec<u8>) {
        if !(MIN_CAP..=MAX_CAP).contains(&buf.capacity()) {
            return;
        }
        let mut p = self.lock();
        if p.len() < KEEP {
            p.push(buf);
            return;
        }
        if let Some((i, _)) = p
            .iter()
            .enumerate()
            .min_by_key(|(_, b)| b.capacity())
            .filter(|(_, b)| b.capacity() < buf.capacity())
        {
            p[i] = buf;
        }
    }

    /// `buf` as [`Bytes`], given back to this pool when the last clone
    /// drops.
    pub fn bytes(&'static self, buf: Vec<u8>) -> Bytes {
        if (MIN_CAP..=MAX_CAP).contains(&buf.capacity()) {
            Bytes::from_owner(Pooled(buf, self))
        } else {
            Bytes::from(buf)
        }
    }

    /// How many buffers the pool holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

/// [`Pool::take`] of the process's pool.
pub fn take(cap: usize) -> Vec<u8> {
    POOL.take(cap)
}

/// [`Pool::give`] to the process's pool.
pub fn give(buf: Vec<u8>) {
    POOL.give(buf)
}

/// [`Pool::bytes`] of the process's pool.
pub fn bytes(buf: Vec<u8>) -> Bytes {
    POOL.bytes(buf)
}

/// Owner of a pooled buffer inside a [`Bytes`]: gives it back on drop.
struct Pooled(Vec<u8>, &'static Pool);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.1.give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_stay_bounded() {
        let pool = Pool::new();
        let small = pool.take(1000);
        assert!(small.capacity() >= 1000);
        pool.give(small); // too small to keep
        assert!(pool.is_empty());

        let mut a = pool.take(4 << 20);
        a.extend_from_slice(&[7u8; 100]);
        let (cap, ptr) = (a.capacity(), a.as_ptr());
        pool.give(a);
        assert_eq!(pool.len(), 1);
        // the same allocation comes back, empty
        let b = pool.take(3 << 20);
        assert_eq!((b.as_ptr(), b.capacity(), b.len()), (ptr, cap, 0));
        assert!(pool.is_empty());
        // a wish bigger than every pooled buffer gets a new one
        pool.give(b);
        let c = pool.take(5 << 20);
        assert!(c.capacity() >= 5 << 20);
        assert_eq!(pool.len(), 1);

        // never more than KEEP; a full pool swaps its smallest buffer
        // for a bigger one, and keeps no smaller one
        while !pool.is_empty() {
            pool.take(MIN_CAP); // empty it
        }
        for _ in 0..KEEP + 3 {
            pool.give(Vec::with_capacity(MIN_CAP));
        }
        assert_eq!(pool.len(), KEEP);
        let c_ptr = c.as_ptr();
        pool.give(c);
        assert_eq!(pool.len(), KEEP);
        let again = pool.take(5 << 20);
        assert_eq!(again.as_ptr(), c_ptr);
        pool.give(Vec::with_capacity(MAX_CAP + 1));
        assert!(pool.lock().iter().all(|b| b.capacity() <= MAX_CAP));
    }

    #[test]
    fn bytes_give_back_on_last_drop() {
        static P: Pool = Pool::new();
        let mut b = P.take(2 << 20);
        b.extend_from_slice(b"sealed");
        let ptr = b.as_ptr();
        let by = P.bytes(b);
        let by2 = by.clone();
        assert_eq!(&by2[..], b"sealed");
        drop(by);
        assert!(P.is_empty());
        drop(by2);
        assert_eq!(P.len(), 1);
        let again = P.take(1 << 20);
        assert_eq!(again.as_ptr(), ptr);
    }
}
