//! An inode's chunk list. Most files of a big tree are small: one chunk,
//! held inline (48 bytes), where a `Vec` took 24 bytes plus a 64-byte heap
//! block. It reads as a slice of chunk slots and encodes like a `Vec`.

use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::record::ChunkRef;

/// Chunk slots of a file: `None` is a hole.
#[derive(Clone, Default)]
pub enum ChunkList {
    #[default]
    Empty,
    One([Option<ChunkRef>; 1]),
    Many(Box<[Option<ChunkRef>]>),
}

impl ChunkList {
    pub const fn new() -> Self {
        ChunkList::Empty
    }

    /// Grow (with holes) or shrink to `len` slots; the slots cut off are
    /// returned.
    pub(crate) fn resize(&mut self, len: usize) -> Vec<Option<ChunkRef>> {
        if len == self.len() {
            return Vec::new();
        }
        let mut v = std::mem::take(self).into_vec();
        let dropped = if len < v.len() {
            v.split_off(len)
        } else {
            v.resize(len, None);
            Vec::new()
        };
        *self = ChunkList::from(v);
        dropped
    }

    fn into_vec(self) -> Vec<Option<ChunkRef>> {
        match self {
            ChunkList::Empty => Vec::new(),
            ChunkList::One(c) => c.to_vec(),
            ChunkList::Many(b) => b.into_vec(),
        }
    }
}

impl From<Vec<Option<ChunkRef>>> for ChunkList {
    fn from(v: Vec<Option<ChunkRef>>) -> Self {
        match v.len() {
            0 => ChunkList::Empty,
            1 => ChunkList::One([v[0]]),
            _ => ChunkList::Many(v.into_boxed_slice()),
        }
    }
}

impl Deref for ChunkList {
    type Target = [Option<ChunkRef>];
    fn deref(&self) -> &Self::Target {
        match self {
            ChunkList::Empty => &[],
            ChunkList::One(c) => c,
            ChunkList::Many(b) => b,
        }
    }
}

impl DerefMut for ChunkList {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            ChunkList::Empty => &mut [],
            ChunkList::One(c) => c,
            ChunkList::Many(b) => b,
        }
    }
}

impl PartialEq for ChunkList {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for ChunkList {}

impl PartialEq<Vec<Option<ChunkRef>>> for ChunkList {
    fn eq(&self, other: &Vec<Option<ChunkRef>>) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for ChunkList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for ChunkList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ChunkList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Option<ChunkRef>>::deserialize(d).map(ChunkList::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_crypto::BlobId;

    fn c(b: u8) -> Option<ChunkRef> {
        Some(ChunkRef {
            id: BlobId([b; 32]),
            blob_len: 9,
            len: 9,
        })
    }

    #[test]
    fn encodes_like_a_vec_at_every_length() {
        for v in [vec![], vec![c(1)], vec![None], vec![c(1), None, c(3)]] {
            let l = ChunkList::from(v.clone());
            assert_eq!(l, v);
            let bytes = postcard::to_stdvec(&l).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&v).unwrap());
            let back: ChunkList = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, v);
        }
    }

    #[test]
    fn resize_returns_what_it_cuts() {
        let mut l = ChunkList::from(vec![c(1)]);
        assert!(l.resize(3).is_empty());
        assert_eq!(l, vec![c(1), None, None]);
        l[2] = c(2);
        assert_eq!(l.resize(1), vec![None, c(2)]);
        assert_eq!(l, vec![c(1)]);
        assert!(matches!(l, ChunkList::One(_)));
        assert_eq!(l.resize(0), vec![c(1)]);
        assert!(l.is_empty());
    }
}
