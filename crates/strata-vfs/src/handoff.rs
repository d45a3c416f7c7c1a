//! Handing the vault over to another device (FORMAT §13.1): when another
//! device's writer asks for the lease ([`strata_core::handoff`]), this
//! writer waits until no file is open for writing here, then shuts the
//! gate on new ones (EROFS from now on), uploads and commits everything it
//! accepted, releases the lease, and carries on as a follower of the new
//! writer. The asker is told each step through the answer object.

use std::sync::atomic::Ordering;
use std::time::Duration;

use strata_core::handoff::HandoffRequest;
use strata_core::lease::unix_now;
use tracing::{info, warn};

use crate::{lock, Vfs};

impl Vfs {
    /// Wait for another device to ask for the vault and hand it over.
    /// Returns once this VFS is read-only and the lease is released (the
    /// front end then follows the store), or never for a read-only VFS.
    pub async fn serve_handoff(&self) {
        if self.read_only() {
            return std::future::pending().await;
        }
        loop {
            let req = self.vault.handoff_requested().await;
            if self.hand_over(&req).await {
                return;
            }
        }
    }

    /// Hand over to `req`; `false` if its asker stopped waiting before the
    /// files open for writing here were closed (this VFS stays the writer).
    async fn hand_over(&self, req: &HandoffRequest) -> bool {
        let to = req.describe();
        info!(asker = %to, "handing the vault over");
        let mut said = String::new();
        let say = |state: String, said: &mut String| {
            *lock(&self.handoff) = Some(format!("handing over to {to}: {state}"));
            let changed = *said != state;
            *said = state;
            changed
        };
        // 1. no file open for writing, then no new one
        loop {
            let n = self.handles.writers();
            if n == 0 && self.handles.shut_writes() {
                break;
            }
            if unix_now() > req.asker.expires {
                info!(asker = %to, "the device that asked stopped waiting; still the writer");
                *lock(&self.handoff) = None;
                self.vault.abandon_handoff();
                return false;
            }
            let state = format!(
                "waiting for {n} file{} open for writing to be closed",
                if n == 1 { "" } else { "s" }
            );
            if say(state.clone(), &mut said) {
                self.answer(req, &state).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        {
            // under the journal lock: see `Vfs::apply`
            let _j = lock(&self.journal);
            self.demoted.store(true, Ordering::SeqCst);
        }
        // 2. everything accepted goes to the store; tried again until it
        // does (the lease stays ours meanwhile, the asker keeps waiting)
        loop {
            let (bytes, _, files) = self.wb.totals();
            let state = if bytes == 0 {
                "committing".to_string()
            } else {
                format!(
                    "uploading {bytes} bytes of {files} file{} and committing",
                    if files == 1 { "" } else { "s" }
                )
            };
            say(state.clone(), &mut said);
            self.answer(req, &state).await;
            match self.shutdown(Duration::from_secs(3600), |_, _| {}).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "could not flush for the handoff; trying again");
                    self.note_error(format!("handoff: {e}"));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
        // 3. let go (what was kept for followers goes first: the next
        // writer does not know it)
        if let Err(e) = self.vault.delete_freed_now().await {
            warn!(error = %e, "could not delete freed blobs; `strata gc` removes them");
        }
        if let Err(e) = self.vault.release_lease().await {
            // it expires on its own; the asker waits for that or gives up
            warn!(error = %e, "could not release the writer lease for the handoff");
            self.note_error(format!("handoff: could not release the lease: {e}"));
        }
        *lock(&self.handoff) = Some(format!("handed over to {to}; following it"));
        info!(asker = %to, "handed the vault over; following the new writer");
        true
    }

    async fn answer(&self, req: &HandoffRequest, state: &str) {
        if let Err(e) = self.vault.answer_handoff(req, state).await {
            warn!(error = %e, "could not answer the handoff request");
        }
    }
}
