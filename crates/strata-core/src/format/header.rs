//! The public header object `strata.vault` (JSON, human-inspectable like
//! gocryptfs.conf). It holds no secret: the master key inside is wrapped with
//! a key derived from the password, and every other field is bound into the
//! wrapping's associated data, so editing any of them makes unlocking fail.

use serde::{Deserialize, Serialize};
use strata_crypto::{
    derive_kek, unwrap_master_key, wrap_master_key, KdfParams, Kek, MasterKey, SALT_LEN,
};

use super::{FORMAT_VERSION, MIN_FORMAT_VERSION};
use crate::error::{VaultError, VaultResult};

const MAGIC: &str = "strata-vault";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfSection {
    pub algorithm: String,
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
    /// hex
    pub salt: String,
}

/// Parsed `strata.vault`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// 16 random bytes, hex.
    pub vault_id: String,
    pub kdf: KdfSection,
    /// Default chunk size of new files (bytes).
    pub chunk_size: u32,
    /// `nonce ‖ AES-256-GCM(kek, master key) ‖ tag`, hex.
    pub wrapped_key: String,
}

impl Header {
    /// A new header around `master`, wrapped under `password`.
    pub fn create(
        master: &MasterKey,
        password: &[u8],
        kdf: KdfParams,
        chunk_size: u32,
    ) -> VaultResult<Header> {
        let mut id = [0u8; 16];
        strata_crypto::random_bytes(&mut id)?;
        let mut h = Header {
            format: MAGIC.into(),
            version: FORMAT_VERSION,
            vault_id: hex::encode(id),
            kdf: KdfSection {
                algorithm: "argon2id".into(),
                m_kib: kdf.m_kib,
                t: kdf.t,
                p: kdf.p,
                salt: String::new(),
            },
            chunk_size,
            wrapped_key: String::new(),
        };
        h.rewrap(master, password, kdf)?;
        Ok(h)
    }

    /// Wrap `master` under a new password with a fresh salt.
    pub fn rewrap(
        &mut self,
        master: &MasterKey,
        password: &[u8],
        kdf: KdfParams,
    ) -> VaultResult<()> {
        let mut salt = [0u8; SALT_LEN];
        strata_crypto::random_bytes(&mut salt)?;
        self.kdf = KdfSection {
            algorithm: "argon2id".into(),
            m_kib: kdf.m_kib,
            t: kdf.t,
            p: kdf.p,
            salt: hex::encode(salt),
        };
        let kek = derive_kek(password, &salt, kdf)?;
        self.wrapped_key = hex::encode(wrap_master_key(&kek, master, &self.associated_data())?);
        Ok(())
    }

    /// Canonical bytes of every public field (the wrapping's associated data).
    fn associated_data(&self) -> Vec<u8> {
        let mut ad = Vec::with_capacity(128);
        ad.extend_from_slice(b"strata.vault\0");
        ad.extend_from_slice(&self.version.to_be_bytes());
        ad.extend_from_slice(self.vault_id.as_bytes());
        ad.push(0);
        ad.extend_from_slice(self.kdf.algorithm.as_bytes());
        ad.push(0);
        for v in [self.kdf.m_kib, self.kdf.t, self.kdf.p, self.chunk_size] {
            ad.extend_from_slice(&v.to_be_bytes());
        }
        ad.extend_from_slice(self.kdf.salt.as_bytes());
        ad
    }

    pub fn kdf_params(&self) -> KdfParams {
        KdfParams {
            m_kib: self.kdf.m_kib,
            t: self.kdf.t,
            p: self.kdf.p,
        }
    }

    /// Raw vault id bytes.
    pub fn vault_id_bytes(&self) -> VaultResult<[u8; 16]> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(&self.vault_id, &mut b)
            .map_err(|_| VaultError::Invalid("vault id in header is not 32 hex digits".into()))?;
        Ok(b)
    }

    /// Unwrap the master key with `password`.
    pub fn unlock(&self, password: &[u8], store: &str) -> VaultResult<MasterKey> {
        self.unlock_with_kek(password, store).map(|(m, _)| m)
    }

    /// [`Header::unlock`], also returning the key-encryption key (kept by a
    /// vault of an older version, to upgrade the header without the password
    /// when it first writes something that needs the new version).
    pub fn unlock_with_kek(&self, password: &[u8], store: &str) -> VaultResult<(MasterKey, Kek)> {
        let bad = |d: &str| VaultError::BadHeader {
            store: store.to_string(),
            detail: d.to_string(),
        };
        if self.kdf.algorithm != "argon2id" {
            return Err(bad("unknown key-derivation algorithm"));
        }
        let salt = hex::decode(&self.kdf.salt).map_err(|_| bad("salt is not hex"))?;
        let wrapped = hex::decode(&self.wrapped_key).map_err(|_| bad("wrapped key is not hex"))?;
        let kek =
            derive_kek(password, &salt, self.kdf_params()).map_err(|e| bad(&e.to_string()))?;
        let master =
            unwrap_master_key(&kek, &wrapped, &self.associated_data()).map_err(|e| match e {
                strata_crypto::CryptoError::Authentication => VaultError::WrongPassword {
                    store: store.to_string(),
                },
                other => bad(&other.to_string()),
            })?;
        Ok((master, kek))
    }

    /// This header at `version`, the master key wrapped again under the same
    /// password (same salt and KDF: `kek` is the one it unlocked with) with
    /// the new version bound into the associated data.
    pub fn with_version(&self, version: u32, kek: &Kek, master: &MasterKey) -> VaultResult<Header> {
        let mut h = self.clone();
        h.version = version;
        h.wrapped_key = hex::encode(wrap_master_key(kek, master, &h.associated_data())?);
        // the new wrap must open with the same key before it replaces the old
        let wrapped = hex::decode(&h.wrapped_key)
            .map_err(|_| VaultError::Invalid("wrapped key encoding".into()))?;
        unwrap_master_key(kek, &wrapped, &h.associated_data())
            .map_err(|e| VaultError::Invalid(format!("header rewrap check failed: {e}")))?;
        Ok(h)
    }

    pub fn to_bytes(&self) -> VaultResult<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self)
            .map_err(|e| VaultError::Invalid(format!("header encoding: {e}")))?;
        v.push(b'\n');
        Ok(v)
    }

    pub fn parse(bytes: &[u8], store: &str) -> VaultResult<Header> {
        let h: Header = serde_json::from_slice(bytes).map_err(|e| VaultError::BadHeader {
            store: store.to_string(),
            detail: format!("not valid header JSON ({e}); the header was damaged"),
        })?;
        if h.format != MAGIC {
            return Err(VaultError::BadHeader {
                store: store.to_string(),
                detail: format!("format is {:?}, expected {MAGIC:?}", h.format),
            });
        }
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&h.version) {
            return Err(VaultError::UnsupportedVersion {
                store: store.to_string(),
                found: h.version,
                supported: FORMAT_VERSION,
            });
        }
        h.vault_id_bytes().map_err(|_| VaultError::BadHeader {
            store: store.to_string(),
            detail: "the vault id is not 32 hex digits; the header was damaged".into(),
        })?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_tamper() {
        let mk = MasterKey::generate().unwrap();
        let h = Header::create(&mk, b"pw", KdfParams::insecure_for_tests(), 1 << 20).unwrap();
        let bytes = h.to_bytes().unwrap();
        let back = Header::parse(&bytes, "s").unwrap();
        assert!(back.unlock(b"pw", "s").is_ok());
        assert!(matches!(
            back.unlock(b"nope", "s"),
            Err(VaultError::WrongPassword { .. })
        ));
        let mut t = back.clone();
        t.chunk_size = 4096;
        assert!(
            t.unlock(b"pw", "s").is_err(),
            "chunk size is bound to the key"
        );
    }
}
