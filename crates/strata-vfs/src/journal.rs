//! The local metadata journal: every record the mount applies is appended
//! here (with its sequence number) before the operation returns, and synced
//! to disk on close/fsync. After a crash, records the store does not have yet
//! (sequence > the vault's `writer_seq`) are replayed from it.
//!
//! It also holds the bytes of the small dirty chunks that live in memory
//! (see [`crate::writeback`]): every write to such a chunk is appended as
//! a [`ChunkData`] entry before the write returns (like a write to a chunk
//! file, it survives a crash of the process), and a close syncs the
//! journal once instead of a chunk file and the journal. A replay rebuilds
//! each chunk from its entries in order ([`surviving_data`]).
//!
//! Layout: a header `"STJ2" ‖ salt (32 random bytes)`, then entries
//! `len (u32 LE) ‖ check (first 8 bytes of BLAKE3(sealed)) ‖ sealed`, where
//! `sealed = nonce ‖ AES-256-GCM(payload) ‖ tag` under the file's key
//! ([`strata_crypto::Keys::cache_file_key`] of the salt), with the entry's
//! offset in the file as associated data: the journal holds no plaintext
//! name, attribute or data. `payload` is `postcard((seq: u64, Record))`
//! for a record (`seq` ≥ 1) or `postcard((0u64, ChunkData))` for chunk
//! bytes. A torn or damaged tail (crash mid-append) ends the journal;
//! everything before it is intact. Journals of earlier versions are read
//! and rewritten when opened: `"STJ1"` (records only, the same entries)
//! and plaintext entries with no header. (An earlier version does not read
//! an `"STJ2"` journal: unmount cleanly, which uploads everything, before
//! going back to one.)
//!
//! Free space: the file keeps [`RESERVE`] bytes allocated past its end
//! (`fallocate` with `KEEP_SIZE`), so the records of uploads and commits
//! still fit when other programs have filled the cache disk; an append
//! that fails is cut off again (a torn entry would hide every later one);
//! and a compaction truncates the file in place (to its header) rather
//! than writing a new one.
//!
//! Cheap syncs: the file is kept zero-filled up to [`ZERO_AHEAD`] bytes
//! past its last entry, and entries overwrite those zeros. A sync after
//! an append then writes data blocks only: no change of the file's size
//! or block map, so the filesystem commits no metadata (on ext4 an
//! fdatasync took 165 µs instead of 230 µs). Zeros end a parse like a
//! torn entry does (an all-zero header fails its check), so readers of
//! every version read such a file the same.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strata_core::Record;

use crate::sealed;
use strata_crypto::{FileKey, Keys};

const NAME: &str = "journal";
const MAGIC: &[u8; 4] = b"STJ2";
/// Records only (the version before chunk data entries).
const MAGIC_V1: &[u8; 4] = b"STJ1";
const HDR: u64 = sealed::HDR;
/// Length of a journal that holds no record (its header).
pub const EMPTY_LEN: u64 = HDR;

/// A journal holding uncommitted records is rewritten (without what the
/// store has) once it is this large.
pub const PENDING_LIMIT: u64 = 64 << 20;

/// Bytes kept allocated past the end of the journal (about 10 000 records).
pub const RESERVE: u64 = 1 << 20;

/// Zeros written ahead of the last entry at a time (see the module docs).
pub const ZERO_AHEAD: u64 = 1 << 20;

/// Grow the file's allocation to `RESERVE` bytes past `end`, without
/// changing its size. Best effort: a full disk or a filesystem without
/// `fallocate` leaves the journal without a reserve.
fn reserve(file: &File, end: u64) {
    use rustix::fs::{fallocate, FallocateFlags};
    if let Err(e) = fallocate(file, FallocateFlags::KEEP_SIZE, end, RESERVE) {
        tracing::debug!(error = %e, "could not reserve space for the journal");
    }
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// A second descriptor of `file` for syncs outside the journal lock.
    sync_file: Arc<File>,
    key: FileKey,
    keys: Arc<Keys>,
    /// Appends so far (monotonic, across resets).
    appended: u64,
    /// Highest sequence number in the file.
    pub max_seq: u64,
    /// Length of the header and entries (the file may go on with zeros).
    bytes: u64,
    /// Length of the file: `bytes`, then zeros.
    zeroed: u64,
    /// Length past which a journal with uncommitted records is rewritten.
    pending_limit: u64,
    synced: Arc<AtomicU64>,
}

/// A change of one dirty chunk kept in memory: `bytes` written at `at`
/// (after emptying the chunk if `fresh`), leaving `len` valid bytes.
/// `fresh` with `at` 0 and all the bytes is the chunk's whole content;
/// `fresh` with `len` 0: the chunk left memory (moved to a chunk file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkData {
    pub ino: u64,
    pub chunk: u64,
    /// File offset of the chunk's first byte.
    pub start: u64,
    pub at: u64,
    pub bytes: Vec<u8>,
    pub len: u64,
    pub fresh: bool,
}

/// [`ChunkData`] borrowed for an append (the same encoding): the bytes of
/// a write are sealed from the chunk, not copied first.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ChunkWrite<'a> {
    pub ino: u64,
    pub chunk: u64,
    pub start: u64,
    pub at: u64,
    pub bytes: &'a [u8],
    pub len: u64,
    pub fresh: bool,
}

impl ChunkData {
    /// This entry, borrowed for [`Journal::append_data`].
    pub fn as_write(&self) -> ChunkWrite<'_> {
        ChunkWrite {
            ino: self.ino,
            chunk: self.chunk,
            start: self.start,
            at: self.at,
            bytes: &self.bytes,
            len: self.len,
            fresh: self.fresh,
        }
    }

    /// The whole content of a chunk.
    pub fn whole(ino: u64, chunk: u64, start: u64, bytes: Vec<u8>) -> ChunkData {
        ChunkData {
            ino,
            chunk,
            start,
            at: 0,
            len: bytes.len() as u64,
            bytes,
            fresh: true,
        }
    }
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A record and its sequence number (≥ 1).
    Record(u64, Record),
    Data(ChunkData),
}

impl Entry {
    fn payload(&self) -> Result<Vec<u8>, postcard::Error> {
        match self {
            Entry::Record(seq, r) => postcard::to_stdvec(&(seq, r)),
            Entry::Data(d) => postcard::to_stdvec(&(0u64, d)),
        }
    }

    fn from_payload(plain: &[u8]) -> Option<Entry> {
        let (seq, rest) = postcard::take_from_bytes::<u64>(plain).ok()?;
        if seq == 0 {
            postcard::from_bytes(rest).ok().map(Entry::Data)
        } else {
            postcard::from_bytes(rest)
                .ok()
                .map(|r| Entry::Record(seq, r))
        }
    }
}

fn check(payload: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(payload).as_bytes()[..8]);
    c
}

/// One entry, to be written at file offset `at`.
fn encode(key: &FileKey, at: u64, e: &Entry) -> std::io::Result<Vec<u8>> {
    seal_entry(key, at, e.payload().map_err(std::io::Error::other)?)
}

/// One entry of `payload`, to be written at file offset `at`.
fn seal_entry(key: &FileKey, at: u64, payload: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let sealed = key
        .seal_vec(&at.to_le_bytes(), payload)
        .map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(12 + sealed.len());
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    out.extend_from_slice(&check(&sealed));
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Parse a journal image from `start`; stops at the first torn/damaged
/// entry and returns the valid prefix length. `key`: sealed entries (else
/// the plaintext entries of earlier versions).
fn parse(bytes: &[u8], start: usize, key: Option<&FileKey>) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut pos = start;
    while bytes.len().saturating_sub(pos) >= 12 {
        let mut l = [0u8; 4];
        l.copy_from_slice(&bytes[pos..pos + 4]);
        let len = u32::from_le_bytes(l) as usize;
        let Some(end) = (pos + 12).checked_add(len).filter(|e| *e <= bytes.len()) else {
            break;
        };
        let body = &bytes[pos + 12..end];
        if bytes[pos + 4..pos + 12] != check(body) {
            break;
        }
        let plain = match key {
            Some(k) => match k.open_vec(&(pos as u64).to_le_bytes(), body) {
                Ok(p) => p,
                Err(_) => break,
            },
            None => body.to_vec(),
        };
        match Entry::from_payload(&plain) {
            Some(e) => out.push(e),
            None => break,
        }
        pos = end;
    }
    (out, pos)
}

/// Write `entries` as a new sealed journal at `tmp` (synced); returns its
/// key and length.
fn write_new(tmp: &Path, keys: &Keys, entries: &[Entry]) -> std::io::Result<(FileKey, u64)> {
    let (hdr, key) = sealed::new_header(MAGIC, keys)?;
    let mut f = File::create(tmp)?;
    f.write_all(&hdr)?;
    let mut at = HDR;
    for entry in entries {
        let e = encode(&key, at, entry)?;
        f.write_all(&e)?;
        at += e.len() as u64;
    }
    f.sync_all()?;
    Ok((key, at))
}

impl Journal {
    /// Open (or create) the journal in `dir`; returns it with the entries it
    /// holds. A damaged tail is cut off; a plaintext journal of an earlier
    /// version is rewritten sealed.
    pub fn open(dir: &Path, keys: Arc<Keys>) -> std::io::Result<(Journal, Vec<Entry>)> {
        let path = dir.join(NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let key = match sealed::header_key(MAGIC, &bytes, &keys)? {
            Some(k) => Some(k),
            None => sealed::header_key(MAGIC_V1, &bytes, &keys)?,
        };
        let Some(key) = key else {
            // empty, or plaintext entries of an earlier version
            let (entries, _) = parse(&bytes, 0, None);
            let tmp = path.with_extension("tmp");
            write_new(&tmp, &keys, &entries)?;
            std::fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()?;
            drop(file);
            return Journal::open(dir, keys);
        };
        let (entries, valid) = parse(&bytes, HDR as usize, Some(&key));
        // zeros past the entries are written ahead on purpose; they stay
        let zeros = bytes[valid..].iter().all(|b| *b == 0);
        if !zeros {
            tracing::warn!(
                path = %path.display(),
                dropped = bytes.len() - valid,
                "journal has a torn tail (crash during an append); ignoring it"
            );
            file.set_len(valid as u64)?;
            file.sync_data()?;
        }
        let zeroed = if zeros { bytes.len() } else { valid } as u64;
        let max_seq = max_seq(&entries).unwrap_or(0);
        reserve(&file, zeroed);
        Ok((
            Journal {
                path,
                sync_file: Arc::new(file.try_clone()?),
                file,
                zeroed,
                key,
                keys,
                appended: 0,
                max_seq,
                bytes: valid as u64,
                pending_limit: PENDING_LIMIT,
                synced: Arc::new(AtomicU64::new(0)),
            },
            entries,
        ))
    }

    /// Append one record (not yet synced). On failure (disk full, I/O
    /// error) the file is cut back to its previous end.
    pub fn append(&mut self, seq: u64, r: &Record) -> std::io::Result<u64> {
        let payload = postcard::to_stdvec(&(seq, r)).map_err(std::io::Error::other)?;
        self.append_payload(payload, Some(seq))
    }

    /// Append a write to a chunk kept in memory (not yet synced).
    pub fn append_data(&mut self, w: &ChunkWrite<'_>) -> std::io::Result<u64> {
        let payload = postcard::to_stdvec(&(0u64, w)).map_err(std::io::Error::other)?;
        self.append_payload(payload, None)
    }

    /// Append one entry (`seq`: a record's); cut off again if it fails.
    fn append_payload(&mut self, payload: Vec<u8>, seq: Option<u64>) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let e = seal_entry(&self.key, self.bytes, payload)?;
        let end = self.bytes + e.len() as u64;
        if end > self.zeroed {
            self.zero_ahead(end);
        }
        if let Err(err) = self.file.write_all_at(&e, self.bytes) {
            if let Err(cut) = self.file.set_len(self.bytes) {
                tracing::warn!(error = %cut, path = %self.path.display(), "could not cut a failed journal append");
            }
            self.zeroed = self.bytes;
            return Err(err);
        }
        self.appended += 1;
        self.bytes = end;
        self.zeroed = self.zeroed.max(end);
        if let Some(seq) = seq {
            self.max_seq = self.max_seq.max(seq);
        }
        Ok(self.appended)
    }

    /// Write zeros from the file's end to [`ZERO_AHEAD`] past `end`. Best
    /// effort: on a full disk, appends extend the file instead.
    fn zero_ahead(&mut self, end: u64) {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let target = (end + ZERO_AHEAD).next_multiple_of(4096);
        while self.zeroed < target {
            let n = (target - self.zeroed).min(ZEROS.len() as u64) as usize;
            if let Err(e) = self.file.write_all_at(&ZEROS[..n], self.zeroed) {
                tracing::debug!(error = %e, "could not write the journal's zeros ahead");
                // what was written of them is zeros too: harmless
                return;
            }
            self.zeroed += n as u64;
        }
        reserve(&self.file, self.zeroed);
    }

    /// A handle to sync appends up to now without holding the journal lock
    /// (group commit: concurrent callers share one fsync).
    pub fn sync_handle(&self) -> std::io::Result<SyncHandle> {
        Ok(SyncHandle {
            file: self.sync_file.clone(),
            upto: self.appended,
            synced: self.synced.clone(),
        })
    }

    /// Replace the journal with exactly `entries` (written and synced to a
    /// temporary file first, then renamed over the old one).
    pub fn rewrite(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let (key, bytes) = write_new(&tmp, &self.keys, entries)?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(d) = self.path.parent() {
            File::open(d)?.sync_all()?;
        }
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.sync_file = Arc::new(self.file.try_clone()?);
        self.key = key;
        reserve(&self.file, bytes);
        self.bytes = bytes;
        self.zeroed = bytes;
        self.max_seq = max_seq(entries).unwrap_or(self.max_seq);
        self.synced.store(self.appended, Ordering::SeqCst);
        Ok(())
    }

    /// Empty the journal when the store has every record in it and it has
    /// grown large (or `now`, to give its space back). In place: truncated
    /// to its header and synced, so it needs no free space. `live` gives
    /// the chunks kept in memory that the journal must still hold (`None`:
    /// cannot tell now, try later); if there are any, the journal is
    /// rewritten with just them instead (this needs space for them).
    ///
    /// While records are still uncommitted (a long burst of changes never
    /// leaves the store a moment to catch up), a journal past
    /// `pending_limit` is rewritten with those records and the live
    /// chunks, so the bytes of small files the store has since received do
    /// not pile up in it.
    pub fn compact(
        &mut self,
        writer_seq: u64,
        now: bool,
        live: impl FnOnce() -> Option<Vec<ChunkData>>,
    ) -> std::io::Result<bool> {
        if self.bytes <= HDR {
            return Ok(false);
        }
        if self.max_seq > writer_seq {
            if self.bytes < self.pending_limit {
                return Ok(false);
            }
            let Some(live) = live() else {
                return Ok(false);
            };
            let mut entries = self.records_after(writer_seq)?;
            entries.extend(live.into_iter().map(Entry::Data));
            self.rewrite(&entries)?;
            // a journal that stays large (many pending records, many
            // chunks in memory) is not rewritten again at once
            self.pending_limit = PENDING_LIMIT.max(2 * self.bytes);
            return Ok(true);
        }
        if !(now || self.bytes > 4 << 20) {
            return Ok(false);
        }
        let Some(live) = live() else {
            return Ok(false);
        };
        if !live.is_empty() {
            let entries: Vec<Entry> = live.into_iter().map(Entry::Data).collect();
            self.rewrite(&entries)?;
            return Ok(true);
        }
        self.file.set_len(HDR)?;
        self.file.sync_all()?;
        self.bytes = HDR;
        self.zeroed = HDR;
        self.synced.store(self.appended, Ordering::SeqCst);
        reserve(&self.file, HDR);
        Ok(true)
    }

    /// The records in the file with a sequence number above `seq`, in order.
    fn records_after(&self, seq: u64) -> std::io::Result<Vec<Entry>> {
        let bytes = std::fs::read(&self.path)?;
        let end = (self.bytes as usize).min(bytes.len());
        let (entries, _) = parse(&bytes[..end], HDR as usize, Some(&self.key));
        Ok(entries
            .into_iter()
            .filter(|e| matches!(e, Entry::Record(s, _) if *s > seq))
            .collect())
    }

    /// Appends so far (counted like [`Journal::synced`]).
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Appends known to be on disk (synced).
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::SeqCst)
    }

    /// Bytes of records in the file.
    pub fn len(&self) -> u64 {
        self.bytes - HDR
    }

    pub fn is_empty(&self) -> bool {
        self.bytes <= HDR
    }
}

/// The memory chunks a replay must restore, each as its whole content
/// ([`ChunkData::whole`]): every chunk's entries applied in order, with
/// the size cuts of later records (`SetAttr` with a size, `SetChunks`),
/// except chunks whose last change is covered by a `SetChunks` the store
/// has (sequence ≤ `committed`: the tree holds those bytes). An upload
/// recorded but not committed may reference a pack that was never sent:
/// its chunk is restored and sent again.
pub fn surviving_data(entries: &[Entry], committed: u64) -> Vec<ChunkData> {
    let mut live = Live::new();
    for e in entries {
        match e {
            Entry::Data(d) => {
                let st = live.entry((d.ino, d.chunk)).or_insert_with(|| State {
                    start: d.start,
                    bytes: Vec::new(),
                    covered: false,
                });
                if d.fresh {
                    st.bytes.clear();
                }
                let at = d.at as usize;
                let end = at + d.bytes.len();
                if st.bytes.len() < end {
                    st.bytes.resize(end, 0);
                }
                st.bytes[at..end].copy_from_slice(&d.bytes);
                st.bytes.resize(d.len as usize, 0);
                st.start = d.start;
                st.covered = false;
            }
            Entry::Record(
                seq,
                Record::SetChunks {
                    ino,
                    first,
                    chunks,
                    size,
                    ..
                },
            ) => {
                if *seq <= committed {
                    let end = first.saturating_add(chunks.len() as u64);
                    for (_, st) in live.range_mut((*ino, *first)..(*ino, end)) {
                        st.covered = true;
                    }
                }
                cut_at(&mut live, *ino, *size);
            }
            Entry::Record(
                _,
                Record::SetAttr {
                    ino, size: Some(s), ..
                },
            ) => {
                cut_at(&mut live, *ino, *s);
            }
            Entry::Record(..) => {}
        }
    }
    live.into_iter()
        .filter(|(_, st)| !st.covered && !st.bytes.is_empty())
        .map(|((ino, chunk), st)| ChunkData::whole(ino, chunk, st.start, st.bytes))
        .collect()
}

/// A chunk as the entries so far left it.
struct State {
    start: u64,
    bytes: Vec<u8>,
    /// Its bytes are in the store (a committed `SetChunks`).
    covered: bool,
}

type Live = BTreeMap<(u64, u64), State>;

/// The file became `size` bytes long: chunks past it are gone, the one it
/// ends in is cut.
fn cut_at(live: &mut Live, ino: u64, size: u64) {
    let mut gone = Vec::new();
    for (k, st) in live.range_mut((ino, 0)..=(ino, u64::MAX)) {
        match size.checked_sub(st.start).filter(|keep| *keep > 0) {
            Some(keep) => st.bytes.truncate(keep.min(st.bytes.len() as u64) as usize),
            None => gone.push(*k),
        }
    }
    for k in gone {
        live.remove(&k);
    }
}

/// Highest record sequence number among `entries`.
fn max_seq(entries: &[Entry]) -> Option<u64> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Record(seq, _) => Some(*seq),
            Entry::Data(_) => None,
        })
        .max()
}

/// Syncs the journal up to a point, skipping the fsync if someone else's
/// already covered it.
pub struct SyncHandle {
    file: Arc<File>,
    upto: u64,
    synced: Arc<AtomicU64>,
}

impl SyncHandle {
    pub fn sync(&self) -> std::io::Result<()> {
        if self.synced.load(Ordering::SeqCst) >= self.upto {
            return Ok(());
        }
        self.file.sync_data()?;
        self.synced.fetch_max(self.upto, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Record {
        Record::Forget { ino: i }
    }

    fn seqs(e: &[Entry]) -> Vec<u64> {
        e.iter()
            .filter_map(|x| match x {
                Entry::Record(s, _) => Some(*s),
                Entry::Data(_) => None,
            })
            .collect()
    }

    /// The whole content of chunk 0 of `ino`.
    fn data(ino: u64, chunk: u64, bytes: &[u8]) -> ChunkData {
        ChunkData::whole(ino, chunk, chunk * 100, bytes.to_vec())
    }

    /// A write of `bytes` at `at` into chunk `chunk` (of 100 bytes) of `ino`, leaving `len`.
    fn write(ino: u64, chunk: u64, at: u64, bytes: &[u8], len: u64) -> ChunkData {
        ChunkData {
            ino,
            chunk,
            start: chunk * 100,
            at,
            bytes: bytes.to_vec(),
            len,
            fresh: false,
        }
    }

    fn set_size(ino: u64, size: u64) -> Record {
        Record::SetAttr {
            ino,
            perm: None,
            uid: None,
            gid: None,
            size: Some(size),
            atime: None,
            mtime: None,
            ctime: strata_core::record::now(),
        }
    }

    fn set_chunk(ino: u64, chunk: u64, size: u64) -> Record {
        Record::SetChunks {
            ino,
            first: chunk,
            chunks: vec![None],
            size,
            mtime: strata_core::record::now(),
        }
    }

    #[test]
    fn chunk_writes_are_sealed_and_replayed_in_order() {
        let d = tempfile::tempdir().unwrap();
        let k = keys();
        let secret = b"the plaintext of a small file".to_vec();
        let (mut j, _) = Journal::open(d.path(), k.clone()).unwrap();
        j.append(1, &rec(1)).unwrap();
        // a chunk written in two steps
        j.append_data(&data(5, 0, &secret).as_write()).unwrap();
        j.append_data(&write(5, 0, 4, b"PLAIN", 29).as_write())
            .unwrap();
        // uploaded and committed: the store has it
        j.append_data(&data(7, 0, b"uploaded").as_write()).unwrap();
        j.append(2, &set_chunk(7, 0, 8)).unwrap();
        // uploaded, then written again: restored
        j.append_data(&data(7, 1, b"first").as_write()).unwrap();
        j.append(3, &set_chunk(7, 1, 105)).unwrap();
        j.append_data(&write(7, 1, 0, b"F", 5).as_write()).unwrap();
        // cut, then grown again: the cut bytes stay cut (a hole)
        j.append_data(&data(8, 0, b"0123456789").as_write())
            .unwrap();
        j.append(4, &set_size(8, 4)).unwrap();
        j.append(5, &set_size(8, 10)).unwrap();
        j.append_data(&write(8, 0, 8, b"xy", 10).as_write())
            .unwrap();
        // cut to nothing: gone
        j.append_data(&data(9, 1, b"second chunk").as_write())
            .unwrap();
        j.append(6, &set_size(9, 100)).unwrap();
        // moved into a chunk file: nothing to restore
        j.append_data(&data(10, 0, b"big").as_write()).unwrap();
        j.append_data(&data(10, 0, b"").as_write()).unwrap();
        assert_eq!(j.max_seq, 6);
        drop(j);
        let raw = std::fs::read(d.path().join(NAME)).unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == &secret[..]));
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(seqs(&e), vec![1, 2, 3, 4, 5, 6]);
        let live = surviving_data(&e, 3);
        assert_eq!(
            live,
            vec![
                data(5, 0, b"the PLAINtext of a small file"),
                data(7, 1, b"First"),
                data(8, 0, b"0123\0\0\0\0xy"),
            ]
        );
        // records not committed cover nothing
        assert_eq!(surviving_data(&e, 1).len(), 4);
    }

    #[test]
    fn a_large_journal_with_pending_records_drops_what_the_store_has() {
        let d = tempfile::tempdir().unwrap();
        let k = keys();
        let (mut j, _) = Journal::open(d.path(), k.clone()).unwrap();
        let big = vec![7u8; 200 << 10];
        let mut seq = 0;
        while j.len() < PENDING_LIMIT {
            seq += 1;
            j.append(seq, &rec(seq)).unwrap();
            j.append_data(&data(seq, 0, &big).as_write()).unwrap();
        }
        // the store has all but the last two records; one chunk is live
        let live = data(seq, 0, b"live");
        assert!(!j.compact(seq - 2, false, || None).unwrap(), "busy: later");
        assert!(j
            .compact(seq - 2, false, || Some(vec![live.clone()]))
            .unwrap());
        assert!(j.len() < 1 << 20, "{} bytes left", j.len());
        j.append(seq + 1, &rec(seq + 1)).unwrap();
        drop(j);
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(
            e,
            vec![
                Entry::Record(seq - 1, rec(seq - 1)),
                Entry::Record(seq, rec(seq)),
                Entry::Data(live),
                Entry::Record(seq + 1, rec(seq + 1)),
            ]
        );
    }

    #[test]
    fn compaction_keeps_the_chunks_still_in_memory() {
        let d = tempfile::tempdir().unwrap();
        let k = keys();
        let (mut j, _) = Journal::open(d.path(), k.clone()).unwrap();
        j.append(1, &rec(1)).unwrap();
        j.append_data(&data(5, 0, b"gone").as_write()).unwrap();
        // not committed yet: nothing happens
        assert!(!j.compact(0, true, || Some(vec![data(5, 0, b"x")])).unwrap());
        // busy overlays: try later
        assert!(!j.compact(1, true, || None).unwrap());
        assert!(j
            .compact(1, true, || Some(vec![data(9, 2, b"live")]))
            .unwrap());
        j.append(2, &rec(2)).unwrap();
        drop(j);
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(
            e,
            vec![Entry::Data(data(9, 2, b"live")), Entry::Record(2, rec(2))]
        );
    }

    #[test]
    fn a_journal_of_the_records_only_version_is_read() {
        let d = tempfile::tempdir().unwrap();
        let k = keys();
        let (hdr, key) = sealed::new_header(MAGIC_V1, &k).unwrap();
        let mut bytes = hdr;
        for i in 1..=3u64 {
            let e = encode(&key, bytes.len() as u64, &Entry::Record(i, rec(i))).unwrap();
            bytes.extend_from_slice(&e);
        }
        std::fs::write(d.path().join(NAME), &bytes).unwrap();
        let (mut j, e) = Journal::open(d.path(), k.clone()).unwrap();
        assert_eq!(seqs(&e), vec![1, 2, 3]);
        j.rewrite(&e).unwrap();
        drop(j);
        assert_eq!(&std::fs::read(d.path().join(NAME)).unwrap()[..4], MAGIC);
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(seqs(&e), vec![1, 2, 3]);
    }

    fn keys() -> Arc<Keys> {
        Arc::new(Keys::derive(&strata_crypto::MasterKey::generate().unwrap()).unwrap())
    }

    #[test]
    fn append_reopen_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let k = keys();
        {
            let (mut j, e) = Journal::open(d.path(), k.clone()).unwrap();
            assert!(e.is_empty());
            for i in 1..=5 {
                j.append(i, &rec(i)).unwrap();
            }
            j.sync_handle().unwrap().sync().unwrap();
        }
        // simulate a crash mid-append: garbage tail
        let p = d.path().join(NAME);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (mut j, e) = Journal::open(d.path(), k.clone()).unwrap();
        assert_eq!(seqs(&e), vec![1, 2, 3, 4, 5]);
        assert_eq!(j.max_seq, 5);
        j.append(6, &rec(6)).unwrap();
        drop(j);
        let (j, e) = Journal::open(d.path(), k.clone()).unwrap();
        assert_eq!(e.len(), 6);
        let mut j = j;
        j.rewrite(&e[4..]).unwrap();
        drop(j);
        let (mut j, e) = Journal::open(d.path(), k.clone()).unwrap();
        assert_eq!(seqs(&e), vec![5, 6]);
        // compaction keeps the header: appends after it read back
        assert!(j.compact(6, true, || Some(Vec::new())).unwrap());
        j.append(7, &rec(7)).unwrap();
        drop(j);
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(seqs(&e), vec![7]);
    }

    #[test]
    fn flipped_bit_ends_the_journal() {
        let d = tempfile::tempdir().unwrap();
        let k = keys();
        let (mut j, _) = Journal::open(d.path(), k.clone()).unwrap();
        for i in 1..=3 {
            j.append(i, &rec(i)).unwrap();
        }
        let n = (HDR + j.len()) as usize;
        drop(j);
        let p = d.path().join(NAME);
        let mut b = std::fs::read(&p).unwrap();
        b[n - 2] ^= 1;
        std::fs::write(&p, b).unwrap();
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn entries_overwrite_zeros_written_ahead() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let k = keys();
        let p = d.path().join(NAME);
        let (mut j, _) = Journal::open(d.path(), k.clone()).unwrap();
        j.append(1, &rec(1)).unwrap();
        let end = HDR + j.len();
        let file_len = std::fs::metadata(&p).unwrap().len();
        assert!(
            file_len >= end + ZERO_AHEAD,
            "zeros ahead: {file_len} bytes for {end}"
        );
        let b = std::fs::read(&p).unwrap();
        assert!(b[end as usize..].iter().all(|b| *b == 0));
        drop(j);
        // reopened: the zeros stay, appends go on after the last entry
        let (mut j, e) = Journal::open(d.path(), k.clone()).unwrap();
        assert_eq!(seqs(&e), vec![1]);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), file_len);
        for i in 2..=2000 {
            j.append(i, &rec(i)).unwrap();
        }
        let end = HDR + j.len();
        assert!(std::fs::metadata(&p).unwrap().len() >= end);
        drop(j);
        // an entry torn by a crash inside the zeros is cut off at open
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[7, 0, 0, 0, 1, 2, 3], end).unwrap();
        drop(f);
        let (mut j, e) = Journal::open(d.path(), k.clone()).unwrap();
        assert_eq!(seqs(&e), (1..=2000).collect::<Vec<_>>());
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            end,
            "the torn tail is cut"
        );
        j.append(2001, &rec(2001)).unwrap();
        drop(j);
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(seqs(&e), (1..=2001).collect::<Vec<_>>());
    }

    #[test]
    fn names_are_sealed_and_other_keys_read_nothing() {
        let d = tempfile::tempdir().unwrap();
        let k = keys();
        let (mut j, _) = Journal::open(d.path(), k.clone()).unwrap();
        let name = b"salary-review-2027.ods".to_vec();
        j.append(
            1,
            &Record::Unlink {
                parent: 1,
                name: name.clone(),
                keep_orphan: false,
                time: strata_core::record::now(),
            },
        )
        .unwrap();
        drop(j);
        let raw = std::fs::read(d.path().join(NAME)).unwrap();
        assert!(!raw.windows(name.len()).any(|w| w == &name[..]));
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(e.len(), 1);
        let (_, e) = Journal::open(d.path(), keys()).unwrap();
        assert!(e.is_empty(), "another vault's key read the journal");
    }

    #[test]
    fn a_plaintext_journal_of_an_earlier_version_is_read_and_sealed() {
        let d = tempfile::tempdir().unwrap();
        let mut old = Vec::new();
        for i in 1..=3u64 {
            let payload = postcard::to_stdvec(&(i, rec(i))).unwrap();
            old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            old.extend_from_slice(&check(&payload));
            old.extend_from_slice(&payload);
        }
        std::fs::write(d.path().join(NAME), &old).unwrap();
        let k = keys();
        let (_, e) = Journal::open(d.path(), k.clone()).unwrap();
        assert_eq!(seqs(&e), vec![1, 2, 3]);
        assert_eq!(&std::fs::read(d.path().join(NAME)).unwrap()[..4], MAGIC);
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(e.len(), 3);
    }
}
