//! [`VfsDav`]: dav-server's `DavFileSystem` over a [`Vfs`] — the same
//! inode operations, handles, write-back cache and journal the FUSE mount
//! uses. Paths are resolved name by name from the root inode.
//!
//! A whole-file upload (a PUT without a range) is written to a hidden
//! temporary file in the target's folder and renamed over the target only
//! once the body arrived in full, so an interrupted upload never leaves a
//! half-written file under the target's name. WebDAV dead properties
//! (PROPPATCH) are kept as extended attributes named `dav:<ns>|<name>`.

use std::fmt;
use std::io::SeekFrom;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError, FsFuture, FsResult,
    FsStream, OpenOptions, ReadDirMeta,
};
use futures::FutureExt;
use strata_core::tree::ROOT_INO;
use strata_core::{Kind, Ts};
use strata_vfs::{Attr, Errno, SetAttr, SetTime, Vfs};
use tracing::warn;

/// Names of uploads in progress start with this; listings hide them.
pub const UPLOAD_PREFIX: &[u8] = b".strata-upload-";

/// Prefix of the extended attributes that hold WebDAV dead properties.
const PROP_PREFIX: &[u8] = b"dav:";

/// Largest read answered at once (dav-server asks for its buffer size).
const MAX_READ: usize = 1 << 20;

/// Body bytes are gathered up to this much before they go to the VFS (a
/// request body arrives in frames of a few KiB).
const WRITE_BUF: usize = 1 << 20;

fn fs_err(e: Errno) -> FsError {
    match e.0 {
        libc::ENOENT => FsError::NotFound,
        libc::EEXIST | libc::ENOTEMPTY => FsError::Exists,
        libc::EACCES | libc::EPERM | libc::EROFS | libc::EISDIR | libc::ENOTDIR => {
            FsError::Forbidden
        }
        libc::ENOSPC | libc::EDQUOT => FsError::InsufficientStorage,
        libc::EFBIG | libc::E2BIG => FsError::TooLarge,
        libc::ENAMETOOLONG => FsError::PathTooLong,
        libc::EINVAL => FsError::Forbidden,
        _ => FsError::GeneralFailure,
    }
}

/// Nanoseconds since the epoch as a `SystemTime`.
pub fn ts_to_system(t: Ts) -> SystemTime {
    use std::time::{Duration, UNIX_EPOCH};
    if t >= 0 {
        UNIX_EPOCH + Duration::from_nanos(t as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(t.unsigned_abs())
    }
}

fn system_to_ts(t: SystemTime) -> Ts {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Attributes of one inode as dav-server wants them.
#[derive(Debug, Clone)]
pub struct Meta(pub Attr);

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.0.size
    }
    fn modified(&self) -> FsResult<SystemTime> {
        Ok(ts_to_system(self.0.mtime))
    }
    fn created(&self) -> FsResult<SystemTime> {
        Ok(ts_to_system(self.0.btime))
    }
    fn accessed(&self) -> FsResult<SystemTime> {
        Ok(ts_to_system(self.0.atime))
    }
    fn status_changed(&self) -> FsResult<SystemTime> {
        Ok(ts_to_system(self.0.ctime))
    }
    fn is_dir(&self) -> bool {
        self.0.kind == Kind::Dir
    }
    fn is_symlink(&self) -> bool {
        self.0.kind == Kind::Symlink
    }
    fn executable(&self) -> FsResult<bool> {
        Ok(self.0.kind == Kind::File && self.0.perm & 0o100 != 0)
    }
    /// Inode, size and modification time to the nanosecond: changes with
    /// every write that a client could see.
    fn etag(&self) -> Option<String> {
        Some(format!(
            "{:x}-{:x}-{:x}",
            self.0.ino, self.0.size, self.0.mtime
        ))
    }
}

/// The WebDAV file system over a VFS. Cheap to clone.
#[derive(Clone)]
pub struct VfsDav {
    vfs: Arc<Vfs>,
    uid: u32,
    gid: u32,
    uploads: Arc<AtomicU64>,
}

impl VfsDav {
    pub fn new(vfs: Arc<Vfs>) -> Self {
        let (uid, gid) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        VfsDav {
            vfs,
            uid,
            gid,
            uploads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Remove the hidden files of uploads that a crash cut off (a
    /// read-write server is the vault's only writer, so none is in
    /// progress). Returns how many were removed.
    pub fn sweep_uploads(&self) -> usize {
        let mut removed = 0;
        let mut dirs = vec![ROOT_INO];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = self.vfs.readdir(dir) else {
                continue;
            };
            for e in entries {
                if e.kind == Kind::Dir {
                    dirs.push(e.ino);
                } else if e.kind == Kind::File && e.name.starts_with(UPLOAD_PREFIX) {
                    match self.vfs.unlink(dir, &e.name) {
                        Ok(()) => removed += 1,
                        Err(err) => warn!(error = ?err, "could not remove a cut-off upload"),
                    }
                }
            }
        }
        removed
    }

    /// The path's inode.
    fn resolve(&self, path: &DavPath) -> FsResult<u64> {
        let mut ino = ROOT_INO;
        for seg in path.as_bytes().split(|c| *c == b'/') {
            if seg.is_empty() || seg == b"." {
                continue;
            }
            ino = self.vfs.lookup(ino, seg).map_err(fs_err)?.ino;
        }
        Ok(ino)
    }

    /// The path's parent inode and last name (never the root).
    fn parent_and_name(&self, path: &DavPath) -> FsResult<(u64, Vec<u8>)> {
        let bytes = path.as_bytes();
        let trimmed = bytes.strip_suffix(b"/").unwrap_or(bytes);
        let (dir, name) = match trimmed.iter().rposition(|c| *c == b'/') {
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => (&b""[..], trimmed),
        };
        if name.is_empty() || name == b"." || name == b".." {
            return Err(FsError::Forbidden);
        }
        let mut ino = ROOT_INO;
        for seg in dir.split(|c| *c == b'/') {
            if seg.is_empty() {
                continue;
            }
            ino = self.vfs.lookup(ino, seg).map_err(fs_err)?.ino;
        }
        let a = self.vfs.getattr(ino).map_err(fs_err)?;
        if a.kind != Kind::Dir {
            return Err(FsError::Forbidden);
        }
        Ok((ino, name.to_vec()))
    }

    fn attr(&self, path: &DavPath) -> FsResult<Attr> {
        let ino = self.resolve(path)?;
        self.vfs.getattr(ino).map_err(fs_err)
    }

    fn create_file(&self, parent: u64, name: &[u8]) -> FsResult<(Attr, u64)> {
        self.vfs
            .create(parent, name, 0o644, 0o022, self.uid, self.gid)
            .map_err(fs_err)
    }

    async fn open_file(&self, path: &DavPath, o: OpenOptions) -> FsResult<VfsFile> {
        let existing = match self.attr(path) {
            Ok(a) => Some(a),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if let Some(a) = &existing {
            if a.kind == Kind::Dir {
                return Err(FsError::Forbidden);
            }
            if o.create_new {
                return Err(FsError::Exists);
            }
        }
        if !o.write {
            let a = existing.ok_or(FsError::NotFound)?;
            let fh = self.vfs.open(a.ino, false, false).await.map_err(fs_err)?;
            return Ok(VfsFile::new(self, a.ino, fh, None, None));
        }
        if existing.is_none() && !(o.create || o.create_new) {
            return Err(FsError::NotFound);
        }
        let (parent, name) = self.parent_and_name(path)?;
        if o.truncate && !o.append {
            // A whole new body: into a hidden file, renamed over the target
            // once complete (see the module doc).
            let n = self.uploads.fetch_add(1, Ordering::Relaxed);
            let mut tmp = UPLOAD_PREFIX.to_vec();
            let nanos = system_to_ts(SystemTime::now());
            tmp.extend_from_slice(format!("{}-{nanos:x}-{n}", std::process::id()).as_bytes());
            let (a, fh) = self.create_file(parent, &tmp)?;
            let publish = Publish {
                parent,
                tmp,
                name,
                done: false,
            };
            return Ok(VfsFile::new(self, a.ino, fh, Some(publish), o.size));
        }
        let (ino, fh) = match existing {
            Some(a) => (
                a.ino,
                self.vfs.open(a.ino, false, true).await.map_err(fs_err)?,
            ),
            None => {
                let (a, fh) = self.create_file(parent, &name)?;
                (a.ino, fh)
            }
        };
        let mut f = VfsFile::new(self, ino, fh, None, None);
        if o.append {
            f.pos = self.vfs.getattr(ino).map_err(fs_err)?.size;
        }
        Ok(f)
    }

    /// Copy a file's bytes to a new (or replaced) file at `to`.
    async fn copy_file(&self, from: &DavPath, to: &DavPath) -> FsResult<()> {
        let mut src = self.open_file(from, read_only_options()).await?;
        let mut o = write_options();
        o.size = Some(src.meta()?.0.size);
        let mut dst = self.open_file(to, o).await?;
        loop {
            let b = src.read_at_pos(MAX_READ).await?;
            if b.is_empty() {
                break;
            }
            dst.write_at_pos(&b).await?;
        }
        dst.finish().await
    }

    fn prop_key(ns: &Option<String>, name: &str) -> Vec<u8> {
        let mut k = PROP_PREFIX.to_vec();
        k.extend_from_slice(ns.as_deref().unwrap_or("").as_bytes());
        k.push(b'|');
        k.extend_from_slice(name.as_bytes());
        k
    }
}

fn read_only_options() -> OpenOptions {
    OpenOptions {
        read: true,
        ..OpenOptions::default()
    }
}

fn write_options() -> OpenOptions {
    OpenOptions {
        write: true,
        create: true,
        truncate: true,
        ..OpenOptions::default()
    }
}

/// A stored dead property: `prefix \0 xml`.
fn encode_prop(p: &DavProp) -> Vec<u8> {
    let mut v = p.prefix.clone().unwrap_or_default().into_bytes();
    v.push(0);
    v.extend_from_slice(p.xml.as_deref().unwrap_or_default());
    v
}

fn decode_prop(key: &[u8], value: Option<Vec<u8>>) -> Option<DavProp> {
    let rest = key.strip_prefix(PROP_PREFIX)?;
    let bar = rest.iter().rposition(|c| *c == b'|')?;
    let ns = String::from_utf8(rest[..bar].to_vec()).ok()?;
    let name = String::from_utf8(rest[bar + 1..].to_vec()).ok()?;
    let (prefix, xml) = match value {
        Some(v) => {
            let z = v.iter().position(|c| *c == 0)?;
            (
                String::from_utf8(v[..z].to_vec()).ok(),
                Some(v[z + 1..].to_vec()),
            )
        }
        None => (None, None),
    };
    Some(DavProp {
        name,
        prefix: prefix.filter(|p| !p.is_empty()),
        namespace: (!ns.is_empty()).then_some(ns),
        xml,
    })
}

impl DavFileSystem for VfsDav {
    fn open<'a>(&'a self, path: &'a DavPath, o: OpenOptions) -> FsFuture<'a, Box<dyn DavFile>> {
        async move { Ok(Box::new(self.open_file(path, o).await?) as Box<dyn DavFile>) }.boxed()
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let ino = self.resolve(path)?;
            let entries = self.vfs.readdir(ino).map_err(fs_err)?;
            let mut out: Vec<FsResult<Box<dyn DavDirEntry>>> = Vec::with_capacity(entries.len());
            for e in entries {
                if e.name.starts_with(UPLOAD_PREFIX) {
                    continue;
                }
                // an entry removed meanwhile is left out
                if let Ok(a) = self.vfs.getattr(e.ino) {
                    out.push(Ok(Box::new(Entry {
                        name: e.name,
                        meta: Meta(a),
                    })));
                }
            }
            Ok(Box::pin(futures::stream::iter(out)) as FsStream<Box<dyn DavDirEntry>>)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move { Ok(Box::new(Meta(self.attr(path)?)) as Box<dyn DavMetaData>) }.boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (parent, name) = self.parent_and_name(path)?;
            self.vfs
                .mknod(
                    parent,
                    &name,
                    libc::S_IFDIR | 0o755,
                    0o022,
                    0,
                    self.uid,
                    self.gid,
                    None,
                )
                .map_err(fs_err)?;
            Ok(())
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (parent, name) = self.parent_and_name(path)?;
            self.vfs.rmdir(parent, &name).map_err(fs_err)
        }
        .boxed()
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (parent, name) = self.parent_and_name(path)?;
            self.vfs.unlink(parent, &name).map_err(fs_err)
        }
        .boxed()
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (p1, n1) = self.parent_and_name(from)?;
            let (p2, n2) = self.parent_and_name(to)?;
            self.vfs.rename(p1, &n1, p2, &n2, 0).map_err(fs_err)
        }
        .boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let a = self.attr(from)?;
            if a.kind == Kind::Dir {
                // dav-server copies collections member by member
                return Err(FsError::NotImplemented);
            }
            self.copy_file(from, to).await
        }
        .boxed()
    }

    fn set_modified<'a>(&'a self, path: &'a DavPath, tm: SystemTime) -> FsFuture<'a, ()> {
        async move {
            let ino = self.resolve(path)?;
            let s = SetAttr {
                mtime: Some(SetTime::At(system_to_ts(tm))),
                ..SetAttr::default()
            };
            self.vfs.setattr(ino, s).await.map_err(fs_err)?;
            Ok(())
        }
        .boxed()
    }

    fn have_props<'a>(
        &'a self,
        _path: &'a DavPath,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(std::future::ready(true))
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsFuture<'a, Vec<(http_status::StatusCode, DavProp)>> {
        async move {
            let ino = self.resolve(path)?;
            let mut res = Vec::with_capacity(patch.len());
            for (set, p) in patch {
                let key = Self::prop_key(&p.namespace, &p.name);
                let r = if set {
                    self.vfs.setxattr(ino, &key, &encode_prop(&p), 0)
                } else {
                    match self.vfs.removexattr(ino, &key) {
                        Err(Errno(libc::ENODATA)) => Ok(()),
                        r => r,
                    }
                };
                let status = match r {
                    Ok(()) => http_status::StatusCode::OK,
                    Err(Errno(libc::E2BIG)) | Err(Errno(libc::ERANGE)) => {
                        http_status::StatusCode::INSUFFICIENT_STORAGE
                    }
                    Err(Errno(libc::EROFS)) => http_status::StatusCode::FORBIDDEN,
                    Err(_) => http_status::StatusCode::INTERNAL_SERVER_ERROR,
                };
                res.push((status, DavProp { xml: None, ..p }));
            }
            Ok(res)
        }
        .boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        async move {
            let ino = self.resolve(path)?;
            let mut out = Vec::new();
            for key in self.vfs.listxattr(ino).map_err(fs_err)? {
                if !key.starts_with(PROP_PREFIX) {
                    continue;
                }
                let value = self.vfs.getxattr(ino, &key).ok();
                if let Some(mut p) = decode_prop(&key, value) {
                    if !do_content {
                        p.xml = None;
                    }
                    out.push(p);
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        async move {
            let ino = self.resolve(path)?;
            let key = Self::prop_key(&prop.namespace, &prop.name);
            let v = self.vfs.getxattr(ino, &key).map_err(fs_err)?;
            decode_prop(&key, Some(v))
                .and_then(|p| p.xml)
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }

    fn get_quota(&self) -> FsFuture<'_, (u64, Option<u64>)> {
        async move {
            let s = self.vfs.statfs();
            let bs = u64::from(s.bsize);
            Ok((s.blocks.saturating_sub(s.bfree) * bs, Some(s.blocks * bs)))
        }
        .boxed()
    }
}

/// dav-server re-exports no `http`; its `StatusCode` is `http`'s.
mod http_status {
    pub use hyper::StatusCode;
}

struct Entry {
    name: Vec<u8>,
    meta: Meta,
}

impl DavDirEntry for Entry {
    fn name(&self) -> Vec<u8> {
        self.name.clone()
    }
    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let m: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        Box::pin(std::future::ready(Ok(m)))
    }
}

/// Where a whole-file upload goes once complete.
#[derive(Debug)]
struct Publish {
    parent: u64,
    tmp: Vec<u8>,
    name: Vec<u8>,
    done: bool,
}

/// An open file: a VFS handle and a position.
pub struct VfsFile {
    vfs: Arc<Vfs>,
    ino: u64,
    fh: u64,
    pos: u64,
    written: u64,
    /// The body's announced length (Content-Length), if any.
    expect: Option<u64>,
    publish: Option<Publish>,
    /// Written bytes not yet handed to the VFS; they start at `pos`.
    pending: Vec<u8>,
}

impl fmt::Debug for VfsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfsFile")
            .field("ino", &self.ino)
            .field("fh", &self.fh)
            .field("pos", &self.pos)
            .finish()
    }
}

impl VfsFile {
    fn new(dav: &VfsDav, ino: u64, fh: u64, publish: Option<Publish>, expect: Option<u64>) -> Self {
        VfsFile {
            vfs: dav.vfs.clone(),
            ino,
            fh,
            pos: 0,
            written: 0,
            expect,
            publish,
            pending: Vec::new(),
        }
    }

    fn meta(&self) -> FsResult<Meta> {
        self.vfs.getattr(self.ino).map(Meta).map_err(fs_err)
    }

    /// Hand the gathered bytes to the VFS.
    async fn drain(&mut self) -> FsResult<()> {
        let data = std::mem::take(&mut self.pending);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = self
                .vfs
                .write(self.ino, self.fh, self.pos, rest)
                .await
                .map_err(fs_err)? as usize;
            if n == 0 {
                return Err(FsError::GeneralFailure);
            }
            self.pos += n as u64;
            rest = &rest[n..];
        }
        self.pending = data;
        self.pending.clear();
        Ok(())
    }

    async fn read_at_pos(&mut self, count: usize) -> FsResult<Vec<u8>> {
        self.drain().await?;
        let n = count.min(MAX_READ) as u32;
        let b = self
            .vfs
            .read(self.ino, self.fh, self.pos, n)
            .await
            .map_err(fs_err)?;
        self.pos += b.len() as u64;
        Ok(b)
    }

    async fn write_at_pos(&mut self, data: &[u8]) -> FsResult<()> {
        self.pending.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.pending.len() >= WRITE_BUF {
            self.drain().await?;
        }
        Ok(())
    }

    /// The body is complete: make it durable locally (like close) and, for
    /// a whole-file upload, put it in place. A body shorter than announced
    /// is not put in place.
    async fn finish(&mut self) -> FsResult<()> {
        self.drain().await?;
        if let Some(p) = &mut self.publish {
            if p.done {
                return Ok(());
            }
            if self.expect.is_some_and(|n| n != self.written) {
                return Err(FsError::GeneralFailure);
            }
            self.vfs
                .rename(p.parent, &p.tmp, p.parent, &p.name, 0)
                .map_err(fs_err)?;
            p.done = true;
        }
        self.vfs.flush(self.ino).await.map_err(fs_err)
    }
}

impl Drop for VfsFile {
    fn drop(&mut self) {
        if let Some(p) = &self.publish {
            if !p.done {
                // an interrupted upload: its data never gets a name
                if let Err(e) = self.vfs.unlink(p.parent, &p.tmp) {
                    warn!(error = ?e, "could not remove an interrupted upload");
                }
            }
        }
        let (vfs, ino, fh) = (self.vfs.clone(), self.ino, self.fh);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = vfs.release(ino, fh).await;
            });
        }
    }
}

impl DavFile for VfsFile {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        async move {
            self.drain().await?;
            Ok(Box::new(self.meta()?) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn write_buf(&mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async move {
            while buf.has_remaining() {
                let chunk = buf.chunk().to_vec();
                self.write_at_pos(&chunk).await?;
                buf.advance(chunk.len());
            }
            Ok(())
        }
        .boxed()
    }

    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        async move { self.write_at_pos(&buf).await }.boxed()
    }

    fn read_bytes(&mut self, count: usize) -> FsFuture<'_, Bytes> {
        async move { Ok(Bytes::from(self.read_at_pos(count).await?)) }.boxed()
    }

    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            self.drain().await?;
            let size = self.meta()?.0.size;
            let new = match pos {
                SeekFrom::Start(n) => Some(n),
                SeekFrom::End(d) => size.checked_add_signed(d),
                SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            }
            .ok_or(FsError::GeneralFailure)?;
            self.pos = new;
            Ok(new)
        }
        .boxed()
    }

    fn flush(&mut self) -> FsFuture<'_, ()> {
        async move { self.finish().await }.boxed()
    }
}
