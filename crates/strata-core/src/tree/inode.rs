//! One inode as the tree holds it: what every inode has in plain fields,
//! and what few have — a device number, a symlink target, extended
//! attributes, directory entries — behind one pointer that stays empty for
//! a plain file (those took 44 bytes of every inode). It encodes exactly
//! like the struct of FORMAT §6.3, fields in their order there.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::maps::{Entries, Xattrs};
use super::name::Name;
use super::ChunkList;
use crate::record::{ChunkRef, Kind, Ts};

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
    pub btime: Ts,
    pub chunk_size: u32,
    pub chunks: ChunkList,
    /// Parent directory: kept up to date for directories (root is its own
    /// parent); for other kinds, the directory it was created in.
    pub parent: u64,
    rare: Option<Box<Rare>>,
}

/// The fields most inodes leave empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rare {
    rdev: u32,
    target: Option<Box<[u8]>>,
    xattrs: Xattrs,
    entries: Entries,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.rdev == 0 && self.target.is_none() && self.xattrs.is_empty() && self.entries.is_empty()
    }
}

const _: () = assert!(std::mem::size_of::<Inode>() <= 136);

impl Inode {
    /// A new inode with no chunks, entries or attributes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ino: u64,
        kind: Kind,
        perm: u32,
        (uid, gid): (u32, u32),
        nlink: u32,
        size: u64,
        time: Ts,
        chunk_size: u32,
        parent: u64,
    ) -> Inode {
        Inode {
            ino,
            kind,
            perm,
            uid,
            gid,
            nlink,
            size,
            atime: time,
            mtime: time,
            ctime: time,
            btime: time,
            chunk_size,
            chunks: ChunkList::new(),
            parent,
            rare: None,
        }
    }

    /// The blob of chunk `index`, `None` for a hole or a chunk past the end.
    pub fn chunk(&self, index: u64) -> Option<ChunkRef> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.chunks.get(i).copied())
            .flatten()
    }

    /// Device number (character and block devices).
    pub fn rdev(&self) -> u32 {
        self.rare.as_ref().map_or(0, |r| r.rdev)
    }

    /// Symlink target.
    pub fn target(&self) -> Option<&[u8]> {
        self.rare.as_ref().and_then(|r| r.target.as_deref())
    }

    /// Extended attributes: name → value.
    pub fn xattrs(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        match &self.rare {
            Some(r) => &r.xattrs,
            None => &EMPTY_XATTRS,
        }
    }

    /// Directory entries: name → inode (directories only).
    pub fn entries(&self) -> &BTreeMap<Name, u64> {
        match &self.rare {
            Some(r) => &r.entries,
            None => &EMPTY_ENTRIES,
        }
    }

    /// The rare fields, to change (allocated on first use).
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Free the rare fields once they hold nothing again.
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_empty()) {
            self.rare = None;
        }
    }

    pub(crate) fn set_rdev(&mut self, rdev: u32) {
        self.rare_mut().rdev = rdev;
        self.tidy();
    }

    pub(crate) fn set_target(&mut self, target: Option<&[u8]>) {
        self.rare_mut().target = target.map(Box::from);
        self.tidy();
    }

    pub(crate) fn insert_xattr(&mut self, name: Vec<u8>, value: Vec<u8>) {
        self.rare_mut().xattrs.insert(name, value);
    }

    pub(crate) fn remove_xattr(&mut self, name: &[u8]) {
        if let Some(r) = &mut self.rare {
            r.xattrs.remove(name);
        }
        self.tidy();
    }

    pub(crate) fn insert_entry(&mut self, name: &[u8], ino: u64) -> Option<u64> {
        self.rare_mut().entries.insert(Name::from(name), ino)
    }

    pub(crate) fn remove_entry(&mut self, name: &[u8]) -> Option<u64> {
        let old = self.rare.as_mut().and_then(|r| r.entries.remove(name));
        self.tidy();
        old
    }
}

static EMPTY_XATTRS: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
static EMPTY_ENTRIES: BTreeMap<Name, u64> = BTreeMap::new();

/// The encoded form (FORMAT §6.3), borrowing the inode.
#[derive(Serialize)]
struct Wire<'a> {
    ino: u64,
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    nlink: u32,
    size: u64,
    atime: Ts,
    mtime: Ts,
    ctime: Ts,
    btime: Ts,
    target: Option<&'a [u8]>,
    xattrs: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    chunk_size: u32,
    chunks: &'a ChunkList,
    entries: &'a BTreeMap<Name, u64>,
    parent: u64,
}

/// The decoded form, fields as in [`Wire`].
#[derive(Deserialize)]
struct WireOwned {
    ino: u64,
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    nlink: u32,
    size: u64,
    atime: Ts,
    mtime: Ts,
    ctime: Ts,
    btime: Ts,
    target: Option<Vec<u8>>,
    xattrs: Xattrs,
    chunk_size: u32,
    chunks: ChunkList,
    entries: Entries,
    parent: u64,
}

impl Serialize for Inode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            ino: self.ino,
            kind: self.kind,
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev(),
            nlink: self.nlink,
            size: self.size,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            btime: self.btime,
            target: self.target(),
            xattrs: self.xattrs(),
            chunk_size: self.chunk_size,
            chunks: &self.chunks,
            entries: self.entries(),
            parent: self.parent,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Inode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireOwned::deserialize(d)?;
        let rare = Rare {
            rdev: w.rdev,
            target: w.target.map(Vec::into_boxed_slice),
            xattrs: w.xattrs,
            entries: w.entries,
        };
        Ok(Inode {
            ino: w.ino,
            kind: w.kind,
            perm: w.perm,
            uid: w.uid,
            gid: w.gid,
            nlink: w.nlink,
            size: w.size,
            atime: w.atime,
            mtime: w.mtime,
            ctime: w.ctime,
            btime: w.btime,
            chunk_size: w.chunk_size,
            chunks: w.chunks,
            parent: w.parent,
            rare: (!rare.is_empty()).then(|| Box::new(rare)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_crypto::BlobId;

    /// The inode as it was before its rare fields moved (FORMAT §6.3).
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Plain {
        ino: u64,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        nlink: u32,
        size: u64,
        atime: Ts,
        mtime: Ts,
        ctime: Ts,
        btime: Ts,
        target: Option<Vec<u8>>,
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
        chunk_size: u32,
        chunks: Vec<Option<ChunkRef>>,
        entries: BTreeMap<Vec<u8>, u64>,
        parent: u64,
    }

    fn plain(n: u64) -> Plain {
        Plain {
            ino: n,
            kind: Kind::File,
            perm: 0o644,
            uid: 1000,
            gid: 1000,
            rdev: 0,
            nlink: 1,
            size: 9,
            atime: 1,
            mtime: 2,
            ctime: 3,
            btime: 4,
            target: None,
            xattrs: BTreeMap::new(),
            chunk_size: 1 << 20,
            chunks: vec![Some(ChunkRef {
                id: BlobId([7; 32]),
                blob_len: 9,
                len: 9,
            })],
            entries: BTreeMap::new(),
            parent: 1,
        }
    }

    fn variants() -> Vec<Plain> {
        let mut v = vec![plain(2)];
        // extremes of every number, timestamps before 1970 and at the
        // nanosecond
        let mut p = plain(u64::MAX);
        p.size = u64::MAX;
        p.perm = 0o7777;
        p.uid = u32::MAX;
        p.gid = u32::MAX;
        p.nlink = u32::MAX;
        p.atime = i64::MIN;
        p.mtime = -1;
        p.ctime = i64::MAX;
        p.btime = -86_400_000_000_001;
        p.chunk_size = u32::MAX;
        p.parent = u64::MAX;
        p.chunks = vec![None, p.chunks[0], None];
        v.push(p);
        let mut s = plain(3);
        s.kind = Kind::Symlink;
        s.chunks.clear();
        s.target = Some(vec![b'x'; 4096]);
        s.size = 4096;
        v.push(s);
        let mut e = plain(4);
        e.kind = Kind::Symlink;
        e.chunks.clear();
        e.target = Some(Vec::new());
        v.push(e);
        let mut d = plain(5);
        d.kind = Kind::CharDev;
        d.chunks.clear();
        d.rdev = 0x0501;
        v.push(d);
        let mut x = plain(6);
        x.xattrs.insert(b"user.a".to_vec(), vec![0; 70_000]);
        x.xattrs.insert(b"user.b".to_vec(), Vec::new());
        v.push(x);
        let mut dir = plain(1);
        dir.kind = Kind::Dir;
        dir.chunks.clear();
        dir.chunk_size = 0;
        for i in 0..300u64 {
            dir.entries.insert(
                format!("entry {i:0>width$}", width = (i % 40) as usize).into_bytes(),
                i + 10,
            );
        }
        dir.xattrs.insert(b"user.dir".to_vec(), b"v".to_vec());
        dir.rdev = 3;
        dir.target = Some(b"odd but encodable".to_vec());
        v.push(dir);
        v
    }

    #[test]
    fn encodes_like_the_plain_struct_and_round_trips() {
        for p in variants() {
            let bytes = postcard::to_stdvec(&p).unwrap();
            let i: Inode = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(postcard::to_stdvec(&i).unwrap(), bytes, "{p:?}");
            assert_eq!(i.rdev(), p.rdev);
            assert_eq!(i.target(), p.target.as_deref());
            assert_eq!(i.xattrs(), &p.xattrs);
            assert!(i
                .entries()
                .iter()
                .map(|(k, v)| (k.to_vec(), *v))
                .eq(p.entries.clone()));
            assert_eq!(i.chunks, p.chunks);
            assert_eq!(
                (i.size, i.atime, i.btime, i.parent),
                (p.size, p.atime, p.btime, p.parent)
            );
            let plain_file =
                p.rdev == 0 && p.target.is_none() && p.xattrs.is_empty() && p.entries.is_empty();
            assert_eq!(i.rare.is_none(), plain_file);
        }
    }

    #[test]
    fn rare_fields_are_freed_when_emptied() {
        let mut i = Inode::new(2, Kind::File, 0o644, (0, 0), 1, 0, -5, 4096, 1);
        assert!(i.rare.is_none());
        i.insert_xattr(b"user.k".to_vec(), b"v".to_vec());
        assert_eq!(i.xattrs().get(&b"user.k"[..]), Some(&b"v".to_vec()));
        i.remove_xattr(b"user.k");
        assert!(i.rare.is_none());
        assert_eq!(i.insert_entry(b"a-name-longer-than-inline", 9), None);
        assert_eq!(i.insert_entry(b"a-name-longer-than-inline", 10), Some(9));
        assert_eq!(i.remove_entry(b"a-name-longer-than-inline"), Some(10));
        assert_eq!(i.remove_entry(b"gone"), None);
        assert!(i.rare.is_none());
        i.set_rdev(7);
        i.set_target(Some(b"t"));
        i.set_rdev(0);
        assert_eq!(i.target(), Some(&b"t"[..]));
        i.set_target(None);
        assert!(i.rare.is_none());
        assert_eq!(i.btime, -5);
    }
}
