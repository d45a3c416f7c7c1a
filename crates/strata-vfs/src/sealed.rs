//! Sealed cache files: the write-back cache's dirty chunk files hold no
//! plaintext. Each file starts with a header (`"STC1" ‖ salt`, 32 random
//! bytes); its key is derived from the vault's local-cache key and that
//! salt ([`strata_crypto::Keys::cache_file_key`]). The plaintext is cut into
//! 4 KiB blocks, each stored as `nonce (12, random) ‖ ciphertext ‖ tag` at
//! a fixed place (block `i` at `36 + i × 4124`), with the block index as
//! associated data, so a block can be read or rewritten on its own. A
//! partial write of a block reads, patches and reseals it. A block never
//! written (a hole: all zero bytes) reads as zeros.
//!
//! The file length gives the plaintext capacity (whole blocks); the valid
//! length of a chunk is kept by the caller (the overlay, or the file size
//! in the tree at recovery), as it was for plaintext files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use strata_crypto::{FileKey, Keys, NONCE_LEN, TAG_LEN};

const MAGIC: &[u8; 4] = b"STC1";
/// Header length: magic and salt.
pub(crate) const HDR: u64 = 4 + 32;
/// Plaintext bytes per block.
pub(crate) const BLOCK: u64 = 4096;
/// Stored bytes per block.
const SEALED: u64 = NONCE_LEN as u64 + BLOCK + TAG_LEN as u64;
const AD_PREFIX: &[u8; 8] = b"STCBLK01";

fn ad(block: u64) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(AD_PREFIX);
    a[8..].copy_from_slice(&block.to_le_bytes());
    a
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A new header `magic ‖ salt` (32 random bytes) and the key it names.
/// Every sealed cache file (chunk files here, the journal) starts so.
pub(crate) fn new_header(magic: &[u8; 4], keys: &Keys) -> io::Result<(Vec<u8>, FileKey)> {
    let mut salt = [0u8; 32];
    strata_crypto::random_bytes(&mut salt).map_err(io::Error::other)?;
    let key = keys.cache_file_key(&salt).map_err(io::Error::other)?;
    let mut h = Vec::with_capacity(HDR as usize);
    h.extend_from_slice(magic);
    h.extend_from_slice(&salt);
    Ok((h, key))
}

/// The key named by a header written by [`new_header`]; `None` if `bytes`
/// does not start with `magic` and a salt.
pub(crate) fn header_key(
    magic: &[u8; 4],
    bytes: &[u8],
    keys: &Keys,
) -> io::Result<Option<FileKey>> {
    let Some(salt) = bytes
        .strip_prefix(&magic[..])
        .and_then(|rest| rest.get(..32))
        .and_then(|s| <[u8; 32]>::try_from(s).ok())
    else {
        return Ok(None);
    };
    keys.cache_file_key(&salt)
        .map(Some)
        .map_err(io::Error::other)
}

/// Plaintext capacity of a sealed file of `file_len` bytes.
pub(crate) fn capacity(file_len: u64) -> u64 {
    file_len.saturating_sub(HDR) / SEALED * BLOCK
}

/// A sealed cache file, open for reading and writing.
pub(crate) struct SealedFile {
    file: File,
    key: FileKey,
}

impl SealedFile {
    /// Create (or truncate) `path` as an empty sealed file with a new salt.
    pub(crate) fn create(path: &Path, keys: &Keys) -> io::Result<SealedFile> {
        let (hdr, key) = new_header(MAGIC, keys)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all_at(&hdr, 0)?;
        Ok(SealedFile { file, key })
    }

    /// Open an existing sealed file.
    pub(crate) fn open(path: &Path, keys: &Keys) -> io::Result<SealedFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut hdr = [0u8; HDR as usize];
        let not_sealed = || invalid(format!("{} is not a sealed cache file", path.display()));
        file.read_exact_at(&mut hdr, 0).map_err(|_| not_sealed())?;
        let key = header_key(MAGIC, &hdr, keys)?.ok_or_else(not_sealed)?;
        Ok(SealedFile { file, key })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The plaintext of blocks `first..=last` (zeros past the end of the
    /// file and for holes), decrypted in place in one buffer.
    fn read_blocks(&self, first: u64, last: u64) -> io::Result<Vec<u8>> {
        let n = (last - first + 1) as usize;
        // a whole chunk's worth comes from the buffer pool (no fresh
        // mapping, page by page, per chunk uploaded)
        let mut raw = strata_store::bufpool::take(n * SEALED as usize);
        raw.resize(n * SEALED as usize, 0);
        let at = HDR + first * SEALED;
        let len = self.file.metadata()?.len();
        let have = len.saturating_sub(at).min(raw.len() as u64) as usize;
        self.file.read_exact_at(&mut raw[..have], at)?;
        let (b, s) = (BLOCK as usize, SEALED as usize);
        for i in 0..n {
            let sealed = &mut raw[i * s..(i + 1) * s];
            if sealed.iter().all(|x| *x == 0) {
                // a hole: zeros
            } else {
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&sealed[..NONCE_LEN]);
                let idx = first + i as u64;
                self.key
                    .open(&nonce, &ad(idx), &mut sealed[NONCE_LEN..])
                    .map_err(|_| {
                        invalid(format!("block {idx} of a cache file fails authentication"))
                    })?;
            }
            // move the block's plaintext to its place (i * BLOCK <= i * SEALED)
            raw.copy_within(i * s + NONCE_LEN..i * s + NONCE_LEN + b, i * b);
        }
        raw.truncate(n * b);
        Ok(raw)
    }

    /// Read `buf.len()` plaintext bytes at `off`.
    pub(crate) fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let first = off / BLOCK;
        let last = (off + buf.len() as u64 - 1) / BLOCK;
        let plain = self.read_blocks(first, last)?;
        let skip = (off - first * BLOCK) as usize;
        buf.copy_from_slice(&plain[skip..skip + buf.len()]);
        Ok(())
    }

    /// The first `len` plaintext bytes (no copy beyond the decryption).
    pub(crate) fn read_prefix(&self, len: u64) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut v = self.read_blocks(0, (len - 1) / BLOCK)?;
        v.truncate(len as usize);
        Ok(v)
    }

    /// Write `data` at plaintext offset `off`: one buffer of sealed blocks,
    /// one `pwrite`; partial blocks at either end are read and patched.
    pub(crate) fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = off + data.len() as u64;
        let first = off / BLOCK;
        let last = (end - 1) / BLOCK;
        let n = (last - first + 1) as usize;
        let (b, s) = (BLOCK as usize, SEALED as usize);
        let head = if off.is_multiple_of(BLOCK) {
            None
        } else {
            Some(self.read_blocks(first, first)?)
        };
        let tail = if !end.is_multiple_of(BLOCK) && (last != first || head.is_none()) {
            Some(self.read_blocks(last, last)?)
        } else {
            None
        };
        let mut out = vec![0u8; n * s];
        for i in 0..n {
            let idx = first + i as u64;
            let block = &mut out[i * s + NONCE_LEN..i * s + NONCE_LEN + b];
            let start = idx * BLOCK;
            match (&head, &tail) {
                (Some(h), _) if i == 0 => block.copy_from_slice(h),
                (_, Some(t)) if i == n - 1 => block.copy_from_slice(t),
                _ => {}
            }
            // the new bytes that fall into this block
            let a = start.max(off);
            let z = (start + BLOCK).min(end);
            block[(a - start) as usize..(z - start) as usize]
                .copy_from_slice(&data[(a - off) as usize..(z - off) as usize]);
            let (nonce, tag) = self.key.seal(&ad(idx), block).map_err(io::Error::other)?;
            out[i * s..i * s + NONCE_LEN].copy_from_slice(&nonce);
            out[i * s + NONCE_LEN + b..(i + 1) * s].copy_from_slice(&tag);
        }
        self.file.write_all_at(&out, HDR + first * SEALED)
    }

    /// Cut the plaintext to `len` bytes (whole blocks are dropped; the rest
    /// of the last block is zeroed).
    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        let blocks = len.div_ceil(BLOCK);
        self.file.set_len(HDR + blocks * SEALED)?;
        if !len.is_multiple_of(BLOCK) {
            let last = len / BLOCK;
            let mut b = self.read_blocks(last, last)?;
            b[(len % BLOCK) as usize..].fill(0);
            self.write_at(&b, last * BLOCK)?;
        }
        Ok(())
    }
}

/// Whether `path` is a sealed cache file (false for files written by
/// versions that kept plaintext).
pub(crate) fn is_sealed(path: &Path) -> bool {
    let mut m = [0u8; 4];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut m, 0))
        .is_ok_and(|()| &m == MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use strata_crypto::MasterKey;

    fn keys() -> Keys {
        Keys::derive(&MasterKey::generate().unwrap()).unwrap()
    }

    #[test]
    fn no_plaintext_on_disk_and_other_keys_fail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let k = keys();
        let f = SealedFile::create(&p, &k).unwrap();
        let secret = b"the quarterly numbers nobody may see".repeat(300);
        f.write_at(&secret, 100).unwrap();
        let raw = std::fs::read(&p).unwrap();
        assert!(!raw.windows(20).any(|w| w == &secret[..20]));
        assert!(is_sealed(&p));
        let mut back = vec![0u8; secret.len()];
        SealedFile::open(&p, &k)
            .unwrap()
            .read_at(&mut back, 100)
            .unwrap();
        assert_eq!(back, secret);
        let other = SealedFile::open(&p, &keys()).unwrap();
        assert!(other.read_at(&mut back, 100).is_err());
        // a flipped bit is detected
        let mut raw = raw;
        raw[HDR as usize + 20] ^= 1;
        std::fs::write(&p, raw).unwrap();
        let f = SealedFile::open(&p, &k).unwrap();
        assert!(f.read_at(&mut back, 100).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Random writes, truncations and reads match a plain byte vector.
        #[test]
        fn behaves_like_a_plain_file(ops in proptest::collection::vec(
            (0u8..3, 0u64..40_000, 1usize..9000, any::<u8>()), 1..24)) {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("f");
            let k = keys();
            let f = SealedFile::create(&p, &k).unwrap();
            let mut model: Vec<u8> = Vec::new();
            for (op, off, len, byte) in ops {
                match op {
                    0 => {
                        let data = vec![byte; len];
                        f.write_at(&data, off).unwrap();
                        let end = off as usize + len;
                        if model.len() < end { model.resize(end, 0); }
                        model[off as usize..end].copy_from_slice(&data);
                    }
                    1 => {
                        let n = (off as usize).min(model.len());
                        f.set_len(n as u64).unwrap();
                        model.truncate(n);
                    }
                    _ => {
                        if model.is_empty() { continue; }
                        let a = off as usize % model.len();
                        let n = len.min(model.len() - a);
                        let mut buf = vec![0u8; n];
                        f.read_at(&mut buf, a as u64).unwrap();
                        prop_assert_eq!(&buf[..], &model[a..a + n]);
                    }
                }
                prop_assert!(capacity(f.file().metadata().unwrap().len()) >= model.len() as u64);
            }
            let mut all = vec![0u8; model.len()];
            SealedFile::open(&p, &k).unwrap().read_at(&mut all, 0).unwrap();
            prop_assert_eq!(all, model);
        }
    }
}
