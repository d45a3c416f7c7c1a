//! Pack layout (format version 2): many small chunks in one object.
//!
//! ```text
//! "STRPACK1" (8) ‖ item₀ ‖ item₁ ‖ … ‖ zero padding (Padmé, capped)
//! item = seg₀ ‖ tag₀ ‖ seg₁ ‖ tag₁ ‖ …     (a blob's body: §5.2 without the magic)
//! ```
//! An item is sealed exactly like a blob of the same content (the nonces and
//! associated data bind the blob id, index and last flag), so it is
//! authenticated on its own and readable with one range read, and a blob
//! moved from a blob object into a pack (or from pack to pack) keeps its
//! bytes. Where an item lives is metadata: the tree's pack table maps a
//! blob id to `(pack, offset)` (`Record::Pack`); the item's length follows
//! from the blob length of the chunk reference. Packs are named by 32
//! random bytes, `pack/<2 hex>/<62 hex>`.

use std::ops::Range;

use strata_crypto::{padme, BlobId, TAG_LEN};

use super::blob::{segment_range, segments, HDR};

pub const PACK_MAGIC: &[u8; 8] = b"STRPACK1";
/// Prefix of pack objects.
pub const PACK_PREFIX: &str = "pack/";
/// Default size of a pack (before padding), capped by the store's maximum.
pub const DEFAULT_PACK_SIZE: u64 = 4 << 20;
/// Offset of the first item in a pack.
pub const FIRST_ITEM: u64 = HDR;

/// Name of a pack: 32 random bytes (shares the blob id type).
pub type PackId = BlobId;

/// `pack/<2 hex>/<62 hex>`
pub fn pack_key(id: &PackId) -> String {
    let h = id.to_hex();
    format!("pack/{}/{}", &h[..2], &h[2..])
}

/// Parse a `pack/<2>/<62>` key into a pack id.
pub fn parse_pack_key(key: &str) -> Option<PackId> {
    let rest = key.strip_prefix(PACK_PREFIX)?;
    let (a, b) = rest.split_once('/')?;
    if a.len() != 2 || b.len() != 62 {
        return None;
    }
    BlobId::from_hex(&format!("{a}{b}"))
}

/// A fresh random pack id.
pub fn new_pack_id() -> crate::error::VaultResult<PackId> {
    let mut b = [0u8; 32];
    strata_crypto::random_bytes(&mut b)?;
    Ok(BlobId(b))
}

/// Stored length of an item holding a blob of `blob_len` plaintext bytes.
pub fn item_len(blob_len: u64) -> u64 {
    blob_len + segments(blob_len) * TAG_LEN as u64
}

/// Byte range, in the pack, of segments `first..=last` of the item at
/// `offset` whose blob has `blob_len` plaintext bytes.
pub fn item_range(offset: u64, blob_len: u64, first: u64, last: u64) -> Range<u64> {
    let r = segment_range(blob_len, first, last);
    offset + r.start - HDR..offset + r.end - HDR
}

/// The pack size a writer uses: `want`, never above the store's maximum.
pub fn pack_size_for(want: u64, max: Option<u64>) -> u64 {
    match max {
        Some(m) => want.min(m),
        None => want,
    }
}

/// Largest chunk put into a pack. Past a MiB the cost of an object of its
/// own is small next to its transfer, and a blob object keeps what packed
/// items do not get: the read cache and read-ahead of a mount.
pub const MAX_PACKED: u64 = 1 << 20;

/// Whether a chunk of `len` bytes goes into a pack: a partial chunk (a
/// small file, or the tail of a large one) of at most [`MAX_PACKED`] bytes
/// whose item takes at most half a pack. Other chunks stay blob objects of
/// their own.
pub fn packable(len: u64, chunk_size: u64, pack_size: u64) -> bool {
    len > 0 && len < chunk_size && len <= MAX_PACKED && FIRST_ITEM + item_len(len) <= pack_size / 2
}

/// Stored size of a pack of `len` bytes: Padmé, capped at `max` (§4).
pub fn stored_pack_len(len: u64, max: Option<u64>) -> u64 {
    let p = padme(len);
    match max {
        Some(m) if p > m => m.max(len),
        _ => p,
    }
}

/// A pack being filled.
#[derive(Debug)]
pub struct PackBuilder {
    pub id: PackId,
    buf: Vec<u8>,
    cap: u64,
}

impl PackBuilder {
    /// An empty pack that will hold at most `cap` bytes (magic included).
    pub fn new(id: PackId, cap: u64) -> PackBuilder {
        let mut buf = Vec::with_capacity(cap.min(8 << 20) as usize);
        buf.extend_from_slice(PACK_MAGIC);
        PackBuilder { id, buf, cap }
    }

    /// Bytes so far (magic included).
    pub fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    /// No item yet.
    pub fn is_empty(&self) -> bool {
        self.buf.len() as u64 == FIRST_ITEM
    }

    /// Whether an item of `n` bytes still fits.
    pub fn fits(&self, n: u64) -> bool {
        self.len() + n <= self.cap
    }

    /// Append a sealed item; returns its offset.
    pub fn push(&mut self, item: &[u8]) -> u64 {
        let at = self.len();
        self.buf.extend_from_slice(item);
        at
    }

    /// The bytes so far (for reads of items not uploaded yet).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The object to store: padded as in §4.
    pub fn finish(mut self, max: Option<u64>) -> (PackId, Vec<u8>) {
        let n = stored_pack_len(self.len(), max) as usize;
        self.buf.resize(n, 0);
        (self.id, self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::blob::{open_segments, seal, seal_segments_into, SEGMENT};
    use strata_crypto::{Keys, MasterKey};

    #[test]
    fn items_read_like_blobs() {
        let k = Keys::derive(&MasterKey::generate().unwrap()).unwrap();
        let a: Vec<u8> = (0..100u32).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..(2 * SEGMENT as u32 + 7))
            .map(|i| (i * 3) as u8)
            .collect();
        let mut p = PackBuilder::new(new_pack_id().unwrap(), 1 << 20);
        let mut items = Vec::new();
        for d in [&a, &b] {
            let id = k.blob_id(d);
            let mut item = Vec::new();
            seal_segments_into(&k, &id, d, &mut item).unwrap();
            assert_eq!(item.len() as u64, item_len(d.len() as u64));
            // the same bytes as the body of a blob of that content
            let (_, blob) = seal(&k, d, None).unwrap();
            assert_eq!(&blob[8..8 + item.len()], &item[..]);
            let off = p.push(&item);
            items.push((id, off, d.len() as u64));
        }
        let (pid, bytes) = p.finish(None);
        assert_eq!(parse_pack_key(&pack_key(&pid)), Some(pid));
        assert_eq!(&bytes[..8], PACK_MAGIC);
        for ((id, off, len), d) in items.iter().zip([&a, &b]) {
            let n = segments(*len);
            for s in 0..n {
                let r = item_range(*off, *len, s, n - 1);
                let got = open_segments(
                    &k,
                    id,
                    *len,
                    s,
                    &bytes[r.start as usize..r.end as usize],
                    "p",
                )
                .unwrap();
                assert_eq!(&got[..], &d[(s * SEGMENT) as usize..]);
            }
        }
        // an item read at another item's offset fails
        let (id0, _, len0) = items[0];
        let r = item_range(items[1].1, len0, 0, 0);
        assert!(open_segments(
            &k,
            &id0,
            len0,
            0,
            &bytes[r.start as usize..r.end as usize],
            "p"
        )
        .is_err());
    }

    #[test]
    fn packable_sizes() {
        let cs = 4 << 20;
        assert!(packable(100, cs, DEFAULT_PACK_SIZE));
        assert!(
            !packable(cs, cs, DEFAULT_PACK_SIZE),
            "a full chunk is a blob"
        );
        assert!(!packable(0, cs, DEFAULT_PACK_SIZE));
        assert!(
            !packable(MAX_PACKED + 1, cs, DEFAULT_PACK_SIZE),
            "large tails stay blobs"
        );
        assert!(!packable(600 << 10, cs, 1 << 20), "more than half a pack");
        assert_eq!(pack_size_for(DEFAULT_PACK_SIZE, Some(1 << 20)), 1 << 20);
        assert!(stored_pack_len(1000, Some(1000)) == 1000);
    }
}
