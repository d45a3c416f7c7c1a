//! POSIX operations on the tree: lookup, create, link, rename, attributes,
//! xattrs, handles. Metadata lives in memory, so none of these touch the
//! network; each change is one journaled record.

use strata_core::record::{now, NewInode, RENAME_EXCHANGE, RENAME_NOREPLACE};
use strata_core::{Kind, Record, Ts};

use crate::{Attr, DirEntry, Errno, SetAttr, SetTime, StatFs, Vfs, VfsResult};

/// `setxattr` flags.
pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

fn kind_from_mode(mode: u32) -> VfsResult<Kind> {
    Ok(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFCHR => Kind::CharDev,
        libc::S_IFBLK => Kind::BlockDev,
        _ => return Err(Errno(libc::EINVAL)),
    })
}

fn resolve(t: SetTime) -> Ts {
    match t {
        SetTime::Now => now(),
        SetTime::At(t) => t,
    }
}

impl Vfs {
    /// Look a name up in a directory (without copying the directory: a
    /// lookup or create in a directory of many entries stays cheap).
    fn dir_lookup(&self, parent: u64, name: &[u8]) -> VfsResult<u64> {
        if name.len() > strata_core::tree::NAME_MAX {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        self.with_node(parent, |p| {
            if p.kind != Kind::Dir {
                return Err(Errno(libc::ENOTDIR));
            }
            p.entries().get(name).copied().ok_or(Errno(libc::ENOENT))
        })?
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> VfsResult<Attr> {
        let ino = match name {
            b"." => parent,
            b".." => self.parent_of(parent)?,
            _ => self.dir_lookup(parent, name)?,
        };
        self.getattr(ino)
    }

    /// Entries of a directory (without "." and "..").
    pub fn readdir(&self, ino: u64) -> VfsResult<Vec<DirEntry>> {
        self.vault.with_tree(|t| {
            let d = t.get(ino).ok_or(Errno(libc::ENOENT))?;
            if d.kind != Kind::Dir {
                return Err(Errno(libc::ENOTDIR));
            }
            Ok(d.entries()
                .iter()
                .filter_map(|(name, child)| {
                    t.get(*child).map(|c| DirEntry {
                        name: name.to_vec(),
                        ino: *child,
                        kind: c.kind,
                    })
                })
                .collect())
        })
    }

    pub fn parent_of(&self, ino: u64) -> VfsResult<u64> {
        self.with_node(ino, |n| n.parent)
    }

    /// Create any kind of inode (`mode` includes the type bits).
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
        target: Option<&[u8]>,
    ) -> VfsResult<Attr> {
        let kind = if target.is_some() {
            Kind::Symlink
        } else {
            kind_from_mode(mode)?
        };
        let (p_kind, p_nlink, p_perm, p_gid) =
            self.with_node(parent, |p| (p.kind, p.nlink, p.perm, p.gid))?;
        if p_kind != Kind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        if p_nlink == 0 {
            return Err(Errno(libc::ENOENT)); // directory was removed
        }
        // setgid directories pass their group on (and setgid to subdirectories)
        let mut perm = (mode & 0o7777) & !umask;
        let gid = if p_perm & 0o2000 != 0 {
            if kind == Kind::Dir {
                perm |= 0o2000;
            }
            p_gid
        } else {
            gid
        };
        if kind == Kind::Symlink {
            perm = 0o777;
        }
        let ino = self.vault.alloc_ino();
        self.apply(Record::Create {
            ino,
            parent,
            name: name.to_vec(),
            attr: NewInode {
                kind,
                perm,
                uid,
                gid,
                rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
                    rdev
                } else {
                    0
                },
                time: now(),
                target: target.map(|t| t.to_vec()),
                chunk_size: if kind == Kind::File {
                    self.vault.chunk_size()
                } else {
                    0
                },
            },
        })?;
        self.getattr(ino)
    }

    pub fn readlink(&self, ino: u64) -> VfsResult<Vec<u8>> {
        let n = self.node(ino)?;
        n.target().map(<[u8]>::to_vec).ok_or(Errno(libc::EINVAL))
    }

    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> VfsResult<Attr> {
        let n = self.node(ino)?;
        if n.kind == Kind::Dir {
            return Err(Errno(libc::EPERM));
        }
        if n.nlink == 0 {
            return Err(Errno(libc::ENOENT));
        }
        self.apply(Record::Link {
            ino,
            parent,
            name: name.to_vec(),
            time: now(),
        })?;
        self.getattr(ino)
    }

    /// Remove a non-directory entry. An open file stays usable until closed.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> VfsResult<()> {
        let ino = self.dir_lookup(parent, name)?;
        let n = self.node(ino)?;
        if n.kind == Kind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        self.remove_entry(parent, name, ino)
    }

    fn remove_entry(&self, parent: u64, name: &[u8], ino: u64) -> VfsResult<()> {
        let keep = self.open_count(ino) > 0;
        self.apply(Record::Unlink {
            parent,
            name: name.to_vec(),
            keep_orphan: keep,
            time: now(),
        })?;
        if self.vault.inode(ino).is_none() {
            self.wb.drop_inode(ino);
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> VfsResult<()> {
        if name == b"." {
            return Err(Errno(libc::EINVAL));
        }
        if name == b".." {
            return Err(Errno(libc::ENOTEMPTY));
        }
        let ino = self.dir_lookup(parent, name)?;
        let n = self.node(ino)?;
        if n.kind != Kind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        if !n.entries().is_empty() {
            return Err(Errno(libc::ENOTEMPTY));
        }
        self.remove_entry(parent, name, ino)
    }

    /// rename(2) / renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> VfsResult<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags & RENAME_NOREPLACE != 0 && flags & RENAME_EXCHANGE != 0
        {
            return Err(Errno(libc::EINVAL));
        }
        let src = self.dir_lookup(parent, name)?;
        let dst = match self.dir_lookup(new_parent, new_name) {
            Ok(d) => Some(d),
            Err(Errno(libc::ENOENT)) => None,
            Err(e) => return Err(e),
        };
        // A replaced file that is still open must survive as an orphan: drop
        // its name first with keep_orphan, then move.
        if let Some(d) = dst {
            if flags == 0 && d != src {
                let dn = self.node(d)?;
                let sn = self.node(src)?;
                if dn.kind != Kind::Dir
                    && sn.kind != Kind::Dir
                    && self.open_count(d) > 0
                    && dn.nlink == 1
                {
                    self.remove_entry(new_parent, new_name, d)?;
                }
            }
        }
        self.apply(Record::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            time: now(),
        })?;
        if let Some(d) = dst {
            if self.vault.inode(d).is_none() {
                self.wb.drop_inode(d);
            }
        }
        Ok(())
    }

    pub async fn setattr(&self, ino: u64, s: SetAttr) -> VfsResult<Attr> {
        let n = self.node(ino)?;
        let ctime = now();
        if let Some(size) = s.size {
            match n.kind {
                Kind::File => self.truncate(&n, size, ctime).await?,
                Kind::Dir => return Err(Errno(libc::EISDIR)),
                _ => return Err(Errno(libc::EINVAL)),
            }
        }
        let any = s.mode.is_some()
            || s.uid.is_some()
            || s.gid.is_some()
            || s.atime.is_some()
            || s.mtime.is_some();
        if any {
            // chown by root clears setuid/setgid like Linux does for regular files
            let mut perm = s.mode.map(|m| m & 0o7777);
            if (s.uid.is_some() || s.gid.is_some()) && s.mode.is_none() && n.kind == Kind::File {
                let cleared = n.perm & !0o6000;
                if cleared != n.perm {
                    perm = Some(u32::from(cleared));
                }
            }
            let mtime = s.mtime.map(resolve);
            let r = Record::SetAttr {
                ino,
                perm,
                uid: s.uid,
                gid: s.gid,
                size: None,
                atime: s.atime.map(resolve),
                mtime,
                ctime,
            };
            match mtime {
                Some(m) => self.set_attr_with_mtime(r, m).await?,
                None => {
                    self.apply(r)?;
                }
            }
        }
        self.getattr(ino)
    }

    /// Open a file (`write`: for writing): returns a handle number. Counts
    /// opens for unlink-while-open. EROFS for writing on a read-only VFS.
    pub async fn open(&self, ino: u64, truncate: bool, write: bool) -> VfsResult<u64> {
        let n = self.node(ino)?;
        if (write || truncate) && self.read_only() {
            return Err(Errno(libc::EROFS));
        }
        if truncate
            && n.kind == Kind::File
            && (n.size > 0 || self.wb.overlay_attr(ino).is_some_and(|a| a.0 > 0))
        {
            self.truncate(&n, 0, now()).await?;
        }
        self.handles
            .open(ino, write || truncate)
            .ok_or(Errno(libc::EROFS))
    }

    /// Create and open a regular file.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        uid: u32,
        gid: u32,
    ) -> VfsResult<(Attr, u64)> {
        let a = self.mknod(
            parent,
            name,
            libc::S_IFREG | (mode & 0o7777),
            umask,
            0,
            uid,
            gid,
            None,
        )?;
        // mknod refused it if writes are shut (a handoff): this cannot be
        // refused unless one began just now
        let fh = self.handles.open(a.ino, true).ok_or(Errno(libc::EROFS))?;
        Ok((a, fh))
    }

    /// Release handle `fh` of `ino` (its read-ahead stops): an unlinked
    /// file goes away when no handle is left.
    pub async fn release(&self, ino: u64, fh: u64) -> VfsResult<()> {
        let left = self.handles.close(ino, fh);
        if left == 0 {
            self.follow.released(ino);
        }
        if left == 0 && !self.read_only() {
            if let Some(n) = self.vault.inode(ino) {
                if n.nlink == 0 {
                    self.apply(Record::Forget { ino })?;
                    self.wb.drop_inode(ino);
                }
            }
        }
        Ok(())
    }

    /// (`ls -l` asks for an xattr or two of every file: no copy of the inode.)
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> VfsResult<Vec<u8>> {
        self.with_node(ino, |n| n.xattrs().get(name).cloned())?
            .ok_or(Errno(libc::ENODATA))
    }

    pub fn listxattr(&self, ino: u64) -> VfsResult<Vec<Vec<u8>>> {
        self.with_node(ino, |n| n.xattrs().keys().cloned().collect())
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> VfsResult<()> {
        let n = self.node(ino)?;
        if name.is_empty() || name.len() > 255 {
            return Err(Errno(libc::ERANGE));
        }
        if value.len() > 64 * 1024 {
            return Err(Errno(libc::E2BIG));
        }
        let exists = n.xattrs().contains_key(name);
        if flags & XATTR_CREATE != 0 && exists {
            return Err(Errno(libc::EEXIST));
        }
        if flags & XATTR_REPLACE != 0 && !exists {
            return Err(Errno(libc::ENODATA));
        }
        self.apply(Record::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            time: now(),
        })?;
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> VfsResult<()> {
        if !self.node(ino)?.xattrs().contains_key(name) {
            return Err(Errno(libc::ENODATA));
        }
        self.apply(Record::RemoveXattr {
            ino,
            name: name.to_vec(),
            time: now(),
        })?;
        Ok(())
    }

    /// Figures for statfs: a cloud has no fixed size, so report a large
    /// capacity (1 PiB) minus what is used.
    pub fn statfs(&self) -> StatFs {
        let bsize = 4096u64;
        let (used, files) = self.vault.with_tree(|t| {
            (
                t.inodes().map(|n| n.size.div_ceil(bsize)).sum::<u64>(),
                t.len() as u64,
            )
        });
        let blocks = (1u64 << 50) / bsize;
        StatFs {
            blocks,
            bfree: blocks.saturating_sub(used),
            files: files + (1 << 32),
            ffree: 1 << 32,
            bsize: bsize as u32,
            namelen: strata_core::tree::NAME_MAX as u32,
        }
    }
}
