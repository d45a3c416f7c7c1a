//! A read-only VFS following a writer elsewhere: [`Vfs::follow`] catches
//! the vault up with the store ([`strata_core::Vault::refresh`]) and says
//! what the front end must tell the kernel to forget (cached attributes,
//! page cache, directory entries), so a file rewritten on the writer reads
//! back new on the follower. A file deleted on the writer while it is open
//! here stays readable through its open handles (a *ghost*: the inode as
//! it was, until the last handle is released), as after a local unlink.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use strata_core::follow::Refresh;
use strata_core::{Inode, Kind, Tree};
use tracing::{debug, warn};

use crate::{lock, Vfs};

/// What changed in one [`Vfs::follow`].
#[derive(Debug, Default)]
pub struct Changes {
    /// Inodes whose attributes, data or entries changed.
    pub inodes: Vec<u64>,
    /// Directory entries `(parent, name)` that appeared, went or changed.
    pub entries: Vec<(u64, Vec<u8>)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty() && self.entries.is_empty()
    }
}

/// The follower's state for `strata status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowStatus {
    /// Unix seconds of the last successful refresh.
    pub last_refresh: Option<u64>,
    /// Why the last refresh failed (it is tried again at the next one).
    pub refresh_error: Option<String>,
}

#[derive(Default)]
pub(crate) struct FollowState {
    status: Mutex<FollowStatus>,
    /// Inodes deleted by the writer while open here.
    ghosts: Mutex<HashMap<u64, Inode>>,
}

impl FollowState {
    pub(crate) fn get(&self) -> FollowStatus {
        lock(&self.status).clone()
    }

    /// `f` of the ghost `ino`, if there is one.
    pub(crate) fn with_ghost<R>(&self, ino: u64, f: impl FnOnce(&Inode) -> R) -> Option<R> {
        lock(&self.ghosts).get(&ino).map(f)
    }

    /// The last handle on `ino` was released.
    pub(crate) fn released(&self, ino: u64) {
        lock(&self.ghosts).remove(&ino);
    }
}

impl Vfs {
    /// Catch up with the store (read-only VFS only). On an error (store
    /// unreachable, rollback, damaged log) nothing changes and the error is
    /// kept for `status`.
    pub async fn follow(&self) -> Result<Changes, String> {
        if !self.read_only() {
            return Err("only a read-only mount follows the store".into());
        }
        // open files as they are now: those the writer deleted become ghosts
        let open: Vec<Inode> = self
            .handles
            .open_inodes()
            .into_iter()
            .filter_map(|ino| self.vault.inode(ino))
            .collect();
        let r = self.vault.refresh().await;
        if r.is_ok() {
            if !matches!(r, Ok(Refresh::Unchanged)) {
                // before the front end forgets what changed: spare
                // plaintext read before is not handed to the kernel
                self.handles.contents_changed();
            }
            let mut ghosts = lock(&self.follow.ghosts);
            for n in open {
                if self.vault.inode(n.ino).is_none() && self.open_count(n.ino) > 0 {
                    ghosts.insert(n.ino, n);
                }
            }
        }
        let mut st = lock(&self.follow.status);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                st.refresh_error = Some(msg.clone());
                return Err(msg);
            }
        };
        st.last_refresh = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        st.refresh_error = None;
        drop(st);
        let mut c = Changes::default();
        match r {
            Refresh::Unchanged => {}
            Refresh::Applied(records) => {
                for r in &records {
                    let (inodes, entries) = r.touches();
                    c.inodes.extend(inodes);
                    c.entries.extend(entries);
                }
                c.inodes.sort_unstable();
                c.inodes.dedup();
                c.entries.sort();
                c.entries.dedup();
            }
            // the tree was loaded anew: everything may have changed, in
            // the tree it replaced (names now gone) and in the new one
            Refresh::Reloaded(old) => {
                let mut all = |t: &Tree| {
                    for n in t.inodes() {
                        c.inodes.push(n.ino);
                        if n.kind == Kind::Dir {
                            c.entries
                                .extend(n.entries().keys().map(|name| (n.ino, name.to_vec())));
                        }
                    }
                };
                all(&old);
                drop(old);
                self.vault.with_tree(all);
                c.inodes.sort_unstable();
                c.inodes.dedup();
                c.entries.sort();
                c.entries.dedup();
            }
        }
        Ok(c)
    }

    /// Follow the store every `every` until the task is dropped, handing
    /// each non-empty set of changes to `forget` (the front end's cache
    /// invalidation; nothing for a front end that reads the tree on every
    /// request). Errors are logged and retried at the next tick.
    pub async fn follow_every(&self, every: Duration, mut forget: impl FnMut(Changes)) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: the vault was just opened
        loop {
            tick.tick().await;
            match self.follow().await {
                Ok(c) if !c.is_empty() => {
                    debug!(
                        inodes = c.inodes.len(),
                        entries = c.entries.len(),
                        "followed the writer"
                    );
                    forget(c);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "could not follow the store; trying again at the next refresh")
                }
            }
        }
    }

    /// The follower's state (`None` for a read-write VFS).
    pub fn follow_status(&self) -> Option<FollowStatus> {
        self.read_only().then(|| self.follow.get())
    }
}
