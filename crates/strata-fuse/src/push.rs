//! Spare plaintext into the kernel's page cache. A small read has to
//! decrypt (and authenticate) the whole 64 KiB segments it touches; the
//! read answers what was asked, and this thread hands the rest of those
//! segments to the kernel (`FUSE_NOTIFY_STORE`), so the next small reads
//! there are served from the page cache without a request. It runs off
//! the request path, drops work when it falls behind, and stores only what
//! [`Vfs::if_unchanged`] still vouches for (no handle open for writing on
//! the file, no change of contents since the read).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use fuser::{INodeNo, Notifier};
use strata_vfs::{Around, Vfs};
use tracing::debug;

/// Reads whose spare bytes wait to be stored (a few MiB at most).
const QUEUE: usize = 32;

/// The read side's end: hands spare plaintext to the thread.
#[derive(Clone)]
pub struct Pusher(SyncSender<Around>);

impl Pusher {
    /// Queue the spare bytes of `a`, if it has any (dropped when the
    /// queue is full: the kernel will ask for them if it needs them).
    pub(crate) fn offer(&self, a: Around) {
        if a.spare().next().is_none() {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.0.try_send(a) {
            debug!("page-cache push queue full; dropping spare plaintext");
        }
    }
}

/// A pusher and the receiving end for [`start`].
pub fn channel() -> (Pusher, Receiver<Around>) {
    let (tx, rx) = sync_channel(QUEUE);
    (Pusher(tx), rx)
}

/// Store what arrives on `rx` into the kernel's cache through `notifier`,
/// until every [`Pusher`] is dropped (the filesystem ended).
pub fn start(vfs: Arc<Vfs>, notifier: Notifier, rx: Receiver<Around>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("strata-push".into())
        .spawn(move || {
            while let Ok(a) = rx.recv() {
                vfs.if_unchanged(&a, || {
                    for (offset, bytes) in a.spare() {
                        // ENOENT: the kernel no longer holds the inode
                        if let Err(e) = notifier.store(INodeNo(a.ino), offset, bytes) {
                            debug!(ino = a.ino, offset, error = %e, "page-cache push refused");
                            break;
                        }
                    }
                });
            }
        })
        .map(drop)
}
