//! The `file://` store's own data path (blocking; run on the blocking pool
//! or inline, [`crate::inline`]): atomic durable puts (temp file, fsync,
//! rename, fsync of the folder), deferred puts and what `sync` does for
//! them, reads through the open objects ([`crate::open_objects`]), stat,
//! delete, and the sweep of temp files a crash left.

use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

/// Temp files older than this are considered crash leftovers and swept at open.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// A deferred put of an object this large is synced at once: its fdatasync
/// costs about what writing it does, runs while the uploader goes on, and
/// leaves `sync` no reason to flush the whole filesystem (which would also
/// write the write-back cache's chunk files, about to be deleted, to disk).
pub(crate) const SYNC_AT_PUT: usize = 1 << 20;

/// Up to this many deferred objects, `sync` syncs them one by one; past
/// it, one `syncfs(2)` (one journal commit for any number of objects, but
/// it also flushes every other dirty file of that filesystem).
pub(crate) const SYNC_EACH_MAX: usize = 16;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The objects put deferred since the last `sync`.
#[derive(Debug)]
pub(crate) enum Unsynced {
    /// At most [`SYNC_EACH_MAX`] keys: synced one by one.
    Keys(Vec<String>),
    /// More (or a failed sync): one `syncfs`.
    Many,
}

impl Unsynced {
    pub(crate) fn add(&mut self, key: String) {
        match self {
            Unsynced::Keys(keys) if keys.len() < SYNC_EACH_MAX => keys.push(key),
            _ => *self = Unsynced::Many,
        }
    }
}

/// Directories of a `file://` store.
#[derive(Debug)]
pub(crate) struct FsDirs {
    pub(crate) root: PathBuf,
    pub(crate) tmp: PathBuf,
    /// What `put_deferred` left for the next `sync`.
    pub(crate) unsynced: Mutex<Unsynced>,
    /// The objects range-read last, kept open.
    pub(crate) open: crate::open_objects::OpenObjects,
}

/// fsync a directory, making the entries created/renamed/removed in it durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Removes a temp file on drop unless disarmed.
pub(crate) struct TmpGuard<'a>(Option<&'a Path>);

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub(crate) fn tmp_name(dir: &Path) -> PathBuf {
    dir.join(format!(
        "{:016x}{:016x}.tmp",
        rand::random::<u64>(),
        rand::random::<u64>()
    ))
}

/// Make sure `dir` (inside `root`) exists, and that the entries of any
/// directories created for it are durable.
pub(crate) fn ensure_dir(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut d = dir;
    while d != root && !d.is_dir() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for m in &missing {
        if let Some(parent) = m.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// Durable, atomic whole-object write. Returns false when `if_absent` and the
/// key already exists (nothing written then).
pub(crate) fn fs_put(
    dirs: &FsDirs,
    key: &str,
    data: &[u8],
    if_absent: bool,
    durable: bool,
) -> io::Result<bool> {
    let target = dirs.root.join(key);
    let parent = target.parent().unwrap_or(&dirs.root);
    ensure_dir(&dirs.root, parent)?;

    let tmp = tmp_name(&dirs.tmp);
    let mut guard = TmpGuard(Some(&tmp));
    let f = if durable && data.len() >= DIRECT_MIN {
        write_direct(&tmp, data)?
    } else {
        write_plain(&tmp, data, true)?
    };
    if durable {
        f.sync_all()?;
    }
    drop(f);

    if if_absent {
        match std::fs::hard_link(&tmp, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        // The guard removes the temp name; the object lives on under `target`.
    } else {
        std::fs::rename(&tmp, &target)?;
        guard.0 = None;
    }
    drop(guard);
    if durable {
        fsync_dir(parent)?;
    }
    Ok(true)
}

/// A durable put of an object this large bypasses the page cache
/// (`O_DIRECT`): it is synced at once anyway, and on the mount's write
/// path every byte was already copied into the page cache once (the
/// write-back cache's chunk file). Measured on a 1 GiB write: the copy
/// into the page cache was half the uploader's CPU time.
const DIRECT_MIN: usize = SYNC_AT_PUT;
/// Alignment of `O_DIRECT` buffers, offsets and lengths (the largest
/// logical block size in common use).
const DIRECT_ALIGN: usize = 4096;
/// Bytes per `O_DIRECT` write (the size of each thread's aligned buffer).
const DIRECT_STEP: usize = 1 << 20;

thread_local! {
    /// An aligned buffer for `O_DIRECT` writes (one per blocking thread).
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Create `path` holding `data` through the page cache (`new`: it must not
/// exist; else it is emptied first). Not synced.
fn write_plain(path: &Path, data: &[u8], new: bool) -> io::Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(new)
        .create(!new)
        .truncate(!new)
        .open(path)?;
    f.write_all(data)?;
    Ok(f)
}

/// Create `path` (new) holding `data`: the block-aligned front written with
/// `O_DIRECT` through an aligned buffer, the rest through the page cache.
/// Falls back to a plain write where the filesystem refuses `O_DIRECT`
/// (tmpfs, some FUSE and network filesystems). Not synced.
fn write_direct(path: &Path, data: &[u8]) -> io::Result<std::fs::File> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(OFlags::DIRECT.bits() as i32)
        .open(path);
    let f = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            // the refused open may have created the file (the temp name is
            // ours alone): open it either way
            return write_plain(path, data, false);
        }
        Err(e) => return Err(e),
    };
    let front = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    let wrote = DIRECT_BUF.with(|b| -> io::Result<usize> {
        let mut buf = b.borrow_mut();
        if buf.len() < DIRECT_STEP + DIRECT_ALIGN {
            buf.resize(DIRECT_STEP + DIRECT_ALIGN, 0);
        }
        let skip = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let aligned = &mut buf[skip..skip + DIRECT_STEP];
        let mut at = 0;
        while at < front {
            let n = (front - at).min(DIRECT_STEP);
            aligned[..n].copy_from_slice(&data[at..at + n]);
            match f.write_all_at(&aligned[..n], at as u64) {
                Ok(()) => at += n,
                // refused at the first write (an alignment the filesystem
                // does not take): the rest goes through the page cache
                Err(e)
                    if at == 0
                        && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        Ok(at)
    })?;
    let flags = fcntl_getfl(&f)?;
    fcntl_setfl(&f, flags - OFlags::DIRECT)?;
    f.write_all_at(&data[wrote..], wrote as u64)?;
    Ok(f)
}

/// Flush the whole filesystem holding `root` (file data, and the renames and
/// directory entries of deferred puts) with one `syncfs(2)`.
pub(crate) fn syncfs(root: &Path) -> io::Result<()> {
    let f = std::fs::File::open(root)?;
    rustix::fs::syncfs(&f)?;
    Ok(())
}

/// Make the objects `keys` (put deferred) durable one by one: each file's
/// data, then each directory holding one once. A key deleted since is
/// skipped.
pub(crate) fn sync_each(root: &Path, keys: &[String]) -> io::Result<()> {
    let mut parents: Vec<PathBuf> = Vec::new();
    for key in keys {
        let path = root.join(key);
        match std::fs::File::open(&path) {
            Ok(f) => f.sync_data()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(p) = path.parent() {
            if !parents.iter().any(|q| q == p) {
                parents.push(p.to_path_buf());
            }
        }
    }
    for p in &parents {
        fsync_dir(p)?;
    }
    Ok(())
}

/// Read a whole object, or `range` of it clamped to its end.
pub(crate) fn fs_read(path: &Path, range: Option<Range<u64>>) -> io::Result<Bytes> {
    let f = std::fs::File::open(path).map_err(not_found_if_not_dir)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let size = meta.len();
    let (start, end) = match range {
        None => (0, size),
        Some(r) => {
            let start = r.start.min(size);
            (start, r.end.clamp(start, size))
        }
    };
    let len = usize::try_from(end - start)
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "object too large for memory"))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len)
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "object too large for memory"))?;
    // read into the reserved capacity (no zero-fill of a buffer that is
    // about to be overwritten)
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut r = &f;
        r.seek(SeekFrom::Start(start))?;
        r.take(len as u64).read_to_end(&mut buf)?;
    }
    if buf.len() != len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(Bytes::from(buf))
}

/// The open file of object `key` and its size, kept open for the next
/// range reads ([`crate::open_objects`]).
fn open_object(dirs: &FsDirs, key: &str) -> io::Result<(Arc<std::fs::File>, u64)> {
    if let Some(open) = dirs.open.get(key) {
        return Ok(open);
    }
    let f = std::fs::File::open(dirs.root.join(key)).map_err(not_found_if_not_dir)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    let f = Arc::new(f);
    dirs.open.insert(key, f.clone(), meta.len());
    Ok((f, meta.len()))
}

/// Start reading object `key` into the page cache (`POSIX_FADV_WILLNEED`),
/// so a sequential reader finds its next chunk there instead of waiting
/// for the disk read by read. A missing object or a refused hint is no
/// error: the read that follows reports what matters.
pub(crate) fn fs_will_need(dirs: &FsDirs, key: &str) {
    if let Ok((file, _)) = open_object(dirs, key) {
        let _ = rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::WillNeed);
    }
}

/// Read `range` of an object, clamped to its end, through the store's
/// open files ([`crate::open_objects`]).
pub(crate) fn fs_read_range(dirs: &FsDirs, key: &str, range: Range<u64>) -> io::Result<Bytes> {
    let (file, size) = open_object(dirs, key)?;
    let start = range.start.min(size);
    let end = range.end.clamp(start, size);
    crate::open_objects::pread(&file, start, end).map(Bytes::from)
}

/// A key whose "directory" part is a file (ENOTDIR) names no object.
pub(crate) fn not_found_if_not_dir(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::NotADirectory || e.kind() == io::ErrorKind::IsADirectory {
        io::Error::from(io::ErrorKind::NotFound)
    } else {
        e
    }
}

pub(crate) fn fs_stat(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn fs_delete(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => match path.parent() {
            Some(parent) => fsync_dir(parent),
            None => Ok(()),
        },
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::NotADirectory
                    | io::ErrorKind::IsADirectory
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Best effort: remove temp files left behind by crashed writers.
pub(crate) fn sweep_stale_tmp(tmp: &Path) {
    let Ok(rd) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in rd.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TMP_AGE);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether hard links work in `dir` (so `put_if_absent` can be enforced).
pub(crate) fn probe_hard_links(dir: &Path) -> bool {
    let a = tmp_name(dir);
    let b = tmp_name(dir);
    let ok = std::fs::File::create(&a).is_ok() && std::fs::hard_link(&a, &b).is_ok();
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}
