//! The master key, its sub-keys, and the AEAD / keyed-hash operations on them.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::{Zeroize, Zeroizing};

use crate::{random_bytes, CryptoError};

pub(crate) const KEY_LEN: usize = 32;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;

/// BLAKE3 `derive_key` context strings; changing one is a format change.
const CTX_DATA: &str = "strata 2026-11 v1 data segment aead key";
const CTX_META: &str = "strata 2026-11 v1 metadata aead key";
const CTX_NAME: &str = "strata 2026-11 v1 blob name key";
const CTX_NONCE: &str = "strata 2026-11 v1 segment nonce key";
const CTX_LEASE: &str = "strata 2026-11 v1 writer lease aead key";
/// Root of the keys that seal a mount's local cache (not a store format:
/// changing it only makes old caches unreadable).
const CTX_CACHE: &str = "strata 2026-12 v1 local cache key";

/// Domain-separation prefix of a segment's associated data.
const SEG_AD_PREFIX: &[u8; 8] = b"STRSEG01";

/// The random 256-bit master key. Zeroized on drop, never printed.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(k.as_mut())?;
        Ok(MasterKey(k))
    }

    pub(crate) fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        MasterKey(Zeroizing::new(b))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Name of a data blob: keyed BLAKE3 of the blob's plaintext chunk.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Option<BlobId> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(BlobId(b))
    }
}

impl std::fmt::Debug for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobId({}…)", &self.to_hex()[..12])
    }
}

/// Sub-keys of one vault. Cheap to share behind an `Arc`.
pub struct Keys {
    data: LessSafeKey,
    meta: LessSafeKey,
    lease: LessSafeKey,
    name: Zeroizing<[u8; KEY_LEN]>,
    nonce: Zeroizing<[u8; KEY_LEN]>,
    cache: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

fn aead_key(master: &MasterKey, ctx: &str) -> Result<LessSafeKey, CryptoError> {
    let mut k = blake3::derive_key(ctx, master.as_bytes());
    let unbound = UnboundKey::new(&AES_256_GCM, &k);
    k.zeroize();
    Ok(LessSafeKey::new(
        unbound.map_err(|_| CryptoError::Malformed("key"))?,
    ))
}

fn seg_nonce_input(blob: &BlobId, index: u32, last: bool) -> [u8; 45] {
    let mut ad = [0u8; 45];
    ad[..8].copy_from_slice(SEG_AD_PREFIX);
    ad[8..40].copy_from_slice(&blob.0);
    ad[40..44].copy_from_slice(&index.to_be_bytes());
    ad[44] = u8::from(last);
    ad
}

impl Keys {
    /// Derive all sub-keys from the master key.
    pub fn derive(master: &MasterKey) -> Result<Keys, CryptoError> {
        Ok(Keys {
            data: aead_key(master, CTX_DATA)?,
            meta: aead_key(master, CTX_META)?,
            lease: aead_key(master, CTX_LEASE)?,
            name: Zeroizing::new(blake3::derive_key(CTX_NAME, master.as_bytes())),
            nonce: Zeroizing::new(blake3::derive_key(CTX_NONCE, master.as_bytes())),
            cache: Zeroizing::new(blake3::derive_key(CTX_CACHE, master.as_bytes())),
        })
    }

    /// Content address of a plaintext chunk (keyed BLAKE3 with the name key).
    pub fn blob_id(&self, chunk: &[u8]) -> BlobId {
        let mut h = blake3::Hasher::new_keyed(&self.name);
        if chunk.len() >= 1 << 20 {
            h.update_rayon(chunk);
        } else {
            h.update(chunk);
        }
        BlobId(*h.finalize().as_bytes())
    }

    /// Nonce of segment `index` of `blob`: a PRF of (blob, index, last), so a
    /// given (key, nonce) pair only ever seals the same plaintext (blob ids are
    /// content addresses) — SIV-style, and retried uploads are byte-identical.
    fn seg_nonce(&self, ad: &[u8; 45]) -> Nonce {
        let h = blake3::keyed_hash(&self.nonce, ad);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&h.as_bytes()[..NONCE_LEN]);
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypt one segment in place; returns the tag to append.
    pub fn seal_segment(
        &self,
        blob: &BlobId,
        index: u32,
        last: bool,
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let ad = seg_nonce_input(blob, index, last);
        let tag = self
            .data
            .seal_in_place_separate_tag(self.seg_nonce(&ad), Aad::from(&ad[..]), buf)
            .map_err(|_| CryptoError::Malformed("segment too large"))?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        Ok(t)
    }

    /// Decrypt and verify one segment (`ciphertext ‖ tag`) in place; returns
    /// the plaintext slice.
    pub fn open_segment<'a>(
        &self,
        blob: &BlobId,
        index: u32,
        last: bool,
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        if buf.len() < TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        let ad = seg_nonce_input(blob, index, last);
        self.data
            .open_in_place(self.seg_nonce(&ad), Aad::from(&ad[..]), buf)
            .map_err(|_| CryptoError::Authentication)
    }

    /// Encrypt a metadata object: `nonce(12, random) ‖ ciphertext ‖ tag`.
    pub fn seal_meta(&self, ad: &[u8], plaintext: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        seal_random_nonce(&self.meta, ad, plaintext)
    }

    /// Decrypt and verify a metadata object sealed by [`Keys::seal_meta`].
    pub fn open_meta(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_random_nonce(&self.meta, ad, sealed)
    }

    /// Encrypt a writer-lease object (same layout as [`Keys::seal_meta`],
    /// under the separate lease key: leases are rewritten every few seconds
    /// for as long as a writer runs, so their random nonces do not count
    /// against the metadata key).
    pub fn seal_lease(&self, ad: &[u8], plaintext: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        seal_random_nonce(&self.lease, ad, plaintext)
    }

    /// Decrypt and verify a lease sealed by [`Keys::seal_lease`].
    pub fn open_lease(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_random_nonce(&self.lease, ad, sealed)
    }
}

impl Keys {
    /// The key of one local cache file, identified by its random `salt`
    /// (each file has its own key, so random nonces never come near the
    /// AES-GCM limits however much a mount writes over the years).
    pub fn cache_file_key(&self, salt: &[u8; 32]) -> Result<FileKey, CryptoError> {
        let mut k = blake3::keyed_hash(&self.cache, salt).as_bytes().to_owned();
        let unbound = UnboundKey::new(&AES_256_GCM, &k);
        k.zeroize();
        Ok(FileKey(LessSafeKey::new(
            unbound.map_err(|_| CryptoError::Malformed("key"))?,
        )))
    }
}

/// AES-256-GCM key of one local cache file ([`Keys::cache_file_key`]).
pub struct FileKey(LessSafeKey);

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

impl FileKey {
    /// Encrypt `buf` in place under a fresh random nonce; returns
    /// `(nonce, tag)`.
    pub fn seal(
        &self,
        ad: &[u8],
        buf: &mut [u8],
    ) -> Result<([u8; NONCE_LEN], [u8; TAG_LEN]), CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(ad), buf)
            .map_err(|_| CryptoError::Malformed("block too large"))?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        Ok((nonce, t))
    }

    /// Decrypt and verify `ciphertext ‖ tag` in place; returns the plaintext.
    pub fn open<'a>(
        &self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        if buf.len() < TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        self.0
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(ad), buf)
            .map_err(|_| CryptoError::Authentication)
    }

    /// [`FileKey::seal`] of a whole message: `nonce ‖ ciphertext ‖ tag`.
    pub fn seal_vec(&self, ad: &[u8], plaintext: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        seal_random_nonce(&self.0, ad, plaintext)
    }

    /// Open a message sealed by [`FileKey::seal_vec`].
    pub fn open_vec(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_random_nonce(&self.0, ad, sealed)
    }
}

fn seal_random_nonce(
    key: &LessSafeKey,
    ad: &[u8],
    mut plaintext: Vec<u8>,
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(ad),
            &mut plaintext,
        )
        .map_err(|_| CryptoError::Malformed("metadata too large"))?;
    // nonce in front and tag behind in place: no second copy of a big
    // object (a checkpoint can be tens of MiB)
    plaintext.reserve_exact(NONCE_LEN + TAG_LEN);
    plaintext.splice(0..0, nonce);
    plaintext.extend_from_slice(tag.as_ref());
    Ok(plaintext)
}

fn open_random_nonce(key: &LessSafeKey, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Authentication);
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN])
        .map_err(|_| CryptoError::Authentication)?;
    let mut buf = sealed[NONCE_LEN..].to_vec();
    let n = key
        .open_in_place(nonce, Aad::from(ad), &mut buf)
        .map_err(|_| CryptoError::Authentication)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> Keys {
        Keys::derive(&MasterKey::generate().unwrap()).unwrap()
    }

    #[test]
    fn blob_ids_are_keyed() {
        let a = keys();
        let b = keys();
        assert_eq!(a.blob_id(b"x"), a.blob_id(b"x"));
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"));
        assert_ne!(a.blob_id(b"x"), a.blob_id(b"y"));
        let id = a.blob_id(b"x");
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
    }

    #[test]
    fn segment_binding() {
        let k = keys();
        let id = k.blob_id(b"chunk");
        let mut buf = b"hello segment".to_vec();
        let tag = k.seal_segment(&id, 3, false, &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        // wrong index, wrong last flag, wrong blob all fail
        for (bid, idx, last) in [
            (id, 4, false),
            (id, 3, true),
            (k.blob_id(b"other"), 3, false),
        ] {
            let mut c = buf.clone();
            assert!(k.open_segment(&bid, idx, last, &mut c).is_err());
        }
        let mut c = buf.clone();
        assert_eq!(
            k.open_segment(&id, 3, false, &mut c).unwrap(),
            b"hello segment"
        );
        let mut c = buf.clone();
        c[0] ^= 1;
        assert!(k.open_segment(&id, 3, false, &mut c).is_err());
    }

    #[test]
    fn lease_key_is_separate_from_the_metadata_key() {
        let k = keys();
        let l = k.seal_lease(b"ad", b"lease".to_vec()).unwrap();
        assert_eq!(k.open_lease(b"ad", &l).unwrap(), b"lease");
        assert!(k.open_meta(b"ad", &l).is_err());
        assert!(keys().open_lease(b"ad", &l).is_err());
        let m = k.seal_meta(b"ad", b"meta".to_vec()).unwrap();
        assert!(k.open_lease(b"ad", &m).is_err());
    }

    #[test]
    fn cache_file_keys_differ_per_salt_and_vault() {
        let k = keys();
        let a = k.cache_file_key(&[1; 32]).unwrap();
        let b = k.cache_file_key(&[2; 32]).unwrap();
        let mut buf = b"dirty chunk bytes".to_vec();
        let (n, t) = a.seal(b"ad", &mut buf).unwrap();
        assert_ne!(&buf[..], b"dirty chunk bytes");
        buf.extend_from_slice(&t);
        assert!(b.open(&n, b"ad", &mut buf.clone()).is_err());
        assert!(a.open(&n, b"other ad", &mut buf.clone()).is_err());
        let other = keys().cache_file_key(&[1; 32]).unwrap();
        assert!(other.open(&n, b"ad", &mut buf.clone()).is_err());
        assert_eq!(a.open(&n, b"ad", &mut buf).unwrap(), b"dirty chunk bytes");
        let v = a.seal_vec(b"j", b"journal entry".to_vec()).unwrap();
        assert_eq!(a.open_vec(b"j", &v).unwrap(), b"journal entry");
        assert!(b.open_vec(b"j", &v).is_err());
    }

    proptest! {
        #[test]
        fn meta_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..2000), flip in any::<usize>()) {
            let k = keys();
            let s = k.seal_meta(b"ad", data.clone()).unwrap();
            prop_assert_eq!(k.open_meta(b"ad", &s).unwrap(), data);
            prop_assert!(k.open_meta(b"ad2", &s).is_err());
            let mut t = s.clone();
            let i = flip % t.len();
            t[i] ^= 0x80;
            prop_assert!(k.open_meta(b"ad", &t).is_err());
        }
    }
}
