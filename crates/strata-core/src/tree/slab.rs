//! A keyed table stored densely: the values in one `Vec`, and a hash index
//! of 4-byte positions into it. A `HashMap<K, V>` keeps every value in its
//! buckets, and has up to twice as many buckets as values (and both tables,
//! old and new, while it grows): for the tree's million-entry tables that
//! doubles the memory of the values. Here the values are stored once, and
//! a growing `Vec` of that size is moved by the allocator without a copy.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

/// A value that carries its own key.
pub(crate) trait Keyed {
    type Key: Hash + Eq;
    fn key(&self) -> &Self::Key;
}

pub(crate) struct Slab<T> {
    items: Vec<T>,
    /// Positions in `items`, hashed by the item's key.
    index: HashTable<u32>,
    hasher: RandomState,
}

impl<T: Keyed> Slab<T> {
    pub(crate) fn new() -> Self {
        Slab {
            items: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    /// A table of `items`, taken as they are (no copy); `Err` with the
    /// first duplicate key's item if two share a key.
    pub(crate) fn from_vec(items: Vec<T>) -> Result<Self, ()> {
        let mut s = Slab {
            index: HashTable::with_capacity(items.len()),
            items,
            hasher: RandomState::new(),
        };
        for i in 0..s.items.len() {
            let Slab {
                items,
                index,
                hasher,
            } = &mut s;
            let key = items[i].key();
            let h = hasher.hash_one(key);
            if index.find(h, |&j| items[j as usize].key() == key).is_some() {
                return Err(());
            }
            index.insert_unique(h, pos(i), |&j| hasher.hash_one(items[j as usize].key()));
        }
        Ok(s)
    }

    fn find(&self, key: &T::Key) -> Option<usize> {
        let h = self.hasher.hash_one(key);
        self.index
            .find(h, |&j| self.items[j as usize].key() == key)
            .map(|&j| j as usize)
    }

    pub(crate) fn get(&self, key: &T::Key) -> Option<&T> {
        self.find(key).map(|i| &self.items[i])
    }

    pub(crate) fn get_mut(&mut self, key: &T::Key) -> Option<&mut T> {
        self.find(key).map(|i| &mut self.items[i])
    }

    pub(crate) fn contains_key(&self, key: &T::Key) -> bool {
        self.find(key).is_some()
    }

    /// Insert `item`, returning the one it replaces (same key).
    pub(crate) fn insert(&mut self, item: T) -> Option<T> {
        if let Some(i) = self.find(item.key()) {
            return Some(std::mem::replace(&mut self.items[i], item));
        }
        let Slab {
            items,
            index,
            hasher,
        } = self;
        let h = hasher.hash_one(item.key());
        index.insert_unique(h, pos(items.len()), |&j| {
            hasher.hash_one(items[j as usize].key())
        });
        items.push(item);
        None
    }

    /// Remove the item of `key`; the last item takes its place.
    pub(crate) fn remove(&mut self, key: &T::Key) -> Option<T> {
        let Slab {
            items,
            index,
            hasher,
        } = self;
        let h = hasher.hash_one(key);
        let entry = index
            .find_entry(h, |&j| items[j as usize].key() == key)
            .ok()?;
        let i = entry.remove().0 as usize;
        let last = items.len() - 1;
        if i != last {
            let lh = hasher.hash_one(items[last].key());
            if let Some(j) = index.find_mut(lh, |&j| j as usize == last) {
                *j = pos(i);
            }
        }
        let gone = items.swap_remove(i);
        if items.len() < items.capacity() / 4 {
            items.shrink_to(items.len() * 2);
        }
        Some(gone)
    }

    /// Put the items in the order of `cmp` (positions change; nothing is
    /// allocated: the index is rebuilt where it is). Already in order:
    /// nothing to do.
    pub(crate) fn sort_by(&mut self, mut cmp: impl FnMut(&T, &T) -> std::cmp::Ordering) {
        if self.items.is_sorted_by(|a, b| cmp(a, b).is_le()) {
            return;
        }
        self.items.sort_unstable_by(&mut cmp);
        let Slab {
            items,
            index,
            hasher,
        } = self;
        index.clear();
        for (i, item) in items.iter().enumerate() {
            index.insert_unique(hasher.hash_one(item.key()), pos(i), |&j| {
                hasher.hash_one(items[j as usize].key())
            });
        }
    }

    /// The items, in no particular order (positions stay valid until the
    /// next insert or remove).
    pub(crate) fn as_slice(&self) -> &[T] {
        &self.items
    }

    /// In no particular order.
    pub(crate) fn values(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A position in `items` (tables never hold 2³² values: that would take
/// hundreds of GiB).
fn pos(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl<T: Keyed> Default for Slab<T> {
    fn default() -> Self {
        Slab::new()
    }
}

impl<T: Clone + Keyed> Clone for Slab<T> {
    fn clone(&self) -> Self {
        Slab {
            items: self.items.clone(),
            index: self.index.clone(),
            hasher: self.hasher.clone(),
        }
    }
}

/// Equal when they hold the same items, in whatever order.
impl<T: Keyed + PartialEq> PartialEq for Slab<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.values().all(|v| other.get(v.key()) == Some(v))
    }
}

impl<T: Keyed + Eq> Eq for Slab<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.items.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone, PartialEq)]
    struct Item(u64, u64);

    impl Keyed for Item {
        type Key = u64;
        fn key(&self) -> &u64 {
            &self.0
        }
    }

    proptest::proptest! {
        /// Inserts and removes in any order leave the same contents as a
        /// HashMap given the same operations.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u64..64, proptest::bool::ANY), 0..400)) {
            let mut s = Slab::new();
            let mut m = HashMap::new();
            for (n, (k, add)) in ops.into_iter().enumerate() {
                if add {
                    let old = s.insert(Item(k, n as u64)).map(|i| i.1);
                    proptest::prop_assert_eq!(old, m.insert(k, n as u64));
                } else {
                    proptest::prop_assert_eq!(s.remove(&k).map(|i| i.1), m.remove(&k));
                }
                proptest::prop_assert_eq!(s.len(), m.len());
            }
            for (k, v) in &m {
                proptest::prop_assert_eq!(s.get(k), Some(&Item(*k, *v)));
            }
            proptest::prop_assert_eq!(s.values().count(), m.len());
            s.sort_by(|a, b| b.0.cmp(&a.0));
            proptest::prop_assert!(s.as_slice().windows(2).all(|w| w[0].0 > w[1].0));
            for (k, v) in &m {
                proptest::prop_assert_eq!(s.get(k), Some(&Item(*k, *v)));
            }
            s.remove(&3);
            proptest::prop_assert_eq!(s.get(&3), None);
        }
    }

    #[test]
    fn from_vec_refuses_duplicates() {
        assert!(Slab::from_vec(vec![Item(1, 0), Item(2, 0), Item(1, 1)]).is_err());
        let s = Slab::from_vec(vec![Item(1, 0), Item(2, 5)]).unwrap();
        assert_eq!(s.get(&2), Some(&Item(2, 5)));
        assert!(!s.contains_key(&3));
    }
}
