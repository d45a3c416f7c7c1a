//! Password → key-encryption key (Argon2id) and wrapping of the master key.
//!
//! The master key is random and never changes; a password change rewraps it
//! (one small header object), nothing else is re-encrypted.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::keys::{MasterKey, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::{random_bytes, CryptoError};

/// Length of the Argon2id salt stored in the header.
pub const SALT_LEN: usize = 32;

/// Argon2id parameters, stored in the public vault header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_kib: u32,
    /// Time cost (iterations).
    pub t: u32,
    /// Parallelism (lanes).
    pub p: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: ~150 ms on the reference machine (RFC 9106's
    /// second recommended option).
    fn default() -> Self {
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only (never the default).
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        }
    }

    /// Largest memory cost accepted (1 GiB, in KiB).
    pub const MAX_M_KIB: u32 = 1024 * 1024;
    /// Largest memory × time cost accepted (8 GiB, in KiB).
    pub const MAX_WORK_KIB: u64 = 8 * 1024 * 1024;

    /// Refuse absurd parameters read from an untrusted header (a tampered
    /// header must not make us allocate gigabytes or spin for minutes); the
    /// same bounds apply when creating a vault, so every vault opens.
    pub fn validate(&self) -> Result<(), CryptoError> {
        // u64: `p` comes from an untrusted header and may be anything.
        if u64::from(self.m_kib) < 8 * u64::from(self.p.max(1)) || self.m_kib > Self::MAX_M_KIB {
            return Err(CryptoError::BadKdfParams(format!(
                "memory {} KiB outside 8 KiB..1 GiB",
                self.m_kib
            )));
        }
        if self.t == 0 || self.t > 64 {
            return Err(CryptoError::BadKdfParams(format!(
                "time cost {} outside 1..64",
                self.t
            )));
        }
        // The header is read from the store before anything authenticates
        // it: a bound on the work keeps a tampered header from making an
        // open take minutes (memory × passes ≤ 8 GiB, e.g. 1 GiB × 8 or
        // the default 64 MiB × 3).
        if u64::from(self.m_kib) * u64::from(self.t) > Self::MAX_WORK_KIB {
            return Err(CryptoError::BadKdfParams(format!(
                "memory × time cost {} KiB × {} above 8 GiB",
                self.m_kib, self.t
            )));
        }
        if self.p == 0 || self.p > 64 {
            return Err(CryptoError::BadKdfParams(format!(
                "parallelism {} outside 1..64",
                self.p
            )));
        }
        Ok(())
    }
}

/// Key-encryption key derived from the password. Zeroized on drop.
pub struct Kek(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// Run Argon2id over the password.
pub fn derive_kek(password: &[u8], salt: &[u8], params: KdfParams) -> Result<Kek, CryptoError> {
    params.validate()?;
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(KEY_LEN))
        .map_err(|e| CryptoError::BadKdfParams(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    a.hash_password_into(password, salt, out.as_mut())
        .map_err(|e| CryptoError::BadKdfParams(e.to_string()))?;
    Ok(Kek(out))
}

fn kek_cipher(kek: &Kek) -> Result<LessSafeKey, CryptoError> {
    let k =
        UnboundKey::new(&AES_256_GCM, kek.0.as_ref()).map_err(|_| CryptoError::Malformed("key"))?;
    Ok(LessSafeKey::new(k))
}

/// Wrap the master key: `nonce(12) ‖ AES-256-GCM(kek, master)(32) ‖ tag(16)`.
/// `ad` binds the public header fields (version, vault id, KDF parameters), so
/// editing them in the header makes unwrapping fail.
pub fn wrap_master_key(kek: &Kek, master: &MasterKey, ad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let cipher = kek_cipher(kek)?;
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    let mut buf = Vec::with_capacity(NONCE_LEN + KEY_LEN + TAG_LEN);
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(master.as_bytes());
    let tag = cipher
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(ad),
            &mut buf[NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Malformed("seal"))?;
    buf.extend_from_slice(tag.as_ref());
    Ok(buf)
}

/// Unwrap the master key; `Authentication` means wrong password (or a
/// modified header).
pub fn unwrap_master_key(kek: &Kek, wrapped: &[u8], ad: &[u8]) -> Result<MasterKey, CryptoError> {
    if wrapped.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
        return Err(CryptoError::Malformed("wrapped key length"));
    }
    let cipher = kek_cipher(kek)?;
    let nonce = Nonce::try_assume_unique_for_key(&wrapped[..NONCE_LEN])
        .map_err(|_| CryptoError::Malformed("nonce"))?;
    let mut buf = Zeroizing::new(wrapped[NONCE_LEN..].to_vec());
    let plain = cipher
        .open_in_place(nonce, Aad::from(ad), buf.as_mut_slice())
        .map_err(|_| CryptoError::Authentication)?;
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(plain);
    let mk = MasterKey::from_bytes(key);
    key.zeroize();
    Ok(mk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_password() {
        let salt = [7u8; SALT_LEN];
        let p = KdfParams::insecure_for_tests();
        let mk = MasterKey::generate().unwrap();
        let kek = derive_kek(b"correct horse", &salt, p).unwrap();
        let w = wrap_master_key(&kek, &mk, b"ad").unwrap();
        let back = unwrap_master_key(&kek, &w, b"ad").unwrap();
        assert_eq!(back.as_bytes(), mk.as_bytes());
        let bad = derive_kek(b"wrong", &salt, p).unwrap();
        assert_eq!(
            unwrap_master_key(&bad, &w, b"ad").unwrap_err(),
            CryptoError::Authentication
        );
        assert_eq!(
            unwrap_master_key(&kek, &w, b"other ad").unwrap_err(),
            CryptoError::Authentication
        );
    }

    #[test]
    fn absurd_params_rejected() {
        let bad = KdfParams {
            m_kib: u32::MAX,
            t: 1,
            p: 1,
        };
        assert!(derive_kek(b"x", &[0; SALT_LEN], bad).is_err());
    }
}
