//! # strata-crypto — the crypto layer
//!
//! Owns every secret and every cryptographic operation of Strata:
//! - the password → key-encryption key step (Argon2id, parameters stored in the
//!   vault header) and wrapping/unwrapping of the random 256-bit master key;
//! - the sub-keys derived from the master key (BLAKE3 `derive_key`, one
//!   context string per purpose): data, metadata, names, nonces, and the
//!   local cache (a key per cache file);
//! - AES-256-GCM (through `aws-lc-rs`) for 64 KiB data segments and metadata
//!   objects, with nonces and associated data chosen by the caller's format;
//! - keyed BLAKE3 for blob names (content addressing) and object hashes;
//! - the Padmé padding rule that hides exact sizes.
//!
//! It knows nothing about stores or the vault layout. All key material is
//! zeroized on drop and never printed (`Debug` impls are redacted).

mod keys;
mod padding;
mod password;

pub use keys::{BlobId, FileKey, Keys, MasterKey, NONCE_LEN, TAG_LEN};
pub use padding::padme;
pub use password::{derive_kek, unwrap_master_key, wrap_master_key, KdfParams, Kek, SALT_LEN};

/// Errors of the crypto layer. Messages never contain key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Authentication failed: wrong key/password, or the bytes were changed.
    #[error("authentication failed (wrong password, or the data was modified)")]
    Authentication,
    /// The key-derivation parameters are unusable.
    #[error("invalid key-derivation parameters: {0}")]
    BadKdfParams(String),
    /// Input has the wrong length or shape.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// Fill `buf` with cryptographically secure random bytes.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| CryptoError::Random)
}
