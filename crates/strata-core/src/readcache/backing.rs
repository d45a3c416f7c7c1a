//! Where a [`super::ReadCache`] keeps its ciphertext: [`Backing::Disk`], one
//! sparse file per blob (`<dir>/<2 hex>/<62 hex>`, the stored object's bytes
//! at the object's own offsets), or [`Backing::Memory`], the fetched runs
//! themselves. The cache's bookkeeping (which segments are present, claims,
//! eviction) is the same for both and lives in the parent module.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use strata_crypto::BlobId;
use strata_store::Bytes;
use tracing::debug;

/// Where the cached ciphertext lives.
#[derive(Debug)]
pub(super) enum Backing {
    /// One sparse file per blob under this directory.
    Disk(PathBuf),
    /// Fetched runs in memory: blob → (stored-object offset → bytes).
    Memory(Mutex<HashMap<BlobId, BTreeMap<u64, Bytes>>>),
}

impl Backing {
    /// Cached bytes `ranges` of blob `id` (disk reads off the async threads).
    pub(super) async fn load(
        &self,
        id: &BlobId,
        ranges: Vec<Range<u64>>,
    ) -> io::Result<Vec<Vec<u8>>> {
        match self {
            Backing::Disk(dir) => {
                on_disk(blob_path(dir, id), move |p| read_pieces(p, &ranges)).await
            }
            Backing::Memory(_) => self.load_now(id, &ranges),
        }
    }

    /// Keep `(offset, bytes)` pieces of blob `id`.
    pub(super) async fn save(&self, id: &BlobId, items: Vec<(u64, Bytes)>) -> io::Result<()> {
        match self {
            Backing::Disk(dir) => {
                on_disk(blob_path(dir, id), move |p| write_pieces(p, &items)).await
            }
            Backing::Memory(_) => self.store(id, items),
        }
    }

    pub(super) fn store(&self, id: &BlobId, items: Vec<(u64, Bytes)>) -> io::Result<()> {
        match self {
            Backing::Disk(dir) => write_pieces(&blob_path(dir, id), &items),
            Backing::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                let runs = m.entry(*id).or_default();
                for (off, b) in items {
                    runs.insert(off, b);
                }
                Ok(())
            }
        }
    }

    pub(super) fn load_now(&self, id: &BlobId, ranges: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>> {
        match self {
            Backing::Disk(dir) => read_pieces(&blob_path(dir, id), ranges),
            Backing::Memory(m) => {
                let m = m.lock().unwrap_or_else(|e| e.into_inner());
                let runs = m.get(id).ok_or(io::ErrorKind::NotFound)?;
                ranges.iter().map(|r| copy_runs(runs, r.clone())).collect()
            }
        }
    }

    pub(super) fn remove(&self, id: &BlobId) {
        match self {
            Backing::Disk(dir) => remove_quietly(&blob_path(dir, id)),
            Backing::Memory(m) => {
                m.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            }
        }
    }
}

/// Bytes `r` assembled from stored runs (offset → bytes); an error if any
/// byte of `r` is in none of them.
pub(super) fn copy_runs(runs: &BTreeMap<u64, Bytes>, r: Range<u64>) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; (r.end - r.start) as usize];
    let mut pos = r.start;
    while pos < r.end {
        let (&off, b) = runs
            .range(..=pos)
            .rev()
            .find(|(off, b)| *off + b.len() as u64 > pos)
            .ok_or(io::ErrorKind::NotFound)?;
        let stop = r.end.min(off + b.len() as u64);
        out[(pos - r.start) as usize..(stop - r.start) as usize]
            .copy_from_slice(&b[(pos - off) as usize..(stop - off) as usize]);
        pos = stop;
    }
    Ok(out)
}

pub(super) fn blob_path(dir: &Path, id: &BlobId) -> PathBuf {
    let h = id.to_hex();
    dir.join(&h[..2]).join(&h[2..])
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            debug!(path = %path.display(), error = %e, "could not remove a read-cache file");
        }
    }
}

pub(super) fn make_dir(path: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(path)
}

fn open_for_write(path: &Path) -> io::Result<fs::File> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                make_dir(parent)?;
            }
            o.open(path)
        }
        r => r,
    }
}

#[cfg(unix)]
fn write_at(f: &fs::File, buf: &[u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, off)
}

#[cfg(unix)]
fn read_at(f: &fs::File, buf: &mut [u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, off)
}

#[cfg(not(unix))]
fn write_at(mut f: &fs::File, buf: &[u8], off: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(off))?;
    f.write_all(buf)
}

#[cfg(not(unix))]
fn read_at(mut f: &fs::File, buf: &mut [u8], off: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(buf)
}

/// Write `(offset, bytes)` pieces into a cache file.
fn write_pieces(path: &Path, pieces: &[(u64, Bytes)]) -> io::Result<()> {
    let f = open_for_write(path)?;
    for (off, b) in pieces {
        // in pieces, as `get` writes (see `WRITE_PIECE`)
        let mut at = *off;
        for piece in b.chunks(crate::chunks::WRITE_PIECE) {
            write_at(&f, piece, at)?;
            at += piece.len() as u64;
        }
    }
    Ok(())
}

/// Read `offset..offset+len` pieces of a cache file.
fn read_pieces(path: &Path, pieces: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>> {
    let f = fs::File::open(path)?;
    pieces
        .iter()
        .map(|r| {
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            read_at(&f, &mut buf, r.start)?;
            Ok(buf)
        })
        .collect()
}

/// Run `f` on a cache file off the async threads.
async fn on_disk<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce(&Path) -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(move || f(&path))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
}

/// Delete cache files of an earlier run (only names of our own layout).
pub(super) fn clear_old(dir: &Path) -> io::Result<()> {
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 2 || !is_hex(name) || !ent.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(ent.path())? {
            let f = f?;
            let fname = f.file_name();
            let ours = fname.to_str().is_some_and(|n| n.len() == 62 && is_hex(n));
            if ours && f.file_type()?.is_file() {
                fs::remove_file(f.path())?;
            }
        }
        let _ = fs::remove_dir(ent.path());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_runs_are_assembled() {
        let mut runs = BTreeMap::new();
        runs.insert(10, Bytes::from_static(b"abcde"));
        runs.insert(15, Bytes::from_static(b"fgh"));
        assert_eq!(copy_runs(&runs, 12..17).unwrap(), b"cdefg");
        assert!(copy_runs(&runs, 8..12).is_err());
        assert!(copy_runs(&runs, 16..19).is_err());
    }
}
