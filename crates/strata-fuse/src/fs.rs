//! [`StrataFs`]: the `fuser::Filesystem` adapter over [`Vfs`].
//!
//! Dispatch: fuser runs several event-loop threads (see
//! [`crate::mount`]); each request arrives on one of them, and every
//! callback holds a pass of the gate (`gate.rs`), which keeps the threads
//! that wait in the kernel for the next request few. Operations that only
//! look at or change the in-memory tree (lookup, getattr, mkdir,
//! rename, xattrs, …) answer inline on that thread. Everything that may wait
//! for the network or the local disk (read, write, flush, fsync, release,
//! setattr, open, fallocate) is spawned as a task on the mount's Tokio
//! runtime and replies when it is done, so a FUSE thread never blocks on I/O.
//! Except on a local store (`file://`, `memory://`): there read, write,
//! flush, setattr and release run on the FUSE thread itself
//! (`Handle::block_on`, with the store's disk I/O and decryption inline:
//! [`strata_store::inline`]),
//! since handing a 4 KiB read to a Tokio worker and its file read to the
//! blocking pool cost more thread wake-ups than the read itself.
//! fuser's reply objects are `Send`; a reply dropped without an answer (task
//! cancelled at shutdown, panic) is answered with EIO by fuser.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use strata_core::Kind;
use strata_vfs::{Attr, SetAttr, SetTime, Vfs, VfsResult};
use tracing::debug;

use crate::gate::Gate;
use crate::push::Pusher;

/// How long the kernel may cache attributes and directory entries. Every
/// change goes through this mount (single writer: the writer lease), so the
/// kernel's own invalidation on its operations keeps the caches right, and
/// the VFS changes nothing by itself that a `stat` shows (background uploads
/// and commits keep sizes and times as the overlay reported them; journal
/// replay and orphan cleanup happen before the mount is visible). So the
/// TTL is long: `ls -l` of a tree it has seen costs no requests.
pub const TTL: Duration = Duration::from_secs(60);

/// What `init` asks the kernel for (it may grant less).
pub const MAX_WRITE: u32 = 1 << 20;
pub const MAX_READAHEAD: u32 = 1 << 20;

/// `st_blksize`: the preferred I/O size (one 64 KiB segment).
const BLKSIZE: u32 = 64 * 1024;

fn kind_to_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// Nanoseconds since the epoch (may be negative) as a `SystemTime`.
pub fn ts_to_system(t: i64) -> SystemTime {
    if t >= 0 {
        UNIX_EPOCH + Duration::from_nanos(t as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(t.unsigned_abs())
    }
}

/// A `SystemTime` as nanoseconds since the epoch (saturating).
pub fn system_to_ts(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: ts_to_system(a.atime),
        mtime: ts_to_system(a.mtime),
        ctime: ts_to_system(a.ctime),
        crtime: ts_to_system(a.btime),
        kind: kind_to_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn errno(e: strata_vfs::Errno) -> Errno {
    if e.0 <= 0 {
        return Errno::EIO;
    }
    Errno::from_i32(e.0)
}

/// A time from a kernel `setattr`. fuser 0.18 turns the kernel's
/// `(secs < 0, nsecs)` into `EPOCH - (|secs| s + nsecs ns)` instead of
/// `EPOCH - |secs| s + nsecs ns` (its `system_time_from_time`), so times
/// before 1970 with a fraction arrive wrong; undo that here.
fn kernel_time_to_ts(t: SystemTime) -> i64 {
    match UNIX_EPOCH.duration_since(t) {
        Ok(d) if !d.is_zero() => {
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 1_000_000_000);
            secs.saturating_mul(-1_000_000_000)
                .saturating_add(i64::from(d.subsec_nanos()))
        }
        _ => system_to_ts(t),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(kernel_time_to_ts(t)),
    }
}

/// The xattr size-probe protocol: `size == 0` asks for the length only; a
/// buffer too small is ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    let Ok(len) = u32::try_from(value.len()) else {
        reply.error(Errno::E2BIG);
        return;
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// One directory listing, "." and ".." first, taken by the first `readdir`
/// of a handle (and again on a rewind to offset 0). Entry `i` carries offset `i + 1`, the
/// position of the next entry, so offsets stay valid while the directory
/// changes (`rm -rf` deletes entries between `readdir` calls).
type Listing = Arc<Vec<(u64, FileType, Vec<u8>)>>;

/// The entries of a listing from a `readdir` offset on, with their index
/// (entry `i` is answered with offset `i + 1`).
fn entries_from(
    listing: &Listing,
    offset: u64,
) -> impl Iterator<Item = (usize, &(u64, FileType, Vec<u8>))> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    listing.iter().enumerate().skip(start)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The FUSE filesystem: delegates every operation to a [`Vfs`].
pub struct StrataFs {
    vfs: Arc<Vfs>,
    rt: tokio::runtime::Handle,
    /// Answer data requests on the FUSE thread (a local store).
    inline_io: bool,
    /// Keeps few FUSE threads reading from the kernel.
    gate: Gate,
    dirs: Mutex<HashMap<u64, Listing>>,
    next_dir_fh: AtomicU64,
    /// Where small reads leave the rest of the segments they decrypted.
    pusher: Option<Pusher>,
}

impl StrataFs {
    /// `rt` must be a multi-thread runtime (the VFS uses `block_in_place`).
    pub fn new(vfs: Arc<Vfs>, rt: tokio::runtime::Handle) -> Self {
        StrataFs {
            vfs,
            rt,
            inline_io: false,
            gate: Gate::new(1),
            dirs: Mutex::new(HashMap::new()),
            next_dir_fh: AtomicU64::new(1),
            pusher: None,
        }
    }

    pub fn vfs(&self) -> &Arc<Vfs> {
        &self.vfs
    }

    /// Answer read, write and flush on the FUSE thread, its blocking work
    /// inline (for a store on the local disk; see the module docs).
    pub fn set_inline_io(&mut self, on: bool) {
        self.inline_io = on;
    }

    /// Hand the spare plaintext of small reads to `p` (see `push.rs`).
    pub fn set_pusher(&mut self, p: Pusher) {
        self.pusher = Some(p);
    }

    /// The number of FUSE threads fuser runs (see `gate.rs`).
    pub fn set_threads(&mut self, n: usize) {
        self.gate = Gate::new(n);
    }

    /// Run `f(vfs)` as a task on the runtime.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Vfs>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let vfs = self.vfs.clone();
        self.rt.spawn(async move { f(vfs).await });
    }

    /// A data request: on this thread when `inline_io` (holding a pass of
    /// the gate that says it may block), else spawned.
    fn data_op<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Vfs>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let _pass = self.gate.enter(self.inline_io);
        if !self.inline_io {
            return self.spawn(f);
        }
        self.run_inline(f(self.vfs.clone()));
    }

    /// Drive `fut` on this FUSE thread, blocking work inline.
    fn run_inline<T>(&self, fut: impl Future<Output = T>) -> T {
        let _inline = strata_store::inline::enter();
        self.rt.block_on(fut)
    }

    fn listing(&self, ino: u64) -> VfsResult<Listing> {
        let entries = self.vfs.readdir(ino)?;
        let parent = self.vfs.parent_of(ino)?;
        let mut v = Vec::with_capacity(entries.len() + 2);
        v.push((ino, FileType::Directory, b".".to_vec()));
        v.push((parent, FileType::Directory, b"..".to_vec()));
        v.extend(
            entries
                .into_iter()
                .map(|e| (e.ino, kind_to_type(e.kind), e.name)),
        );
        Ok(Arc::new(v))
    }

    /// The listing of directory handle `fh`: taken at offset 0 (the first
    /// read, or a rewind), the one taken then for later offsets.
    fn cached_listing(&self, ino: u64, fh: u64, offset: u64) -> VfsResult<Listing> {
        if offset != 0 {
            if let Some(l) = lock(&self.dirs).get(&fh).cloned() {
                return Ok(l);
            }
        }
        let l = self.listing(ino)?;
        lock(&self.dirs).insert(fh, l.clone());
        Ok(l)
    }

    fn reply_entry(reply: ReplyEntry, r: VfsResult<Attr>) {
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn reply_empty(reply: ReplyEmpty, r: VfsResult<()>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// POSIX ACL xattrs would only be stored, never enforced (no
/// FUSE_POSIX_ACL), so they are refused rather than pretended: setting,
/// reading or removing one is EOPNOTSUPP, as on a filesystem mounted
/// without ACLs. (That answer to a read also makes GNU `ls -l` stop asking
/// for the ACL of every further file of the mount, which an ENODATA did
/// not: half of the requests of an `ls -lR`.)
fn is_acl(name: &[u8]) -> bool {
    name.starts_with(b"system.posix_acl_")
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            debug!(max, "kernel refused max_write of 1 MiB");
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            debug!(max, "kernel limits max_readahead");
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // O_TRUNC arrives with open (one atomic step) instead of a separate setattr.
        // READDIRPLUS: a listing carries every entry's attributes, so
        // `ls -l` / `find` need no lookup per entry.
        for cap in [
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
        ] {
            if let Err(missing) = config.add_capabilities(cap) {
                debug!(?missing, "kernel lacks a FUSE capability");
            }
        }
        // FUSE_WRITEBACK_CACHE stays off: the kernel then sends every write at
        // once and handles O_APPEND against a size it keeps exact.
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _pass = self.gate.enter(false);
        Self::reply_entry(reply, self.vfs.lookup(parent.0, name.as_bytes()));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _pass = self.gate.enter(false);
        match self.vfs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        self.data_op(move |vfs| async move {
            match vfs.setattr(ino.0, s).await {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _pass = self.gate.enter(false);
        match self.vfs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _pass = self.gate.enter(false);
        let r = self.vfs.mknod(
            parent.0,
            name.as_bytes(),
            mode,
            umask,
            rdev,
            req.uid(),
            req.gid(),
            None,
        );
        Self::reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _pass = self.gate.enter(false);
        let mode = libc::S_IFDIR | (mode & 0o7777);
        let r = self.vfs.mknod(
            parent.0,
            name.as_bytes(),
            mode,
            umask,
            0,
            req.uid(),
            req.gid(),
            None,
        );
        Self::reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _pass = self.gate.enter(false);
        Self::reply_empty(reply, self.vfs.unlink(parent.0, name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _pass = self.gate.enter(false);
        Self::reply_empty(reply, self.vfs.rmdir(parent.0, name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _pass = self.gate.enter(false);
        let target = target.as_os_str().as_bytes();
        let r = self.vfs.mknod(
            parent.0,
            link_name.as_bytes(),
            libc::S_IFLNK | 0o777,
            0,
            0,
            req.uid(),
            req.gid(),
            Some(target),
        );
        Self::reply_entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _pass = self.gate.enter(false);
        let r = self.vfs.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        );
        Self::reply_empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _pass = self.gate.enter(false);
        Self::reply_entry(reply, self.vfs.link(ino.0, newparent.0, newname.as_bytes()));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _pass = self.gate.enter(false);
        let writes = matches!(
            flags.acc_mode(),
            OpenAccMode::O_WRONLY | OpenAccMode::O_RDWR
        );
        let truncate = writes && flags.0 & libc::O_TRUNC != 0;
        self.spawn(move |vfs| async move {
            match vfs.open(ino.0, truncate, writes).await {
                // Single writer: the kernel's page cache of a file stays
                // valid between opens (our own writes and truncates update it).
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let pusher = self.pusher.clone();
        self.data_op(move |vfs| async move {
            match vfs.read_around(ino.0, fh.0, offset, size).await {
                Ok(a) => {
                    reply.data(a.asked());
                    if let Some(p) = pusher {
                        p.offer(a);
                    }
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _pass = self.gate.enter(self.inline_io);
        if self.inline_io {
            // on this thread: the request's buffer is written as it is
            match self.run_inline(self.vfs.write(ino.0, fh.0, offset, data)) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
            return;
        }
        let data = data.to_vec();
        self.spawn(move |vfs| async move {
            match vfs.write(ino.0, fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.data_op(move |vfs| async move { Self::reply_empty(reply, vfs.flush(ino.0).await) });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.data_op(
            move |vfs| async move { Self::reply_empty(reply, vfs.release(ino.0, fh.0).await) },
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _pass = self.gate.enter(false);
        self.spawn(move |vfs| async move { Self::reply_empty(reply, vfs.fsync(ino.0).await) });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _pass = self.gate.enter(false);
        // The listing is taken by the first readdir (offset 0).
        match self.vfs.getattr(ino.0) {
            Ok(a) if a.kind == Kind::Dir => {
                let fh = self.next_dir_fh.fetch_add(1, Ordering::Relaxed);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _pass = self.gate.enter(false);
        let listing = match self.cached_listing(ino.0, fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, (child, kind, name)) in entries_from(&listing, offset) {
            if reply.add(
                INodeNo(*child),
                (i + 1) as u64,
                *kind,
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _pass = self.gate.enter(false);
        let listing = match self.cached_listing(ino.0, fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, (child, _, name)) in entries_from(&listing, offset) {
            // an entry removed since the listing was taken is skipped
            let Ok(a) = self.vfs.getattr(*child) else {
                continue;
            };
            if reply.add(
                INodeNo(*child),
                (i + 1) as u64,
                OsStr::from_bytes(name),
                &TTL,
                &file_attr(&a),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _pass = self.gate.enter(false);
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _pass = self.gate.enter(false);
        // For a directory this syncs the journal and (fsync=cloud) commits.
        self.spawn(move |vfs| async move { Self::reply_empty(reply, vfs.fsync(ino.0).await) });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _pass = self.gate.enter(false);
        let s = self.vfs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _pass = self.gate.enter(false);
        if is_acl(name.as_bytes()) {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        Self::reply_empty(
            reply,
            self.vfs.setxattr(ino.0, name.as_bytes(), value, flags),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _pass = self.gate.enter(false);
        if is_acl(name.as_bytes()) {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        match self.vfs.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _pass = self.gate.enter(false);
        match self.vfs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _pass = self.gate.enter(false);
        if is_acl(name.as_bytes()) {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        Self::reply_empty(reply, self.vfs.removexattr(ino.0, name.as_bytes()));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _pass = self.gate.enter(false);
        // Only called without default_permissions; the kernel checks modes.
        Self::reply_empty(reply, self.vfs.getattr(ino.0).map(|_| ()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _pass = self.gate.enter(false);
        // The kernel looked the name up first: O_EXCL on an existing name and
        // O_TRUNC of an existing file never get here.
        match self
            .vfs
            .create(parent.0, name.as_bytes(), mode, umask, req.uid(), req.gid())
        {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _pass = self.gate.enter(false);
        // Space in a cloud store is not reserved, so plain allocation only
        // has to extend the size (with a hole); KEEP_SIZE is a no-op.
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        self.spawn(move |vfs| async move {
            let r = async {
                let a = vfs.getattr(ino.0)?;
                if a.kind != Kind::File {
                    return Err(strata_vfs::Errno(libc::ENODEV));
                }
                let end = offset
                    .checked_add(length)
                    .ok_or(strata_vfs::Errno(libc::EFBIG))?;
                if !keep_size && end > a.size {
                    vfs.setattr(
                        ino.0,
                        SetAttr {
                            size: Some(end),
                            ..SetAttr::default()
                        },
                    )
                    .await?;
                }
                Ok(())
            }
            .await;
            Self::reply_empty(reply, r);
        });
    }

    // Not supported: answered quietly with ENOSYS, so the kernel falls back
    // (local POSIX locks, generic lseek, copy through read/write, no poll).

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let _pass = self.gate.enter(false);
        reply.error(Errno::ENOSYS);
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        let _pass = self.gate.enter(false);
        reply.error(Errno::ENOSYS);
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: ReplyBmap) {
        let _pass = self.gate.enter(false);
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _pass = self.gate.enter(false);
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        let _pass = self.gate.enter(false);
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        let _pass = self.gate.enter(false);
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _pass = self.gate.enter(false);
        reply.error(Errno::ENOSYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for t in [
            0i64,
            1,
            -1,
            999_999_999,
            -999_999_999,
            1_000_000_000,
            -1_000_000_001,
            -86_400_000_000_005,
        ] {
            assert_eq!(system_to_ts(ts_to_system(t)), t);
        }
        // fuser's reading of the kernel's (-1 s, 999999999 ns) = -1 ns
        let fuser = UNIX_EPOCH - Duration::new(1, 999_999_999);
        assert_eq!(kernel_time_to_ts(fuser), -1);
        let fuser = UNIX_EPOCH - Duration::new(86_400, 5);
        assert_eq!(kernel_time_to_ts(fuser), -86_400_000_000_000 + 5);
        assert_eq!(
            kernel_time_to_ts(UNIX_EPOCH + Duration::new(5, 7)),
            5_000_000_007
        );
    }
}
