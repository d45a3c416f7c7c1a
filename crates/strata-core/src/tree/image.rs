//! The tree as a checkpoint holds it (FORMAT §6.3): inodes sorted by
//! number, then the pack table. [`TreeImage`] is the decoded form;
//! [`TreeImageRef`] and [`PackTableRef`] encode to the same bytes straight
//! from the tree, without a copy of it.

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use strata_crypto::BlobId;

use super::slab::Slab;
use super::{valid_item, Blobs, Inode, Tree, ROOT_INO};
use crate::record::{Kind, PackItem};

/// Serialized form of a tree (checkpoint body). The pack table is not part
/// of the postcard struct: `format::meta` writes it after the checkpoint
/// body (format version 2), so version-1 checkpoints decode unchanged.
#[derive(Serialize, Deserialize)]
pub struct TreeImage {
    pub next_ino: u64,
    pub inodes: Vec<Inode>,
    #[serde(skip)]
    pub packs: Vec<PackEntry>,
}

/// The items of one pack, in a checkpoint's pack table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    pub pack: BlobId,
    pub items: Vec<PackItem>,
}

/// A [`TreeImage`] borrowing the tree's inodes: serializes to the same
/// bytes without copying the tree.
#[derive(Serialize)]
pub struct TreeImageRef<'a> {
    pub next_ino: u64,
    pub(super) inodes: InodesRef<'a>,
}

/// The inodes in number order: the tree's own when they are in that order
/// (after [`Tree::sort_for_image`]), else an index of them (8 bytes each).
pub(super) enum InodesRef<'a> {
    Sorted(&'a [Inode]),
    Index(Vec<&'a Inode>),
}

impl Serialize for InodesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            InodesRef::Sorted(v) => v.serialize(s),
            InodesRef::Index(v) => v.serialize(s),
        }
    }
}

/// The tree's pack table, encoding like the `Vec<PackEntry>` of
/// [`Tree::pack_entries`] (packs sorted by id, items by offset) without
/// building it: the blob table itself when it is in that order (after
/// [`Tree::sort_for_image`]), else the order of the packed blobs (4 bytes
/// each).
pub struct PackTableRef<'a> {
    blobs: &'a Blobs,
    pub(super) order: Option<Vec<u32>>,
    len: usize,
}

impl PackTableRef<'_> {
    /// No packed blob: a checkpoint then has no pack table at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Blob table position of the `i`th packed blob in table order.
    fn pos(&self, i: usize) -> u32 {
        match &self.order {
            Some(o) => o[i],
            None => u32::try_from(i).unwrap_or(u32::MAX),
        }
    }

    fn pack(&self, i: usize) -> BlobId {
        self.blobs.item_at(self.pos(i)).0
    }

    /// The runs of the table order that belong to one pack each.
    fn groups(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let mut start = 0;
        std::iter::from_fn(move || {
            if start >= self.len {
                return None;
            }
            let pack = self.pack(start);
            let end = (start + 1..self.len)
                .find(|&i| self.pack(i) != pack)
                .unwrap_or(self.len);
            let run = start..end;
            start = end;
            Some(run)
        })
    }
}

impl Serialize for PackTableRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'b> {
            pack: BlobId,
            items: Items<'b>,
        }
        struct Items<'b>(&'b PackTableRef<'b>, std::ops::Range<usize>);
        impl Serialize for Items<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.1.len()))?;
                for i in self.1.clone() {
                    seq.serialize_element(&self.0.blobs.item_at(self.0.pos(i)).1)?;
                }
                seq.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.groups().count()))?;
        for g in self.groups() {
            seq.serialize_element(&Entry {
                pack: self.pack(g.start),
                items: Items(self, g),
            })?;
        }
        seq.end()
    }
}

impl Tree {
    /// Rebuild from a checkpoint image (validates structure). The image's
    /// inodes become the tree's without a copy.
    pub fn from_image(img: TreeImage) -> Result<Tree, String> {
        if let Some(i) = img.inodes.iter().find(|i| i.ino >= img.next_ino) {
            return Err(format!("inode {} ≥ next inode {}", i.ino, img.next_ino));
        }
        let inodes = Slab::from_vec(img.inodes).map_err(|()| "duplicate inode".to_string())?;
        if !inodes.get(&ROOT_INO).is_some_and(|r| r.kind == Kind::Dir) {
            return Err("no root directory".into());
        }
        let mut blobs = Blobs::default();
        for i in inodes.values() {
            for child in i.entries().values() {
                if !inodes.contains_key(child) {
                    return Err(format!(
                        "entry of inode {} points to missing inode {child}",
                        i.ino
                    ));
                }
            }
            for c in i.chunks().iter().flatten() {
                blobs.add_ref(c.id);
            }
        }
        let mut t = Tree {
            inodes,
            next_ino: img.next_ino,
            blobs,
        };
        for e in &img.packs {
            if e.items.iter().any(|i| !valid_item(i)) {
                return Err("pack table item at an impossible offset".into());
            }
            t.place(e.pack, &e.items, &mut Vec::new());
        }
        Ok(t)
    }

    /// The image written into a checkpoint (sorted by inode number; the
    /// pack table sorted by pack, items by offset).
    pub fn to_image(&self) -> TreeImage {
        let mut inodes: Vec<Inode> = self.inodes.values().cloned().collect();
        inodes.sort_by_key(|i| i.ino);
        TreeImage {
            next_ino: self.next_ino,
            inodes,
            packs: self.pack_entries(),
        }
    }

    /// The pack table of a checkpoint: each pack's items, in order.
    pub fn pack_entries(&self) -> Vec<PackEntry> {
        let table = self.pack_table_ref();
        table
            .groups()
            .map(|g| PackEntry {
                pack: table.pack(g.start),
                items: g.map(|i| self.blobs.item_at(table.pos(i)).1).collect(),
            })
            .collect()
    }

    /// [`Tree::pack_entries`] without the copy.
    pub fn pack_table_ref(&self) -> PackTableRef<'_> {
        PackTableRef {
            blobs: &self.blobs,
            order: self.blobs.packed_order(),
            len: self.blobs.packed_count(),
        }
    }

    /// Put the inodes and the blob table in the order a checkpoint lists
    /// them, where they are (no allocation; a no-op when they already
    /// are): [`Tree::image_ref`] and [`Tree::pack_table_ref`] then borrow
    /// them as they are instead of building an index of a big tree.
    pub fn sort_for_image(&mut self) {
        self.inodes.sort_by(|a, b| a.ino.cmp(&b.ino));
        self.blobs.sort_for_table();
    }

    /// [`Tree::to_image`] without the copy.
    pub fn image_ref(&self) -> TreeImageRef<'_> {
        let all = self.inodes.as_slice();
        let inodes = if all.is_sorted_by_key(|i| i.ino) {
            InodesRef::Sorted(all)
        } else {
            let mut v: Vec<&Inode> = all.iter().collect();
            v.sort_unstable_by_key(|i| i.ino);
            InodesRef::Index(v)
        };
        TreeImageRef {
            next_ino: self.next_ino,
            inodes,
        }
    }
}
