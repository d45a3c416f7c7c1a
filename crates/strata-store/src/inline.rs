//! Blocking work run inline on threads that may block.
//!
//! Store I/O on the local disk (`file://`) and decryption run on Tokio's
//! blocking pool so an async worker never blocks. A thread that exists to
//! serve one request at a time and may block (a FUSE event-loop thread
//! driving its request with `Handle::block_on`) gains nothing from that
//! hop: each hand-off to the pool and back costs two thread wake-ups,
//! more than a 4 KiB read from the page cache. Such a thread marks itself
//! with [`enter`] for the duration of the request, and [`run`] then calls
//! the work directly.

use std::cell::Cell;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// While the guard lives, [`run`] on this thread runs its work inline.
pub fn enter() -> InlineGuard {
    let was = INLINE.with(|c| c.replace(true));
    InlineGuard { was }
}

/// Restores the thread's previous mode when dropped.
pub struct InlineGuard {
    was: bool,
}

impl Drop for InlineGuard {
    fn drop(&mut self) {
        INLINE.with(|c| c.set(self.was));
    }
}

/// Whether this thread runs blocking work inline.
pub fn is_inline() -> bool {
    INLINE.with(Cell::get)
}

/// Run blocking `f`: inline on a thread marked by [`enter`], else on
/// Tokio's blocking pool (an error only if that task failed).
pub async fn run<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if is_inline() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await
}
