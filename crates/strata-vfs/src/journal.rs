//! The local metadata journal: every record the mount applies is appended
//! here (with its sequence number) before the operation returns, and synced
//! to disk on close/fsync. After a crash, records the store does not have yet
//! (sequence > the vault's `writer_seq`) are replayed from it.
//!
//! Layout: a header `"STJ1" ‖ salt (32 random bytes)`, then entries
//! `len (u32 LE) ‖ check (first 8 bytes of BLAKE3(sealed)) ‖ sealed`, where
//! `sealed = nonce ‖ AES-256-GCM(postcard((seq: u64, Record))) ‖ tag` under
//! the file's key ([`strata_crypto::Keys::cache_file_key`] of the salt),
//! with the entry's offset in the file as associated data: the journal
//! holds no plaintext name or attribute. A torn or damaged tail (crash
//! mid-append) ends the journal; everything before it is intact. A journal
//! of an earlier version (plaintext entries, no header) is read and
//! rewritten sealed when opened.
//!
//! Free space: the file keeps [`RESERVE`] bytes allocated past its end
//! (`fallocate` with `KEEP_SIZE`), so the records of uploads and commits
//! still fit when other programs have filled the cache disk; an append
//! that fails is cut off again (a torn entry would hide every later one);
//! and a compaction truncates the file in place (to its header) rather
//! than writing a new one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use strata_core::Record;

use crate::sealed;
use strata_crypto::{FileKey, Keys};

const NAME: &str = "journal";
const MAGIC: &[u8; 4] = b"STJ1";
const HDR: u64 = sealed::HDR;
/// Length of a journal that holds no record (its header).
pub const EMPTY_LEN: u64 = HDR;

/// Bytes kept allocated past the end of the journal (about 10 000 records).
pub const RESERVE: u64 = 1 << 20;

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
    key: FileKey,
    keys: Arc<Keys>,
    /// Appends so far (monotonic, across resets).
    appended: u64,
    /// Highest sequence number in the file.
    pub max_seq: u64,
    /// File length (header and entries).
    bytes: u64,
    synced: Arc<AtomicU64>,
}

fn check(payload: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(payload).as_bytes()[..8]);
    c
}

/// One entry, to be written at file offset `at`.
fn encode(key: &FileKey, at: u64, seq: u64, r: &Record) -> std::io::Result<Vec<u8>> {
    let payload = postcard::to_stdvec(&(seq, r)).map_err(std::io::Error::other)?;
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
fn parse(bytes: &[u8], start: usize, key: Option<&FileKey>) -> (Vec<(u64, Record)>, usize) {
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
        match postcard::from_bytes::<(u64, Record)>(&plain) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
        pos = end;
    }
    (out, pos)
}

/// Write `entries` as a new sealed journal at `tmp` (synced); returns its
/// key and length.
fn write_new(
    tmp: &Path,
    keys: &Keys,
    entries: &[(u64, Record)],
) -> std::io::Result<(FileKey, u64)> {
    let (hdr, key) = sealed::new_header(MAGIC, keys)?;
    let mut f = File::create(tmp)?;
    f.write_all(&hdr)?;
    let mut at = HDR;
    for (seq, r) in entries {
        let e = encode(&key, at, *seq, r)?;
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
    pub fn open(dir: &Path, keys: Arc<Keys>) -> std::io::Result<(Journal, Vec<(u64, Record)>)> {
        let path = dir.join(NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let Some(key) = sealed::header_key(MAGIC, &bytes, &keys)? else {
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
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped = bytes.len() - valid,
                "journal has a torn tail (crash during an append); ignoring it"
            );
            file.set_len(valid as u64)?;
            file.sync_data()?;
        }
        let max_seq = entries.iter().map(|e| e.0).max().unwrap_or(0);
        reserve(&file, valid as u64);
        Ok((
            Journal {
                path,
                file,
                key,
                keys,
                appended: 0,
                max_seq,
                bytes: valid as u64,
                synced: Arc::new(AtomicU64::new(0)),
            },
            entries,
        ))
    }

    /// Append one record (not yet synced). On failure (disk full, I/O
    /// error) the file is cut back to its previous end.
    pub fn append(&mut self, seq: u64, r: &Record) -> std::io::Result<u64> {
        let e = encode(&self.key, self.bytes, seq, r)?;
        if let Err(err) = self.file.write_all(&e) {
            if let Err(cut) = self.file.set_len(self.bytes) {
                tracing::warn!(error = %cut, path = %self.path.display(), "could not cut a failed journal append");
            }
            return Err(err);
        }
        self.appended += 1;
        self.bytes += e.len() as u64;
        self.max_seq = self.max_seq.max(seq);
        Ok(self.appended)
    }

    /// A handle to sync appends up to now without holding the journal lock
    /// (group commit: concurrent callers share one fsync).
    pub fn sync_handle(&self) -> std::io::Result<SyncHandle> {
        Ok(SyncHandle {
            file: self.file.try_clone()?,
            upto: self.appended,
            synced: self.synced.clone(),
        })
    }

    /// Replace the journal with exactly `entries` (written and synced to a
    /// temporary file first, then renamed over the old one).
    pub fn rewrite(&mut self, entries: &[(u64, Record)]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let (key, bytes) = write_new(&tmp, &self.keys, entries)?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(d) = self.path.parent() {
            File::open(d)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.key = key;
        reserve(&self.file, bytes);
        self.bytes = bytes;
        self.max_seq = entries.iter().map(|e| e.0).max().unwrap_or(self.max_seq);
        self.synced.store(self.appended, Ordering::SeqCst);
        Ok(())
    }

    /// Empty the journal when the store has every record in it and it has
    /// grown large (or `now`, to give its space back). In place: truncated
    /// to its header and synced, so it needs no free space.
    pub fn compact(&mut self, writer_seq: u64, now: bool) -> std::io::Result<bool> {
        if self.max_seq > writer_seq || self.bytes <= HDR || !(now || self.bytes > 4 << 20) {
            return Ok(false);
        }
        self.file.set_len(HDR)?;
        self.file.sync_all()?;
        self.bytes = HDR;
        self.synced.store(self.appended, Ordering::SeqCst);
        reserve(&self.file, HDR);
        Ok(true)
    }

    /// Bytes of records in the file.
    pub fn len(&self) -> u64 {
        self.bytes - HDR
    }

    pub fn is_empty(&self) -> bool {
        self.bytes <= HDR
    }
}

/// Syncs the journal up to a point, skipping the fsync if someone else's
/// already covered it.
pub struct SyncHandle {
    file: File,
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
        assert_eq!(
            e.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(j.max_seq, 5);
        j.append(6, &rec(6)).unwrap();
        drop(j);
        let (j, e) = Journal::open(d.path(), k.clone()).unwrap();
        assert_eq!(e.len(), 6);
        let mut j = j;
        j.rewrite(&e[4..]).unwrap();
        drop(j);
        let (mut j, e) = Journal::open(d.path(), k.clone()).unwrap();
        assert_eq!(e.iter().map(|x| x.0).collect::<Vec<_>>(), vec![5, 6]);
        // compaction keeps the header: appends after it read back
        assert!(j.compact(6, true).unwrap());
        j.append(7, &rec(7)).unwrap();
        drop(j);
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(e.iter().map(|x| x.0).collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn flipped_bit_ends_the_journal() {
        let d = tempfile::tempdir().unwrap();
        let k = keys();
        let (mut j, _) = Journal::open(d.path(), k.clone()).unwrap();
        for i in 1..=3 {
            j.append(i, &rec(i)).unwrap();
        }
        drop(j);
        let p = d.path().join(NAME);
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 2] ^= 1;
        std::fs::write(&p, b).unwrap();
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(e.len(), 2);
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
        assert_eq!(e.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(&std::fs::read(d.path().join(NAME)).unwrap()[..4], MAGIC);
        let (_, e) = Journal::open(d.path(), k).unwrap();
        assert_eq!(e.len(), 3);
    }
}
