//! Maintenance: `info` (usage and dedup figures), `gc` (remove blobs and
//! metadata objects nothing references — crash leftovers) and `check`
//! (every referenced blob exists, has the right size and, optionally,
//! authenticates).

use std::collections::{HashMap, HashSet};

use futures::stream::{self, StreamExt};
use strata_crypto::BlobId;

use crate::error::{VaultError, VaultResult};
use crate::format::blob::{self, stored_len};
use crate::format::{blob_key, parse_blob_key, DATA_PREFIX, META_PREFIX};
use crate::record::Kind;
use crate::vault::Vault;

/// Figures shown by `strata info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of file sizes (logical bytes).
    pub bytes: u64,
    /// Distinct referenced blobs.
    pub blobs: u64,
    /// Bytes the referenced blobs occupy in the store (padded, sealed).
    pub blob_bytes: u64,
    /// Bytes deduplication saved (chunk references beyond the first, sealed size).
    pub dedup_saved: u64,
    /// Objects and bytes actually present in the store.
    pub store_objects: u64,
    pub store_bytes: u64,
    pub meta_objects: u64,
    pub meta_bytes: u64,
    pub version: u64,
    pub chunk_size: u32,
}

/// Result of `gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    pub meta_deleted: u64,
}

/// One problem found by `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub object: String,
    pub files: Vec<String>,
    pub problem: String,
}

/// Result of `check`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub blobs_checked: u64,
    pub bytes_read: u64,
    pub damaged: Vec<Damage>,
    pub unreferenced: u64,
}

impl Vault {
    /// Usage figures (lists the store once).
    pub async fn info(&self) -> VaultResult<Info> {
        let max = self.caps.max_object_size;
        let mut info = self.with_tree(|t| {
            let mut i = Info::default();
            let mut seen: HashSet<BlobId> = HashSet::new();
            for n in t.inodes() {
                match n.kind {
                    Kind::File => {
                        i.files += 1;
                        i.bytes += n.size;
                    }
                    Kind::Dir => i.dirs += 1,
                    Kind::Symlink => i.symlinks += 1,
                    _ => {}
                }
                for c in n.chunks.iter().flatten() {
                    let sz = stored_len(u64::from(c.blob_len), max);
                    if seen.insert(c.id) {
                        i.blobs += 1;
                        i.blob_bytes += sz;
                    } else {
                        i.dedup_saved += sz;
                    }
                }
            }
            i
        });
        for o in self.store.list("").await? {
            info.store_objects += 1;
            info.store_bytes = info.store_bytes.saturating_add(o.size);
            if o.key.starts_with(META_PREFIX) {
                info.meta_objects += 1;
                info.meta_bytes = info.meta_bytes.saturating_add(o.size);
            }
        }
        info.version = self.version();
        info.chunk_size = self.chunk_size();
        Ok(info)
    }

    /// Commit, then delete every blob no file references (e.g. uploaded by a
    /// run that crashed before its metadata commit) and obsolete metadata.
    pub async fn gc(&self) -> VaultResult<GcReport> {
        // The keep-set must be the *committed* references: computed with
        // nothing uncommitted, while no writer can upload (data lock held).
        let (_w, referenced) = loop {
            self.commit().await?;
            let w = self.data_lock.write().await;
            if let Some(refs) = self.committed_refs() {
                break (w, refs);
            }
        };
        // Deleting what our tree does not reference is only safe while no
        // other writer can have added references: the lease must be held.
        self.check_writable().await?;
        let mut r = GcReport::default();
        for o in self.store.list(DATA_PREFIX).await? {
            let Some(id) = parse_blob_key(&o.key) else {
                continue;
            };
            if !referenced.contains(&id) {
                self.store.delete(&o.key).await?;
                r.blobs_deleted += 1;
                r.bytes_freed = r.bytes_freed.saturating_add(o.size);
            }
        }
        drop(_w);
        r.meta_deleted = self.cleanup_obsolete_meta().await? as u64;
        Ok(r)
    }

    /// Verify that every referenced blob exists with the expected size; with
    /// `read_data`, also download and authenticate every segment.
    pub async fn check(
        &self,
        read_data: bool,
        progress: Option<crate::data::Progress>,
    ) -> VaultResult<CheckReport> {
        let refs = self.with_tree(|t| t.referenced_blobs());
        let paths = self.paths();
        let mut users: HashMap<BlobId, Vec<String>> = HashMap::new();
        self.with_tree(|t| {
            for n in t.inodes() {
                for c in n.chunks.iter().flatten() {
                    let p = paths
                        .get(&n.ino)
                        .cloned()
                        .unwrap_or_else(|| format!("<inode {}>", n.ino));
                    let v = users.entry(c.id).or_default();
                    if !v.contains(&p) {
                        v.push(p);
                    }
                }
            }
        });
        let present: HashMap<BlobId, u64> = self
            .store
            .list(DATA_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| parse_blob_key(&o.key).map(|id| (id, o.size)))
            .collect();
        let mut report = CheckReport {
            unreferenced: present.keys().filter(|id| !refs.contains_key(id)).count() as u64,
            ..Default::default()
        };
        let max = self.caps.max_object_size;
        let mut to_read = Vec::new();
        for (id, c) in &refs {
            let key = blob_key(id);
            let files = users.get(id).cloned().unwrap_or_default();
            report.blobs_checked += 1;
            match present.get(id) {
                None => report.damaged.push(Damage {
                    object: key,
                    files,
                    problem: "missing from the store".into(),
                }),
                Some(&size) if size < blob::sealed_len(u64::from(c.blob_len)) => {
                    report.damaged.push(Damage {
                        object: key,
                        files,
                        problem: format!(
                            "truncated: {size} bytes, expected {}",
                            stored_len(u64::from(c.blob_len), max)
                        ),
                    })
                }
                Some(_) => {
                    if read_data {
                        to_read.push((*id, *c, key, files));
                    }
                }
            }
        }
        let results: Vec<_> = stream::iter(to_read)
            .map(|(id, c, key, files)| {
                let progress = progress.clone();
                async move {
                    let res = self.verify_blob(&id, u64::from(c.blob_len), &key).await;
                    if let Some(p) = &progress {
                        p(u64::from(c.blob_len));
                    }
                    (res, key, files, u64::from(c.blob_len))
                }
            })
            .buffer_unordered(self.opts.parallelism.max(1))
            .collect()
            .await;
        for (res, key, files, len) in results {
            match res {
                Ok(()) => report.bytes_read += len,
                Err(e) => report.damaged.push(Damage {
                    object: key,
                    files,
                    problem: match e {
                        VaultError::Corrupt { detail, range, .. } => match range {
                            Some(r) => format!("{detail} (bytes {}..{})", r.start, r.end),
                            None => detail,
                        },
                        other => other.to_string(),
                    },
                }),
            }
        }
        report.damaged.sort_by(|a, b| a.object.cmp(&b.object));
        Ok(report)
    }

    async fn verify_blob(&self, id: &BlobId, blob_len: u64, key: &str) -> VaultResult<()> {
        let bytes = self
            .store
            .get(key)
            .await
            .map_err(|e| VaultError::from_get(e, key, "restore it from a backup"))?;
        let keys = self.keys.clone();
        let id = *id;
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            blob::open_whole(&keys, &id, blob_len, &bytes, &key).map(|_| ())
        })
        .await
        .map_err(|e| VaultError::Invalid(format!("verification task failed: {e}")))?
    }
}
