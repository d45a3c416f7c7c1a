//! The store error type: what went wrong ([`StoreErrorKind`]), where (store,
//! operation, key) and whether it is worth retrying; plus the mapping from
//! `opendal` and `std::io` errors onto it.

use std::fmt;

/// What kind of failure a store operation hit. Layers decide on this alone
/// (retry only [`StoreErrorKind::Transient`], treat `NotFound` as absence, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The object (or the store root) does not exist.
    NotFound,
    /// Network error, timeout, 5xx, rate limit…: worth retrying.
    Transient,
    /// The backend refused access.
    PermissionDenied,
    /// The object is larger than the store accepts (HTTP 413, S3
    /// `EntityTooLarge`, a configured `max-object-size`). Permanent: the
    /// same object will be refused again; [`StoreError::limit`] carries the
    /// store's limit when it is known.
    TooLarge,
    /// The store lacks the capability this operation needs.
    Unsupported,
    /// The store URL (or its options) could not be understood.
    InvalidUrl,
    /// The object already exists (conditional create lost the race).
    AlreadyExists,
    /// Anything else; not retried.
    Other,
}

impl StoreErrorKind {
    /// Short human-readable name, used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::NotFound => "not found",
            StoreErrorKind::Transient => "transient",
            StoreErrorKind::PermissionDenied => "permission denied",
            StoreErrorKind::TooLarge => "too large",
            StoreErrorKind::Unsupported => "unsupported",
            StoreErrorKind::InvalidUrl => "invalid url",
            StoreErrorKind::AlreadyExists => "already exists",
            StoreErrorKind::Other => "error",
        }
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed store operation.
///
/// Displays as `store <store>: <op> <key>: <message>`, e.g.
/// `store file:///x: get data/ab/cd: object not found`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    /// `describe()` of the store that failed (never contains secrets).
    pub store: String,
    /// The operation: `"put"`, `"put_if_absent"`, `"get"`, `"get_range"`,
    /// `"list"`, `"delete"`, `"stat"` or `"open"`.
    pub op: &'static str,
    /// The key (or list prefix) the operation was about, if any.
    pub key: Option<String>,
    /// What happened, for humans.
    pub message: String,
    /// For [`StoreErrorKind::TooLarge`]: the store's maximum object size in
    /// bytes, when the store (or its URL) says what it is.
    pub limit: Option<u64>,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {}: {}", self.store, self.op)?;
        if let Some(key) = &self.key {
            if key.is_empty() {
                f.write_str(" (all keys)")?;
            } else {
                write!(f, " {key}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Whether a service's error text says the request was too large: an HTTP
/// 413 (as opendal reports it: `status: 413`), S3's `EntityTooLarge`, a
/// `Payload Too Large` / `Request Entity Too Large` reason.
pub(crate) fn says_too_large(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("status: 413")
        || t.contains("entitytoolarge")
        || t.contains("payload too large")
        || t.contains("request entity too large")
}

impl StoreError {
    /// A new error of `kind` for operation `op` on `store`.
    pub fn new(
        kind: StoreErrorKind,
        store: impl Into<String>,
        op: &'static str,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        StoreError {
            kind,
            store: store.into(),
            op,
            key: key.map(str::to_owned),
            message: message.into(),
            limit: None,
        }
    }

    /// The same error, recording the store's object-size limit.
    pub fn with_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }

    /// `key` does not exist.
    pub fn not_found(store: impl Into<String>, op: &'static str, key: &str) -> Self {
        Self::new(
            StoreErrorKind::NotFound,
            store,
            op,
            Some(key),
            "object not found",
        )
    }

    /// A failure worth retrying.
    pub fn transient(
        store: impl Into<String>,
        op: &'static str,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StoreErrorKind::Transient, store, op, key, message)
    }

    /// The store cannot do `op`.
    pub fn unsupported(
        store: impl Into<String>,
        op: &'static str,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StoreErrorKind::Unsupported, store, op, key, message)
    }

    /// `put` of an object of `size` bytes above the store's `limit`.
    pub fn too_large(
        store: impl Into<String>,
        op: &'static str,
        key: &str,
        size: u64,
        limit: u64,
    ) -> Self {
        Self::new(
            StoreErrorKind::TooLarge,
            store,
            op,
            Some(key),
            format!(
                "object of {size} bytes exceeds the store's maximum object size of {limit} bytes"
            ),
        )
        .with_limit(Some(limit))
    }

    /// The store URL `url` (already stripped of secrets) is not usable.
    pub fn invalid_url(url: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::InvalidUrl, url, "open", None, message)
    }

    /// The key is not a valid store key.
    pub fn invalid_key(store: impl Into<String>, op: &'static str, key: &str, why: &str) -> Self {
        Self::new(
            StoreErrorKind::Other,
            store,
            op,
            Some(key),
            format!("invalid key: {why}"),
        )
    }

    /// Map an `opendal` error onto ours.
    pub fn from_opendal(
        err: &opendal::Error,
        store: impl Into<String>,
        op: &'static str,
        key: Option<&str>,
    ) -> Self {
        use opendal::ErrorKind as K;
        let kind = match err.kind() {
            K::NotFound => StoreErrorKind::NotFound,
            K::PermissionDenied => StoreErrorKind::PermissionDenied,
            K::RateLimited => StoreErrorKind::Transient,
            K::AlreadyExists | K::ConditionNotMatch => StoreErrorKind::AlreadyExists,
            K::Unsupported => StoreErrorKind::Unsupported,
            _ if says_too_large(&err.to_string()) => StoreErrorKind::TooLarge,
            _ if err.is_temporary() => StoreErrorKind::Transient,
            _ => StoreErrorKind::Other,
        };
        let message = match kind {
            StoreErrorKind::NotFound => "object not found".to_owned(),
            _ => err.to_string(),
        };
        Self::new(kind, store, op, key, message)
    }

    /// Map a `std::io` error (from the fs backend's own I/O) onto ours.
    pub fn from_io(
        err: &std::io::Error,
        store: impl Into<String>,
        op: &'static str,
        key: Option<&str>,
    ) -> Self {
        use std::io::ErrorKind as K;
        let kind = match err.kind() {
            K::NotFound => StoreErrorKind::NotFound,
            K::PermissionDenied | K::ReadOnlyFilesystem => StoreErrorKind::PermissionDenied,
            K::AlreadyExists => StoreErrorKind::AlreadyExists,
            K::Unsupported => StoreErrorKind::Unsupported,
            K::Interrupted | K::TimedOut | K::WouldBlock | K::ResourceBusy => {
                StoreErrorKind::Transient
            }
            _ => StoreErrorKind::Other,
        };
        let message = match kind {
            StoreErrorKind::NotFound => "object not found".to_owned(),
            _ => err.to_string(),
        };
        Self::new(kind, store, op, key, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Worth retrying (network errors, timeouts, 5xx, rate limits).
    pub fn is_transient(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }

    /// The object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == StoreErrorKind::NotFound
    }

    /// Retrying the same request cannot succeed until someone changes
    /// something (the object, the store's settings, the credentials, the
    /// URL): `TooLarge`, `PermissionDenied`, `InvalidUrl`, `Unsupported`.
    /// A writer should stop retrying such an object and report it.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::TooLarge
                | StoreErrorKind::PermissionDenied
                | StoreErrorKind::InvalidUrl
                | StoreErrorKind::Unsupported
        )
    }

    /// For a `TooLarge` error: the store's object-size limit, if known.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// What to do about a `TooLarge` error, for messages: which setting fixes
    /// it. `None` for other kinds.
    pub fn too_large_hint(&self) -> Option<String> {
        if self.kind != StoreErrorKind::TooLarge {
            return None;
        }
        let size = match self.limit {
            Some(n) => format!("max-object-size={n}"),
            None => "max-object-size=SIZE (the store's limit)".to_owned(),
        };
        Some(format!(
            "the store refuses objects this big: add `{size}` to the store URL (Strata then \
             writes objects that fit: smaller chunks and split metadata) and retry"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_store_op_key_and_message() {
        let e = StoreError::not_found("file:///x", "get", "data/ab/cd");
        assert_eq!(
            e.to_string(),
            "store file:///x: get data/ab/cd: object not found"
        );
        let e = StoreError::invalid_url("s3://b", "nope");
        assert_eq!(e.to_string(), "store s3://b: open: nope");
        assert_eq!(e.kind(), StoreErrorKind::InvalidUrl);
        assert!(!e.is_transient());
        assert!(StoreError::transient("m", "put", Some("k"), "x").is_transient());
        let big = StoreError::too_large("m", "put", "k", 10, 5);
        assert!(big.is_permanent() && !big.is_transient());
        assert_eq!(big.limit(), Some(5));
        assert!(big
            .too_large_hint()
            .is_some_and(|h| h.contains("max-object-size=5")));
        assert!(!StoreError::transient("m", "put", Some("k"), "x").is_permanent());
    }

    #[test]
    fn opendal_kinds_map() {
        use opendal::{Error, ErrorKind as K};
        let map = |e: Error| StoreError::from_opendal(&e, "s", "get", Some("k")).kind;
        assert_eq!(map(Error::new(K::NotFound, "x")), StoreErrorKind::NotFound);
        assert_eq!(
            map(Error::new(K::PermissionDenied, "x")),
            StoreErrorKind::PermissionDenied
        );
        assert_eq!(
            map(Error::new(K::RateLimited, "x")),
            StoreErrorKind::Transient
        );
        assert_eq!(
            map(Error::new(K::Unexpected, "x").set_temporary()),
            StoreErrorKind::Transient
        );
        assert_eq!(map(Error::new(K::Unexpected, "x")), StoreErrorKind::Other);
        assert_eq!(
            map(Error::new(
                K::Unexpected,
                "response: Parts { status: 413, .. }"
            )),
            StoreErrorKind::TooLarge
        );
        assert_eq!(
            map(Error::new(K::Unexpected, "<Code>EntityTooLarge</Code>").set_temporary()),
            StoreErrorKind::TooLarge
        );
        assert_eq!(
            map(Error::new(K::ConditionNotMatch, "x")),
            StoreErrorKind::AlreadyExists
        );
        assert_eq!(
            map(Error::new(K::AlreadyExists, "x")),
            StoreErrorKind::AlreadyExists
        );
        assert_eq!(
            map(Error::new(K::Unsupported, "x")),
            StoreErrorKind::Unsupported
        );
    }

    #[test]
    fn io_kinds_map() {
        use std::io::{Error, ErrorKind as K};
        let map = |k: K| StoreError::from_io(&Error::from(k), "s", "put", Some("k")).kind;
        assert_eq!(map(K::NotFound), StoreErrorKind::NotFound);
        assert_eq!(map(K::TimedOut), StoreErrorKind::Transient);
        assert_eq!(map(K::PermissionDenied), StoreErrorKind::PermissionDenied);
        assert_eq!(map(K::StorageFull), StoreErrorKind::Other);
    }
}
