//! Data blob layout: one file chunk, sealed in 64 KiB segments.
//!
//! ```text
//! "STRBLOB1" (8) ‖ seg₀ ‖ tag₀ ‖ seg₁ ‖ tag₁ ‖ … ‖ segₙ₋₁ ‖ tagₙ₋₁ ‖ zero padding
//! ```
//! Segment `i` holds plaintext bytes `[i·64Ki, min((i+1)·64Ki, len))` and sits
//! at a fixed offset, so any run of segments can be fetched with one range read
//! and verified on its own. Each segment's nonce and associated data bind
//! (blob id, index, last-segment flag): swapping, reordering or truncating is
//! detected. The plaintext length comes from the metadata (`ChunkRef`).

use std::ops::Range;

use strata_crypto::{padme, BlobId, Keys, TAG_LEN};

use crate::error::{VaultError, VaultResult};

pub const MAGIC: &[u8; 8] = b"STRBLOB1";
/// Plaintext bytes per segment.
pub const SEGMENT: u64 = 64 * 1024;
pub(crate) const HDR: u64 = MAGIC.len() as u64;
const SEG_CT: u64 = SEGMENT + TAG_LEN as u64;

/// Number of segments of a blob with `len` plaintext bytes.
pub fn segments(len: u64) -> u64 {
    len.div_ceil(SEGMENT)
}

/// Size of a sealed blob before padding.
pub fn sealed_len(len: u64) -> u64 {
    HDR + len + segments(len) * TAG_LEN as u64
}

/// Size of the stored object: Padmé-padded, but never above `max`.
pub fn stored_len(len: u64, max: Option<u64>) -> u64 {
    let s = sealed_len(len);
    let p = padme(s);
    match max {
        Some(m) if p > m => m.max(s),
        _ => p,
    }
}

/// The largest chunk size (a multiple of the segment size, ≤ `want`) whose
/// sealed blob fits in `max` bytes; `None` if not even one segment fits.
pub fn chunk_size_for(want: u64, max: Option<u64>) -> Option<u64> {
    let want = (want / SEGMENT).max(1) * SEGMENT;
    let Some(max) = max else { return Some(want) };
    let mut segs = want / SEGMENT;
    while segs > 0 {
        if sealed_len(segs * SEGMENT) <= max {
            return Some(segs * SEGMENT);
        }
        // jump close to the answer instead of stepping one segment at a time
        let fit = max.saturating_sub(HDR) / SEG_CT;
        segs = if fit < segs { fit } else { segs - 1 };
    }
    None
}

/// Byte range (in the stored object) of segments `first..=last`.
pub fn segment_range(len: u64, first: u64, last: u64) -> Range<u64> {
    let start = HDR + first * SEG_CT;
    let end_plain = ((last + 1) * SEGMENT).min(len);
    let end = HDR + end_plain + (last + 1) * TAG_LEN as u64;
    start..end
}

/// Seal a plaintext chunk into a blob; returns its id and stored bytes.
pub fn seal(keys: &Keys, chunk: &[u8], max: Option<u64>) -> VaultResult<(BlobId, Vec<u8>)> {
    let id = keys.blob_id(chunk);
    let bytes = seal_with_id(keys, &id, chunk, max)?;
    Ok((id, bytes))
}

/// Seal `chunk` whose id is already known.
pub fn seal_with_id(
    keys: &Keys,
    id: &BlobId,
    chunk: &[u8],
    max: Option<u64>,
) -> VaultResult<Vec<u8>> {
    if chunk.is_empty() {
        return Err(VaultError::Invalid("empty chunk".into()));
    }
    let len = chunk.len() as u64;
    let mut out = strata_store::bufpool::take(stored_len(len, max) as usize);
    out.extend_from_slice(MAGIC);
    seal_segments_into(keys, id, chunk, &mut out)?;
    out.resize(stored_len(len, max) as usize, 0);
    Ok(out)
}

/// Append the sealed segments of `chunk` (`ct₀ ‖ tag₀ ‖ …`, no magic, no
/// padding) to `out`: the body of a blob, and what a pack holds per item.
pub fn seal_segments_into(
    keys: &Keys,
    id: &BlobId,
    chunk: &[u8],
    out: &mut Vec<u8>,
) -> VaultResult<()> {
    if chunk.is_empty() {
        return Err(VaultError::Invalid("empty chunk".into()));
    }
    let n = segments(chunk.len() as u64);
    for (i, seg) in chunk.chunks(SEGMENT as usize).enumerate() {
        let start = out.len();
        out.extend_from_slice(seg);
        let idx = u32::try_from(i).map_err(|_| VaultError::Invalid("chunk too large".into()))?;
        let tag = keys.seal_segment(id, idx, i as u64 + 1 == n, &mut out[start..])?;
        out.extend_from_slice(&tag);
    }
    Ok(())
}

/// Decrypt segments `first..` from `bytes` (which start at segment `first`'s
/// offset and end at a segment boundary or the blob end). `object` names the
/// blob in errors.
pub fn open_segments(
    keys: &Keys,
    id: &BlobId,
    blob_len: u64,
    first: u64,
    bytes: &[u8],
    object: &str,
) -> VaultResult<Vec<u8>> {
    // one copy of the ciphertext, opened where it lies
    let mut out = bytes.to_vec();
    open_segments_in_place(keys, id, blob_len, first, &mut out, object)?;
    Ok(out)
}

/// [`open_segments`] without a second buffer: the ciphertext in `buf` is
/// authenticated and decrypted where it lies, each segment's plaintext
/// moved down over the tags before it, and `buf` is cut to the plaintext.
/// On an error `buf` holds garbage.
pub fn open_segments_in_place(
    keys: &Keys,
    id: &BlobId,
    blob_len: u64,
    first: u64,
    buf: &mut Vec<u8>,
    object: &str,
) -> VaultResult<()> {
    let n = segments(blob_len);
    let len = buf.len();
    let mut pos = 0usize; // next ciphertext byte
    let mut out = 0usize; // end of the plaintext so far
    let mut idx = first;
    while pos < len && idx < n {
        let plain = (blob_len - idx * SEGMENT).min(SEGMENT) as usize;
        let ct = plain + TAG_LEN;
        let range = segment_range(blob_len, idx, idx);
        if pos + ct > len {
            return Err(VaultError::Corrupt {
                object: object.into(),
                range: Some(range),
                file: None,
                detail: "object is truncated".into(),
            });
        }
        let idx32 = u32::try_from(idx).map_err(|_| VaultError::Invalid("segment index".into()))?;
        keys.open_segment(id, idx32, idx + 1 == n, &mut buf[pos..pos + ct])
            .map_err(|_| VaultError::Corrupt {
                object: object.into(),
                range: Some(range),
                file: None,
                detail: "authentication failed".into(),
            })?;
        if out != pos {
            buf.copy_within(pos..pos + plain, out);
        }
        out += plain;
        pos += ct;
        idx += 1;
    }
    buf.truncate(out);
    Ok(())
}

/// Open a whole stored blob (as fetched without ranges).
pub fn open_whole(
    keys: &Keys,
    id: &BlobId,
    blob_len: u64,
    bytes: &[u8],
    object: &str,
) -> VaultResult<Vec<u8>> {
    let end = sealed_len(blob_len) as usize;
    if bytes.len() < end || &bytes[..HDR as usize] != MAGIC {
        return Err(VaultError::Corrupt {
            object: object.into(),
            range: Some(0..end as u64),
            file: None,
            detail: if bytes.len() < end {
                format!("object is truncated ({} of {} bytes)", bytes.len(), end)
            } else {
                "bad blob magic".into()
            },
        });
    }
    open_segments(keys, id, blob_len, 0, &bytes[HDR as usize..end], object)
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
    fn chunk_size_respects_max() {
        let mib = 1 << 20;
        assert_eq!(chunk_size_for(4 * mib, None), Some(4 * mib));
        let c = chunk_size_for(4 * mib, Some(mib)).unwrap();
        assert!(c.is_multiple_of(SEGMENT) && sealed_len(c) <= mib && sealed_len(c + SEGMENT) > mib);
        assert!(stored_len(c, Some(mib)) <= mib);
        assert_eq!(chunk_size_for(4 * mib, Some(1000)), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn seal_open_ranges(len in 1usize..300_000, a in any::<u64>(), b in any::<u64>(), max in proptest::option::of(200_000u64..400_000)) {
            let k = keys();
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let (id, blob) = seal(&k, &data, max).unwrap();
            prop_assert_eq!(blob.len() as u64, stored_len(len as u64, max));
            prop_assert_eq!(open_whole(&k, &id, len as u64, &blob, "x").unwrap(), data.clone());
            let n = segments(len as u64);
            let (s0, s1) = { let x = a % n; let y = b % n; (x.min(y), x.max(y)) };
            let r = segment_range(len as u64, s0, s1);
            let got = open_segments(&k, &id, len as u64, s0, &blob[r.start as usize..r.end as usize], "x").unwrap();
            let p0 = (s0 * SEGMENT) as usize;
            let p1 = (((s1 + 1) * SEGMENT) as usize).min(len);
            prop_assert_eq!(&got[..], &data[p0..p1]);
            let mut buf = blob[r.start as usize..r.end as usize].to_vec();
            open_segments_in_place(&k, &id, len as u64, s0, &mut buf, "x").unwrap();
            prop_assert_eq!(&buf[..], &data[p0..p1]);
            // a flipped byte anywhere fails it, a missing byte too
            let mut bad = blob[r.start as usize..r.end as usize].to_vec();
            let at = (a as usize) % bad.len();
            bad[at] ^= 1;
            prop_assert!(open_segments_in_place(&k, &id, len as u64, s0, &mut bad, "x").is_err());
            let mut short = blob[r.start as usize..r.end as usize - 1].to_vec();
            prop_assert!(open_segments_in_place(&k, &id, len as u64, s0, &mut short, "x").is_err());
        }
    }

    #[test]
    fn tamper_swap_truncate() {
        let k = keys();
        let data = vec![5u8; 3 * SEGMENT as usize + 10];
        let (id, blob) = seal(&k, &data, None).unwrap();
        let len = data.len() as u64;
        let mut flipped = blob.clone();
        flipped[100] ^= 1;
        assert!(open_whole(&k, &id, len, &flipped, "x").is_err());
        // swap segments 0 and 1 (same plaintext, different index binding)
        let r0 = segment_range(len, 0, 0);
        let r1 = segment_range(len, 1, 1);
        let mut swapped = blob.clone();
        let s0 = blob[r0.start as usize..r0.end as usize].to_vec();
        let s1 = blob[r1.start as usize..r1.end as usize].to_vec();
        swapped[r0.start as usize..r0.end as usize].copy_from_slice(&s1);
        swapped[r1.start as usize..r1.end as usize].copy_from_slice(&s0);
        assert!(open_whole(&k, &id, len, &swapped, "x").is_err());
        // claiming the blob ends earlier (truncation) breaks the last flag
        let r = segment_range(len, 0, 2);
        assert!(open_segments(
            &k,
            &id,
            3 * SEGMENT,
            0,
            &blob[r.start as usize..r.end as usize],
            "x"
        )
        .is_err());
        assert!(open_whole(&k, &id, len, &blob[..blob.len() / 2], "x").is_err());
        // another blob's id
        let (id2, _) = seal(&k, b"other", None).unwrap();
        assert!(open_whole(&k, &id2, len, &blob, "x").is_err());
    }
}
