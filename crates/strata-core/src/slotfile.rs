//! Small local state files rewritten in place, so that updating them never
//! needs free space on a full disk.
//!
//! A slot file holds two fixed-size slots; each write goes into the slot
//! not holding the newest copy (`magic ‖ counter u64 ‖ len u32 ‖ check
//! (first 8 bytes of BLAKE3(counter ‖ payload)) ‖ payload`, zero padded)
//! and is synced. A write torn by a crash damages only that slot; the
//! reader takes the valid slot with the highest counter. The file is
//! written out in full (zeros, not a sparse hole) when it is created, so an
//! overwrite in place allocates nothing on filesystems that overwrite in
//! place (ext4, xfs, tmpfs; copy-on-write filesystems such as btrfs still
//! need space for the new copy). Only a payload larger than a slot makes
//! the file grow: a new file with bigger slots, then a rename.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"STSL";
const HDR: usize = 4 + 8 + 4 + 8;

/// A two-slot file at `path` with slots of at least `slot` bytes.
#[derive(Debug)]
pub struct SlotFile {
    path: PathBuf,
    min_slot: usize,
    /// Open file, its slot size and the counter of the newest slot.
    open: Option<(File, usize, u64)>,
}

fn check(counter: u64, payload: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(&counter.to_le_bytes());
    h.update(payload);
    let mut c = [0u8; 8];
    c.copy_from_slice(&h.finalize().as_bytes()[..8]);
    c
}

/// The payload and counter of one slot, if it is intact.
fn parse_slot(s: &[u8]) -> Option<(u64, &[u8])> {
    if s.len() < HDR || &s[..4] != MAGIC {
        return None;
    }
    let counter = u64::from_le_bytes(s[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(s[12..16].try_into().ok()?) as usize;
    let payload = s.get(HDR..HDR.checked_add(len)?)?;
    (s[16..24] == check(counter, payload)).then_some((counter, payload))
}

fn encode_slot(counter: u64, payload: &[u8], slot: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(slot);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&counter.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&check(counter, payload));
    b.extend_from_slice(payload);
    b.resize(slot, 0);
    b
}

/// The newest intact payload of the slot file image `bytes` (`None` if no
/// slot is intact), with its counter.
fn newest(bytes: &[u8]) -> Option<(u64, Vec<u8>)> {
    if bytes.len() < 2 * HDR || !bytes.len().is_multiple_of(2) {
        return None;
    }
    let (a, b) = bytes.split_at(bytes.len() / 2);
    [parse_slot(a), parse_slot(b)]
        .into_iter()
        .flatten()
        .max_by_key(|(c, _)| *c)
        .map(|(c, p)| (c, p.to_vec()))
}

/// Read the newest payload of the slot file at `path`: `Ok(None)` if the
/// file does not exist, an `InvalidData` error if no slot is intact.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => newest(&b).map(|(_, p)| Some(p)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds no intact copy", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl SlotFile {
    /// A slot file at `path` (not touched until the first write).
    pub fn new(path: PathBuf, min_slot: usize) -> SlotFile {
        SlotFile {
            path,
            min_slot: min_slot.max(HDR + 16),
            open: None,
        }
    }

    /// Open the existing file for in-place writes, or create it in full
    /// (so later writes need no space), holding `initial`.
    pub fn prepare(&mut self, initial: &[u8]) -> io::Result<()> {
        if self.open.is_some() {
            return Ok(());
        }
        if let Ok(f) = OpenOptions::new().read(true).write(true).open(&self.path) {
            let len = f.metadata()?.len() as usize;
            let mut bytes = vec![0u8; len];
            f.read_exact_at(&mut bytes, 0)?;
            if len.is_multiple_of(2) && len / 2 >= self.min_slot {
                let counter = newest(&bytes).map(|(c, _)| c).unwrap_or(0);
                self.open = Some((f, len / 2, counter));
                return self.write(initial);
            }
        }
        self.recreate(initial)
    }

    /// Replace the content with `payload`: in place when it fits a slot.
    pub fn write(&mut self, payload: &[u8]) -> io::Result<()> {
        let Some((f, slot, counter)) = &mut self.open else {
            return self.prepare(payload);
        };
        if HDR + payload.len() > *slot {
            return self.recreate(payload);
        }
        let next = *counter + 1;
        // the slot not holding the newest copy: counters alternate slots
        let at = (next % 2) * (*slot as u64);
        f.write_all_at(&encode_slot(next, payload, *slot), at)?;
        f.sync_data()?;
        *counter = next;
        Ok(())
    }

    /// Write a new file with slots big enough for `payload` (temp file,
    /// sync, rename, sync the directory).
    fn recreate(&mut self, payload: &[u8]) -> io::Result<()> {
        let slot = (HDR + payload.len()).next_power_of_two().max(self.min_slot);
        let counter = self.open.as_ref().map(|o| o.2).unwrap_or(0) + 1;
        let mut img = encode_slot(counter, payload, slot);
        img.extend(encode_slot(counter, payload, slot));
        let tmp = self.path.with_extension("tmp");
        let f = File::create(&tmp)?;
        f.write_all_at(&img, 0)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(d) = self.path.parent() {
            File::open(d)?.sync_all()?;
        }
        let f = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.open = Some((f, slot, counter));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn newest_copy_wins_and_a_torn_slot_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        assert_eq!(read(&p).unwrap(), None);
        let mut s = SlotFile::new(p.clone(), 64);
        s.prepare(b"one").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"one");
        s.write(b"two").unwrap();
        s.write(b"three").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"three");
        let len = std::fs::metadata(&p).unwrap().len();
        // tear the slot holding "three": the other copy ("two") is read
        let mut b = std::fs::read(&p).unwrap();
        let half = b.len() / 2;
        let newest_at = if parse_slot(&b[..half]).unwrap().1 == b"three" {
            0
        } else {
            half
        };
        b[newest_at + HDR] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"two");
        // reopened, writes go on in place and the file keeps its size
        let mut s = SlotFile::new(p.clone(), 64);
        s.prepare(b"four").unwrap();
        s.write(b"five").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"five");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
        // a payload bigger than a slot grows the file
        let big = vec![7u8; 1000];
        s.write(&big).unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), big);
        s.write(b"six").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"six");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, b"{\"not\": \"slots\"}").unwrap();
        assert_eq!(read(&p).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = newest(&b);
        }
    }
}
