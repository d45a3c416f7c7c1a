//! Maintenance: `info` (usage and dedup figures), `gc` (remove blobs, packs
//! and metadata objects nothing references — crash leftovers — and repack
//! packs that deletions left mostly empty) and `check` (every referenced
//! blob or packed item exists, has the right size and, optionally,
//! authenticates).

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::stream::{self, StreamExt};
use strata_crypto::BlobId;
use tracing::{info, warn};

use crate::error::{VaultError, VaultResult};
use crate::format::blob::{self, stored_len};
use crate::format::pack::{
    self, item_len, item_range, pack_key, parse_pack_key, PackBuilder, FIRST_ITEM, PACK_PREFIX,
};
use crate::format::{blob_key, parse_blob_key, DATA_PREFIX, META_PREFIX};
use crate::record::{Kind, PackItem, Record};
use crate::tree::PackLoc;
use crate::vault::Vault;

/// `gc` repacks a pack when its live items fill less than this share of it.
pub const DEFAULT_REPACK_BELOW: f64 = 0.7;

/// Options of [`Vault::gc_with`].
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Repack packs whose live items fill less than this share (0 never
    /// repacks; 1 repacks every pack with any dead byte).
    pub repack_below: f64,
    /// Test hook: stop after this step of a repack, as a crash would
    /// (1: new packs sent, 2: their records committed).
    pub stop_after: Option<u8>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            repack_below: DEFAULT_REPACK_BELOW,
            stop_after: None,
        }
    }
}

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
    /// Packs with live items, and how many of the blobs are packed.
    pub packs: u64,
    pub packed_blobs: u64,
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
    /// Unreferenced packs deleted (their bytes are in `bytes_freed`).
    pub packs_deleted: u64,
    /// Packs rewritten without their dead items, and the packs written.
    pub packs_repacked: u64,
    pub packs_written: u64,
    /// Of `bytes_freed`: the bytes of deleted packs (unreferenced or repacked).
    pub pack_bytes_freed: u64,
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
                for c in n.chunks().iter().flatten() {
                    let sz = if t.packed(&c.id).is_some() {
                        item_len(u64::from(c.blob_len))
                    } else {
                        stored_len(u64::from(c.blob_len), max)
                    };
                    if seen.insert(c.id) {
                        i.blobs += 1;
                        i.blob_bytes += sz;
                    } else {
                        i.dedup_saved += sz;
                    }
                }
            }
            i.packs = t.packs().len() as u64;
            i.packed_blobs = t.packed_count() as u64;
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

    /// Commit, then delete every blob and pack no file references (e.g.
    /// uploaded by a run that crashed before its metadata commit), repack
    /// packs mostly emptied by deletions, and drop obsolete metadata.
    pub async fn gc(&self) -> VaultResult<GcReport> {
        self.gc_with(GcOptions::default()).await
    }

    /// [`Vault::gc`] with options.
    pub async fn gc_with(&self, o: GcOptions) -> VaultResult<GcReport> {
        // The keep-set must be the *committed* references: computed with
        // nothing uncommitted, while no writer can upload (data lock held).
        let (_w, (blobs, packs)) = loop {
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
            if !blobs.contains(&id) {
                self.store.delete(&o.key).await?;
                r.blobs_deleted += 1;
                r.bytes_freed = r.bytes_freed.saturating_add(o.size);
            }
        }
        let mut sizes: HashMap<BlobId, u64> = HashMap::new();
        for ob in self.store.list(PACK_PREFIX).await? {
            let Some(id) = parse_pack_key(&ob.key) else {
                continue;
            };
            if packs.contains(&id) {
                sizes.insert(id, ob.size);
            } else if !self.chunks.pack_unsent(&id) {
                self.store.delete(&ob.key).await?;
                r.packs_deleted += 1;
                r.bytes_freed = r.bytes_freed.saturating_add(ob.size);
                r.pack_bytes_freed = r.pack_bytes_freed.saturating_add(ob.size);
            }
        }
        if o.repack_below > 0.0 {
            self.repack(&sizes, &o, &mut r).await?;
        }
        drop(_w);
        r.meta_deleted = self.cleanup_obsolete_meta().await? as u64;
        Ok(r)
    }

    /// Rewrite the live items of the packs whose live share is under the
    /// threshold into new packs. Crash-safe at every step: the new packs
    /// are sent (and synced) first, then one commit moves the items to
    /// them, then the old packs (now without live items) are deleted. A
    /// crash before the commit leaves unreferenced new packs, one after it
    /// unreferenced old packs: both are deleted by the next `gc`. Items are
    /// authenticated before they are copied; a pack with a damaged live
    /// item is left as it is (`check --read-data` names the file).
    /// Caller holds the data lock exclusively.
    async fn repack(
        &self,
        sizes: &HashMap<BlobId, u64>,
        o: &GcOptions,
        r: &mut GcReport,
    ) -> VaultResult<()> {
        let (uses, table) = self.with_tree(|t| (t.packs().clone(), t.pack_table()));
        let mut doomed: Vec<BlobId> = uses
            .iter()
            .filter(|(p, u)| {
                let size = sizes.get(p).copied().unwrap_or(0).max(1);
                (u.bytes as f64) < o.repack_below * size as f64
            })
            .map(|(p, _)| *p)
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        doomed.sort();
        let mut items: BTreeMap<BlobId, Vec<(BlobId, PackLoc)>> = BTreeMap::new();
        for (id, l) in &table {
            if doomed.contains(&l.pack) {
                items.entry(l.pack).or_default().push((*id, *l));
            }
        }
        let max = self.caps.max_object_size;
        let cap = self.chunks.pack_size();
        let mut out: Vec<(PackBuilder, Vec<PackItem>)> = Vec::new();
        let mut moved: Vec<BlobId> = Vec::new();
        for p in &doomed {
            let key = pack_key(p);
            let bytes = match self.store.get(&key).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(pack = %key, error = %e, "cannot read a pack to repack it; left as it is");
                    continue;
                }
            };
            let mut its = items.remove(p).unwrap_or_default();
            its.sort_by_key(|(_, l)| l.offset);
            // authenticate every live item before copying any
            let keys = self.keys.clone();
            let check = its.clone();
            let data = bytes.clone();
            let okay = tokio::task::spawn_blocking(move || {
                check.iter().all(|(id, l)| {
                    let len = u64::from(l.blob_len);
                    let rg = item_range(u64::from(l.offset), len, 0, blob::segments(len) - 1);
                    data.get(rg.start as usize..rg.end as usize)
                        .is_some_and(|b| blob::open_segments(&keys, id, len, 0, b, "").is_ok())
                })
            })
            .await
            .map_err(|e| VaultError::Invalid(format!("verification task failed: {e}")))?;
            if !okay {
                warn!(pack = %key, "a live item of this pack does not authenticate; not repacked (run `strata check --read-data`)");
                continue;
            }
            for (id, l) in its {
                let len = u64::from(l.blob_len);
                let rg = item_range(u64::from(l.offset), len, 0, blob::segments(len) - 1);
                let item = &bytes[rg.start as usize..rg.end as usize];
                if !out.last().is_some_and(|(b, _)| b.fits(item.len() as u64)) {
                    out.push((
                        PackBuilder::new(
                            pack::new_pack_id()?,
                            cap.max(FIRST_ITEM + item.len() as u64),
                        ),
                        Vec::new(),
                    ));
                }
                let (b, list) = out.last_mut().expect("a pack is open");
                let offset = b.push(item);
                list.push(PackItem {
                    id,
                    offset: offset as u32,
                    blob_len: l.blob_len,
                });
            }
            moved.push(*p);
        }
        if moved.is_empty() {
            return Ok(());
        }
        // 1. the new packs, durable before anything references them
        let mut records = Vec::new();
        for (b, list) in out {
            let (id, bytes) = b.finish(max);
            self.chunks.put_pack(&id, bytes).await?;
            r.packs_written += 1;
            records.push(Record::Pack {
                pack: id,
                items: list,
            });
        }
        self.store.sync().await?;
        if o.stop_after == Some(1) {
            return Ok(());
        }
        // 2. move the items (one unit when it fits one log object)
        match self.apply_all(records.clone()) {
            Err(crate::tree::ApplyError::TooLarge) => {
                for rec in records {
                    self.apply(rec)
                        .map_err(|e| VaultError::Invalid(format!("repack record: {e}")))?;
                }
            }
            other => {
                other.map_err(|e| VaultError::Invalid(format!("repack record: {e}")))?;
            }
        }
        self.commit().await?;
        if o.stop_after == Some(2) {
            return Ok(());
        }
        // 3. the old packs, now without live items
        for p in &moved {
            if self.with_tree(|t| t.packs().contains_key(p)) {
                continue; // an item could not move (should not happen)
            }
            let key = pack_key(p);
            match self.store.delete(&key).await {
                Ok(()) => {
                    r.packs_repacked += 1;
                    let n = sizes.get(p).copied().unwrap_or(0);
                    r.bytes_freed = r.bytes_freed.saturating_add(n);
                    r.pack_bytes_freed = r.pack_bytes_freed.saturating_add(n);
                }
                Err(e) => {
                    warn!(pack = %key, error = %e, "could not delete a repacked pack; the next gc will")
                }
            }
        }
        info!(
            repacked = r.packs_repacked,
            written = r.packs_written,
            "repacked packs"
        );
        Ok(())
    }

    /// Verify that every referenced blob exists with the expected size; with
    /// `read_data`, also download and authenticate every segment.
    pub async fn check(
        &self,
        read_data: bool,
        progress: Option<crate::data::Progress>,
    ) -> VaultResult<CheckReport> {
        let (mut refs, table) = self.with_tree(|t| (t.referenced_blobs(), t.pack_table()));
        let packed: HashMap<BlobId, crate::record::ChunkRef> = table
            .keys()
            .filter_map(|id| refs.remove(id).map(|c| (*id, c)))
            .collect();
        let paths = self.paths();
        let mut users: HashMap<BlobId, Vec<String>> = HashMap::new();
        self.with_tree(|t| {
            for n in t.inodes() {
                for c in n.chunks().iter().flatten() {
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
        let packs_present: HashMap<BlobId, u64> = self
            .store
            .list(PACK_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| parse_pack_key(&o.key).map(|id| (id, o.size)))
            .collect();
        let live_packs: HashSet<BlobId> = table.values().map(|l| l.pack).collect();
        let mut report = CheckReport {
            unreferenced: present.keys().filter(|id| !refs.contains_key(id)).count() as u64
                + packs_present
                    .keys()
                    .filter(|p| !live_packs.contains(p))
                    .count() as u64,
            ..Default::default()
        };
        // packed items: the pack must be there and long enough; with
        // read_data every item is authenticated on its own (one read of
        // each pack), so a damaged item names only its own files
        let mut by_pack: BTreeMap<BlobId, Vec<(BlobId, PackLoc)>> = BTreeMap::new();
        for (id, l) in &table {
            if packed.contains_key(id) {
                by_pack.entry(l.pack).or_default().push((*id, *l));
            }
        }
        let mut packs_to_read = Vec::new();
        for (p, mut its) in by_pack {
            its.sort_by_key(|(_, l)| l.offset);
            report.blobs_checked += its.len() as u64;
            let key = pack_key(&p);
            let files_of = |its: &[(BlobId, PackLoc)]| {
                let mut f: Vec<String> = Vec::new();
                for (id, _) in its {
                    for u in users.get(id).into_iter().flatten() {
                        if !f.contains(u) {
                            f.push(u.clone());
                        }
                    }
                }
                f
            };
            let need = its
                .iter()
                .map(|(_, l)| u64::from(l.offset) + item_len(u64::from(l.blob_len)))
                .max()
                .unwrap_or(0);
            match packs_present.get(&p) {
                None => report.damaged.push(Damage {
                    object: key,
                    files: files_of(&its),
                    problem: "missing from the store".into(),
                }),
                Some(&size) if size < need => {
                    let cut: Vec<_> = its
                        .iter()
                        .filter(|(_, l)| {
                            u64::from(l.offset) + item_len(u64::from(l.blob_len)) > size
                        })
                        .copied()
                        .collect();
                    report.damaged.push(Damage {
                        object: key.clone(),
                        files: files_of(&cut),
                        problem: format!("truncated: {size} bytes, items up to byte {need}"),
                    });
                    if read_data {
                        let whole: Vec<_> = its
                            .into_iter()
                            .filter(|(_, l)| {
                                u64::from(l.offset) + item_len(u64::from(l.blob_len)) <= size
                            })
                            .collect();
                        packs_to_read.push((key, whole));
                    }
                }
                Some(_) => {
                    if read_data {
                        packs_to_read.push((key, its));
                    }
                }
            }
        }
        let pack_results: Vec<_> = stream::iter(packs_to_read)
            .map(|(key, its)| {
                let progress = progress.clone();
                async move {
                    let res = self.verify_pack(&key, &its).await;
                    if let Some(p) = &progress {
                        p(its.iter().map(|(_, l)| u64::from(l.blob_len)).sum());
                    }
                    (res, key, its)
                }
            })
            .buffer_unordered(self.opts.parallelism.max(1))
            .collect()
            .await;
        for (res, key, its) in pack_results {
            match res {
                Err(e) => report.damaged.push(Damage {
                    files: its
                        .iter()
                        .flat_map(|(id, _)| users.get(id).cloned().unwrap_or_default())
                        .collect(),
                    object: key,
                    problem: e.to_string(),
                }),
                Ok(bad) => {
                    for (id, l) in &its {
                        let len = u64::from(l.blob_len);
                        match bad.iter().find(|(b, _)| b == id) {
                            None => report.bytes_read += len,
                            Some((_, why)) => {
                                let rg = item_range(
                                    u64::from(l.offset),
                                    len,
                                    0,
                                    blob::segments(len) - 1,
                                );
                                report.damaged.push(Damage {
                                    object: key.clone(),
                                    files: users.get(id).cloned().unwrap_or_default(),
                                    problem: format!(
                                        "item at bytes {}..{}: {why}",
                                        rg.start, rg.end
                                    ),
                                });
                            }
                        }
                    }
                }
            }
        }
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

    /// Authenticate every item of a pack (one read of the whole pack);
    /// returns the items that fail, with why.
    async fn verify_pack(
        &self,
        key: &str,
        items: &[(BlobId, PackLoc)],
    ) -> VaultResult<Vec<(BlobId, String)>> {
        let bytes = self
            .store
            .get(key)
            .await
            .map_err(|e| VaultError::from_get(e, key, "restore it from a backup"))?;
        let keys = self.keys.clone();
        let items = items.to_vec();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let mut bad = Vec::new();
            for (id, l) in items {
                let len = u64::from(l.blob_len);
                let rg = item_range(u64::from(l.offset), len, 0, blob::segments(len) - 1);
                let why = match bytes.get(rg.start as usize..rg.end as usize) {
                    None => Some("object is truncated".to_string()),
                    Some(b) => blob::open_segments(&keys, &id, len, 0, b, &key)
                        .err()
                        .map(|e| match e {
                            VaultError::Corrupt { detail, .. } => detail,
                            other => other.to_string(),
                        }),
                };
                if let Some(w) = why {
                    bad.push((id, w));
                }
            }
            bad
        })
        .await
        .map_err(|e| VaultError::Invalid(format!("verification task failed: {e}")))
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
