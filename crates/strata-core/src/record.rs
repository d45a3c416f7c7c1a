//! Metadata records: every change to the tree is one [`Record`]. Records are
//! applied to the in-memory [`crate::tree::Tree`] the same way when they are
//! made and when a log is replayed, so a replay rebuilds exactly the tree that
//! was committed. Their postcard encoding is part of the on-store format.

use serde::{Deserialize, Serialize};
use strata_crypto::BlobId;

/// Nanoseconds since the Unix epoch.
pub type Ts = i64;

/// Current time as [`Ts`].
pub fn now() -> Ts {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Inode kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// One chunk of a file: which blob holds it and how many of its bytes count.
///
/// Chunk `i` of a file covers file bytes `[i*chunk_size, i*chunk_size+len)`;
/// bytes of the chunk beyond `len` (up to the file size) read as zeros. `len`
/// can be smaller than `blob_len` after a truncate, so shrinking never needs a
/// re-upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: BlobId,
    /// Plaintext length of the blob (needed to find its last segment).
    pub blob_len: u32,
    /// Bytes of the blob that belong to the file.
    pub len: u32,
}

/// One item of a pack: the blob `id` (of `blob_len` plaintext bytes) is
/// stored at byte `offset` of the pack (format version 2, FORMAT §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackItem {
    pub id: BlobId,
    pub offset: u32,
    pub blob_len: u32,
}

/// Attributes of a new inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInode {
    pub kind: Kind,
    /// Permission bits (`0o7777` mask).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub time: Ts,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Chunk size for file data (files only; 0 otherwise).
    pub chunk_size: u32,
}

/// Rename flags (Linux `renameat2`).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// One change to the metadata tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Create inode `ino` and link it as `parent/name`.
    Create {
        ino: u64,
        parent: u64,
        name: Vec<u8>,
        attr: NewInode,
    },
    /// Add another name for an existing (non-directory) inode.
    Link {
        ino: u64,
        parent: u64,
        name: Vec<u8>,
        time: Ts,
    },
    /// Remove the entry `parent/name`. The inode goes away when its link count
    /// reaches 0, unless `keep_orphan` (an open file, see [`Record::Forget`]).
    Unlink {
        parent: u64,
        name: Vec<u8>,
        keep_orphan: bool,
        time: Ts,
    },
    /// Move `parent/name` to `new_parent/new_name` (replacing a target unless
    /// `RENAME_NOREPLACE`; swapping both with `RENAME_EXCHANGE`).
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        flags: u32,
        time: Ts,
    },
    /// Change attributes; `size` truncates or extends (holes read as zeros).
    SetAttr {
        ino: u64,
        perm: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Ts>,
        mtime: Option<Ts>,
        ctime: Ts,
    },
    /// Replace chunk slots `first..first+chunks.len()` (None = hole), set the
    /// file size and mtime (data was written).
    SetChunks {
        ino: u64,
        first: u64,
        chunks: Vec<Option<ChunkRef>>,
        size: u64,
        mtime: Ts,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        time: Ts,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
        time: Ts,
    },
    /// Drop an orphaned inode (unlinked while open, now closed).
    Forget {
        ino: u64,
    },
    /// The blobs of `items` are stored in pack `pack` (format version 2):
    /// each referenced one is read from there from now on (a new pack, or a
    /// repack moving it). Items no chunk references are ignored.
    Pack {
        pack: BlobId,
        items: Vec<PackItem>,
    },
}
impl Record {
    /// What a record changes, for a follower telling the kernel what to
    /// forget: inodes whose attributes or data changed, and directory
    /// entries `(parent, name)` that appeared, went or now name another
    /// inode.
    pub fn touches(&self) -> (Vec<u64>, Vec<(u64, Vec<u8>)>) {
        match self {
            Record::Create {
                ino, parent, name, ..
            }
            | Record::Link {
                ino, parent, name, ..
            } => (vec![*ino, *parent], vec![(*parent, name.clone())]),
            Record::Unlink { parent, name, .. } => (vec![*parent], vec![(*parent, name.clone())]),
            Record::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => (
                vec![*parent, *new_parent],
                vec![(*parent, name.clone()), (*new_parent, new_name.clone())],
            ),
            Record::SetAttr { ino, .. }
            | Record::SetChunks { ino, .. }
            | Record::SetXattr { ino, .. }
            | Record::RemoveXattr { ino, .. }
            | Record::Forget { ino } => (vec![*ino], Vec::new()),
            // where bytes are stored changes no file's attributes or data
            Record::Pack { .. } => (Vec::new(), Vec::new()),
        }
    }
}
