//! Path-level operations on a [`Vault`]: resolving paths to inodes,
//! listing, and the CLI's mkdir / symlink / remove / rename. Each change is
//! one record (or one per entry for a recursive remove).

use crate::error::{VaultError, VaultResult};
use crate::record::{now, Kind, NewInode, Record};
use crate::tree::{ApplyError, Inode, ROOT_INO};
use crate::vault::Vault;

/// Map a tree rejection to a path-level error.
pub fn apply_error(e: ApplyError, path: &str) -> VaultError {
    let path = path.to_string();
    match e {
        ApplyError::NotFound => VaultError::NotFound { path },
        ApplyError::Exists => VaultError::Exists { path },
        ApplyError::NotDir => VaultError::NotADirectory { path },
        ApplyError::IsDir => VaultError::IsADirectory { path },
        ApplyError::NotEmpty => VaultError::DirNotEmpty { path },
        ApplyError::NameTooLong => VaultError::InvalidPath {
            path,
            why: format!("a name is longer than {} bytes", crate::tree::NAME_MAX),
        },
        ApplyError::TooLarge => VaultError::Invalid(format!(
            "{path}: the change is too large for one metadata object of this store (raise max-object-size)"
        )),
        ApplyError::Invalid => VaultError::InvalidPath {
            path,
            why: "not allowed here (moving a directory into itself, or a reserved name)".into(),
        },
    }
}

/// Split a vault path into components ('.' and empty ones dropped).
fn components(path: &str) -> VaultResult<Vec<&str>> {
    if path.contains('\0') {
        return Err(VaultError::InvalidPath {
            path: path.into(),
            why: "contains a NUL byte".into(),
        });
    }
    Ok(path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect())
}

impl Vault {
    /// Resolve a vault path (absolute or relative to the root) to an inode.
    pub fn resolve(&self, path: &str) -> VaultResult<u64> {
        let comps = components(path)?;
        self.with_tree(|t| {
            let mut ino = ROOT_INO;
            for c in comps {
                let node = t
                    .get(ino)
                    .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
                if node.kind != Kind::Dir {
                    return Err(VaultError::NotADirectory { path: path.into() });
                }
                ino = if c == ".." {
                    node.parent
                } else {
                    t.lookup(ino, c.as_bytes())
                        .ok_or_else(|| VaultError::NotFound { path: path.into() })?
                };
            }
            Ok(ino)
        })
    }

    /// Resolve the parent directory of `path`; returns (parent, last name).
    pub fn resolve_parent(&self, path: &str) -> VaultResult<(u64, Vec<u8>)> {
        let comps = components(path)?;
        let Some((last, dirs)) = comps.split_last() else {
            return Err(VaultError::InvalidPath {
                path: path.into(),
                why: "the root directory cannot be used here".into(),
            });
        };
        if *last == ".." {
            return Err(VaultError::InvalidPath {
                path: path.into(),
                why: "must not end in '..'".into(),
            });
        }
        let parent = self.resolve(&dirs.join("/"))?;
        match self.inode(parent) {
            Some(n) if n.kind == Kind::Dir => Ok((parent, last.as_bytes().to_vec())),
            Some(_) => Err(VaultError::NotADirectory { path: path.into() }),
            None => Err(VaultError::NotFound { path: path.into() }),
        }
    }

    /// Look a path up and return a copy of its inode.
    pub fn stat_path(&self, path: &str) -> VaultResult<Inode> {
        let ino = self.resolve(path)?;
        self.inode(ino)
            .ok_or_else(|| VaultError::NotFound { path: path.into() })
    }

    /// Entries of a directory, sorted by name.
    pub fn list_dir(&self, path: &str) -> VaultResult<Vec<(Vec<u8>, Inode)>> {
        let ino = self.resolve(path)?;
        self.with_tree(|t| {
            let d = t
                .get(ino)
                .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
            if d.kind != Kind::Dir {
                return Err(VaultError::NotADirectory { path: path.into() });
            }
            Ok(d.entries()
                .iter()
                .filter_map(|(n, i)| t.get(*i).map(|node| (n.to_vec(), node.clone())))
                .collect())
        })
    }

    pub(crate) fn new_inode(&self, kind: Kind, perm: u32, target: Option<Vec<u8>>) -> NewInode {
        NewInode {
            kind,
            perm,
            uid: crate::vault::current_uid(),
            gid: crate::vault::current_gid(),
            rdev: 0,
            time: now(),
            target,
            chunk_size: if kind == Kind::File {
                self.chunk_size
            } else {
                0
            },
        }
    }

    /// Create a directory (with `parents`, also missing ancestors; an existing
    /// directory is then fine). Returns its inode.
    pub fn mkdir(&self, path: &str, perm: u32, parents: bool) -> VaultResult<u64> {
        if parents {
            let mut ino = ROOT_INO;
            let mut so_far = String::new();
            for c in components(path)? {
                so_far.push('/');
                so_far.push_str(c);
                match self.with_tree(|t| t.lookup(ino, c.as_bytes())) {
                    Some(child) => {
                        if self.inode(child).is_some_and(|n| n.kind != Kind::Dir) {
                            return Err(VaultError::NotADirectory { path: so_far });
                        }
                        ino = child;
                    }
                    None => ino = self.mkdir(&so_far, perm, false)?,
                }
            }
            return Ok(ino);
        }
        let (parent, name) = self.resolve_parent(path)?;
        let ino = self.alloc_ino();
        self.apply(Record::Create {
            ino,
            parent,
            name,
            attr: self.new_inode(Kind::Dir, perm, None),
        })
        .map_err(|e| apply_error(e, path))?;
        Ok(ino)
    }

    /// Create a symbolic link at `path` pointing to `target`.
    pub fn symlink(&self, path: &str, target: &[u8]) -> VaultResult<u64> {
        let (parent, name) = self.resolve_parent(path)?;
        let ino = self.alloc_ino();
        self.apply(Record::Create {
            ino,
            parent,
            name,
            attr: self.new_inode(Kind::Symlink, 0o777, Some(target.to_vec())),
        })
        .map_err(|e| apply_error(e, path))?;
        Ok(ino)
    }

    /// Remove a file, link or (empty, or with `recursive` any) directory.
    pub fn remove(&self, path: &str, recursive: bool) -> VaultResult<()> {
        let (parent, name) = self.resolve_parent(path)?;
        let ino = self
            .with_tree(|t| t.lookup(parent, &name))
            .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
        let node = self
            .inode(ino)
            .ok_or_else(|| VaultError::NotFound { path: path.into() })?;
        if node.kind == Kind::Dir && !node.entries().is_empty() {
            if !recursive {
                return Err(VaultError::DirNotEmpty { path: path.into() });
            }
            for child in node.entries().keys() {
                let cp = format!(
                    "{}/{}",
                    path.trim_end_matches('/'),
                    String::from_utf8_lossy(child)
                );
                self.remove_entry(ino, child, &cp, true)?;
            }
        }
        self.remove_entry(parent, &name, path, recursive)
    }

    fn remove_entry(
        &self,
        parent: u64,
        name: &[u8],
        path: &str,
        recursive: bool,
    ) -> VaultResult<()> {
        if recursive {
            if let Some(node) =
                self.with_tree(|t| t.lookup(parent, name).and_then(|i| t.get(i).cloned()))
            {
                if node.kind == Kind::Dir {
                    for child in node.entries().keys() {
                        let cp = format!("{path}/{}", String::from_utf8_lossy(child));
                        self.remove_entry(node.ino, child, &cp, true)?;
                    }
                }
            }
        }
        self.apply(Record::Unlink {
            parent,
            name: name.to_vec(),
            keep_orphan: false,
            time: now(),
        })
        .map(|_| ())
        .map_err(|e| apply_error(e, path))
    }

    /// Move/rename like `mv`: if `to` is an existing directory, `from` moves
    /// into it; otherwise `from` takes the name `to` (replacing a file there).
    pub fn rename(&self, from: &str, to: &str) -> VaultResult<()> {
        let (parent, name) = self.resolve_parent(from)?;
        if self.with_tree(|t| t.lookup(parent, &name)).is_none() {
            return Err(VaultError::NotFound { path: from.into() });
        }
        let (new_parent, new_name) = match self.resolve(to) {
            Ok(d)
                if self.inode(d).is_some_and(|n| n.kind == Kind::Dir)
                    && !self.same_entry(parent, &name, d) =>
            {
                (d, name.clone())
            }
            _ => self.resolve_parent(to)?,
        };
        self.apply(Record::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags: 0,
            time: now(),
        })
        .map(|_| ())
        .map_err(|e| apply_error(e, to))
    }

    fn same_entry(&self, parent: u64, name: &[u8], ino: u64) -> bool {
        self.with_tree(|t| t.lookup(parent, name)) == Some(ino)
    }

    /// Path of every inode reachable from the root (first path found for
    /// hard-linked files).
    pub fn paths(&self) -> std::collections::HashMap<u64, String> {
        self.with_tree(|t| {
            let mut out = std::collections::HashMap::new();
            let mut stack = vec![(ROOT_INO, String::from("/"))];
            while let Some((ino, p)) = stack.pop() {
                if let Some(n) = t.get(ino) {
                    for (name, child) in n.entries() {
                        let cp = format!(
                            "{}{}{}",
                            p,
                            if p.ends_with('/') { "" } else { "/" },
                            String::from_utf8_lossy(name)
                        );
                        if !out.contains_key(child) {
                            stack.push((*child, cp.clone()));
                            out.insert(*child, cp);
                        }
                    }
                }
            }
            out.insert(ROOT_INO, "/".into());
            out
        })
    }
}
