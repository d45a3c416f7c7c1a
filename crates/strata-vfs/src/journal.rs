//! The local metadata journal: every record the mount applies is appended
//! here (with its sequence number) before the operation returns, and synced
//! to disk on close/fsync. After a crash, records the store does not have yet
//! (sequence > the vault's `writer_seq`) are replayed from it.
//!
//! Entry layout: `len (u32 LE) ‖ check (first 8 bytes of BLAKE3(payload)) ‖
//! payload = postcard((seq: u64, Record))`. A torn or damaged tail (crash
//! mid-append) ends the journal; everything before it is intact.
//!
//! Free space: the file keeps [`RESERVE`] bytes allocated past its end
//! (`fallocate` with `KEEP_SIZE`), so the records of uploads and commits
//! still fit when other programs have filled the cache disk; an append
//! that fails is cut off again (a torn entry would hide every later one);
//! and a compaction truncates the file in place rather than writing a new
//! one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use strata_core::Record;

const NAME: &str = "journal";

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
    /// Appends so far (monotonic, across resets).
    appended: u64,
    /// Highest sequence number in the file.
    pub max_seq: u64,
    bytes: u64,
    synced: Arc<AtomicU64>,
}

fn check(payload: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(payload).as_bytes()[..8]);
    c
}

fn encode(seq: u64, r: &Record) -> std::io::Result<Vec<u8>> {
    let payload = postcard::to_stdvec(&(seq, r)).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(12 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&check(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parse a journal image; stops at the first torn/damaged entry and returns
/// the valid prefix length.
fn parse(bytes: &[u8]) -> (Vec<(u64, Record)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while bytes.len() - pos >= 12 {
        let mut l = [0u8; 4];
        l.copy_from_slice(&bytes[pos..pos + 4]);
        let len = u32::from_le_bytes(l) as usize;
        let Some(end) = (pos + 12).checked_add(len).filter(|e| *e <= bytes.len()) else {
            break;
        };
        let payload = &bytes[pos + 12..end];
        if bytes[pos + 4..pos + 12] != check(payload) {
            break;
        }
        match postcard::from_bytes::<(u64, Record)>(payload) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
        pos = end;
    }
    (out, pos)
}

impl Journal {
    /// Open (or create) the journal in `dir`; returns it with the entries it
    /// holds. A damaged tail is cut off.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Vec<(u64, Record)>)> {
        let path = dir.join(NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (entries, valid) = parse(&bytes);
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
        let e = encode(seq, r)?;
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
        let mut f = File::create(&tmp)?;
        let mut bytes = 0u64;
        for (seq, r) in entries {
            let e = encode(*seq, r)?;
            f.write_all(&e)?;
            bytes += e.len() as u64;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(d) = self.path.parent() {
            File::open(d)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        reserve(&self.file, bytes);
        self.bytes = bytes;
        self.max_seq = entries.iter().map(|e| e.0).max().unwrap_or(self.max_seq);
        self.synced.store(self.appended, Ordering::SeqCst);
        Ok(())
    }

    /// Empty the journal when the store has every record in it and it has
    /// grown large (or `now`, to give its space back). In place: truncated
    /// and synced, so it needs no free space.
    pub fn compact(&mut self, writer_seq: u64, now: bool) -> std::io::Result<bool> {
        if self.max_seq > writer_seq || self.bytes == 0 || !(now || self.bytes > 4 << 20) {
            return Ok(false);
        }
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.bytes = 0;
        self.synced.store(self.appended, Ordering::SeqCst);
        reserve(&self.file, 0);
        Ok(true)
    }

    /// Bytes of records in the file.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
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

    #[test]
    fn append_reopen_and_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut j, e) = Journal::open(d.path()).unwrap();
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
        let (mut j, e) = Journal::open(d.path()).unwrap();
        assert_eq!(
            e.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(j.max_seq, 5);
        j.append(6, &rec(6)).unwrap();
        drop(j);
        let (j, e) = Journal::open(d.path()).unwrap();
        assert_eq!(e.len(), 6);
        let mut j = j;
        j.rewrite(&e[4..]).unwrap();
        drop(j);
        let (_, e) = Journal::open(d.path()).unwrap();
        assert_eq!(e.iter().map(|x| x.0).collect::<Vec<_>>(), vec![5, 6]);
    }

    #[test]
    fn flipped_bit_ends_the_journal() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(d.path()).unwrap();
        for i in 1..=3 {
            j.append(i, &rec(i)).unwrap();
        }
        drop(j);
        let p = d.path().join(NAME);
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 2] ^= 1;
        std::fs::write(&p, b).unwrap();
        let (_, e) = Journal::open(d.path()).unwrap();
        assert_eq!(e.len(), 2);
    }
}
