//! Open files of the objects a `file://` store range-read last.
//!
//! A 4 KiB random read through a mount reads one segment of one data
//! object. Opening the object for each such read costs a path walk, an
//! `openat`, a `statx`, an `lseek` and a `close` around the one `read`
//! that matters: five system calls where one `pread` does. The store
//! keeps the last few hundred range-read objects open ([`capacity`]) (with their size,
//! to clamp a range) and reads them with `pread`.
//!
//! Objects read by range are data objects (blobs and packs), whose content
//! never changes under a name. A put or delete of a key through this store
//! forgets its entry first, so this process never reads a replaced or
//! deleted object through an old file. A deletion by another process (a
//! `gc` elsewhere) leaves the old file readable here until it falls out of
//! the list; nothing references such an object any more.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

/// Objects kept open at most: 512 (2 GiB of 4 MiB chunks, a random-read
/// working set of that size), or a quarter of the process's open-file
/// limit if that is lower.
pub(crate) fn capacity() -> usize {
    static CAP: OnceLock<usize> = OnceLock::new();
    *CAP.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        usize::try_from(limit / 4)
            .unwrap_or(usize::MAX)
            .clamp(8, 512)
    })
}

#[derive(Debug)]
struct Entry {
    file: Arc<File>,
    size: u64,
    /// When it was last read (a counter): the smallest goes first.
    used: u64,
}

#[derive(Debug, Default)]
struct Open {
    map: HashMap<String, Entry>,
    clock: u64,
}

/// The most recently range-read objects, kept open.
#[derive(Debug, Default)]
pub(crate) struct OpenObjects {
    open: Mutex<Open>,
}

impl OpenObjects {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The map holds no invariant a panicking holder could break.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open file and size of `key`, if it is kept open.
    pub(crate) fn get(&self, key: &str) -> Option<(Arc<File>, u64)> {
        let mut open = self.lock();
        open.clock += 1;
        let now = open.clock;
        let e = open.map.get_mut(key)?;
        e.used = now;
        Some((e.file.clone(), e.size))
    }

    /// Keep `file` (of `size` bytes) open as `key`, closing the least
    /// recently read object past [`capacity`].
    pub(crate) fn insert(&self, key: &str, file: Arc<File>, size: u64) {
        let mut open = self.lock();
        if open.map.len() >= capacity() && !open.map.contains_key(key) {
            // O(capacity) on a miss with a full map: far cheaper than the
            // open it follows.
            let oldest = open
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                open.map.remove(&k);
            }
        }
        open.clock += 1;
        let used = open.clock;
        open.map.insert(key.to_owned(), Entry { file, size, used });
    }

    /// Forget `key` (it is being replaced or deleted).
    pub(crate) fn forget(&self, key: &str) {
        self.lock().map.remove(key);
    }
}

/// Read `[start, end)` of `file` (the caller clamped it to the size) with
/// `pread`, into a buffer that is not zero-filled first.
pub(crate) fn pread(file: &File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(end - start)
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "object too large for memory"))?;
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "object too large for memory"))?;
    let mut done = 0usize;
    while done < len {
        let spare = &mut buf.spare_capacity_mut()[..len - done];
        // SAFETY: `read_at` only writes into the slice it is given; viewing
        // the spare capacity as `[u8]` for that is sound because u8 has no
        // invalid bit patterns, and only the `n` bytes it reports written
        // become part of the vector (set_len below).
        let dst = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        let n = match file.read_at(dst, start + done as u64) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        done += n;
        // SAFETY: the first `done` bytes were written by `read_at` above.
        unsafe { buf.set_len(done) };
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Arc<File> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        Arc::new(File::open(&p).unwrap())
    }

    #[test]
    fn keeps_the_most_recent_and_forgets_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let objects = OpenObjects::default();
        for i in 0..capacity() + 1 {
            let f = file_with(dir.path(), &format!("o{i}"), b"x");
            objects.insert(&format!("o{i}"), f, 1);
            if i >= 1 {
                // o1 is read again after every insert: it stays.
                assert!(objects.get("o1").is_some());
            }
        }
        assert!(
            objects.get("o0").is_none(),
            "the least recent one was dropped"
        );
        assert!(objects.get("o1").is_some());
        assert_eq!(
            objects.get(&format!("o{}", capacity())).map(|(_, s)| s),
            Some(1)
        );
        objects.forget("o1");
        assert!(objects.get("o1").is_none());
    }

    #[test]
    fn pread_reads_exact_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let f = file_with(dir.path(), "o", &data);
        assert_eq!(pread(&f, 0, 0).unwrap(), Vec::<u8>::new());
        assert_eq!(pread(&f, 5, 70_000).unwrap(), data[5..70_000].to_vec());
        assert_eq!(
            pread(&f, 199_990, 200_000).unwrap(),
            data[199_990..].to_vec()
        );
        let short = pread(&f, 199_990, 200_001).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
    }
}
