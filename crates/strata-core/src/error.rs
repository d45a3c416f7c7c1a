//! Errors of the vault layer. Every message names the object (and, for data,
//! the vault path and byte range) and says what the user can do.

use std::ops::Range;

use strata_store::{StoreError, StoreErrorKind};

pub type VaultResult<T> = Result<T, VaultError>;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("wrong password for vault at {store} (nothing was changed)")]
    WrongPassword { store: String },

    #[error(
        "{store} is not a Strata vault (no strata.vault header); create one with `strata init`"
    )]
    NotAVault { store: String },

    #[error("{store} already holds a Strata vault; refusing to overwrite it")]
    AlreadyAVault { store: String },

    #[error(
        "{store} is not empty and is not a Strata vault; use an empty location for a new vault"
    )]
    NotEmpty { store: String },

    #[error("vault header {store}/strata.vault: {detail}")]
    BadHeader { store: String, detail: String },

    #[error("vault header {store}/strata.vault: format version {found} is not supported by this strata (supports {supported}); upgrade strata (or, if no newer strata wrote it, the header was damaged)")]
    UnsupportedVersion {
        store: String,
        found: u32,
        supported: u32,
    },

    #[error("corrupted object {object}{}{}: {detail}. The store's copy was modified, swapped or truncated; run `strata check --read-data` to list every damaged file",
        .range.as_ref().map(|r| format!(" (bytes {}..{})", r.start, r.end)).unwrap_or_default(),
        .file.as_ref().map(|f| format!(", part of {f}")).unwrap_or_default())]
    Corrupt {
        object: String,
        range: Option<Range<u64>>,
        file: Option<String>,
        detail: String,
    },

    #[error("missing object {object}{}: it was deleted from the store; {hint}",
        .file.as_ref().map(|f| format!(" (part of {f})")).unwrap_or_default())]
    Missing {
        object: String,
        file: Option<String>,
        hint: String,
    },

    #[error("rollback detected: the store's metadata is at version {found}, but this machine has already seen version {seen}. Someone restored an older copy of the vault or deleted recent logs. Refusing to open; if you restored a backup on purpose, pass --accept-rollback")]
    Rollback { seen: u64, found: u64 },

    #[error("the store's metadata history diverges from what this machine saw at version {version} (tampering, or another writer); refusing to open. If this is expected, pass --accept-rollback")]
    Fork { version: u64 },

    #[error("{}", crate::lease::locked_message(.holder, *.now, *.margin, .note.as_deref()))]
    Locked {
        holder: Box<crate::lease::Holder>,
        /// Unix seconds when the lease was looked at.
        now: u64,
        /// Clock margin (seconds) honoured after the lease's expiry.
        margin: u64,
        /// Why a handoff asked of the holder did not happen.
        note: Option<String>,
    },

    #[error("this writer lost the vault's writer lease: {detail}. It commits nothing more, so the other writer's changes are not overwritten; changes it has not committed stay local (a mount keeps them in its cache directory, a command's are not saved). Stop it, and remount or rerun when the other writer is done")]
    LeaseLost { detail: String },

    #[error("cannot confirm the vault's writer lease ({detail}); not committing until it is renewed (uncommitted changes are kept)")]
    LeaseUnavailable { detail: String },

    #[error("{path}: no such file or directory in the vault")]
    NotFound { path: String },

    #[error("{path}: already exists in the vault")]
    Exists { path: String },

    #[error("{path}: not a directory")]
    NotADirectory { path: String },

    #[error("{path}: is a directory (use -r)")]
    IsADirectory { path: String },

    #[error("{path}: directory not empty (use -r)")]
    DirNotEmpty { path: String },

    #[error("invalid path {path:?}: {why}")]
    InvalidPath { path: String, why: String },

    #[error("invalid operation: {0}")]
    Invalid(String),

    #[error("the store rejected an object: {0}")]
    TooLarge(String),

    #[error("{0}")]
    Store(StoreError),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("crypto: {0}")]
    Crypto(#[from] strata_crypto::CryptoError),
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        if e.kind == StoreErrorKind::TooLarge {
            let hint = e.too_large_hint().unwrap_or_default();
            VaultError::TooLarge(format!("{e}; {hint}"))
        } else {
            VaultError::Store(e)
        }
    }
}

impl VaultError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        VaultError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn corrupt(object: impl Into<String>, detail: impl Into<String>) -> Self {
        VaultError::Corrupt {
            object: object.into(),
            range: None,
            file: None,
            detail: detail.into(),
        }
    }

    /// Attach the vault path of the file a data error belongs to.
    pub fn in_file(mut self, path: &str) -> Self {
        if let VaultError::Corrupt { file, .. } | VaultError::Missing { file, .. } = &mut self {
            file.get_or_insert_with(|| path.to_string());
        }
        self
    }

    /// Turn a store `NotFound` on `object` into a `Missing` error.
    pub fn from_get(e: StoreError, object: &str, hint: &str) -> Self {
        if e.kind == StoreErrorKind::NotFound {
            VaultError::Missing {
                object: object.to_string(),
                file: None,
                hint: hint.to_string(),
            }
        } else {
            VaultError::from(e)
        }
    }
}
