//! The range arithmetic of file data, in one place: which chunks a byte
//! range of a file touches and which bytes of each ([`chunk_pieces`]), and
//! which 64 KiB segments of a chunk's blob cover a range of that chunk
//! ([`SegmentSpan`]). Every read, write, truncate, prefetch and export path
//! goes through these helpers instead of dividing by the chunk size itself
//! (the model is gocryptfs's `ExplodePlainRange` / `IntraBlock`).

use std::ops::Range;

use crate::format::blob::SEGMENT;

/// The part of one chunk that a file byte range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPiece {
    /// Chunk number in the file.
    pub index: u64,
    /// File offset where the chunk starts (`index × chunk_size`).
    pub chunk_start: u64,
    /// Covered bytes of the chunk, `[a, b)` relative to `chunk_start`
    /// (`a < b ≤ chunk_size`).
    pub a: u64,
    pub b: u64,
}

impl ChunkPiece {
    /// Length of the covered part.
    pub fn len(&self) -> u64 {
        self.b - self.a
    }

    /// Always false: a piece covers at least one byte.
    pub fn is_empty(&self) -> bool {
        self.a >= self.b
    }

    /// Covered file bytes.
    pub fn file_range(&self) -> Range<u64> {
        self.chunk_start + self.a..self.chunk_start + self.b
    }

    /// Whether the piece covers the whole chunk.
    pub fn is_whole(&self, chunk_size: u64) -> bool {
        self.a == 0 && self.b == chunk_size
    }
}

/// Split file bytes `range` into per-chunk pieces, in file order. An empty
/// range yields nothing; a chunk size of 0 is treated as 1.
pub fn chunk_pieces(range: Range<u64>, chunk_size: u32) -> ChunkPieces {
    ChunkPieces {
        pos: range.start,
        end: range.end,
        cs: u64::from(chunk_size.max(1)),
    }
}

/// Iterator of [`chunk_pieces`].
#[derive(Debug, Clone)]
pub struct ChunkPieces {
    pos: u64,
    end: u64,
    cs: u64,
}

impl Iterator for ChunkPieces {
    type Item = ChunkPiece;

    fn next(&mut self) -> Option<ChunkPiece> {
        if self.pos >= self.end {
            return None;
        }
        let index = self.pos / self.cs;
        let chunk_start = index * self.cs;
        let stop = self.end.min(chunk_start.saturating_add(self.cs));
        let p = ChunkPiece {
            index,
            chunk_start,
            a: self.pos - chunk_start,
            b: stop - chunk_start,
        };
        self.pos = stop;
        Some(p)
    }
}

/// File offset where chunk `index` starts.
pub fn chunk_start(index: u64, chunk_size: u32) -> u64 {
    index.saturating_mul(u64::from(chunk_size.max(1)))
}

/// The piece of the last chunk of a file of `size` bytes (`None` when the
/// file is empty): its index, and in `b` how many of its bytes are in the
/// file.
pub fn last_piece(size: u64, chunk_size: u32) -> Option<ChunkPiece> {
    chunk_pieces(size.saturating_sub(1)..size, chunk_size).next()
}

/// Number of chunks of a file of `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1)))
}

/// The segments of a blob that hold its plaintext bytes `[a, b)` (`a < b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpan {
    /// First and last segment (inclusive).
    pub first: u64,
    pub last: u64,
    /// Offset of byte `a` in the plaintext of segments `first..=last`.
    pub skip: u64,
    /// `b - a`.
    pub len: u64,
}

impl SegmentSpan {
    /// Segments covering plaintext bytes `[a, b)` of a blob. `b` must be
    /// greater than `a`.
    pub fn of(a: u64, b: u64) -> SegmentSpan {
        debug_assert!(a < b);
        let first = a / SEGMENT;
        SegmentSpan {
            first,
            last: b.saturating_sub(1).max(a) / SEGMENT,
            skip: a - first * SEGMENT,
            len: b.saturating_sub(a),
        }
    }

    /// Number of segments.
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }

    /// The requested bytes of the plaintext of segments `first..=last`.
    pub fn cut<'a>(&self, plain: &'a [u8]) -> Option<&'a [u8]> {
        plain.get(self.cut_range(plain.len())?)
    }

    /// Where [`SegmentSpan::cut`] cuts a plaintext of `plain_len` bytes.
    pub fn cut_range(&self, plain_len: usize) -> Option<std::ops::Range<usize>> {
        let s = usize::try_from(self.skip).ok()?;
        let n = usize::try_from(self.len).ok()?;
        let e = s.checked_add(n)?;
        (e <= plain_len).then_some(s..e)
    }
}

/// The plaintext bytes of a blob that a read of `[a, b)` decrypts anyway:
/// `[a, b)` widened to its segments, within the blob's first `valid`
/// bytes (`a < b ≤ valid`).
pub fn segment_cover(a: u64, b: u64, valid: u64) -> Range<u64> {
    let s = SegmentSpan::of(a, b);
    s.first * SEGMENT..(s.last + 1).saturating_mul(SEGMENT).min(valid).max(b)
}

/// Round `n` up to a whole number of segments.
pub fn round_to_segments(n: u64) -> u64 {
    n.div_ceil(SEGMENT).saturating_mul(SEGMENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pieces_of_a_range() {
        let v: Vec<ChunkPiece> = chunk_pieces(5..25, 10).collect();
        assert_eq!(
            v.iter().map(|p| (p.index, p.a, p.b)).collect::<Vec<_>>(),
            vec![(0, 5, 10), (1, 0, 10), (2, 0, 5)]
        );
        assert_eq!(v[1].file_range(), 10..20);
        assert!(v[1].is_whole(10) && !v[0].is_whole(10));
        assert_eq!(chunk_pieces(7..7, 10).count(), 0);
        let (a, b) = (9, 3);
        assert_eq!(
            chunk_pieces(a..b, 10).count(),
            0,
            "a reversed range is empty"
        );
        assert_eq!(chunk_count(0, 10), 0);
        assert_eq!(chunk_start(3, 10), 30);
        assert_eq!(last_piece(0, 10), None);
        let l = last_piece(21, 10).unwrap();
        assert_eq!((l.index, l.b), (2, 1));
        let l = last_piece(20, 10).unwrap();
        assert_eq!((l.index, l.b), (1, 10));
        assert_eq!(chunk_count(21, 10), 3);
    }

    #[test]
    fn segments_of_a_range() {
        let s = SegmentSpan::of(SEGMENT - 1, SEGMENT + 1);
        assert_eq!((s.first, s.last, s.skip, s.len), (0, 1, SEGMENT - 1, 2));
        let s = SegmentSpan::of(2 * SEGMENT, 3 * SEGMENT);
        assert_eq!((s.first, s.last, s.skip, s.count()), (2, 2, 0, 1));
        let plain = vec![7u8; 2 * SEGMENT as usize];
        assert_eq!(
            SegmentSpan::of(10, 20).cut(&plain).map(<[u8]>::len),
            Some(10)
        );
        assert_eq!(SegmentSpan::of(10, 20).cut(&plain[..15]), None);
        assert_eq!(round_to_segments(1), SEGMENT);
        assert_eq!(round_to_segments(0), 0);
    }

    proptest! {
        /// The pieces tile the range exactly, in order, each inside its chunk.
        #[test]
        fn pieces_tile_the_range(start in 0u64..1 << 40, len in 0u64..1 << 24, cs in 1u32..1 << 23) {
            let end = start + len;
            let mut pos = start;
            let cs64 = u64::from(cs);
            for p in chunk_pieces(start..end, cs) {
                prop_assert!(!p.is_empty());
                prop_assert_eq!(p.chunk_start, p.index * cs64);
                prop_assert!(p.b <= cs64);
                prop_assert_eq!(p.file_range().start, pos);
                pos = p.file_range().end;
            }
            prop_assert_eq!(pos, end);
        }

        /// A span's segments hold exactly the requested bytes.
        #[test]
        fn span_covers_exactly(a in 0u64..1 << 26, len in 1u64..1 << 22) {
            let b = a + len;
            let s = SegmentSpan::of(a, b);
            prop_assert!(s.first * SEGMENT <= a);
            prop_assert!((s.last + 1) * SEGMENT >= b);
            // no segment more than needed
            prop_assert!(s.last * SEGMENT < b);
            prop_assert!((s.first + 1) * SEGMENT > a);
            prop_assert_eq!(s.first * SEGMENT + s.skip, a);
            prop_assert_eq!(s.len, len);
        }

        /// The cover holds the range, starts on a segment, ends on one or
        /// at the valid bytes' end, and reaches into no segment the range
        /// does not touch.
        #[test]
        fn cover_is_the_touched_segments(a in 0u64..1 << 26, len in 1u64..1 << 20, extra in 0u64..1 << 20) {
            let b = a + len;
            let valid = b + extra;
            let c = segment_cover(a, b, valid);
            prop_assert!(c.start <= a && b <= c.end && c.end <= valid);
            prop_assert_eq!(c.start % SEGMENT, 0);
            prop_assert!(c.end.is_multiple_of(SEGMENT) || c.end == valid);
            let s = SegmentSpan::of(a, b);
            prop_assert_eq!(c.start / SEGMENT, s.first);
            prop_assert_eq!((c.end - 1) / SEGMENT, s.last);
        }
    }
}
