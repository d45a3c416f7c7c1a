//! A directory entry's name as the tree keeps it: 16 bytes, the name
//! itself inline when it is at most 14 bytes long (most are), else one
//! pointer to it. A `Vec<u8>` took 24 bytes plus a heap block (32 bytes
//! with the allocator's header) for every name. Compared, ordered and
//! hashed as its bytes, it encodes exactly like a `Vec<u8>`.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest name held inline.
const INLINE: usize = 14;

#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<Box<[u8]>>),
}

const _: () = assert!(std::mem::size_of::<Name>() == 16);

impl Name {
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for Name {
    fn from(s: &[u8]) -> Self {
        if s.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..s.len()].copy_from_slice(s);
            Name(Repr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            Name(Repr::Heap(Box::new(s.into())))
        }
    }
}

impl From<Vec<u8>> for Name {
    fn from(v: Vec<u8>) -> Self {
        if v.len() <= INLINE {
            Name::from(&v[..])
        } else {
            Name(Repr::Heap(Box::new(v.into_boxed_slice())))
        }
    }
}

impl Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Name {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialEq<[u8]> for Name {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl PartialEq<Vec<u8>> for Name {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_bytes() == other.as_slice()
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Like `[u8]`'s, as `Borrow` requires.
impl Hash for Name {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_bytes().fmt(f)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(Name::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_encodes_like_a_vec_at_every_length() {
        for n in 0..=300usize {
            let v: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            let name = Name::from(v.clone());
            assert_eq!(name.as_bytes(), &v[..]);
            assert_eq!(Name::from(&v[..]), name);
            assert_eq!(matches!(name.0, Repr::Inline { .. }), n <= INLINE);
            let bytes = postcard::to_stdvec(&name).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&v).unwrap());
            let back: Name = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, name);
        }
    }

    #[test]
    fn orders_like_its_bytes_across_inline_and_heap() {
        let names: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"abcdefghijklmn".to_vec(),
            b"abcdefghijklmno".to_vec(),
            b"abcdefghijklmnoz".to_vec(),
            b"b".to_vec(),
            vec![0xff; 20],
        ];
        for x in &names {
            for y in &names {
                assert_eq!(
                    Name::from(x.clone()).cmp(&Name::from(y.clone())),
                    x.cmp(y),
                    "{x:?} vs {y:?}"
                );
            }
        }
        let mut m = std::collections::BTreeMap::new();
        m.insert(Name::from(b"abcdefghijklmnopq".to_vec()), 1);
        assert_eq!(m.get(&b"abcdefghijklmnopq"[..]), Some(&1));
    }
}
