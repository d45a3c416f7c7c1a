//! The two walks of `put`'s sources, both on threads of their own and both
//! depth-first with each directory's entries in name order:
//!
//! - [`stream`] sends every entry, as it is found, through a bounded channel
//!   to the loop that uploads, so uploading starts at once and memory holds
//!   only the directories on the current path (not the whole tree);
//! - [`count`] only adds up files and bytes for the progress bar, running
//!   ahead of the upload, so the bar shows the whole tree's size (and an
//!   ETA) from the start.

use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Error};
use strata_core::Ts;
use tokio::sync::mpsc;

use crate::display;
use crate::progress::Counter;

/// Entries waiting between the walk and the upload loop.
const QUEUE: usize = 1024;

/// One entry of the walk.
pub enum Entry {
    /// A directory, sent before its contents.
    Dir {
        local: PathBuf,
        vpath: String,
        meta: Metadata,
    },
    /// Everything inside the directory `vpath` has been sent.
    DirEnd {
        vpath: String,
        perm: u32,
        atime: Ts,
        mtime: Ts,
    },
    File {
        local: PathBuf,
        vpath: String,
        meta: Metadata,
    },
    Symlink {
        local: PathBuf,
        vpath: String,
        meta: Metadata,
    },
    /// Not stored (special file, name not UTF-8): warn and go on.
    Skip(String),
    /// This entry cannot be read: report it and go on.
    Failed(Error),
}

fn ns(secs: i64, nsec: i64) -> Ts {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// (atime, mtime) of a local entry.
pub fn times(m: &Metadata) -> (Ts, Ts) {
    (ns(m.atime(), m.atime_nsec()), ns(m.mtime(), m.mtime_nsec()))
}

fn kind_name(ft: &fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a named pipe"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else {
        "a special file"
    }
}

/// A directory being walked: its remaining entries (reversed: next last).
struct Frame {
    dir: PathBuf,
    vpath: String,
    names: Vec<std::ffi::OsString>,
    end: Entry,
}

/// The entries of a directory, sorted, reversed (so `pop` yields them in
/// order).
fn read_names(dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

/// Walk `roots` (local path → vault path), calling `emit` for every entry
/// in order; stops early when `emit` returns false.
fn walk(roots: Vec<(PathBuf, String)>, mut emit: impl FnMut(Entry) -> bool) {
    let mut stack: Vec<Frame> = Vec::new();
    let mut todo = roots.into_iter();
    loop {
        let (local, vpath) = match stack.last_mut() {
            Some(f) => match f.names.pop() {
                Some(name) => {
                    let local = f.dir.join(&name);
                    let Some(n) = name.to_str() else {
                        let msg =
                            format!("skipping {}: the name is not valid UTF-8", local.display());
                        if !emit(Entry::Skip(msg)) {
                            return;
                        }
                        continue;
                    };
                    let vpath = display::join(&f.vpath, n);
                    (local, vpath)
                }
                None => {
                    let Some(f) = stack.pop() else { return };
                    if !emit(f.end) {
                        return;
                    }
                    continue;
                }
            },
            None => match todo.next() {
                Some(r) => r,
                None => return,
            },
        };
        let m = match fs::symlink_metadata(&local) {
            Ok(m) => m,
            Err(e) => {
                if !emit(Entry::Failed(anyhow!(
                    "cannot read {}: {e}",
                    local.display()
                ))) {
                    return;
                }
                continue;
            }
        };
        let ft = m.file_type();
        let go_on = if ft.is_dir() {
            match read_names(&local) {
                Ok(names) => {
                    let (atime, mtime) = times(&m);
                    let end = Entry::DirEnd {
                        vpath: vpath.clone(),
                        perm: m.mode() & 0o7777,
                        atime,
                        mtime,
                    };
                    stack.push(Frame {
                        dir: local.clone(),
                        vpath: vpath.clone(),
                        names,
                        end,
                    });
                    emit(Entry::Dir {
                        local,
                        vpath,
                        meta: m,
                    })
                }
                Err(e) => emit(Entry::Failed(anyhow!(
                    "cannot read directory {}: {e}",
                    local.display()
                ))),
            }
        } else if ft.is_file() {
            emit(Entry::File {
                local,
                vpath,
                meta: m,
            })
        } else if ft.is_symlink() {
            emit(Entry::Symlink {
                local,
                vpath,
                meta: m,
            })
        } else {
            emit(Entry::Skip(format!(
                "skipping {}: it is {} (only files, directories and symbolic links are stored)",
                local.display(),
                kind_name(&ft)
            )))
        };
        if !go_on {
            return;
        }
    }
}

/// Start walking `roots`; entries arrive on the returned channel. The walk
/// stops when the receiver is dropped.
pub fn stream(roots: Vec<(PathBuf, String)>) -> mpsc::Receiver<Entry> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::spawn(move || walk(roots, |e| tx.blocking_send(e).is_ok()));
    rx
}

/// Count the files and bytes under `roots` into `counter` (in batches, so
/// the bar is not redrawn per file), on a thread; `stop` ends it early.
pub fn count(
    roots: Vec<(PathBuf, String)>,
    counter: Counter,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let (mut files, mut bytes) = (0u64, 0u64);
        walk(roots, |e| {
            if let Entry::File { meta, .. } = e {
                files += 1;
                bytes += meta.len();
                if files % 256 == 0 {
                    counter.found(files, bytes);
                    (files, bytes) = (0, 0);
                }
            }
            !stop.load(Ordering::Relaxed)
        });
        counter.found(files, bytes);
        if !stop.load(Ordering::Relaxed) {
            counter.counted();
        }
    });
}
