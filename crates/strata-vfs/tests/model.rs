//! Model-based property test of the VFS layer ([`strata_vfs::Vfs`]) over a
//! `memory://` store with a 64 KiB chunk size.
//!
//! proptest generates sequences of operations over a small namespace (three
//! file names in the root and in each of two subdirectories, plus the two
//! directory names) and a few open handles: create (with and without
//! O_EXCL), open (with and without O_TRUNC), read and write at random
//! offsets (small and chunk-crossing, around chunk boundaries, zeros and
//! repeated patterns for hole detection and dedup), truncate/extend through
//! `setattr` (by path and by handle), rename (also over an existing or open
//! file, onto a hard link of itself, onto a directory), hard link (by path
//! and by handle, also of an unlinked file), unlink (also while open, then
//! I/O through the still-open handle), flush, fsync, close, a clean remount
//! (with the same or an empty cache directory) and a crash (uploader
//! killed, the VFS dropped without shutdown, then mounted again over the
//! same cache directory). Each case also picks the mount options: eager or
//! lazy uploads and commits, fsync mode, read cache on or off.
//!
//! An in-memory model (path → inode, inode → bytes and link count, handle →
//! inode) predicts every result: data read, errno, sizes and link counts
//! from `lookup`/`getattr`, directory listings from `readdir`, all files'
//! content after remounts. Also checked: after a crash every file holds a
//! prefix of its model content, at least as long as its size at its last
//! flush/fsync/truncate, and the namespace (journaled before each operation
//! returns) is exact; after a Cloud-mode fsync a second reader of the store
//! sees the file; after shutdown the write-back cache is empty; with lazy
//! uploads the cache's dirty-byte count matches its files. Shrinking yields
//! a minimal failing sequence.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::{Kind, ReadCacheOptions, Vault, ROOT_INO};
use strata_crypto::KdfParams;
use strata_store::open_url;
use strata_vfs::{Attr, CloseMode, Errno, FsyncMode, SetAttr, Vfs, VfsOptions};

/// Chunk size of the vault: writes and reads below cross chunk boundaries.
const CS: u64 = 64 << 10;
const PW: &[u8] = b"pw";
/// File names in each directory.
const NAMES: [&str; 3] = ["a", "b", "c"];
/// Subdirectories of the root (directory index 1 and 2; 0 is the root).
const DIRS: [&str; 2] = ["d1", "d2"];

// ---------------------------------------------------------------------------
// VFS adapters. Every call the test makes goes through these. The ones that
// act on an open file already carry its handle: the VFS API is about to take
// it (`read(ino, fh, ..)`, `write(ino, fh, ..)`, `release(ino, fh)`), and
// then only these bodies change.
// ---------------------------------------------------------------------------

fn vfs_lookup(v: &Vfs, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
    v.lookup(parent, name)
}

fn vfs_getattr(v: &Vfs, ino: u64) -> Result<Attr, Errno> {
    v.getattr(ino)
}

/// (name, inode) of each entry.
fn vfs_readdir(v: &Vfs, ino: u64) -> Result<Vec<(Vec<u8>, u64)>, Errno> {
    Ok(v.readdir(ino)?
        .into_iter()
        .map(|e| (e.name, e.ino))
        .collect())
}

fn vfs_mkdir(v: &Vfs, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
    v.mknod(parent, name, libc::S_IFDIR | 0o755, 0o022, 0, 0, 0, None)
}

/// Create and open a regular file: (attributes, handle).
fn vfs_create(v: &Vfs, parent: u64, name: &[u8]) -> Result<(Attr, u64), Errno> {
    v.create(parent, name, 0o644, 0o022, 0, 0)
}

/// Open a file: its handle.
async fn vfs_open(v: &Vfs, ino: u64, truncate: bool) -> Result<u64, Errno> {
    v.open(ino, truncate, true).await
}

async fn vfs_write(v: &Vfs, ino: u64, fh: u64, off: u64, data: &[u8]) -> Result<u32, Errno> {
    v.write(ino, fh, off, data).await
}

async fn vfs_flush(v: &Vfs, ino: u64, _fh: u64) -> Result<(), Errno> {
    v.flush(ino).await
}

async fn vfs_fsync(v: &Vfs, ino: u64, _fh: u64) -> Result<(), Errno> {
    v.fsync(ino).await
}

async fn vfs_release(v: &Vfs, ino: u64, fh: u64) -> Result<(), Errno> {
    v.release(ino, fh).await
}

/// truncate(2)/ftruncate(2): setattr with a size only.
async fn vfs_set_size(v: &Vfs, ino: u64, size: u64) -> Result<Attr, Errno> {
    let s = SetAttr {
        size: Some(size),
        ..Default::default()
    };
    v.setattr(ino, s).await
}

fn vfs_rename(v: &Vfs, p: u64, name: &[u8], np: u64, new_name: &[u8]) -> Result<(), Errno> {
    v.rename(p, name, np, new_name, 0)
}

fn vfs_link(v: &Vfs, ino: u64, parent: u64, name: &[u8]) -> Result<Attr, Errno> {
    v.link(ino, parent, name)
}

fn vfs_unlink(v: &Vfs, parent: u64, name: &[u8]) -> Result<(), Errno> {
    v.unlink(parent, name)
}

// ---------------------------------------------------------------------------
// Operations and their strategies.
// ---------------------------------------------------------------------------

/// A name in the test namespace: a file name `NAMES[name]` in directory
/// `dir` (0 = root, 1 = d1, 2 = d2), or one of the subdirectories itself.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    File(u8, u8),
    Dir(u8),
}

impl Slot {
    fn name(self) -> &'static [u8] {
        match self {
            Slot::File(_, n) => NAMES[usize::from(n)].as_bytes(),
            Slot::Dir(d) => DIRS[usize::from(d) - 1].as_bytes(),
        }
    }

    /// Index of the directory holding the name.
    fn dir(self) -> usize {
        match self {
            Slot::File(d, _) => usize::from(d),
            Slot::Dir(_) => 0,
        }
    }

    fn all_files() -> impl Iterator<Item = Slot> {
        (0..3u8).flat_map(|d| (0..NAMES.len() as u8).map(move |n| Slot::File(d, n)))
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Slot::File(0, n) => write!(f, "/{}", NAMES[usize::from(n)]),
            Slot::File(d, n) => {
                write!(f, "/{}/{}", DIRS[usize::from(d) - 1], NAMES[usize::from(n)])
            }
            Slot::Dir(d) => write!(f, "/{}/", DIRS[usize::from(d) - 1]),
        }
    }
}

/// What an operation acts on: a name, or an open handle (see
/// [`use_handle`]).
#[derive(Clone, Copy, Debug)]
enum Target {
    Path(Slot),
    Handle(usize),
}

#[derive(Clone, Debug)]
enum Op {
    /// open(2) with O_CREAT: `create` if the name is free (or `excl`,
    /// O_EXCL: then EEXIST if taken), else lookup + open like the kernel.
    Create {
        slot: Slot,
        excl: bool,
    },
    /// lookup + open, with or without O_TRUNC.
    Open {
        slot: Slot,
        trunc: bool,
    },
    Read {
        h: usize,
        off: u64,
        len: u32,
    },
    /// `len` bytes of pattern `seed` (0: zeros) at `off`.
    Write {
        h: usize,
        off: u64,
        len: usize,
        seed: u8,
    },
    /// truncate(2) / ftruncate(2), shrinking or extending.
    SetSize {
        target: Target,
        size: u64,
    },
    Rename {
        from: Slot,
        to: Slot,
    },
    Link {
        from: Target,
        to: Slot,
    },
    Unlink(Slot),
    Flush {
        h: usize,
    },
    Fsync {
        h: usize,
    },
    /// close(2): flush, then release.
    Close {
        h: usize,
    },
    /// Close every handle, shut down cleanly, mount again (with a new,
    /// empty cache directory if `fresh_cache`: everything is in the store).
    Remount {
        fresh_cache: bool,
    },
    /// Kill the uploader and drop the VFS without shutdown, mount again
    /// (see [`crash`]).
    Crash,
}

/// Mount options of one case.
#[derive(Clone, Copy, Debug)]
struct MountCfg {
    /// Upload and commit right away (races with the operations) rather than
    /// only on fsync, full chunks and shutdown.
    eager: bool,
    fsync_local: bool,
    read_cache: bool,
    /// `CloseMode::Buffered`: a close syncs nothing (the model's crash is
    /// the process's, which keeps what was written to the cache's files).
    close_buffered: bool,
}

fn file_slot() -> impl Strategy<Value = Slot> {
    (0u8..3, 0..NAMES.len() as u8).prop_map(|(d, n)| Slot::File(d, n))
}

fn any_slot() -> impl Strategy<Value = Slot> {
    prop_oneof![8 => file_slot(), 1 => (1u8..=2).prop_map(Slot::Dir)]
}

fn handle() -> impl Strategy<Value = usize> {
    0usize..6
}

/// Anywhere in the first chunks, or right around a chunk boundary.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..4 * CS,
        (1u64..5, -40i64..40).prop_map(|(k, d)| (k * CS).saturating_add_signed(d)),
        0u64..200,
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), offset(), 0..5 * CS]
}

fn write_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 1usize..300,
        2 => (CS / 2) as usize..(CS + CS / 2) as usize,
        1 => 1usize..(2 * CS) as usize,
    ]
}

/// Few seeds often (equal chunks in different files: dedup), any otherwise.
fn seed() -> impl Strategy<Value = u8> {
    prop_oneof![0u8..4, any::<u8>()]
}

fn read_len() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..300, 0..(2 * CS) as u32, Just((6 * CS) as u32)]
}

fn target(path: BoxedStrategy<Slot>) -> impl Strategy<Value = Target> {
    prop_oneof![
        path.prop_map(Target::Path),
        handle().prop_map(Target::Handle)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any_slot(), prop::bool::weighted(0.25))
            .prop_map(|(slot, excl)| Op::Create { slot, excl }),
        5 => (file_slot(), any::<bool>()).prop_map(|(slot, trunc)| Op::Open { slot, trunc }),
        6 => (handle(), offset(), read_len()).prop_map(|(h, off, len)| Op::Read { h, off, len }),
        10 => (handle(), offset(), write_len(), seed())
            .prop_map(|(h, off, len, seed)| Op::Write { h, off, len, seed }),
        3 => (target(any_slot().boxed()), size())
            .prop_map(|(target, size)| Op::SetSize { target, size }),
        3 => (file_slot(), any_slot()).prop_map(|(from, to)| Op::Rename { from, to }),
        3 => (target(file_slot().boxed()), any_slot())
            .prop_map(|(from, to)| Op::Link { from, to }),
        3 => any_slot().prop_map(Op::Unlink),
        1 => handle().prop_map(|h| Op::Flush { h }),
        2 => handle().prop_map(|h| Op::Fsync { h }),
        2 => handle().prop_map(|h| Op::Close { h }),
        1 => any::<bool>().prop_map(|fresh_cache| Op::Remount { fresh_cache }),
        1 => Just(Op::Crash),
    ]
}

fn mount_cfg() -> impl Strategy<Value = MountCfg> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(eager, fsync_local, read_cache, close_buffered)| MountCfg {
            eager,
            fsync_local,
            read_cache,
            close_buffered,
        },
    )
}

/// Write data: position-dependent (a misplaced byte shows) and different
/// for every seed at every position; seed 0 writes zeros (hole detection).
fn pattern(seed: u8, off: u64, len: usize) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len];
    }
    (off..off + len as u64)
        .map(|p| (p.wrapping_mul(31) ^ (p >> 9)) as u8 ^ seed)
        .collect()
}

// ---------------------------------------------------------------------------
// The model.
// ---------------------------------------------------------------------------

struct MFile {
    data: Vec<u8>,
    nlink: u32,
    /// Size the file has at least after a crash: its size at its last
    /// flush/fsync/truncate (writes since then only live in the overlay).
    durable: u64,
}

#[derive(Clone, Copy, Debug)]
struct Handle {
    fh: u64,
    ino: u64,
}

struct Model {
    /// Inodes of the root, d1, d2.
    dirs: [u64; 3],
    /// File names → inode.
    names: BTreeMap<Slot, u64>,
    /// Live files, orphans (nlink 0, still open) included.
    files: BTreeMap<u64, MFile>,
    handles: Vec<Handle>,
}

enum Entry {
    None,
    File(u64),
    Dir,
}

impl Model {
    fn entry(&self, s: Slot) -> Entry {
        match s {
            Slot::Dir(_) => Entry::Dir,
            Slot::File(..) => self.names.get(&s).map_or(Entry::None, |i| Entry::File(*i)),
        }
    }

    fn parent(&self, s: Slot) -> u64 {
        self.dirs[s.dir()]
    }

    fn file(&mut self, ino: u64) -> &mut MFile {
        self.files
            .get_mut(&ino)
            .expect("model: file of a known inode")
    }

    /// Drop a file nobody can reach any more; true if it went.
    fn collect(&mut self, ino: u64) -> bool {
        let open = self.handles.iter().any(|h| h.ino == ino);
        if !open && self.files.get(&ino).is_some_and(|f| f.nlink == 0) {
            self.files.remove(&ino);
            return true;
        }
        false
    }

    /// A name of `ino` went away.
    fn unlinked(&mut self, ino: u64) -> bool {
        let f = self.file(ino);
        f.nlink -= 1;
        self.collect(ino)
    }
}

// ---------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------

type Res = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn errno_name(e: Errno) -> String {
    let n = match e.0 {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::EISDIR => "EISDIR",
        libc::ENOTDIR => "ENOTDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::EIO => "EIO",
        libc::EFBIG => "EFBIG",
        _ => return format!("errno {}", e.0),
    };
    n.to_string()
}

/// The operation must succeed.
fn ok<T>(r: Result<T, Errno>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: got {}, want success", errno_name(e)))
}

/// The operation must fail with `want`.
fn fails<T: fmt::Debug>(r: Result<T, Errno>, want: i32, what: &str) -> Res {
    match r {
        Err(e) if e.0 == want => Ok(()),
        Err(e) => Err(format!(
            "{what}: got {}, want {}",
            errno_name(e),
            errno_name(Errno(want))
        )),
        Ok(v) => Err(format!(
            "{what}: got success ({v:?}), want {}",
            errno_name(Errno(want))
        )),
    }
}

/// Compare bytes with a short message (first difference, not a dump).
fn same(got: &[u8], want: &[u8], what: &str) -> Res {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        return Err(format!(
            "{what}: got {} bytes, want {}; first difference at byte {first} (got {:?}, want {:?})",
            got.len(),
            want.len(),
            got.get(first),
            want.get(first)
        ));
    }
    Ok(())
}

/// Directory listings, lookups, sizes and link counts against the model.
fn check_namespace(v: &Vfs, m: &Model) -> Res {
    for (d, &dino) in m.dirs.iter().enumerate() {
        let mut want: Vec<(Vec<u8>, u64)> = m
            .names
            .iter()
            .filter(|(s, _)| s.dir() == d)
            .map(|(s, i)| (s.name().to_vec(), *i))
            .collect();
        if d == 0 {
            for (k, n) in DIRS.iter().enumerate() {
                want.push((n.as_bytes().to_vec(), m.dirs[k + 1]));
            }
        }
        want.sort();
        let mut got = ok(vfs_readdir(v, dino), "readdir")?;
        got.sort();
        ensure!(
            got == want,
            "readdir of directory {d}: got {:?}, want {:?}",
            names_of(&got),
            names_of(&want)
        );
    }
    for k in 1..=2u8 {
        let s = Slot::Dir(k);
        let a = ok(vfs_lookup(v, m.dirs[0], s.name()), &format!("lookup {s:?}"))?;
        ensure!(
            a.kind == Kind::Dir && a.ino == m.dirs[usize::from(k)] && a.nlink == 2,
            "lookup {s:?}: {a:?}"
        );
    }
    for s in Slot::all_files() {
        let r = vfs_lookup(v, m.parent(s), s.name());
        let Some(&ino) = m.names.get(&s) else {
            fails(r, libc::ENOENT, &format!("lookup {s:?}"))?;
            continue;
        };
        let a = ok(r, &format!("lookup {s:?}"))?;
        let f = &m.files[&ino];
        ensure!(
            a.ino == ino
                && a.kind == Kind::File
                && a.size == f.data.len() as u64
                && a.nlink == f.nlink,
            "lookup {s:?}: got ino {} {:?} size {} nlink {}, want ino {ino} size {} nlink {}",
            a.ino,
            a.kind,
            a.size,
            a.nlink,
            f.data.len(),
            f.nlink
        );
    }
    for (&ino, f) in m.files.iter().filter(|(_, f)| f.nlink == 0) {
        let a = ok(
            vfs_getattr(v, ino),
            &format!("getattr of open orphan {ino}"),
        )?;
        ensure!(
            a.size == f.data.len() as u64 && a.nlink == 0,
            "getattr of open orphan {ino}: size {} nlink {}, want size {} nlink 0",
            a.size,
            a.nlink,
            f.data.len()
        );
    }
    Ok(())
}

fn names_of(l: &[(Vec<u8>, u64)]) -> Vec<String> {
    l.iter()
        .map(|(n, i)| format!("{}={i}", String::from_utf8_lossy(n)))
        .collect()
}

/// (name, length) of the dirty chunk files in a cache directory.
fn dirty_files(cache: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(strata_vfs::writeback::dirty_dir(cache))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().to_string(), len)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The write-back cache counts exactly the bytes of its chunk files and of
/// the chunks it keeps in memory. Only checked with lazy uploads: eager
/// commits delete files concurrently.
fn check_dirty_bytes(v: &Vfs, cache: &Path) -> Res {
    let files = dirty_files(cache);
    // sealed files hold whole 4 KiB blocks: each file's capacity is its
    // valid bytes rounded up
    let on_disk: u64 = files
        .iter()
        .map(|f| strata_vfs::writeback::plain_capacity(f.1))
        .sum();
    let st = v.status();
    ensure!(
        st.dirty_memory_bytes <= st.dirty_bytes,
        "{} bytes in memory of {} dirty",
        st.dirty_memory_bytes,
        st.dirty_bytes
    );
    let counted = st.dirty_bytes - st.dirty_memory_bytes;
    ensure!(
        counted <= on_disk && on_disk - counted <= 4095 * files.len() as u64,
        "write-back cache counts {counted} dirty bytes, its files hold {on_disk}: {files:?}"
    );
    Ok(())
}

/// Read a whole file (through one of its handles, or a new one).
async fn read_whole(v: &Vfs, m: &Model, ino: u64, len: u64) -> Result<Vec<u8>, String> {
    let held = m.handles.iter().find(|h| h.ino == ino).map(|h| h.fh);
    let fh = match held {
        Some(fh) => fh,
        None => ok(vfs_open(v, ino, false).await, "open to check")?,
    };
    let data = ok(
        v.read(ino, fh, 0, (len + 100) as u32).await,
        "read to check",
    )?;
    if held.is_none() {
        ok(vfs_release(v, ino, fh).await, "release after check")?;
    }
    Ok(data)
}

/// Every file's content against the model.
async fn check_contents(v: &Vfs, m: &Model) -> Res {
    for (&ino, f) in &m.files {
        let got = read_whole(v, m, ino, f.data.len() as u64).await?;
        same(&got, &f.data, &format!("content of inode {ino}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The mount.
// ---------------------------------------------------------------------------

static N: AtomicU64 = AtomicU64::new(0);

struct Env {
    url: String,
    state: tempfile::TempDir,
    /// State directory of the observer (a second reader of the store).
    observer_state: tempfile::TempDir,
    cache: tempfile::TempDir,
    cfg: MountCfg,
}

struct Mounted {
    vfs: Arc<Vfs>,
    uploader: tokio::task::JoinHandle<()>,
}

impl Env {
    async fn new(cfg: MountCfg) -> Result<Env, String> {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let e = Env {
            url: format!("memory://vfs-model-{}-{n}", std::process::id()),
            state: tempfile::tempdir().map_err(|e| e.to_string())?,
            observer_state: tempfile::tempdir().map_err(|e| e.to_string())?,
            cache: tempfile::tempdir().map_err(|e| e.to_string())?,
            cfg,
        };
        let (store, _) = open_url(&e.url).map_err(|e| e.to_string())?;
        Vault::create(
            store,
            PW,
            CreateOptions {
                kdf: KdfParams::insecure_for_tests(),
                chunk_size: CS as u32,
            },
            e.open_opts(),
        )
        .await
        .map_err(|e| format!("create vault: {e}"))?;
        Ok(e)
    }

    fn open_opts(&self) -> OpenOptions {
        OpenOptions {
            state_dir: Some(self.state.path().to_path_buf()),
            ..Default::default()
        }
    }

    /// What another reader of the store sees of file `ino`: (size, bytes).
    async fn observe(&self, ino: u64) -> Result<(u64, Vec<u8>), String> {
        let (store, _) = open_url(&self.url).map_err(|e| e.to_string())?;
        let opts = OpenOptions {
            state_dir: Some(self.observer_state.path().to_path_buf()),
            accept_rollback: true,
            ..Default::default()
        };
        let other = Vault::open(store, PW, opts)
            .await
            .map_err(|e| format!("observer: open vault: {e}"))?;
        let n = other
            .inode(ino)
            .ok_or_else(|| format!("observer: inode {ino} is not in the store"))?;
        let data = other
            .read_at(&n, 0, n.size + 100)
            .await
            .map_err(|e| format!("observer: read: {e}"))?;
        Ok((n.size, data))
    }

    async fn mount(&self) -> Result<Mounted, String> {
        let (store, _) = open_url(&self.url).map_err(|e| e.to_string())?;
        let mut vo = self.open_opts();
        // the read cache: on disk in some cases, in memory in others
        vo.read_cache = self.cfg.read_cache.then(|| ReadCacheOptions {
            dir: self.cfg.fsync_local.then(|| self.cache.path().join("read")),
            cap: 512 << 20,
        });
        let vault = Vault::open(store, PW, vo)
            .await
            .map_err(|e| format!("open vault: {e}"))?;
        let mut o = VfsOptions::new(self.cache.path().to_path_buf());
        if self.cfg.eager {
            o.writeback_delay = Duration::ZERO;
            o.commit_interval = Duration::ZERO;
        } else {
            // nothing is uploaded or committed behind the operations' backs
            o.writeback_delay = Duration::from_secs(3600);
            o.closed_delay = Duration::from_secs(3600);
            o.commit_interval = Duration::from_secs(3600);
        }
        if self.cfg.fsync_local {
            o.fsync = FsyncMode::Local;
        }
        if self.cfg.close_buffered {
            o.close = CloseMode::Buffered;
        }
        let vfs = Vfs::new(Arc::new(vault), o).map_err(|e| format!("mount: {e}"))?;
        let uploader = vfs.start();
        Ok(Mounted { vfs, uploader })
    }
}

/// Close every handle (flush + release, as the kernel does at unmount) and
/// shut down cleanly.
async fn unmount(mt: Mounted, m: &mut Model, cache: &Path) -> Res {
    let v = &mt.vfs;
    for h in std::mem::take(&mut m.handles) {
        ok(vfs_flush(v, h.ino, h.fh).await, "flush at unmount")?;
        ok(vfs_release(v, h.ino, h.fh).await, "release at unmount")?;
    }
    let gone: Vec<u64> = m.files.keys().copied().collect();
    for ino in gone {
        m.collect(ino);
    }
    mt.vfs
        .shutdown(Duration::from_secs(60), |_, _| {})
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    mt.uploader
        .await
        .map_err(|e| format!("uploader task: {e}"))?;
    // Everything is in the store: no dirty data is left, nor counted.
    let files = dirty_files(cache);
    ensure!(
        files.is_empty(),
        "dirty chunk files after shutdown: {files:?}"
    );
    let st = mt.vfs.status();
    ensure!(
        st.dirty_bytes == 0 && st.dirty_chunks == 0 && st.uncommitted_records == 0,
        "after shutdown: {st:?}"
    );
    for f in m.files.values_mut() {
        f.durable = f.data.len() as u64;
    }
    Ok(())
}

/// "kill -9" of the process: the uploader stops wherever it is (maybe in
/// the middle of an upload or commit), nothing is flushed or shut down;
/// what was written to local files (journal, chunk files) stays.
async fn crash(mt: Mounted, m: &mut Model) {
    mt.uploader.abort();
    let _ = mt.uploader.await;
    drop(mt.vfs);
    m.handles.clear();
    m.files.retain(|_, f| f.nlink > 0);
}

/// After a crash: each file holds a prefix of its model content, at least
/// as long as its durable size. The model takes the size found.
async fn adopt_after_crash(v: &Vfs, m: &mut Model) -> Res {
    let inos: Vec<u64> = m.files.keys().copied().collect();
    for ino in inos {
        let a = ok(vfs_getattr(v, ino), &format!("getattr {ino} after crash"))?;
        let f = &m.files[&ino];
        ensure!(
            f.durable <= a.size && a.size <= f.data.len() as u64,
            "inode {ino} after crash: size {}, want between {} (last flush/fsync/truncate) and {} (all writes)",
            a.size,
            f.durable,
            f.data.len()
        );
        let f = m.file(ino);
        f.data.truncate(a.size as usize);
        f.durable = a.size;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Running a case.
// ---------------------------------------------------------------------------

/// The handle an operation on handle `h` uses: open handle number `h`
/// (modulo their number). With none open, the file of the `h`-th name
/// (modulo) is opened first, as most sequences would otherwise start with
/// operations that have nothing to act on. No file at all: skip (`None`).
async fn use_handle(v: &Vfs, m: &mut Model, h: usize) -> Result<Option<Handle>, String> {
    if !m.handles.is_empty() {
        return Ok(Some(m.handles[h % m.handles.len()]));
    }
    let Some((_, &ino)) = m.names.iter().nth(h % m.names.len().max(1)) else {
        return Ok(None);
    };
    let fh = ok(vfs_open(v, ino, false).await, "open (no handle was open)")?;
    let h = Handle { fh, ino };
    m.handles.push(h);
    Ok(Some(h))
}

async fn step(env: &mut Env, mt: &mut Option<Mounted>, m: &mut Model, op: &Op) -> Res {
    match op {
        Op::Remount { fresh_cache } => {
            unmount(mt.take().expect("mounted"), m, env.cache.path()).await?;
            if *fresh_cache {
                env.cache = tempfile::tempdir().map_err(|e| e.to_string())?;
            }
            let new = env.mount().await?;
            check_contents(&new.vfs, m).await?;
            *mt = Some(new);
            return Ok(());
        }
        Op::Crash => {
            crash(mt.take().expect("mounted"), m).await;
            let new = env.mount().await?;
            adopt_after_crash(&new.vfs, m).await?;
            check_namespace(&new.vfs, m)?;
            check_contents(&new.vfs, m).await?;
            *mt = Some(new);
            return Ok(());
        }
        _ => {}
    }
    let v = &*mt.as_ref().expect("mounted").vfs;
    match *op {
        Op::Create { slot: s, excl } => {
            if let (Entry::File(ino), false) = (m.entry(s), excl) {
                let a = ok(vfs_lookup(v, m.parent(s), s.name()), "lookup to open")?;
                ensure!(a.ino == ino, "lookup to open: inode {}, want {ino}", a.ino);
                let fh = ok(vfs_open(v, ino, false).await, "open")?;
                ensure!(
                    m.handles.iter().all(|h| h.fh != fh),
                    "open: handle {fh} is already open"
                );
                m.handles.push(Handle { fh, ino });
                return Ok(());
            }
            let r = vfs_create(v, m.parent(s), s.name());
            match m.entry(s) {
                Entry::File(_) | Entry::Dir => fails(r, libc::EEXIST, "create")?,
                Entry::None => {
                    let (a, fh) = ok(r, "create")?;
                    ensure!(
                        a.kind == Kind::File && a.size == 0 && a.nlink == 1,
                        "create: {a:?}"
                    );
                    ensure!(
                        !m.files.contains_key(&a.ino) && !m.dirs.contains(&a.ino),
                        "create: inode {} reused",
                        a.ino
                    );
                    ensure!(
                        m.handles.iter().all(|h| h.fh != fh),
                        "create: handle {fh} is already open"
                    );
                    m.names.insert(s, a.ino);
                    m.files.insert(
                        a.ino,
                        MFile {
                            data: Vec::new(),
                            nlink: 1,
                            durable: 0,
                        },
                    );
                    m.handles.push(Handle { fh, ino: a.ino });
                }
            }
        }
        Op::Open { slot, trunc } => {
            let r = vfs_lookup(v, m.parent(slot), slot.name());
            let Entry::File(ino) = m.entry(slot) else {
                return fails(r, libc::ENOENT, "lookup to open");
            };
            let a = ok(r, "lookup to open")?;
            ensure!(a.ino == ino, "lookup to open: inode {}, want {ino}", a.ino);
            let fh = ok(vfs_open(v, ino, trunc).await, "open")?;
            ensure!(
                m.handles.iter().all(|h| h.fh != fh),
                "open: handle {fh} is already open"
            );
            m.handles.push(Handle { fh, ino });
            if trunc {
                let f = m.file(ino);
                f.data.clear();
                f.durable = 0;
            }
        }
        Op::Read { h, off, len } => {
            let Some(h) = use_handle(v, m, h).await? else {
                return Ok(());
            };
            // with the spare bytes of the segments it decrypted: they too
            // must be the file's
            let got = ok(v.read_around(h.ino, h.fh, off, len).await, "read")?;
            let data = &m.files[&h.ino].data;
            let a = (off as usize).min(data.len());
            let b = (off as usize + len as usize).min(data.len());
            same(got.asked(), &data[a..b], "read")?;
            for (at, spare) in got.spare() {
                let at = at as usize;
                ensure!(
                    at + spare.len() <= data.len(),
                    "spare bytes past the end of the file"
                );
                same(spare, &data[at..at + spare.len()], "spare bytes of a read")?;
            }
        }
        Op::Write { h, off, len, seed } => {
            let Some(h) = use_handle(v, m, h).await? else {
                return Ok(());
            };
            let buf = pattern(seed, off, len);
            let n = ok(vfs_write(v, h.ino, h.fh, off, &buf).await, "write")?;
            ensure!(n as usize == len, "write: wrote {n} of {len} bytes");
            let f = m.file(h.ino);
            let end = off as usize + len;
            if f.data.len() < end {
                f.data.resize(end, 0);
            }
            f.data[off as usize..end].copy_from_slice(&buf);
        }
        Op::SetSize { target, size } => {
            let ino = match target {
                Target::Handle(h) => match use_handle(v, m, h).await? {
                    Some(h) => h.ino,
                    None => return Ok(()),
                },
                Target::Path(s) => {
                    let r = vfs_lookup(v, m.parent(s), s.name());
                    match m.entry(s) {
                        Entry::None => return fails(r, libc::ENOENT, "lookup to truncate"),
                        Entry::Dir => {
                            let a = ok(r, "lookup to truncate")?;
                            let r = vfs_set_size(v, a.ino, size).await;
                            return fails(r, libc::EISDIR, "truncate a directory");
                        }
                        Entry::File(ino) => {
                            let a = ok(r, "lookup to truncate")?;
                            ensure!(a.ino == ino, "lookup to truncate: inode {}", a.ino);
                            ino
                        }
                    }
                }
            };
            let a = ok(vfs_set_size(v, ino, size).await, "truncate")?;
            ensure!(
                a.size == size,
                "truncate: size {} after, want {size}",
                a.size
            );
            let f = m.file(ino);
            f.data.resize(size as usize, 0);
            f.durable = size;
        }
        Op::Rename { from, to } => {
            let r = vfs_rename(v, m.parent(from), from.name(), m.parent(to), to.name());
            let Entry::File(src) = m.entry(from) else {
                return fails(r, libc::ENOENT, "rename a missing name");
            };
            match m.entry(to) {
                Entry::Dir => fails(r, libc::EISDIR, "rename a file over a directory")?,
                Entry::File(dst) if dst == src => ok(r, "rename onto a link of itself")?,
                Entry::File(dst) => {
                    ok(r, "rename over a file")?;
                    m.names.remove(&from);
                    m.names.insert(to, src);
                    if m.unlinked(dst) {
                        fails(
                            vfs_getattr(v, dst),
                            libc::ENOENT,
                            "getattr of replaced file",
                        )?;
                    }
                }
                Entry::None => {
                    ok(r, "rename")?;
                    m.names.remove(&from);
                    m.names.insert(to, src);
                }
            }
        }
        Op::Link { from, to } => {
            let ino = match from {
                Target::Handle(h) => match use_handle(v, m, h).await? {
                    Some(h) => h.ino,
                    None => return Ok(()),
                },
                Target::Path(s) => {
                    let r = vfs_lookup(v, m.parent(s), s.name());
                    let Entry::File(ino) = m.entry(s) else {
                        return fails(r, libc::ENOENT, "lookup to link");
                    };
                    let a = ok(r, "lookup to link")?;
                    ensure!(a.ino == ino, "lookup to link: inode {}", a.ino);
                    ino
                }
            };
            let r = vfs_link(v, ino, m.parent(to), to.name());
            if m.files[&ino].nlink == 0 {
                return fails(r, libc::ENOENT, "link an unlinked file");
            }
            match m.entry(to) {
                Entry::File(_) | Entry::Dir => fails(r, libc::EEXIST, "link onto a name")?,
                Entry::None => {
                    let a = ok(r, "link")?;
                    let f = m.file(ino);
                    f.nlink += 1;
                    ensure!(
                        a.ino == ino && a.nlink == f.nlink,
                        "link: got ino {} nlink {}, want {ino} {}",
                        a.ino,
                        a.nlink,
                        f.nlink
                    );
                    m.names.insert(to, ino);
                }
            }
        }
        Op::Unlink(s) => {
            let r = vfs_unlink(v, m.parent(s), s.name());
            match m.entry(s) {
                Entry::None => fails(r, libc::ENOENT, "unlink a missing name")?,
                Entry::Dir => fails(r, libc::EISDIR, "unlink a directory")?,
                Entry::File(ino) => {
                    ok(r, "unlink")?;
                    m.names.remove(&s);
                    if m.unlinked(ino) {
                        fails(
                            vfs_getattr(v, ino),
                            libc::ENOENT,
                            "getattr of unlinked file",
                        )?;
                    }
                }
            }
        }
        Op::Flush { h } => {
            let Some(h) = use_handle(v, m, h).await? else {
                return Ok(());
            };
            ok(vfs_flush(v, h.ino, h.fh).await, "flush")?;
            let f = m.file(h.ino);
            f.durable = f.data.len() as u64;
        }
        Op::Fsync { h } => {
            let Some(h) = use_handle(v, m, h).await? else {
                return Ok(());
            };
            ok(vfs_fsync(v, h.ino, h.fh).await, "fsync")?;
            let f = m.file(h.ino);
            f.durable = f.data.len() as u64;
            if !env.cfg.fsync_local {
                // Cloud mode: the file is in the store when fsync returns.
                let (size, data) = env.observe(h.ino).await?;
                ensure!(
                    size == f.data.len() as u64,
                    "after fsync the store has size {size}, want {}",
                    f.data.len()
                );
                same(&data, &f.data, "content in the store after fsync")?;
            }
        }
        Op::Close { h } => {
            let Some(h) = use_handle(v, m, h).await? else {
                return Ok(());
            };
            ok(vfs_flush(v, h.ino, h.fh).await, "flush at close")?;
            ok(vfs_release(v, h.ino, h.fh).await, "release")?;
            let f = m.file(h.ino);
            f.durable = f.data.len() as u64;
            m.handles.retain(|x| x.fh != h.fh);
            if m.collect(h.ino) {
                fails(
                    vfs_getattr(v, h.ino),
                    libc::ENOENT,
                    "getattr of a closed unlinked file",
                )?;
            }
        }
        Op::Remount { .. } | Op::Crash => unreachable!("handled above"),
    }
    Ok(())
}

async fn run(cfg: MountCfg, ops: Vec<Op>) -> Res {
    let mut env = Env::new(cfg).await?;
    let mut mt = Some(env.mount().await?);
    let mut dirs = [ROOT_INO; 3];
    {
        let v = &mt.as_ref().expect("mounted").vfs;
        for (k, name) in DIRS.iter().enumerate() {
            dirs[k + 1] = ok(vfs_mkdir(v, ROOT_INO, name.as_bytes()), "mkdir")?.ino;
        }
    }
    let mut m = Model {
        dirs,
        names: BTreeMap::new(),
        files: BTreeMap::new(),
        handles: Vec::new(),
    };
    for (i, op) in ops.iter().enumerate() {
        step(&mut env, &mut mt, &mut m, op)
            .await
            .map_err(|e| format!("op {i} {op:?}: {e}"))?;
        let v = &mt.as_ref().expect("mounted").vfs;
        check_namespace(v, &m).map_err(|e| format!("after op {i} {op:?}: {e}"))?;
        if !cfg.eager {
            check_dirty_bytes(v, env.cache.path())
                .map_err(|e| format!("after op {i} {op:?}: {e}"))?;
        }
    }
    let v = mt.as_ref().expect("mounted").vfs.clone();
    check_contents(&v, &m)
        .await
        .map_err(|e| format!("at the end: {e}"))?;
    drop(v);
    // After a clean unmount everything is in the store.
    unmount(mt.take().expect("mounted"), &mut m, env.cache.path()).await?;
    env.cache = tempfile::tempdir().map_err(|e| e.to_string())?;
    let last = env.mount().await?;
    check_namespace(&last.vfs, &m).map_err(|e| format!("after the final remount: {e}"))?;
    check_contents(&last.vfs, &m)
        .await
        .map_err(|e| format!("after the final remount: {e}"))?;
    unmount(last, &mut m, env.cache.path()).await
}

/// A fixed set of cases for CI; PROPTEST_CASES and PROPTEST_RNG_SEED
/// (read by `ProptestConfig::default`) explore more or other ones.
fn config() -> ProptestConfig {
    let env = ProptestConfig::default();
    let set = |var: &str| std::env::var_os(var).is_some();
    ProptestConfig {
        cases: if set("PROPTEST_CASES") {
            env.cases
        } else {
            128
        },
        rng_seed: if set("PROPTEST_RNG_SEED") {
            env.rng_seed
        } else {
            RngSeed::Fixed(0x5354_5241_5441)
        },
        max_shrink_iters: 2000,
        ..env
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn vfs_matches_model(cfg in mount_cfg(), ops in proptest::collection::vec(op(), 1..100)) {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn")
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // On a worker thread, like the FUSE front end (block_in_place).
        let res = rt
            .block_on(rt.spawn(run(cfg, ops)))
            .unwrap_or_else(|e| Err(format!("panicked: {e}")));
        rt.shutdown_timeout(Duration::from_secs(10));
        prop_assert!(res.is_ok(), "{}", res.err().unwrap_or_default());
    }
}
