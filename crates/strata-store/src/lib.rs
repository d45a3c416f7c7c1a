//! # strata-store — the store layer
//!
//! Owns everything about *where bytes live*: one small object-store trait
//! ([`Store`]), the backends behind it, store-URL parsing ([`open_url`]), and
//! the layers stacked on the trait: retry with backoff and jitter, a
//! concurrency limit, request/byte counters, object-size caps / disabled
//! range reads (to emulate primitive clouds), and fault injection for tests
//! ([`FaultStore`]).
//!
//! The backends:
//!
//! * `file://` (or a bare path) and `memory://`: [`OpendalStore`] (for
//!   `file://`, opendal only lists; puts and reads are plain `std::fs`, with
//!   durable, atomic puts);
//! * `s3://`, `webdav+http(s)://` and `onedrive:`: cloud services through
//!   `opendal`, also as [`OpendalStore`], with their own URL options,
//!   credential sources and a capability probe;
//! * `sftp://`: objects as files on an SSH server, through the system's
//!   OpenSSH client and `openssh-sftp-client` (not opendal);
//! * `basic+http(s)://`: [`HttpBasicStore`], for clouds whose whole API is
//!   upload / download / list web pages (by default the bundled
//!   `strata-server`'s; TOML profiles describe similar services).
//!
//! This crate knows nothing about encryption or vaults: it moves opaque objects
//! named by `/`-separated keys. Layers above it (crypto, core) never talk to a
//! backend except through [`Store`].

mod backend;
pub mod bufpool;
mod cloud;
mod error;
mod fault;
mod http_basic;
pub mod inline;
mod keys;
mod layers;
mod local;
mod open_objects;
mod sftp;
mod tls;
mod url;
mod webdav;

use std::ops::Range;
use std::sync::Arc;

pub use bytes::Bytes;

pub use crate::backend::OpendalStore;
pub use crate::cloud::{WEBDAV_PASSWORD_ENV, WEBDAV_USER_ENV};
pub use crate::error::{StoreError, StoreErrorKind, StoreResult};
pub use crate::fault::{FaultOp, FaultPlan, FaultStore};
pub use crate::http_basic::{
    AuthProfile, DeleteProfile, DownloadProfile, HttpBasicStore, HttpProfile, ListFormat,
    ListProfile, UploadBody, UploadProfile, CONNECT_TIMEOUT, DEFAULT_TOKEN_ENV, READ_TIMEOUT,
};
pub use crate::layers::{
    CapStore, ConcurrencyLimit, Metrics, MetricsSnapshot, MetricsStore, RetryPolicy, RetryStore,
};
pub use crate::url::{build_stack, open_url, parse_size, StoreOptions};

/// What a store can and cannot do. Layers above adapt to these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// `get_range` is supported; when false, callers must fetch whole objects.
    pub range_reads: bool,
    /// `put_if_absent` is *enforced* by the backend (proven, not merely accepted).
    pub conditional_create: bool,
    /// Largest object `put` accepts, in bytes (`None` = unlimited).
    pub max_object_size: Option<u64>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            range_reads: true,
            conditional_create: false,
            max_object_size: None,
        }
    }
}

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full key, relative to the store root (e.g. `data/ab/cdef…`).
    pub key: String,
    pub size: u64,
}

/// The one storage interface the rest of Strata sees.
///
/// Keys are relative, `/`-separated, never start with `/`, and use only
/// `[A-Za-z0-9._/-]`. Writes are whole-object: `put` replaces the object
/// atomically from the reader's point of view (no partial objects are visible).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// What this store can do.
    fn capabilities(&self) -> Capabilities;

    /// A human-readable name of the store for error messages (never secrets).
    fn describe(&self) -> String;

    /// Write a whole object, replacing any existing one. Durable when it returns.
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()>;

    /// Like [`Store::put`], but durability may be deferred until the next
    /// [`Store::sync`] (the object is visible at once). Lets a local
    /// filesystem flush many objects with one sync instead of one each.
    /// Stores without such a distinction just `put`.
    async fn put_deferred(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.put(key, data).await
    }

    /// A hint that object `key` will be read soon, whole: a store on the
    /// local disk starts reading it into the page cache in the background
    /// (a sequential reader's next chunk). No effect elsewhere; never
    /// fails. Layers must forward it.
    fn will_need(&self, _key: &str) {}

    /// Make every [`Store::put_deferred`] that returned before this call
    /// durable. Layers must forward it.
    async fn sync(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Check that the store is reachable and usable (credentials, bucket,
    /// root folder) and probe what it cannot declare up front, e.g. whether
    /// conditional create is really enforced. Call once after opening and
    /// before relying on [`Store::capabilities`]; until then a remote store
    /// reports the safe answers. Layers must forward it.
    async fn prepare(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Create an object only if it does not exist. Returns `Ok(false)` when it
    /// already existed. Only call when `capabilities().conditional_create`;
    /// otherwise this returns an `Unsupported` error.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> StoreResult<bool>;

    /// Read a whole object. Missing object → `NotFound` error.
    async fn get(&self, key: &str) -> StoreResult<Bytes>;

    /// Read `range` of an object (clamped to its end). Only when
    /// `capabilities().range_reads`; otherwise `Unsupported`.
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes>;

    /// List every object whose key starts with `prefix`, recursively, sorted by key.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>>;

    /// Delete an object. Deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Size of an object, or `None` if it does not exist.
    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>>;
}

/// Shared handle to a store (with all its layers).
pub type DynStore = Arc<dyn Store>;
