//! # strata-fuse — the FUSE front end
//!
//! Owns the FUSE adapter and the mount lifecycle:
//! - [`StrataFs`] ([`fs`]): `fuser::Filesystem` over a [`strata_vfs::Vfs`].
//!   In-memory metadata operations answer on fuser's event-loop threads;
//!   anything that can wait for the network or the disk runs as a Tokio task
//!   that replies when done;
//! - [`run_mount`] ([`mount`]): checks, the per-vault cache lock, opening the
//!   vault, mounting, the status file, and the orderly stop (unmount, flush,
//!   unlock) on a signal or an external unmount;
//! - [`unmount`] and [`status`] ([`control`]): find a running mount through
//!   its status file in the runtime directory and stop or query it;
//! - [`push`]: the rest of the segments a small read decrypted, handed to
//!   the kernel's page cache off the request path.
//!
//! POSIX semantics, the write-back cache and the journal live in
//! `strata-vfs`; nothing here interprets file contents.

pub mod control;
pub mod fs;
mod gate;
pub mod mount;
pub mod push;

pub use control::{runtime_dir, status, unmount};
pub use fs::StrataFs;
pub use mount::{run_mount, MountOptions};
pub use strata_vfs::session::{default_cache_dir, StopHandle};
pub use strata_vfs::{CloseMode, FsyncMode};
