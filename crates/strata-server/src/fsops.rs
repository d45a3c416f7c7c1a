//! Everything that touches the object folder. Blocking code: callers run it
//! on tokio's blocking pool.
//!
//! Paths are only ever built from validated names (no `..`, no leading `/`),
//! every existing ancestor folder is checked not to be a symlink, and the
//! object itself is opened with `O_NOFOLLOW`, so nothing outside the root is
//! read, written or removed through a planted symlink.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::names::{is_valid_segment, MAX_NAME_LEN, TMP_DIR};

/// Why an object operation failed, before it becomes an HTTP status.
#[derive(Debug)]
pub(crate) enum FsError {
    /// No such object (also: a symlink or a folder where the object would be).
    NotFound,
    /// The name collides with an existing folder or object on the way.
    Conflict(&'static str),
    /// Anything else: an I/O error of the server.
    Io(io::Error),
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        FsError::Io(e)
    }
}

/// Creates the root and its temp folder, and removes temp files a previous
/// run left behind. Returns the canonical root.
pub(crate) fn prepare_root(root: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(root)?;
    let root = root.canonicalize()?;
    let tmp = root.join(TMP_DIR);
    match fs::symlink_metadata(&tmp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} exists and is not a folder", tmp.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&tmp)?,
        Err(e) => return Err(e),
    }
    for entry in fs::read_dir(&tmp)? {
        let entry = entry?;
        let path = entry.path();
        let res = if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = res {
            tracing::warn!("cannot remove stale temp file {}: {e}", path.display());
        }
    }
    Ok(root)
}

/// A temp file under `<root>/.tmp/`, removed on drop unless committed.
#[derive(Debug)]
pub(crate) struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl TempGuard {
    /// Creates a fresh, empty temp file.
    pub(crate) fn create(tmp_dir: &Path) -> io::Result<(TempGuard, File)> {
        loop {
            let path = tmp_dir.join(format!("{:016x}.part", rand::random::<u64>()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => return Ok((TempGuard { path, armed: true }, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove temp file {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// Segments of `name` before the last one, as successive prefixes
/// (`a/b/c` → `a`, `a/b`).
fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('/').map(move |(i, _)| &name[..i])
}

/// Checks that every existing ancestor folder of `name` is a real folder.
/// `Ok(false)` when one does not exist (so neither does the object).
fn check_ancestors(root: &Path, name: &str) -> Result<bool, FsError> {
    for prefix in ancestors(name) {
        match fs::symlink_metadata(root.join(prefix)) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(FsError::NotFound),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Creates the ancestor folders of `name` (like `create_dir_all`, but never
/// through a symlink), fsyncing the parent of each folder it creates.
fn make_ancestors(root: &Path, name: &str) -> Result<(), FsError> {
    let mut parent = root.to_path_buf();
    for prefix in ancestors(name) {
        let dir = root.join(prefix);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(FsError::Conflict(
                    "a parent folder of the name is an object",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::create_dir(&dir) {
                    Ok(()) => fsync_dir(&parent)?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        // Raced with another upload: re-check what is there.
                        if !fs::symlink_metadata(&dir)?.is_dir() {
                            return Err(FsError::Conflict(
                                "a parent folder of the name is an object",
                            ));
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        parent = dir;
    }
    Ok(())
}

/// Moves a complete, fsync'd temp file over `<root>/<name>` and fsyncs the
/// folder.
pub(crate) fn commit(root: &Path, mut temp: TempGuard, name: &str) -> Result<(), FsError> {
    let dest = root.join(name);
    let mut attempt = 0;
    loop {
        attempt += 1;
        make_ancestors(root, name)?;
        if let Ok(m) = fs::symlink_metadata(&dest) {
            if m.is_dir() {
                return Err(FsError::Conflict("the name is a folder of other objects"));
            }
        }
        match fs::rename(temp.path(), &dest) {
            Ok(()) => break,
            // A delete removed an emptied parent folder between our mkdir
            // and the rename: make it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => continue,
            Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
                return Err(FsError::Conflict("the name is a folder of other objects"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    temp.disarm();
    let parent = dest.parent().unwrap_or(root);
    fsync_dir(parent)?;
    Ok(())
}

/// Opens an object for reading; returns it with its size.
pub(crate) fn open_object(root: &Path, name: &str) -> Result<(File, u64), FsError> {
    if !check_ancestors(root, name)? {
        return Err(FsError::NotFound);
    }
    let file = match OpenOptions::new()
        .read(true)
        // No symlinks; and never block on a planted FIFO.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(root.join(name))
    {
        Ok(f) => f,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ELOOP)
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Err(FsError::NotFound)
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FsError::NotFound);
    }
    Ok((file, meta.len()))
}

/// Positions `file` at `offset`.
pub(crate) fn seek(file: &mut File, offset: u64) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset)).map(|_| ())
}

/// Removes an object, then the folders it leaves empty.
pub(crate) fn delete(root: &Path, name: &str) -> Result<(), FsError> {
    if !check_ancestors(root, name)? {
        return Err(FsError::NotFound);
    }
    let path = root.join(name);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(FsError::NotFound),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FsError::NotFound),
        Err(e) => return Err(e.into()),
    }
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FsError::NotFound),
        Err(e) => return Err(e.into()),
    }
    // Prune now-empty folders, deepest first; stop at the first non-empty.
    let mut pruned_to = path.parent().map(Path::to_path_buf);
    for prefix in ancestors(name).collect::<Vec<_>>().into_iter().rev() {
        if fs::remove_dir(root.join(prefix)).is_err() {
            break;
        }
        pruned_to = root.join(prefix).parent().map(Path::to_path_buf);
    }
    if let Some(dir) = pruned_to {
        fsync_dir(&dir)?;
    }
    Ok(())
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Entry {
    pub name: String,
    pub size: u64,
    pub mtime: u64,
}

/// Lists objects whose names start with `prefix` and sort after `after`,
/// in byte order, at most `limit` of them; the flag says whether more
/// follow. Memory stays O(limit) whatever the number of objects.
pub(crate) fn list(
    root: &Path,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> io::Result<(Vec<Entry>, bool)> {
    let mut best: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut stack: Vec<String> = vec![String::new()];
    let mut first = true;
    while let Some(dir) = stack.pop() {
        let path = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        let entries = match fs::read_dir(&path) {
            Ok(it) => it,
            // The root must be readable; a sub-folder may vanish meanwhile.
            Err(e) if !first && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        first = false;
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let file_name = entry.file_name();
            let Some(seg) = file_name.to_str() else {
                continue;
            };
            if !is_valid_segment(seg) || (dir.is_empty() && seg.starts_with(TMP_DIR)) {
                continue;
            }
            let full = if dir.is_empty() {
                seg.to_string()
            } else {
                format!("{dir}/{seg}")
            };
            if full.len() > MAX_NAME_LEN {
                continue;
            }
            let Ok(ft) = entry.file_type() else {
                continue;
            };
            if ft.is_dir() {
                let as_prefix = format!("{full}/");
                // Only descend where names can start with the prefix...
                let may_match =
                    as_prefix.starts_with(prefix) || prefix.starts_with(as_prefix.as_str());
                // ...and sort after the page token (all names under the
                // folder sort below it when the folder's own "x/" sorts
                // below it without being its prefix).
                let may_follow = match after {
                    Some(a) => as_prefix.as_str() > a || a.starts_with(as_prefix.as_str()),
                    None => true,
                };
                if may_match && may_follow {
                    stack.push(full);
                }
            } else if ft.is_file() {
                if !full.starts_with(prefix) || after.is_some_and(|a| full.as_str() <= a) {
                    continue;
                }
                if best.len() > limit {
                    if let Some((last, _)) = best.last_key_value() {
                        if full >= *last {
                            continue;
                        }
                    }
                }
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                best.insert(full, (meta.len(), mtime));
                if best.len() > limit + 1 {
                    best.pop_last();
                }
            }
        }
    }
    let more = best.len() > limit;
    let files = best
        .into_iter()
        .take(limit)
        .map(|(name, (size, mtime))| Entry { name, size, mtime })
        .collect();
    Ok((files, more))
}
