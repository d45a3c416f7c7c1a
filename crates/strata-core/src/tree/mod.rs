//! The in-memory metadata tree: inodes, directory entries, chunk lists and
//! blob reference counts. The tree changes only through [`Tree::apply`], which
//! validates a [`Record`] completely before changing anything, so a rejected
//! record leaves the tree untouched.

mod blobs;
mod image;
mod inode;
mod maps;
mod name;
mod slab;

use std::collections::HashMap;

use strata_crypto::BlobId;

use crate::format::pack::FIRST_ITEM;
use crate::record::{
    ChunkRef, Kind, NewInode, PackItem, Record, Ts, RENAME_EXCHANGE, RENAME_NOREPLACE,
};
use blobs::Blobs;
pub use image::{PackEntry, PackTableRef, TreeImage, TreeImageRef};
pub use inode::Inode;
pub use maps::{BoxedMap, EmptyMap, Entries, Xattrs};
pub use name::Name;
use slab::{Keyed, Slab};

pub const ROOT_INO: u64 = 1;
/// Longest name accepted in a directory (bytes), like most Linux filesystems.
pub const NAME_MAX: usize = 255;

impl Keyed for Inode {
    type Key = u64;
    fn key(&self) -> &u64 {
        &self.ino
    }
}

/// Why a record could not be applied (errno-like, for front ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyError {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Invalid,
    NameTooLong,
    /// The record cannot fit one metadata object of this store.
    TooLarge,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplyError::NotFound => "no such entry",
            ApplyError::Exists => "entry exists",
            ApplyError::NotDir => "not a directory",
            ApplyError::IsDir => "is a directory",
            ApplyError::NotEmpty => "directory not empty",
            ApplyError::Invalid => "invalid operation",
            ApplyError::NameTooLong => "name too long",
            ApplyError::TooLarge => "too large for one metadata object of this store",
        })
    }
}

/// Where a packed blob is stored (FORMAT §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLoc {
    pub pack: BlobId,
    pub offset: u32,
    pub blob_len: u32,
}

/// The live (referenced) items of one pack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackUse {
    pub items: u64,
    /// Stored bytes of those items.
    pub bytes: u64,
}

/// The whole metadata tree. Built for trees of millions of files: the
/// inodes are stored once each in a [`Slab`] (no hash map buckets holding
/// them), the blob table takes one small entry per blob, and an inode's
/// rarely used maps take one pointer until they hold something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    inodes: Slab<Inode>,
    next_ino: u64,
    /// Reference counts of blobs, and the pack table: referenced blobs
    /// stored in packs (the others are blob objects of their own).
    blobs: Blobs,
}

/// What applying a record made deletable (once the record is durable).
#[derive(Debug, Default)]
pub struct Freed {
    /// Blob objects no chunk references any more.
    pub blobs: Vec<BlobId>,
    /// Packs whose last live item went.
    pub packs: Vec<BlobId>,
    /// Packed blobs that lost their last reference, and where they were
    /// (a follower's open file may still read them there).
    pub unplaced: Vec<(BlobId, PackLoc)>,
}

/// A pack item can only start after the pack's magic.
fn valid_item(i: &PackItem) -> bool {
    u64::from(i.offset) >= FIRST_ITEM && i.blob_len > 0
}

fn valid_name(name: &[u8]) -> Result<(), ApplyError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(ApplyError::Invalid);
    }
    if name.len() > NAME_MAX {
        return Err(ApplyError::NameTooLong);
    }
    Ok(())
}

impl Tree {
    /// A tree holding only the root directory.
    pub fn new_root(time: Ts, uid: u32, gid: u32) -> Tree {
        let root = Inode::new(
            ROOT_INO,
            Kind::Dir,
            0o755,
            (uid, gid),
            2,
            0,
            time,
            0,
            ROOT_INO,
        );
        let mut inodes = Slab::new();
        inodes.insert(root);
        Tree {
            inodes,
            next_ino: ROOT_INO + 1,
            blobs: Blobs::default(),
        }
    }

    /// Where blob `id` is stored when it is in a pack.
    pub fn packed(&self, id: &BlobId) -> Option<PackLoc> {
        self.blobs.packed(id)
    }

    /// Every pack with live items.
    pub fn packs(&self) -> &HashMap<BlobId, PackUse> {
        self.blobs.packs()
    }

    /// The pack table (blob → location), copied out of the tree.
    pub fn pack_table(&self) -> HashMap<BlobId, PackLoc> {
        self.blobs.packed_iter().collect()
    }

    /// How many referenced blobs are in packs.
    pub fn packed_count(&self) -> usize {
        self.blobs.packed_count()
    }

    /// Record that the referenced blobs of `items` are in `pack` (moving
    /// them out of where they were); packs left without items are pushed
    /// to `dead`.
    fn place(&mut self, pack: BlobId, items: &[PackItem], dead: &mut Vec<BlobId>) {
        for it in items {
            let loc = PackLoc {
                pack,
                offset: it.offset,
                blob_len: it.blob_len,
            };
            self.blobs.place(&it.id, loc, dead);
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub fn inodes(&self) -> impl Iterator<Item = &Inode> {
        self.inodes.values()
    }

    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }

    /// Allocate a fresh inode number (the record that uses it makes it durable).
    pub fn alloc_ino(&mut self) -> u64 {
        let i = self.next_ino;
        self.next_ino += 1;
        i
    }

    /// Look `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.inodes.get(&parent)?.entries().get(name).copied()
    }

    /// Reference count of a blob.
    pub fn blob_refs(&self, id: &BlobId) -> u64 {
        self.blobs.refs(id)
    }

    /// How many distinct blobs the tree references.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// All referenced blobs with their chunk refs (one per distinct blob).
    pub fn referenced_blobs(&self) -> HashMap<BlobId, ChunkRef> {
        let mut out = HashMap::with_capacity(self.blobs.len());
        for i in self.inodes.values() {
            for c in i.chunks().iter().flatten() {
                out.entry(c.id).or_insert(*c);
            }
        }
        out
    }

    fn dir(&self, ino: u64) -> Result<&Inode, ApplyError> {
        let d = self.inodes.get(&ino).ok_or(ApplyError::NotFound)?;
        if d.kind != Kind::Dir {
            return Err(ApplyError::NotDir);
        }
        Ok(d)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Inode, ApplyError> {
        self.inodes.get_mut(&ino).ok_or(ApplyError::NotFound)
    }

    fn unref(&mut self, c: &ChunkRef, freed: &mut Freed) {
        match self.blobs.unref(&c.id, &mut freed.packs) {
            Some(Some(l)) => freed.unplaced.push((c.id, l)),
            Some(None) => freed.blobs.push(c.id),
            None => {}
        }
    }

    fn drop_inode(&mut self, ino: u64, freed: &mut Freed) {
        if let Some(node) = self.inodes.remove(&ino) {
            for c in node.chunks().iter().flatten() {
                self.unref(c, freed);
            }
        }
    }

    /// Is `anc` an ancestor of (or equal to) directory `ino`?
    fn is_ancestor(&self, anc: u64, mut ino: u64) -> bool {
        loop {
            if ino == anc {
                return true;
            }
            match self.inodes.get(&ino) {
                Some(n) if n.parent != ino => ino = n.parent,
                _ => return false,
            }
        }
    }

    /// Decrement links of `ino` after an entry pointing to it was removed.
    fn release_link(
        &mut self,
        parent: u64,
        ino: u64,
        keep_orphan: bool,
        time: Ts,
        freed: &mut Freed,
    ) {
        let Some(node) = self.inodes.get_mut(&ino) else {
            return;
        };
        node.ctime = time;
        if node.kind == Kind::Dir {
            node.nlink = 0;
            if let Some(p) = self.inodes.get_mut(&parent) {
                p.nlink = p.nlink.saturating_sub(1);
            }
        } else {
            node.nlink = node.nlink.saturating_sub(1);
        }
        if self.inodes.get(&ino).is_some_and(|n| n.nlink == 0) && !keep_orphan {
            self.drop_inode(ino, freed);
        }
    }

    /// Check a record against the tree without changing it.
    pub fn validate(&self, r: &Record) -> Result<(), ApplyError> {
        match r {
            Record::Create {
                ino,
                parent,
                name,
                attr,
            } => {
                valid_name(name)?;
                let d = self.dir(*parent)?;
                if d.entries().contains_key(&name[..]) {
                    return Err(ApplyError::Exists);
                }
                if self.inodes.contains_key(ino) || *ino == 0 {
                    return Err(ApplyError::Invalid);
                }
                if attr.kind == Kind::Symlink && attr.target.is_none() {
                    return Err(ApplyError::Invalid);
                }
            }
            Record::Link {
                ino, parent, name, ..
            } => {
                valid_name(name)?;
                let d = self.dir(*parent)?;
                if d.entries().contains_key(&name[..]) {
                    return Err(ApplyError::Exists);
                }
                let n = self.inodes.get(ino).ok_or(ApplyError::NotFound)?;
                if n.kind == Kind::Dir {
                    return Err(ApplyError::IsDir);
                }
            }
            Record::Unlink { parent, name, .. } => {
                let child = self
                    .dir(*parent)?
                    .entries()
                    .get(&name[..])
                    .ok_or(ApplyError::NotFound)?;
                let c = self.inodes.get(child).ok_or(ApplyError::NotFound)?;
                if c.kind == Kind::Dir && !c.entries().is_empty() {
                    return Err(ApplyError::NotEmpty);
                }
            }
            Record::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                ..
            } => {
                valid_name(new_name)?;
                let src = *self
                    .dir(*parent)?
                    .entries()
                    .get(&name[..])
                    .ok_or(ApplyError::NotFound)?;
                let dst = self.dir(*new_parent)?.entries().get(&new_name[..]).copied();
                let src_node = self.inodes.get(&src).ok_or(ApplyError::NotFound)?;
                if flags & RENAME_EXCHANGE != 0 {
                    let dst = dst.ok_or(ApplyError::NotFound)?;
                    let dst_node = self.inodes.get(&dst).ok_or(ApplyError::NotFound)?;
                    if src_node.kind == Kind::Dir && self.is_ancestor(src, *new_parent) {
                        return Err(ApplyError::Invalid);
                    }
                    if dst_node.kind == Kind::Dir && self.is_ancestor(dst, *parent) {
                        return Err(ApplyError::Invalid);
                    }
                    return Ok(());
                }
                if src_node.kind == Kind::Dir && self.is_ancestor(src, *new_parent) {
                    return Err(ApplyError::Invalid);
                }
                if let Some(dst) = dst {
                    if flags & RENAME_NOREPLACE != 0 {
                        return Err(ApplyError::Exists);
                    }
                    if dst == src {
                        return Ok(());
                    }
                    let dn = self.inodes.get(&dst).ok_or(ApplyError::NotFound)?;
                    match (src_node.kind == Kind::Dir, dn.kind == Kind::Dir) {
                        (true, false) => return Err(ApplyError::NotDir),
                        (false, true) => return Err(ApplyError::IsDir),
                        (true, true) if !dn.entries().is_empty() => {
                            return Err(ApplyError::NotEmpty)
                        }
                        _ => {}
                    }
                }
            }
            Record::SetAttr { ino, size, .. } => {
                let n = self.inodes.get(ino).ok_or(ApplyError::NotFound)?;
                if size.is_some() && n.kind != Kind::File {
                    return Err(if n.kind == Kind::Dir {
                        ApplyError::IsDir
                    } else {
                        ApplyError::Invalid
                    });
                }
            }
            Record::SetChunks {
                ino,
                first,
                chunks,
                size,
                ..
            } => {
                let n = self.inodes.get(ino).ok_or(ApplyError::NotFound)?;
                if n.kind != Kind::File || n.chunk_size == 0 {
                    return Err(ApplyError::Invalid);
                }
                let cs = u64::from(n.chunk_size);
                let end = first
                    .checked_add(chunks.len() as u64)
                    .ok_or(ApplyError::Invalid)?;
                if end.saturating_sub(1).saturating_mul(cs) > *size && !chunks.is_empty() {
                    return Err(ApplyError::Invalid);
                }
                if chunks
                    .iter()
                    .flatten()
                    .any(|c| c.len > c.blob_len || u64::from(c.len) > cs)
                {
                    return Err(ApplyError::Invalid);
                }
            }
            Record::SetXattr { ino, .. } | Record::RemoveXattr { ino, .. } => {
                if !self.inodes.contains_key(ino) {
                    return Err(ApplyError::NotFound);
                }
            }
            Record::Forget { ino } => {
                let n = self.inodes.get(ino).ok_or(ApplyError::NotFound)?;
                if n.nlink != 0 {
                    return Err(ApplyError::Invalid);
                }
            }
            Record::Pack { items, .. } => {
                if !items.iter().all(valid_item) {
                    return Err(ApplyError::Invalid);
                }
            }
        }
        Ok(())
    }

    /// Apply a record. Returns blobs whose reference count dropped to zero
    /// (deletable once the record is durable). On error nothing changed.
    pub fn apply(&mut self, r: &Record) -> Result<Vec<BlobId>, ApplyError> {
        self.apply_freeing(r).map(|f| f.blobs)
    }

    /// [`Tree::apply`], returning the blob objects and the packs it made
    /// deletable.
    pub fn apply_freeing(&mut self, r: &Record) -> Result<Freed, ApplyError> {
        self.validate(r)?;
        let mut freed = Freed::default();
        match r {
            Record::Create {
                ino,
                parent,
                name,
                attr,
            } => self.apply_create(*ino, *parent, name, attr),
            Record::Link {
                ino,
                parent,
                name,
                time,
            } => {
                if let Some(d) = self.inodes.get_mut(parent) {
                    d.insert_entry(name, *ino);
                    d.mtime = *time;
                    d.ctime = *time;
                }
                if let Some(n) = self.inodes.get_mut(ino) {
                    n.nlink += 1;
                    n.ctime = *time;
                }
            }
            Record::Unlink {
                parent,
                name,
                keep_orphan,
                time,
            } => {
                let d = self.node_mut(*parent)?;
                let child = d.remove_entry(name).ok_or(ApplyError::NotFound)?;
                d.mtime = *time;
                d.ctime = *time;
                self.release_link(*parent, child, *keep_orphan, *time, &mut freed);
            }
            Record::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                time,
            } => self.apply_rename(
                *parent,
                name,
                *new_parent,
                new_name,
                *flags,
                *time,
                &mut freed,
            ),
            Record::SetAttr {
                ino,
                perm,
                uid,
                gid,
                size,
                atime,
                mtime,
                ctime,
            } => {
                if let Some(sz) = size {
                    self.truncate(*ino, *sz, &mut freed);
                }
                let n = self.node_mut(*ino)?;
                if let Some(p) = perm {
                    n.perm = (p & 0o7777) as u16;
                }
                if let Some(u) = uid {
                    n.uid = *u;
                }
                if let Some(g) = gid {
                    n.gid = *g;
                }
                if let Some(a) = atime {
                    n.atime = *a;
                }
                if let Some(m) = mtime {
                    n.mtime = *m;
                }
                n.ctime = *ctime;
            }
            Record::SetChunks {
                ino,
                first,
                chunks,
                size,
                mtime,
            } => {
                let first = usize::try_from(*first).map_err(|_| ApplyError::Invalid)?;
                let mut old = Vec::new();
                {
                    let n = self.node_mut(*ino)?;
                    n.edit_chunks(|list| {
                        if list.len() < first + chunks.len() {
                            list.resize(first + chunks.len(), None);
                        }
                        for (slot, new) in list[first..first + chunks.len()].iter_mut().zip(chunks)
                        {
                            if let Some(o) = slot.take() {
                                old.push(o);
                            }
                            *slot = *new;
                        }
                    });
                    n.mtime = *mtime;
                    // ctime never goes back (mtime may be an explicit old time)
                    n.ctime = n.ctime.max(*mtime);
                }
                for c in chunks.iter().flatten() {
                    self.blobs.add_ref(c.id);
                }
                for o in &old {
                    self.unref(o, &mut freed);
                }
                // `size` may also shrink/extend the file (trailing slots dropped).
                self.truncate(*ino, *size, &mut freed);
            }
            Record::SetXattr {
                ino,
                name,
                value,
                time,
            } => {
                let n = self.node_mut(*ino)?;
                n.insert_xattr(name.clone(), value.clone());
                n.ctime = *time;
            }
            Record::RemoveXattr { ino, name, time } => {
                let n = self.node_mut(*ino)?;
                n.remove_xattr(name);
                n.ctime = *time;
            }
            Record::Forget { ino } => self.drop_inode(*ino, &mut freed),
            Record::Pack { pack, items } => self.place(*pack, items, &mut freed.packs),
        }
        Ok(freed)
    }

    fn apply_create(&mut self, ino: u64, parent: u64, name: &[u8], a: &NewInode) {
        let is_dir = a.kind == Kind::Dir;
        let chunk_size = if a.kind == Kind::File {
            a.chunk_size
        } else {
            0
        };
        let mut node = Inode::new(
            ino,
            a.kind,
            (a.perm & 0o7777) as u16,
            (a.uid, a.gid),
            if is_dir { 2 } else { 1 },
            a.target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
            a.time,
            chunk_size,
            parent,
        );
        node.set_rdev(a.rdev);
        node.set_target(a.target.as_deref());
        self.inodes.insert(node);
        self.next_ino = self.next_ino.max(ino + 1);
        if let Some(d) = self.inodes.get_mut(&parent) {
            d.insert_entry(name, ino);
            d.mtime = a.time;
            d.ctime = a.time;
            if is_dir {
                d.nlink += 1;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
        time: Ts,
        freed: &mut Freed,
    ) {
        let Some(src) = self.lookup(parent, name) else {
            return;
        };
        let dst = self.lookup(new_parent, new_name);
        if dst == Some(src) {
            return; // same inode: POSIX says do nothing
        }
        // directories whose entries change get mtime+ctime; moved inodes ctime only
        let touch = |t: &mut Tree, ino: u64| {
            if let Some(d) = t.inodes.get_mut(&ino) {
                d.mtime = time;
                d.ctime = time;
            }
        };
        let touch_c = |t: &mut Tree, ino: u64| {
            if let Some(d) = t.inodes.get_mut(&ino) {
                d.ctime = time;
            }
        };
        let reparent = |t: &mut Tree, child: u64, from: u64, to: u64| {
            if from == to {
                return;
            }
            if let Some(c) = t.inodes.get_mut(&child) {
                if c.kind != Kind::Dir {
                    return;
                }
                c.parent = to;
            }
            if let Some(f) = t.inodes.get_mut(&from) {
                f.nlink = f.nlink.saturating_sub(1);
            }
            if let Some(f) = t.inodes.get_mut(&to) {
                f.nlink += 1;
            }
        };
        if flags & RENAME_EXCHANGE != 0 {
            let Some(dst) = dst else { return };
            if let Some(d) = self.inodes.get_mut(&parent) {
                d.insert_entry(name, dst);
            }
            if let Some(d) = self.inodes.get_mut(&new_parent) {
                d.insert_entry(new_name, src);
            }
            reparent(self, src, parent, new_parent);
            reparent(self, dst, new_parent, parent);
            for i in [parent, new_parent] {
                touch(self, i);
            }
            for i in [src, dst] {
                touch_c(self, i);
            }
            return;
        }
        if let Some(d) = self.inodes.get_mut(&parent) {
            d.remove_entry(name);
        }
        if let Some(old) = dst {
            if let Some(d) = self.inodes.get_mut(&new_parent) {
                d.remove_entry(new_name);
            }
            self.release_link(new_parent, old, false, time, freed);
        }
        if let Some(d) = self.inodes.get_mut(&new_parent) {
            d.insert_entry(new_name, src);
        }
        reparent(self, src, parent, new_parent);
        for i in [parent, new_parent] {
            touch(self, i);
        }
        touch_c(self, src);
    }

    /// Set a file's size: drop chunk slots past the end, clamp the last
    /// partial chunk so stale bytes never reappear when the file grows again.
    fn truncate(&mut self, ino: u64, size: u64, freed: &mut Freed) {
        let mut dropped = Vec::new();
        if let Some(n) = self.inodes.get_mut(&ino) {
            if n.kind != Kind::File {
                return;
            }
            let cs = u64::from(n.chunk_size.max(1));
            let keep = usize::try_from(size.div_ceil(cs)).unwrap_or(usize::MAX);
            let shrink = size < n.size;
            n.edit_chunks(|list| {
                if list.len() > keep {
                    dropped.extend(list.drain(keep..).flatten());
                }
                // Only the slot of the chunk holding the new end can hold
                // bytes past it (the list may be shorter than the file: holes).
                if shrink && keep > 0 && list.len() == keep {
                    if let Some(Some(last)) = list.last_mut() {
                        let start = (keep as u64 - 1) * cs;
                        let valid = size - start;
                        if u64::from(last.len) > valid {
                            last.len = valid as u32;
                        }
                    }
                }
            });
            n.size = size;
        }
        for c in &dropped {
            self.unref(c, freed);
        }
    }
}

#[cfg(test)]
mod tests;
