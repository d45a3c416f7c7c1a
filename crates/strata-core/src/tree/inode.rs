//! One inode as the tree holds it (128 bytes): what every inode has in
//! plain fields, a one-slot chunk list inline (most files of a big tree are
//! small), and what few have — a device number, a symlink target, extended
//! attributes, directory entries, a chunk list of other lengths — behind
//! one pointer that stays empty for a plain small file. It encodes exactly
//! like the struct of FORMAT §6.3, fields in their order there.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::maps::{Entries, Xattrs};
use super::name::Name;
use crate::record::{ChunkRef, Kind, Ts};

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub kind: Kind,
    /// Permission bits (`0o7777` mask).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
    pub btime: Ts,
    pub chunk_size: u32,
    /// The chunk list when it is one chunk (not a hole); else in `rare`.
    one: Option<ChunkRef>,
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
    /// A chunk list other than one chunk (a hole is `None`).
    chunks: Option<Box<[Option<ChunkRef>]>>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.rdev == 0
            && self.target.is_none()
            && self.xattrs.is_empty()
            && self.entries.is_empty()
            && self.chunks.is_none()
    }
}

const _: () = assert!(std::mem::size_of::<Inode>() <= 128);

impl Inode {
    /// A new inode with no chunks, entries or attributes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ino: u64,
        kind: Kind,
        perm: u16,
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
            one: None,
            parent,
            rare: None,
        }
    }

    /// The blob of chunk `index`, `None` for a hole or a chunk past the end.
    pub fn chunk(&self, index: u64) -> Option<ChunkRef> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.chunks().get(i).copied())
            .flatten()
    }

    /// Chunk slots of a file: `None` is a hole.
    pub fn chunks(&self) -> &[Option<ChunkRef>] {
        if self.one.is_some() {
            return std::slice::from_ref(&self.one);
        }
        self.rare
            .as_ref()
            .and_then(|r| r.chunks.as_deref())
            .unwrap_or(&[])
    }

    /// Change the chunk list (taken out as a `Vec`, stored back in the
    /// form above).
    pub(crate) fn edit_chunks<R>(&mut self, f: impl FnOnce(&mut Vec<Option<ChunkRef>>) -> R) -> R {
        let mut v = match self.one.take() {
            Some(c) => vec![Some(c)],
            None => self
                .rare
                .as_mut()
                .and_then(|r| r.chunks.take())
                .map(Vec::from)
                .unwrap_or_default(),
        };
        let out = f(&mut v);
        self.set_chunks(v);
        out
    }

    fn set_chunks(&mut self, v: Vec<Option<ChunkRef>>) {
        match v[..] {
            [] => {
                self.one = None;
                if let Some(r) = &mut self.rare {
                    r.chunks = None;
                }
                self.tidy();
            }
            [Some(c)] => {
                self.one = Some(c);
                if let Some(r) = &mut self.rare {
                    r.chunks = None;
                }
                self.tidy();
            }
            _ => {
                self.one = None;
                self.rare_mut().chunks = Some(v.into_boxed_slice());
            }
        }
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
    chunks: &'a [Option<ChunkRef>],
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
    chunks: Vec<Option<ChunkRef>>,
    entries: Entries,
    parent: u64,
}

impl Serialize for Inode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            ino: self.ino,
            kind: self.kind,
            perm: u32::from(self.perm),
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
            chunks: self.chunks(),
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
            chunks: None,
        };
        // writers keep only the 0o7777 bits (records are masked)
        let perm = u16::try_from(w.perm)
            .ok()
            .filter(|p| p & !0o7777 == 0)
            .ok_or_else(|| D::Error::custom("inode permission bits out of range"))?;
        let mut i = Inode {
            ino: w.ino,
            kind: w.kind,
            perm,
            uid: w.uid,
            gid: w.gid,
            nlink: w.nlink,
            size: w.size,
            atime: w.atime,
            mtime: w.mtime,
            ctime: w.ctime,
            btime: w.btime,
            chunk_size: w.chunk_size,
            one: None,
            parent: w.parent,
            rare: (!rare.is_empty()).then(|| Box::new(rare)),
        };
        i.set_chunks(w.chunks);
        Ok(i)
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
            assert_eq!(i.chunks(), &p.chunks[..]);
            assert_eq!(
                (i.size, i.atime, i.btime, i.parent),
                (p.size, p.atime, p.btime, p.parent)
            );
            let plain_file = p.rdev == 0
                && p.target.is_none()
                && p.xattrs.is_empty()
                && p.entries.is_empty()
                && p.chunks.len() < 2
                && p.chunks.first().is_none_or(Option::is_some);
            assert_eq!(i.rare.is_none(), plain_file);
        }
    }

    #[test]
    fn chunk_lists_of_every_shape_round_trip() {
        let c = |b: u8| {
            Some(ChunkRef {
                id: BlobId([b; 32]),
                blob_len: u32::MAX,
                len: 1,
            })
        };
        let mut i = Inode::new(2, Kind::File, 0o600, (0, 0), 1, 0, 0, 4096, 1);
        for list in [
            vec![],
            vec![c(1)],
            vec![None],
            vec![None, c(2)],
            vec![c(1), None, c(3)],
            vec![c(4)],
            vec![],
        ] {
            i.edit_chunks(|l| *l = list.clone());
            assert_eq!(i.chunks(), &list[..]);
            assert_eq!(i.chunk(0), list.first().copied().flatten());
            assert_eq!(i.chunk(u64::MAX), None);
            // one chunk inline, other lists on the side
            assert_eq!(
                i.rare.is_some(),
                !(list.is_empty() || list == [c(1)] || list == [c(4)])
            );
            let bytes = postcard::to_stdvec(&i).unwrap();
            let back: Inode = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, i);
            // the list, no entries, parent 1: the end of the encoding
            let tail = [postcard::to_stdvec(&list).unwrap(), vec![0, 1]].concat();
            assert!(bytes.ends_with(&tail));
        }
    }

    #[test]
    fn permission_bits_past_0o7777_are_refused() {
        let mut p = plain(2);
        p.perm = 0o10000;
        let bytes = postcard::to_stdvec(&p).unwrap();
        assert!(postcard::from_bytes::<Inode>(&bytes).is_err());
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
