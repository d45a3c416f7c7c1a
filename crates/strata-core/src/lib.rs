//! # strata-core — the vault
//!
//! Owns the on-store format and everything between the crypto layer and the
//! user-facing front ends (CLI now, FUSE next):
//! - [`format`]: object names and byte layouts — the public header
//!   (`strata.vault`), data blobs (chunks sealed in 64 KiB segments), metadata
//!   log objects and checkpoints (see docs/FORMAT.md);
//! - [`tree`]: the in-memory metadata tree and the [`record::Record`]s that
//!   change it (applied identically live and on replay);
//! - [`vault`]: opening/creating a vault, committing records as a hash-chained
//!   log, checkpointing, rollback detection;
//! - [`data`]: file contents — chunking, deduplicated uploads, segment-granular
//!   reads;
//! - [`lease`]: the writer lease (one writer per vault);
//! - [`maint`]: `info`, `gc` and `check`;
//! - [`readcache`]: the on-disk ciphertext cache and read-ahead of a mount.
//!
//! Data flows one way: front ends → core → crypto / store.

pub mod data;
pub mod error;
pub mod format;
pub mod lease;
pub mod maint;
pub mod readcache;
pub mod record;
pub mod state;
pub mod tree;
pub mod vault;

pub use error::{VaultError, VaultResult};
pub use lease::LeaseOptions;
pub use record::{ChunkRef, Kind, Record, Ts};
pub use tree::{Inode, Tree, ROOT_INO};
pub use vault::{CreateOptions, OpenOptions, Vault};
