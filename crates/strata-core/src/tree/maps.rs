//! An inode's directory entries and extended attributes: maps that most
//! inodes leave empty (a file has no entries, and rarely any attribute),
//! so they take one pointer until they hold something (an empty
//! `BTreeMap` takes three). They read as the `BTreeMap` they hold, and
//! encode exactly like it.

use std::collections::{btree_map, BTreeMap};
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::name::Name;

/// Directory entries: name → inode.
pub type Entries = BoxedMap<BTreeMap<Name, u64>>;
/// Extended attributes: name → value.
pub type Xattrs = BoxedMap<BTreeMap<Vec<u8>, Vec<u8>>>;

/// A map of one of the types above, on the heap once not empty.
#[derive(Clone)]
pub struct BoxedMap<M>(Option<Box<M>>);

/// The empty map a [`BoxedMap`] reads as while it holds nothing.
pub trait EmptyMap: Default + 'static {
    fn empty() -> &'static Self;
    fn is_empty_map(&self) -> bool;
}

impl EmptyMap for BTreeMap<Name, u64> {
    fn empty() -> &'static Self {
        static EMPTY: BTreeMap<Name, u64> = BTreeMap::new();
        &EMPTY
    }
    fn is_empty_map(&self) -> bool {
        self.is_empty()
    }
}

impl EmptyMap for BTreeMap<Vec<u8>, Vec<u8>> {
    fn empty() -> &'static Self {
        static EMPTY: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        &EMPTY
    }
    fn is_empty_map(&self) -> bool {
        self.is_empty()
    }
}

impl<M> BoxedMap<M> {
    pub const fn new() -> Self {
        BoxedMap(None)
    }
}

impl<M> Default for BoxedMap<M> {
    fn default() -> Self {
        BoxedMap(None)
    }
}

impl<M: EmptyMap> Deref for BoxedMap<M> {
    type Target = M;
    fn deref(&self) -> &M {
        match &self.0 {
            Some(m) => m,
            None => M::empty(),
        }
    }
}

impl<M: EmptyMap> From<M> for BoxedMap<M> {
    fn from(m: M) -> Self {
        BoxedMap((!m.is_empty_map()).then(|| Box::new(m)))
    }
}

impl<K: Ord, V> BoxedMap<BTreeMap<K, V>>
where
    BTreeMap<K, V>: EmptyMap,
{
    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        let m = self.0.get_or_insert_with(Box::default);
        let old = m.insert(k, v);
        // Entries inserted in order (as `put` does, its walk is sorted)
        // leave every B-tree node little more than half full; rebuilt
        // from its sorted contents the map fills its nodes. Each time it
        // grew by a sixteenth to an eighth from 64 entries (at sizes with
        // at most four significant bits), so it costs a constant per
        // insert and at most a ninth of the entries sit in part-full nodes.
        if old.is_none() && m.len() >= 64 && rebuild_at(m.len()) {
            let full: BTreeMap<K, V> = std::mem::take(&mut **m).into_iter().collect();
            **m = full;
        }
        old
    }

    pub(crate) fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let m = self.0.as_mut()?;
        let v = m.remove(k);
        if m.is_empty() {
            self.0 = None;
        }
        v
    }
}

/// Sizes at which a map is rebuilt: 64, 72, 80, 88, 96, …, 128, 144, …
fn rebuild_at(len: usize) -> bool {
    let shift = len.ilog2().saturating_sub(3);
    (len >> shift) << shift == len
}

impl<'a, K, V> IntoIterator for &'a BoxedMap<BTreeMap<K, V>>
where
    BTreeMap<K, V>: EmptyMap,
{
    type Item = (&'a K, &'a V);
    type IntoIter = btree_map::Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        (**self).iter()
    }
}

impl<M: EmptyMap + PartialEq> PartialEq for BoxedMap<M> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<M: EmptyMap + Eq> Eq for BoxedMap<M> {}

impl<M: EmptyMap + std::fmt::Debug> std::fmt::Debug for BoxedMap<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<M: EmptyMap + Serialize> Serialize for BoxedMap<M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, M: EmptyMap + Deserialize<'de>> Deserialize<'de> for BoxedMap<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        M::deserialize(d).map(BoxedMap::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_map_and_frees_when_emptied() {
        let mut m: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut b = Entries::new();
        assert_eq!(
            postcard::to_stdvec(&b).unwrap(),
            postcard::to_stdvec(&m).unwrap()
        );
        for (i, n) in [&b"b"[..], b"a", b"c"].into_iter().enumerate() {
            m.insert(n.to_vec(), i as u64);
            b.insert(Name::from(n), i as u64);
        }
        let bytes = postcard::to_stdvec(&b).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&m).unwrap());
        let back: Entries = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, b);
        assert!(back.iter().map(|(k, v)| (k.to_vec(), *v)).eq(m.clone()));
        assert_eq!(
            (&b).into_iter()
                .map(|(k, _)| k.to_vec())
                .collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        for n in [&b"a"[..], b"b", b"c"] {
            assert!(b.remove(n).is_some());
        }
        assert!(b.0.is_none(), "an emptied map takes no heap");
        assert!(b.remove(&b"a"[..]).is_none());
    }

    #[test]
    fn rebuilds_at_sizes_with_four_significant_bits() {
        let at: Vec<usize> = (64..=160).filter(|&n| rebuild_at(n)).collect();
        assert_eq!(at, [64, 72, 80, 88, 96, 104, 112, 120, 128, 144, 160]);
        assert!(rebuild_at(1 << 40) && !rebuild_at((1 << 40) + 1));
    }

    #[test]
    fn stays_the_same_map_across_rebuilds() {
        let mut m: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut b = Entries::new();
        // in order, then out of order, past several doublings
        for i in (0..3000u64).chain((3000..5000).rev()) {
            let k = format!("f{i:05}").into_bytes();
            assert_eq!(b.insert(Name::from(&k[..]), i), m.insert(k, i));
        }
        assert_eq!(b.insert(Name::from(&b"f00007"[..]), 1), Some(7));
        m.insert(b"f00007".to_vec(), 1);
        assert!(b.iter().map(|(k, v)| (k.to_vec(), *v)).eq(m));
        assert!(b.keys().zip(b.keys().skip(1)).all(|(x, y)| x < y));
    }
}
