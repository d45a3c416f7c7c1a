//! The tree's blob table: for every blob a chunk references, how many chunk
//! slots do, and where it is stored when it is in a pack — one entry of 48
//! bytes per blob (two hash maps, refcounts and locations, took about 220
//! bytes per packed blob). Packs are numbered in the order the table first
//! sees them; their ids and live-item counts are kept aside (few: a pack
//! holds thousands of items).

use std::collections::HashMap;

use strata_crypto::BlobId;

use super::slab::{Keyed, Slab};
use super::{PackLoc, PackUse};
use crate::format::pack::item_len;
use crate::record::PackItem;

/// `Blob::pack` of a blob stored as an object of its own.
const UNPACKED: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Blob {
    id: BlobId,
    /// Chunk slots referencing it (≥ 1: unreferenced blobs have no entry).
    refs: u32,
    /// Number of its pack in `Blobs::pack_ids`, or [`UNPACKED`].
    pack: u32,
    offset: u32,
    blob_len: u32,
}

impl Keyed for Blob {
    type Key = BlobId;
    fn key(&self) -> &BlobId {
        &self.id
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Blobs {
    table: Slab<Blob>,
    /// Pack number → id (append-only for the life of the tree).
    pack_ids: Vec<BlobId>,
    pack_nums: HashMap<BlobId, u32>,
    /// Pack → its live items.
    packs: HashMap<BlobId, PackUse>,
    /// Referenced blobs that are in a pack.
    packed: usize,
}

/// Equal when they reference the same blobs, the same number of times, at
/// the same places (pack numbering is an internal detail).
impl PartialEq for Blobs {
    fn eq(&self, other: &Self) -> bool {
        self.table.len() == other.table.len()
            && self.packs == other.packs
            && self.table.values().all(|b| {
                other.refs(&b.id) == u64::from(b.refs) && other.packed(&b.id) == self.loc(b)
            })
    }
}

impl Eq for Blobs {}

impl Blobs {
    fn loc(&self, b: &Blob) -> Option<PackLoc> {
        if b.pack == UNPACKED {
            return None;
        }
        Some(PackLoc {
            pack: *self.pack_ids.get(b.pack as usize)?,
            offset: b.offset,
            blob_len: b.blob_len,
        })
    }

    /// Chunk slots referencing `id`.
    pub(crate) fn refs(&self, id: &BlobId) -> u64 {
        self.table.get(id).map(|b| u64::from(b.refs)).unwrap_or(0)
    }

    /// Distinct referenced blobs.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// One more chunk slot references `id`.
    pub(crate) fn add_ref(&mut self, id: BlobId) {
        match self.table.get_mut(&id) {
            // 2³² slots would take hundreds of GiB of chunk lists
            Some(b) => b.refs = b.refs.saturating_add(1),
            None => {
                self.table.insert(Blob {
                    id,
                    refs: 1,
                    pack: UNPACKED,
                    offset: 0,
                    blob_len: 0,
                });
            }
        }
    }

    /// One chunk slot referencing `id` went. When it was the last: `Some`
    /// with where the blob was if in a pack (the pack has one live item
    /// less; a pack left without any is pushed to `dead`).
    pub(crate) fn unref(&mut self, id: &BlobId, dead: &mut Vec<BlobId>) -> Option<Option<PackLoc>> {
        let b = self.table.get_mut(id)?;
        b.refs -= 1;
        if b.refs > 0 {
            return None;
        }
        let b = self.table.remove(id)?;
        let loc = self.loc(&b);
        if let Some(l) = &loc {
            self.packed -= 1;
            self.pack_dec(l, dead);
        }
        Some(loc)
    }

    /// Where `id` is stored, if in a pack.
    pub(crate) fn packed(&self, id: &BlobId) -> Option<PackLoc> {
        self.table.get(id).and_then(|b| self.loc(b))
    }

    /// Referenced blobs in packs.
    pub(crate) fn packed_count(&self) -> usize {
        self.packed
    }

    /// Every referenced blob in a pack, with where (in no order).
    pub(crate) fn packed_iter(&self) -> impl Iterator<Item = (BlobId, PackLoc)> + '_ {
        self.table
            .values()
            .filter_map(|b| self.loc(b).map(|l| (b.id, l)))
    }

    /// Where a blob goes in a checkpoint's pack table: packed blobs
    /// sorted by pack id, then offset, then blob id; unpacked ones after.
    fn table_key<'a>(
        pack_ids: &'a [BlobId],
        b: &'a Blob,
    ) -> (bool, Option<&'a BlobId>, u32, &'a BlobId) {
        let pack = pack_ids.get(b.pack as usize);
        (b.pack == UNPACKED, pack, b.offset, &b.id)
    }

    /// Put the table in pack table order (no allocation), so that
    /// [`Blobs::packed_order`] need not build one.
    pub(crate) fn sort_for_table(&mut self) {
        let Blobs {
            table, pack_ids, ..
        } = self;
        table.sort_by(|a, b| Self::table_key(pack_ids, a).cmp(&Self::table_key(pack_ids, b)));
    }

    /// Positions of the packed blobs in pack table order: `None` when
    /// they are the first [`Blobs::packed_count`] positions, in order
    /// (after [`Blobs::sort_for_table`] and no change since).
    pub(crate) fn packed_order(&self) -> Option<Vec<u32>> {
        let items = self.table.as_slice();
        let key = |b| Self::table_key(&self.pack_ids, b);
        if items.is_sorted_by(|a, b| key(a) <= key(b)) {
            return None;
        }
        let mut order: Vec<u32> = (0..items.len())
            .filter(|&i| items[i].pack != UNPACKED)
            .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        order.sort_unstable_by(|&p, &q| key(&items[p as usize]).cmp(&key(&items[q as usize])));
        Some(order)
    }

    /// The pack and the item of the blob at `pos` (a position of [`Blobs::packed_order`]).
    pub(crate) fn item_at(&self, pos: u32) -> (BlobId, PackItem) {
        let b = &self.table.as_slice()[pos as usize];
        let pack = self
            .pack_ids
            .get(b.pack as usize)
            .copied()
            .unwrap_or(BlobId([0; 32]));
        (
            pack,
            PackItem {
                id: b.id,
                offset: b.offset,
                blob_len: b.blob_len,
            },
        )
    }

    pub(crate) fn packs(&self) -> &HashMap<BlobId, PackUse> {
        &self.packs
    }

    fn pack_num(&mut self, pack: BlobId) -> u32 {
        if let Some(&n) = self.pack_nums.get(&pack) {
            return n;
        }
        let n = u32::try_from(self.pack_ids.len()).unwrap_or(UNPACKED - 1);
        self.pack_ids.push(pack);
        self.pack_nums.insert(pack, n);
        n
    }

    /// Record that referenced blob `id` is at `loc` (moving it out of the
    /// pack it was in, which may leave that pack in `dead`). Unreferenced
    /// blobs are ignored.
    pub(crate) fn place(&mut self, id: &BlobId, loc: PackLoc, dead: &mut Vec<BlobId>) {
        if !self.table.contains_key(id) {
            return;
        }
        let num = self.pack_num(loc.pack);
        let Some(b) = self.table.get_mut(id) else {
            return;
        };
        let old = std::mem::replace(
            b,
            Blob {
                id: *id,
                refs: b.refs,
                pack: num,
                offset: loc.offset,
                blob_len: loc.blob_len,
            },
        );
        match self.loc(&old) {
            Some(l) => self.pack_dec(&l, dead),
            None => self.packed += 1,
        }
        let u = self.packs.entry(loc.pack).or_default();
        u.items += 1;
        u.bytes += item_len(u64::from(loc.blob_len));
    }

    fn pack_dec(&mut self, l: &PackLoc, dead: &mut Vec<BlobId>) {
        if let Some(u) = self.packs.get_mut(&l.pack) {
            u.items -= 1;
            u.bytes = u.bytes.saturating_sub(item_len(u64::from(l.blob_len)));
            if u.items == 0 {
                self.packs.remove(&l.pack);
                dead.push(l.pack);
            }
        }
    }
}
