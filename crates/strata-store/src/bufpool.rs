//! A few large receive buffers kept for reuse.
//!
//! A range read of a remote object is received into a buffer of its size
//! (a data chunk: ~4 MiB). A fresh buffer that large is a fresh memory
//! mapping (glibc maps anything above 2 MiB on its own and unmaps it on
//! free), so every request paid a page fault per 4 KiB of it. A reader
//! that is done with such a buffer (`get` after writing a chunk out) gives
//! it back with [`give`], and the next range read takes it with [`take`].
//! Buffers nobody gives back are simply freed: the pool only ever holds
//! what was returned, at most [`KEEP`] buffers.

use std::sync::Mutex;

/// Buffers kept at most (`get` has 8 chunks in flight plus a few queued).
pub const KEEP: usize = 12;

/// Smaller buffers are not worth keeping (they come from the heap).
const MIN_KEPT: usize = 1 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for at least `len` bytes: a returned one when
/// one is large enough, else a new one.
pub fn take(len: usize) -> Vec<u8> {
    if len >= MIN_KEPT {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = pool.iter().position(|b| b.capacity() >= len) {
            return pool.swap_remove(i);
        }
    }
    Vec::with_capacity(len)
}

/// Give a buffer back for a later [`take`] (dropped if the pool is full or
/// the buffer is small).
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() < MIN_KEPT {
        return;
    }
    buf.clear();
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < KEEP {
        pool.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_large_enough() {
        let mut b = take(2 << 20);
        b.extend_from_slice(&[7u8; 100]);
        let cap = b.capacity();
        give(b);
        let again = take(2 << 20);
        assert!(again.is_empty() && again.capacity() >= 2 << 20);
        assert!(again.capacity() >= cap.min(2 << 20));
        // small buffers are not pooled
        give(Vec::with_capacity(10));
        assert!(take(10).capacity() >= 10);
    }
}
