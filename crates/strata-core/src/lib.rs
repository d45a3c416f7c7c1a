//! # strata-core — the vault
//!
//! Owns the on-store format and everything between the crypto layer and the
//! front ends (the CLI, the VFS under the FUSE mount):
//! - [`format`]: object names and byte layouts — the public header
//!   (`strata.vault`), data blobs (chunks sealed in 64 KiB segments), metadata
//!   log objects and checkpoints (see docs/FORMAT.md);
//! - [`tree`] and [`record`]: the in-memory metadata tree and the records
//!   that change it (applied identically live and on replay);
//! - [`vault`]: opening/creating a vault, committing records as a hash-chained
//!   log, checkpointing, rollback detection; [`paths`]: path-level
//!   operations on the tree;
//! - the data plane: [`layout`] (the chunk/segment range arithmetic every
//!   path uses), [`chunks`] (reading, sealing and uploading chunks; owns the
//!   store, keys and read cache for file contents), [`fetch`] (data-blob
//!   requests and the link meter), [`readcache`] (the ciphertext cache) and
//!   [`prefetch`] (read-ahead policy); [`data`]: whole files in and out
//!   (`put`/`get`);
//! - [`lease`]: the writer lease (one writer per vault), and its handoff
//!   between devices ([`lease::handoff`]);
//! - [`maint`]: `info`, `gc` and `check`; [`state`]: what this machine has
//!   seen of each vault (rollback detection).
//!
//! Data flows one way: front ends → vault → chunks → fetch/readcache →
//! crypto / store; `prefetch` drives `chunks` and never the vault.

pub mod chunks;
pub mod data;
pub mod error;
pub mod fetch;
pub mod follow;
pub mod format;
pub mod layout;
pub mod lease;
pub mod maint;
pub mod paths;
pub mod prefetch;
pub mod readcache;
pub mod record;
pub mod slotfile;
pub mod state;
pub mod tree;
pub mod vault;

pub use chunks::{Chunks, ReadCacheOptions};
pub use error::{VaultError, VaultResult};
pub use lease::{handoff, LeaseOptions};
pub use record::{ChunkRef, Kind, Record, Ts};
pub use tree::{Inode, Tree, ROOT_INO};
pub use vault::{CreateOptions, OpenOptions, Vault};
