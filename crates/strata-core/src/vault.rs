//! Opening and creating vaults, and making metadata changes durable.
//!
//! A [`Vault`] holds the in-memory tree. Changes are [`Record`]s applied to
//! the tree at once (so later operations see them) and queued; [`Vault::commit`]
//! seals queued records into hash-chained `meta/log.<version>` objects. After
//! enough records a checkpoint of the whole tree is written, and only once it
//! is durable are the logs it covers deleted. Blobs whose last reference was
//! dropped are deleted only after the log that dropped them is durable.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use strata_crypto::{BlobId, KdfParams, Kek, Keys, MasterKey};
use strata_store::{Bytes, Capabilities, DynStore, StoreErrorKind};
use tracing::{debug, info, warn};

use crate::chunks::{Chunks, ReadCacheOptions};
use crate::error::{VaultError, VaultResult};
use crate::follow::{self, list_meta, Loaded, Refresh, Update};
use crate::format::blob::{chunk_size_for, SEGMENT};
use crate::format::header::Header;
use crate::format::meta::{self, CheckpointBody, LogBody};
use crate::format::pack::pack_key;
use crate::format::{self, FORMAT_VERSION, HEADER_KEY};
use crate::lease::{self, Lease, LeaseOptions, LeaseStatus};
use crate::record::{now, PackItem, Record};
use crate::state::{self, SeenState};
use crate::tree::{ApplyError, Inode, Tree};

/// Opening replays every log since the last checkpoint (one GET each), so
/// checkpoint after this many logs even if they hold few records.
const MAX_LOGS_BETWEEN_CHECKPOINTS: u64 = 256;
/// Largest checkpoint encoding written in one go after a multi-part one
/// was interrupted by a change to the tree.
const CHECKPOINT_IN_ONE_MAX: usize = 32 << 20;

/// Default chunk size for new vaults.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;

/// Options for [`Vault::create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub kdf: KdfParams,
    /// Default chunk size of new files (rounded to 64 KiB, capped by the store).
    pub chunk_size: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            kdf: KdfParams::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Options for [`Vault::open`] (and the vault returned by create).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Where the rollback-detection state lives (default: [`state::default_state_dir`]).
    pub state_dir: Option<PathBuf>,
    /// Open even if the store is older than what this machine has seen.
    pub accept_rollback: bool,
    /// Write a checkpoint after this many records.
    pub checkpoint_records: u64,
    /// Parallel blob uploads/downloads of one file (8: on S3 over loopback
    /// 4 left `get` a fifth behind `rclone copy`; 8 costs ~20 MiB more RSS).
    pub parallelism: usize,
    /// Take the writer lease (every front end that writes does; readers
    /// and embedded single-process use leave it `None`). With a lease,
    /// nothing is committed or deleted unless the lease is held; with
    /// [`LeaseOptions::defer_settle`], content-addressed data (blobs,
    /// packs: unreferenced until a log commits them) may be uploaded while
    /// the lease is still being confirmed.
    pub lease: Option<LeaseOptions>,
    /// A read cache for file data (mounts keep one; see
    /// [`crate::readcache`]).
    pub read_cache: Option<ReadCacheOptions>,
    /// Blobs a commit freed are deleted no sooner than this after the
    /// change that freed them, so a follower elsewhere can go on reading a
    /// file deleted here that it has open; what is left at the end goes
    /// with [`Vault::delete_freed_now`] (or `gc`). Mounts: 10 min.
    pub free_grace: Duration,
    /// Size of the packs small files are written into (capped by the
    /// store's max object size; FORMAT §5.6).
    pub pack_size: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            state_dir: None,
            accept_rollback: false,
            checkpoint_records: 20_000,
            parallelism: 8,
            lease: None,
            read_cache: None,
            free_grace: Duration::ZERO,
            pack_size: crate::format::pack::DEFAULT_PACK_SIZE,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) tree: Tree,
    pending: Vec<Record>,
    /// Unit boundaries in `pending` (where a log object may end), with the
    /// unit's encoded size measured once when it was applied.
    breaks: Vec<(usize, usize)>,
    /// Sequence number of `pending[0]` (records are numbered in apply order).
    pending_first_seq: u64,
    /// Sequence number of the newest committed record.
    writer_seq: u64,
    /// Blobs whose last reference went, and when.
    pub(crate) freed: Vec<(Instant, BlobId)>,
    /// Packs whose last live item went (deletable like freed blobs), and when.
    freed_packs: Vec<(Instant, BlobId)>,
    pub(crate) version: u64,
    head: [u8; 32],
    checkpoint_version: u64,
    records_since_checkpoint: u64,
    /// Logs written since the checkpoint (opening replays each one).
    logs_since_checkpoint: u64,
    /// Sealed logs not yet confirmed by the store, oldest first.
    staged: Vec<StagedLog>,
    /// Newest staged version the stage hook was told about.
    reported_version: u64,
    /// The last checkpoint of several parts was given up because the tree
    /// changed between parts: encode the next one whole, in one go.
    checkpoint_in_one: bool,
}

impl Inner {
    /// Move to committed log `version` with chain head `head` (a follower
    /// catching up; nothing of its own is pending).
    pub(crate) fn set_position(&mut self, version: u64, head: [u8; 32], writer_seq: u64) {
        self.version = version;
        self.head = head;
        self.writer_seq = writer_seq;
        self.pending_first_seq = writer_seq + 1;
        self.reported_version = version;
    }
}

/// A sealed log object waiting to be (re)sent.
#[derive(Clone)]
struct StagedLog {
    version: u64,
    bytes: Bytes,
    records: u64,
    last_seq: u64,
}

/// An open vault.
pub struct Vault {
    pub(crate) store: DynStore,
    pub(crate) store_name: String,
    header: Mutex<Header>,
    vault_id: [u8; 16],
    pub(crate) keys: Arc<Keys>,
    pub(crate) caps: Capabilities,
    /// Chunk size for new files.
    pub(crate) chunk_size: u32,
    pub(crate) opts: OpenOptions,
    pub(crate) inner: Arc<Mutex<Inner>>,
    /// For a vault of an older format version: the keys to rewrap its
    /// header at the current version, which it needs before its first
    /// log that references a pack (FORMAT §12).
    upgrade: Mutex<Option<(Kek, MasterKey)>>,
    /// Records naming packs were applied this session.
    wrote_packs: AtomicBool,
    /// Serializes commits.
    commit_lock: tokio::sync::Mutex<()>,
    /// Writers hold it shared while uploading+referencing blobs; blob deletion
    /// takes it exclusively (so a blob is never deleted under a writer).
    pub(crate) data_lock: Arc<tokio::sync::RwLock<()>>,
    /// The data plane: file contents in and out of the store.
    pub(crate) chunks: Arc<Chunks>,
    /// The writer lease, when opened as a lease-holding writer.
    lease: Option<Arc<Lease>>,
    /// A deferred lease was confirmed and nobody committed while this
    /// vault was read (see [`Vault::check_writable`]).
    settled: tokio::sync::OnceCell<()>,
    /// Called with every newly sealed log before it is sent (see
    /// [`Vault::set_stage_hook`]).
    stage_hook: std::sync::OnceLock<StageHook>,
    /// The rollback-detection state file, rewritten in place per commit.
    seen: Mutex<state::SeenFile>,
}

/// See [`Vault::set_stage_hook`].
pub type StageHook = Box<dyn Fn(&StagedHeads) -> std::io::Result<()> + Send + Sync>;

/// The chain position before a batch of newly sealed logs, and the heads the
/// store will be at after each of them.
#[derive(Debug, Clone)]
pub struct StagedHeads {
    /// Last committed (version, head).
    pub committed: (u64, [u8; 32]),
    /// Every staged, not yet confirmed log: (version, head after it).
    pub staged: Vec<(u64, [u8; 32])>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vault {
    /// Create a new vault on an empty store.
    pub async fn create(
        store: DynStore,
        password: &[u8],
        c: CreateOptions,
        opts: OpenOptions,
    ) -> VaultResult<Vault> {
        let name = store.describe();
        store.prepare().await?;
        if store.stat(HEADER_KEY).await?.is_some() {
            return Err(VaultError::AlreadyAVault { store: name });
        }
        // A `probe.*` object is a store capability probe (strata-store's
        // `prepare`) that a crash left behind: not vault content.
        if store
            .list("")
            .await?
            .iter()
            .any(|o| !o.key.starts_with("probe."))
        {
            return Err(VaultError::NotEmpty { store: name });
        }
        let caps = store.capabilities();
        let chunk = chunk_size_for(u64::from(c.chunk_size), caps.max_object_size).ok_or_else(|| {
            VaultError::Invalid(format!(
                "the store's max object size ({} bytes) is too small: Strata needs at least {} bytes per object",
                caps.max_object_size.unwrap_or(0),
                crate::format::blob::sealed_len(SEGMENT)
            ))
        })?;
        let master = strata_crypto::MasterKey::generate()?;
        let header = Header::create(&master, password, c.kdf, chunk as u32)?;
        let keys = Arc::new(Keys::derive(&master)?);
        let vault_id = header.vault_id_bytes()?;
        let tree = Tree::new_root(now(), current_uid(), current_gid());
        let head = meta::genesis_hash(&vault_id);
        // Checkpoint 0 first, header last: the header's presence marks a
        // complete vault.
        let body = CheckpointBody {
            version: 0,
            head,
            writer_seq: 0,
            time: now(),
            tree: tree.to_image(),
        };
        let parts = meta::seal_checkpoint(&keys, &vault_id, &body, caps.max_object_size)?;
        let count = parts.len() as u32;
        for (i, p) in parts.into_iter().enumerate() {
            store
                .put(&format::checkpoint_key(0, i as u32, count), Bytes::from(p))
                .await?;
        }
        let hb = Bytes::from(header.to_bytes()?);
        if caps.conditional_create {
            if !store.put_if_absent(HEADER_KEY, hb).await? {
                return Err(VaultError::AlreadyAVault { store: name });
            }
        } else {
            store.put(HEADER_KEY, hb).await?;
        }
        let lease = match &opts.lease {
            Some(lo) => {
                Some(Lease::acquire(store.clone(), keys.clone(), vault_id, lo.clone()).await?)
            }
            None => None,
        };
        let mut v = Vault::assemble(store, header, vault_id, keys, tree, 0, head, 0, 0, opts);
        v.lease = lease;
        debug_assert_eq!(v.format_version(), FORMAT_VERSION);
        v.save_seen()?;
        info!(store = %v.store_name, "created vault");
        Ok(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        store: DynStore,
        header: Header,
        vault_id: [u8; 16],
        keys: Arc<Keys>,
        tree: Tree,
        version: u64,
        head: [u8; 32],
        checkpoint_version: u64,
        writer_seq: u64,
        opts: OpenOptions,
    ) -> Vault {
        let caps = store.capabilities();
        let chunk_size = chunk_size_for(u64::from(header.chunk_size), caps.max_object_size)
            .unwrap_or(SEGMENT) as u32;
        let seen = Mutex::new(state::SeenFile::new(
            &state_dir(&opts),
            &hex::encode(vault_id),
        ));
        let mut chunks = Chunks::new(store.clone(), keys.clone(), opts.read_cache.as_ref());
        chunks.set_pack_size(opts.pack_size);
        let inner = Arc::new(Mutex::new(Inner {
            tree,
            pending: Vec::new(),
            breaks: Vec::new(),
            pending_first_seq: writer_seq + 1,
            writer_seq,
            freed: Vec::new(),
            freed_packs: Vec::new(),
            version,
            head,
            checkpoint_version,
            records_since_checkpoint: 0,
            logs_since_checkpoint: 0,
            staged: Vec::new(),
            reported_version: version,
            checkpoint_in_one: false,
        }));
        let table = Arc::downgrade(&inner);
        chunks.set_locator(Box::new(move |id| {
            let inner = table.upgrade()?;
            let g = lock(&inner);
            g.tree.packed(id)
        }));
        Vault {
            seen,
            store_name: store.describe(),
            chunks: Arc::new(chunks),
            store,
            header: Mutex::new(header),
            vault_id,
            keys,
            caps,
            chunk_size,
            opts,
            inner,
            upgrade: Mutex::new(None),
            wrote_packs: AtomicBool::new(false),
            commit_lock: tokio::sync::Mutex::new(()),
            data_lock: Arc::new(tokio::sync::RwLock::new(())),

            lease: None,
            settled: tokio::sync::OnceCell::new(),
            stage_hook: std::sync::OnceLock::new(),
        }
    }

    /// Read the header of the vault on `store`.
    pub async fn read_header(store: &DynStore) -> VaultResult<Header> {
        let name = store.describe();
        // Reachability, credentials and capability probes (idempotent).
        store.prepare().await?;
        let bytes = match store.get(HEADER_KEY).await {
            Ok(b) => b,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(VaultError::NotAVault { store: name })
            }
            Err(e) => return Err(e.into()),
        };
        Header::parse(&bytes, &name)
    }

    /// Open an existing vault: newest complete checkpoint + replay of later
    /// logs. With [`OpenOptions::lease`], the writer lease is taken first (so
    /// the state read is the newest), or the open fails with
    /// [`VaultError::Locked`].
    pub async fn open(store: DynStore, password: &[u8], opts: OpenOptions) -> VaultResult<Vault> {
        let name = store.describe();
        let header = Vault::read_header(&store).await?;
        let (master, kek) = header.unlock_with_kek(password, &name)?;
        let keys = Arc::new(Keys::derive(&master)?);
        // an older version keeps what it takes to upgrade the header
        let upgrade = (header.version < FORMAT_VERSION).then_some((kek, master));
        let vault_id = header.vault_id_bytes()?;
        let lease = match &opts.lease {
            Some(lo) => {
                Some(Lease::acquire(store.clone(), keys.clone(), vault_id, lo.clone()).await?)
            }
            None => None,
        };
        match Vault::open_locked(store, header, keys, vault_id, opts).await {
            Ok(mut v) => {
                v.lease = lease;
                *v.upgrade.get_mut().unwrap_or_else(|e| e.into_inner()) = upgrade;
                Ok(v)
            }
            Err(e) => {
                if let Some(l) = lease {
                    if let Err(r) = l.release().await {
                        warn!(error = %r, "could not release the writer lease");
                    }
                }
                Err(e)
            }
        }
    }

    async fn open_locked(
        store: DynStore,
        header: Header,
        keys: Arc<Keys>,
        vault_id: [u8; 16],
        opts: OpenOptions,
    ) -> VaultResult<Vault> {
        let listing = list_meta(&store).await?;
        let seen = state::load(&state_dir(&opts), &header.vault_id)?;
        let Loaded {
            tree,
            version,
            head,
            checkpoint_version: cv,
            writer_seq,
            records,
            logs,
        } = follow::load(
            &store,
            &keys,
            &vault_id,
            &listing,
            seen.as_ref(),
            opts.accept_rollback,
        )
        .await?;
        let v = Vault::assemble(
            store, header, vault_id, keys, tree, version, head, cv, writer_seq, opts,
        );
        {
            let mut g = lock(&v.inner);
            g.records_since_checkpoint = records;
            g.logs_since_checkpoint = logs;
        }
        v.save_seen()?;
        debug!(version, checkpoint = cv, "opened vault");
        Ok(v)
    }

    pub(crate) fn save_seen(&self) -> VaultResult<()> {
        let (version, head) = {
            let g = lock(&self.inner);
            (g.version, g.head)
        };
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .save(&SeenState {
                version,
                head: hex::encode(head),
            })
    }

    /// The store this vault lives on.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The data plane (reads, uploads, read-ahead of file contents).
    /// The vault's keys (for sealing the local cache of a mount).
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    pub fn chunks(&self) -> &Arc<Chunks> {
        &self.chunks
    }

    /// Human-readable store name.
    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    /// Vault id (hex).
    pub fn vault_id(&self) -> String {
        hex::encode(self.vault_id)
    }

    /// Hash of the newest committed log (the chain head; FORMAT §8).
    pub fn head(&self) -> [u8; 32] {
        lock(&self.inner).head
    }

    /// Whether this vault took the writer lease.
    pub fn holds_lease(&self) -> bool {
        self.lease.is_some()
    }

    /// This writer's lease, if it took one.
    pub fn lease_status(&self) -> Option<LeaseStatus> {
        self.lease.as_ref().map(|l| l.status())
    }

    /// The lease took by this vault was lost to another writer.
    pub fn lease_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.is_lost())
    }

    /// The writer lease currently in the store (whoever holds it).
    pub async fn lease_holder(&self) -> VaultResult<Option<lease::Holder>> {
        lease::current(&self.store, &self.keys, &self.vault_id).await
    }

    /// Give the writer lease back (delete it if it is still ours). Nothing
    /// is committed afterwards. Call when done writing; a vault dropped
    /// without it leaves the lease to expire (like a crash).
    pub async fn release_lease(&self) -> VaultResult<()> {
        match &self.lease {
            Some(l) => l.release().await,
            None => Ok(()),
        }
    }

    /// The first handoff another device asked of this writer (waits for
    /// one; never resolves without a lease). See [`crate::lease::handoff`].
    pub async fn handoff_requested(&self) -> crate::lease::handoff::HandoffRequest {
        match &self.lease {
            Some(l) => l.handoff_requested().await,
            None => std::future::pending().await,
        }
    }

    /// Give up a handoff whose asker stopped waiting; this writer carries
    /// on and waits for the next request.
    pub fn abandon_handoff(&self) {
        if let Some(l) = &self.lease {
            l.clear_handoff();
        }
    }

    /// Tell the device that asked for the lease what this writer is doing
    /// to hand over (shown on its side).
    pub async fn answer_handoff(
        &self,
        req: &crate::lease::handoff::HandoffRequest,
        state: &str,
    ) -> VaultResult<()> {
        match &self.lease {
            Some(l) => l.answer(req, state).await,
            None => Ok(()),
        }
    }

    /// Catch up with the store (a read-only vault following a writer
    /// elsewhere): one listing of `meta/`; newer logs are fetched, checked
    /// and applied, or the newer checkpoint that replaced them is loaded
    /// (see [`follow`]). Refused for a writer (until it has released its
    /// lease, e.g. after a handoff) and for a vault with uncommitted
    /// changes of its own.
    pub async fn refresh(&self) -> VaultResult<Refresh> {
        let writer = self.lease.as_ref().is_some_and(|l| !l.is_released());
        if writer || self.uncommitted_records() > 0 {
            return Err(VaultError::Invalid(
                "only a read-only vault with nothing of its own to commit follows the store".into(),
            ));
        }
        let from = (self.version(), self.head());
        let update = follow::update_since(
            &self.store,
            &self.keys,
            &self.vault_id,
            from,
            self.opts.accept_rollback,
        )
        .await?;
        let outcome = {
            let mut g = lock(&self.inner);
            if (g.version, g.head) != from {
                return Ok(Refresh::Unchanged); // a concurrent refresh did it
            }
            match update {
                Update::Unchanged => return Ok(Refresh::Unchanged),
                Update::Logs(logs) => {
                    let mut applied = Vec::new();
                    let mut unplaced = Vec::new();
                    for (v, head, writer_seq, records) in logs {
                        let key = format::log_key(v);
                        for r in &records {
                            let f = g.tree.apply_freeing(r).map_err(|e| {
                                VaultError::corrupt(&key, format!("record cannot be replayed: {e}"))
                            })?;
                            unplaced.extend(f.unplaced);
                        }
                        g.set_position(v, head, writer_seq);
                        applied.extend(records);
                    }
                    self.chunks.remember_unplaced(unplaced);
                    Refresh::Applied(applied)
                }
                Update::Reload(l) => {
                    let old = std::mem::replace(&mut g.tree, l.tree);
                    g.set_position(l.version, l.head, l.writer_seq);
                    Refresh::Reloaded(Box::new(old))
                }
            }
        };
        self.save_seen()?;
        debug!(from = from.0, to = self.version(), "followed the store");
        Ok(outcome)
    }

    /// Renew the writer lease now (normally a background task does it).
    pub async fn renew_lease(&self) -> VaultResult<()> {
        match &self.lease {
            Some(l) => l.renew().await,
            None => Ok(()),
        }
    }

    /// Fails unless this vault may change the store: always without a
    /// lease; with one, only while it is held.
    pub(crate) async fn check_writable(&self) -> VaultResult<()> {
        match &self.lease {
            Some(l) => {
                if l.deferred() {
                    self.settled.get_or_try_init(|| self.settle(l)).await?;
                }
                l.check_writable().await
            }
            None => Ok(()),
        }
    }

    /// A lease taken with [`LeaseOptions::defer_settle`]: wait for its
    /// confirmation, then make sure no other writer committed while this
    /// vault was read under the unconfirmed lease (a writer whose lease was
    /// taken over as stale, still running): the next log must not exist
    /// yet. Logs are created without conditional create here, so the first
    /// commit would otherwise overwrite it (FORMAT §13).
    async fn settle(&self, l: &Lease) -> VaultResult<()> {
        l.confirmed().await?;
        let next = format::log_key(lock(&self.inner).version + 1);
        if self.store.stat(&next).await?.is_some() {
            return Err(VaultError::LeaseLost {
                detail: format!(
                    "another writer committed {next} while this one was taking the lease over \
                     (the writer whose lease it took is still running)"
                ),
            });
        }
        Ok(())
    }

    /// Wait until the writer lease is confirmed (at once unless it was
    /// taken with [`LeaseOptions::defer_settle`]); its refusal otherwise
    /// (the same error an open without deferral would have failed with).
    pub async fn lease_confirmed(&self) -> VaultResult<()> {
        match &self.lease {
            Some(l) => l.confirmed().await,
            None => Ok(()),
        }
    }

    /// The writer lease was refused after a deferred confirmation: nothing
    /// was or will be committed by this vault.
    pub fn lease_refused(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.refused())
    }

    /// Register a function called (under the commit lock) whenever new logs
    /// are sealed, before any of them is sent: a mount records which chain
    /// heads are its own, so after a crash it can tell its own commits from
    /// another writer's. An error fails the commit (nothing is sent). Set once.
    pub fn set_stage_hook(&self, hook: StageHook) -> bool {
        self.stage_hook.set(hook).is_ok()
    }

    /// Chunk size used for new files.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Current metadata version (last committed log).
    pub fn version(&self) -> u64 {
        lock(&self.inner).version
    }

    /// Run `f` with read access to the tree.
    pub fn with_tree<R>(&self, f: impl FnOnce(&Tree) -> R) -> R {
        f(&lock(&self.inner).tree)
    }

    /// A copy of one inode.
    pub fn inode(&self, ino: u64) -> Option<Inode> {
        lock(&self.inner).tree.get(ino).cloned()
    }

    /// Allocate an inode number for a `Create` record.
    pub fn alloc_ino(&self) -> u64 {
        lock(&self.inner).tree.alloc_ino()
    }

    /// Apply one record to the tree and queue it for the next commit.
    /// Returns the record's sequence number (see [`Vault::writer_seq`]).
    pub fn apply(&self, r: Record) -> Result<u64, ApplyError> {
        self.apply_all(vec![r])
    }

    /// Apply records as one unit: they are committed in the same log object
    /// (a crash never leaves half of them durable). Returns the sequence
    /// number of the last one. Records are checked one after another; if one
    /// is rejected, the earlier ones of the unit stay applied (callers check
    /// preconditions first so this does not happen in practice).
    pub fn apply_all(&self, records: Vec<Record>) -> Result<u64, ApplyError> {
        self.apply_unit(records)
            .map(|v| v.last().map(|(s, _)| *s).unwrap_or(0))
    }

    /// [`Vault::apply_all`], returning every record of the unit as applied
    /// with its sequence number: the given ones plus the `Pack` records
    /// that place the packed items they reference (a journal must keep
    /// those too, so a replay reads the items from their pack).
    pub fn apply_unit(&self, mut records: Vec<Record>) -> Result<Vec<(u64, Record)>, ApplyError> {
        self.add_pack_records(&mut records);
        let copy = records.clone();
        let last = self.apply_records(records)?;
        let first = last + 1 - copy.len() as u64;
        Ok((first..=last).zip(copy).collect())
    }

    fn apply_records(&self, records: Vec<Record>) -> Result<u64, ApplyError> {
        let limit = meta::max_body(self.caps.max_object_size) as usize;
        let size: usize = records
            .iter()
            .map(|r| {
                postcard::to_stdvec(r)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX)
            })
            .sum();
        if size.saturating_add(256) > limit {
            return Err(ApplyError::TooLarge);
        }
        let mut g = lock(&self.inner);
        let mut result = Ok(());
        for r in records {
            match g.tree.apply_freeing(&r) {
                Ok(freed) => {
                    let now = Instant::now();
                    g.freed.extend(freed.blobs.into_iter().map(|id| (now, id)));
                    g.freed_packs
                        .extend(freed.packs.into_iter().map(|id| (now, id)));
                    g.pending.push(r);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let end = g.pending.len();
        g.breaks.push((end, size));
        result?;
        Ok(g.pending_first_seq + g.pending.len() as u64 - 1)
    }

    /// Append to a unit the `Pack` records of the items its `SetChunks`
    /// reference that were packed but not yet recorded (after them: a pack
    /// record only places referenced blobs), so a file's chunks and their
    /// locations are always in one log object.
    fn add_pack_records(&self, records: &mut Vec<Record>) {
        let ids: Vec<BlobId> = records
            .iter()
            .filter_map(|r| match r {
                Record::SetChunks { chunks, .. } => Some(chunks.iter().flatten().map(|c| c.id)),
                _ => None,
            })
            .flatten()
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut by_pack: BTreeMap<BlobId, Vec<PackItem>> = BTreeMap::new();
        for (id, l) in self.chunks.take_unrecorded(&ids) {
            by_pack.entry(l.pack).or_default().push(PackItem {
                id,
                offset: l.offset,
                blob_len: l.blob_len,
            });
        }
        if by_pack.is_empty() {
            return;
        }
        self.wrote_packs.store(true, Ordering::SeqCst);
        for (pack, items) in by_pack {
            records.push(Record::Pack { pack, items });
        }
    }

    /// The format version of this vault's header.
    pub fn format_version(&self) -> u32 {
        self.header
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .version
    }

    /// Before the first log naming a pack goes to a vault of an older
    /// format version: rewrite its header at the current version (the
    /// master key rewrapped with the key it was opened with), so a reader
    /// that predates packs refuses the vault instead of misreading it.
    async fn upgrade_header_if_needed(&self) -> VaultResult<()> {
        if !self.wrote_packs.load(Ordering::SeqCst) || self.format_version() >= FORMAT_VERSION {
            return Ok(());
        }
        let new = {
            let up = self.upgrade.lock().unwrap_or_else(|e| e.into_inner());
            let Some((kek, master)) = up.as_ref() else {
                return Err(VaultError::Invalid(
                    "this vault has an older format version and cannot be upgraded in this session; reopen it".into(),
                ));
            };
            let current = self
                .header
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            current.with_version(FORMAT_VERSION, kek, master)?
        };
        self.check_writable().await?;
        self.store
            .put(HEADER_KEY, Bytes::from(new.to_bytes()?))
            .await?;
        info!(
            store = %self.store_name,
            version = FORMAT_VERSION,
            "upgraded the vault's format version (packs); older strata versions now refuse it"
        );
        *self.header.lock().unwrap_or_else(|e| e.into_inner()) = new;
        *self.upgrade.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Sequence number of the newest record durable in the store. Records
    /// are numbered in apply order across sessions (the number is stored in
    /// every log and checkpoint), so a local journal can tell which of its
    /// records the store already has.
    pub fn writer_seq(&self) -> u64 {
        lock(&self.inner).writer_seq
    }

    /// Make every applied record durable in the store. Afterwards, deletes
    /// blobs that lost their last reference, and checkpoints when due.
    pub async fn commit(&self) -> VaultResult<()> {
        let _c = self.commit_lock.lock().await;
        let work = {
            let g = lock(&self.inner);
            !g.pending.is_empty() || !g.staged.is_empty()
        };
        if work {
            // Records stay queued or staged if the lease is not held.
            self.check_writable().await?;
        }
        self.stage_pending()?;
        self.report_staged()?;
        // Blobs referenced by the staged records were put (possibly with
        // deferred durability) before those records were applied, hence
        // before staging: one sync makes them all durable before any log
        // that references them. Packed items were put into a pack before
        // their records were applied: that pack is sent now (items packed
        // after staging go into a new pack, referenced by later logs only).
        if !lock(&self.inner).staged.is_empty() {
            self.chunks.flush_packs().await?;
            self.store.sync().await?;
            self.upgrade_header_if_needed().await?;
        }
        // Send staged logs in order. A failed put leaves them staged: the next
        // commit re-sends the *same bytes*, so whether or not the failed
        // attempt landed, the store ends up with one consistent chain.
        let mut sent = false;
        let res = loop {
            let next = lock(&self.inner).staged.first().cloned();
            let Some(s) = next else { break Ok(()) };
            if let Err(e) = self.put_log(&s).await {
                break Err(e);
            }
            sent = true;
            let mut g = lock(&self.inner);
            g.staged.remove(0);
            g.version = s.version;
            g.head = meta::object_hash(&s.bytes);
            g.writer_seq = s.last_seq;
            g.records_since_checkpoint += s.records;
            g.logs_since_checkpoint += 1;
        };
        // one state-file write (and fsync) per commit, not per log object
        if sent {
            self.save_seen()?;
        }
        res?;
        self.delete_freed().await?;
        let due = {
            let g = lock(&self.inner);
            g.records_since_checkpoint >= self.opts.checkpoint_records
                || g.logs_since_checkpoint >= MAX_LOGS_BETWEEN_CHECKPOINTS
        };
        if due {
            // The logs are durable; a failed checkpoint is retried next time.
            if let Err(e) = self.checkpoint_locked().await {
                warn!(error = %e, "could not write a checkpoint; will retry");
            }
        }
        Ok(())
    }

    /// Tell the stage hook about logs staged since it was last called.
    fn report_staged(&self) -> VaultResult<()> {
        let Some(hook) = self.stage_hook.get() else {
            return Ok(());
        };
        let heads = {
            let g = lock(&self.inner);
            match g.staged.last() {
                Some(last) if last.version > g.reported_version => StagedHeads {
                    committed: (g.version, g.head),
                    staged: g
                        .staged
                        .iter()
                        .map(|s| (s.version, meta::object_hash(&s.bytes)))
                        .collect(),
                },
                _ => return Ok(()),
            }
        };
        hook(&heads).map_err(|e| VaultError::io("recording the logs about to be committed", e))?;
        if let Some(&(v, _)) = heads.staged.last() {
            lock(&self.inner).reported_version = v;
        }
        Ok(())
    }

    /// Seal pending records into log objects (chained after any still-staged
    /// ones), each within the store's object-size limit.
    fn stage_pending(&self) -> VaultResult<()> {
        let mut g = lock(&self.inner);
        if g.pending.is_empty() {
            return Ok(());
        }
        let max = self.caps.max_object_size;
        let limit = meta::max_body(max) as usize;
        // Split into log objects only at unit boundaries (see `apply_all`).
        let mut batches: Vec<Vec<Record>> = vec![Vec::new()];
        let mut size = 0usize;
        let mut start = 0usize;
        let mut breaks = std::mem::take(&mut g.breaks);
        // records applied without apply_all (none today) would form a last unit
        let tail = g.pending.len();
        if breaks.last().map(|b| b.0) != Some(tail) {
            let rest: usize = g.pending[breaks.last().map(|b| b.0).unwrap_or(0)..]
                .iter()
                .map(|r| {
                    postcard::to_stdvec(r)
                        .map(|v| v.len())
                        .unwrap_or(usize::MAX)
                })
                .sum();
            breaks.push((tail, rest));
        }
        for (end, bytes) in breaks {
            if end <= start {
                continue;
            }
            let unit = &g.pending[start..end];
            let us = bytes.saturating_add(64);
            if size + us > limit && batches.last().is_some_and(|b| !b.is_empty()) {
                batches.push(Vec::new());
                size = 0;
            }
            size += us;
            if let Some(b) = batches.last_mut() {
                b.extend_from_slice(unit);
            }
            start = end;
        }
        let (mut version, mut head, mut seq) = match g.staged.last() {
            Some(s) => (s.version, meta::object_hash(&s.bytes), s.last_seq),
            None => (g.version, g.head, g.writer_seq),
        };
        let mut staged = Vec::with_capacity(batches.len());
        for batch in batches {
            let n = batch.len() as u64;
            seq += n;
            version += 1;
            let body = meta::encode_log(&LogBody {
                prev: head,
                writer_seq: seq,
                time: now(),
                records: batch,
            })?;
            let bytes = Bytes::from(meta::seal_log(
                &self.keys,
                &self.vault_id,
                version,
                &body,
                max,
            )?);
            head = meta::object_hash(&bytes);
            staged.push(StagedLog {
                version,
                bytes,
                records: n,
                last_seq: seq,
            });
        }
        let n = g.pending.len() as u64;
        g.pending.clear();
        g.pending_first_seq += n;
        g.staged.extend(staged);
        Ok(())
    }

    async fn put_log(&self, s: &StagedLog) -> VaultResult<()> {
        let key = format::log_key(s.version);
        if !self.caps.conditional_create {
            return Ok(self.store.put(&key, s.bytes.clone()).await?);
        }
        if self.store.put_if_absent(&key, s.bytes.clone()).await? {
            return Ok(());
        }
        // Already there: our own earlier attempt landed, or another writer won.
        let existing = self.store.get(&key).await?;
        if existing == s.bytes {
            return Ok(());
        }
        Err(VaultError::Store(strata_store::StoreError::new(
            StoreErrorKind::AlreadyExists,
            self.store_name.clone(),
            "put",
            Some(&key),
            "another writer committed this metadata version first; reopen the vault",
        )))
    }

    /// Send the pack being filled and every pack not yet sent (a mount does
    /// before it drops local copies of chunks whose records are only
    /// journaled).
    pub async fn flush_packs(&self) -> VaultResult<()> {
        self.chunks.flush_packs().await
    }

    /// Hold this while uploading chunks with [`Vault::upload_chunk`] until the
    /// records referencing them are applied: blobs are never deleted (as
    /// unreferenced) under a writer that is about to reference them.
    pub async fn data_guard(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.data_lock.clone().read_owned().await
    }

    /// Blob objects and packs referenced by the tree (a packed blob needs
    /// its pack, not a blob object), if the tree equals the committed state
    /// (nothing queued or staged); `None` otherwise.
    pub(crate) fn committed_refs(&self) -> Option<(HashSet<BlobId>, HashSet<BlobId>)> {
        let g = lock(&self.inner);
        if !g.pending.is_empty() || !g.staged.is_empty() {
            return None;
        }
        let blobs = g
            .tree
            .referenced_blobs()
            .into_keys()
            .filter(|id| g.tree.packed(id).is_none())
            .collect();
        Some((blobs, g.tree.packs().keys().copied().collect()))
    }

    /// Records applied but not yet durable in the store (queued + staged).
    pub fn uncommitted_records(&self) -> u64 {
        let g = lock(&self.inner);
        g.pending.len() as u64 + g.staged.iter().map(|s| s.records).sum::<u64>()
    }

    /// Delete blobs whose last reference is gone (committed) at least
    /// [`OpenOptions::free_grace`] ago, unless a writer is busy (then they
    /// wait for the next commit or `gc`).
    async fn delete_freed(&self) -> VaultResult<()> {
        self.delete_freed_after(self.opts.free_grace).await
    }

    /// Delete every blob whose last reference is gone (committed), grace
    /// or not: at the end of a session that kept them for followers.
    pub async fn delete_freed_now(&self) -> VaultResult<()> {
        self.delete_freed_after(Duration::ZERO).await
    }

    async fn delete_freed_after(&self, grace: Duration) -> VaultResult<()> {
        let Ok(_w) = self.data_lock.try_write() else {
            return Ok(());
        };
        let (doomed, dead_packs): (Vec<BlobId>, Vec<BlobId>) = {
            let mut g = lock(&self.inner);
            if !g.pending.is_empty() || !g.staged.is_empty() {
                return Ok(()); // uncommitted records might reference them again
            }
            // no writer is between packing an item and recording it: the
            // unrecorded ones never will be, and cannot revive a pack
            self.chunks.forget_unrecorded();
            let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut g.freed)
                .into_iter()
                .partition(|(t, _)| t.elapsed() >= grace);
            g.freed = keep;
            let (due_packs, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut g.freed_packs)
                .into_iter()
                .partition(|(t, _)| t.elapsed() >= grace);
            g.freed_packs = keep;
            let set: HashSet<BlobId> = due.into_iter().map(|(_, id)| id).collect();
            let packs: HashSet<BlobId> = due_packs.into_iter().map(|(_, id)| id).collect();
            (
                set.into_iter()
                    .filter(|id| g.tree.blob_refs(id) == 0 && g.tree.packed(id).is_none())
                    .collect(),
                packs
                    .into_iter()
                    .filter(|p| !g.tree.packs().contains_key(p) && !self.chunks.pack_unsent(p))
                    .collect(),
            )
        };
        for p in dead_packs {
            let key = pack_key(&p);
            if let Err(e) = self.store.delete(&key).await {
                warn!(%key, error = %e, "could not delete an emptied pack; `strata gc` will retry");
            }
        }
        self.chunks.forget_present(&doomed);
        for id in doomed {
            let key = format::blob_key(&id);
            if let Err(e) = self.store.delete(&key).await {
                warn!(%key, error = %e, "could not delete unreferenced blob; `strata gc` will retry");
            }
        }
        Ok(())
    }

    /// Commit, then write a checkpoint of the whole tree and drop what it covers.
    pub async fn checkpoint(&self) -> VaultResult<()> {
        self.commit().await?;
        let _c = self.commit_lock.lock().await;
        self.checkpoint_locked().await
    }

    async fn checkpoint_locked(&self) -> VaultResult<()> {
        // Encoded under the lock, straight from the tree (a copy of a big
        // tree would double the memory it takes). A checkpoint of several
        // parts is not held whole either: it is measured, then each part
        // is encoded, sealed and sent in turn; the tree must still be the
        // committed state of `version` at each part (else the checkpoint
        // is left for the next commit, which then encodes it in one go).
        let max = self.caps.max_object_size;
        let per = meta::checkpoint_part_len(max);
        let (version, time, whole) = {
            let mut g = lock(&self.inner);
            if !g.pending.is_empty() || !g.staged.is_empty() {
                return Ok(()); // only checkpoint a committed state
            }
            if g.version == g.checkpoint_version {
                return Ok(());
            }
            let time = now();
            let in_one = std::mem::take(&mut g.checkpoint_in_one);
            g.tree.sort_for_image();
            let body = meta::CheckpointBodyRef {
                version: g.version,
                head: g.head,
                writer_seq: g.writer_seq,
                time,
                tree: g.tree.image_ref(),
            };
            let packs = g.tree.pack_table_ref();
            let range = if in_one { 0..usize::MAX } else { 0..per };
            let (bytes, len) = meta::encode_checkpoint_window(&body, &packs, range)?;
            let whole = if in_one || len <= per {
                Ok(bytes)
            } else {
                Err((len, bytes))
            };
            (g.version, time, whole)
        };
        self.check_writable().await?;
        match whole {
            Ok(bytes) => {
                let parts =
                    meta::seal_checkpoint_bytes(&self.keys, &self.vault_id, version, bytes, max)?;
                let count = parts.len() as u32;
                for (i, p) in parts.into_iter().enumerate() {
                    self.store
                        .put(
                            &format::checkpoint_key(version, i as u32, count),
                            Bytes::from(p),
                        )
                        .await?;
                }
            }
            Err((len, first)) => {
                let count = u32::try_from(len.div_ceil(per)).unwrap_or(u32::MAX);
                let mut first = Some(first);
                for i in 0..count {
                    let part = if let Some(p) = first.take() {
                        p
                    } else {
                        let mut g = lock(&self.inner);
                        if g.version != version || !g.pending.is_empty() || !g.staged.is_empty() {
                            debug!(version, "tree changed while checkpointing; retried later");
                            // In one go next time, unless that would hold
                            // a big encoding beside the tree: such a
                            // checkpoint waits for a quiet moment (the end
                            // of a `put`, an idle mount).
                            g.checkpoint_in_one = len <= CHECKPOINT_IN_ONE_MAX;
                            return Ok(());
                        }
                        let body = meta::CheckpointBodyRef {
                            version,
                            head: g.head,
                            writer_seq: g.writer_seq,
                            time,
                            tree: g.tree.image_ref(),
                        };
                        let start = i as usize * per;
                        let range = start..start.saturating_add(per);
                        meta::encode_checkpoint_part(&body, &g.tree.pack_table_ref(), range)?
                    };
                    let sealed = meta::seal_checkpoint_part(
                        &self.keys,
                        &self.vault_id,
                        version,
                        (i, count),
                        part,
                        max,
                    )?;
                    self.store
                        .put(
                            &format::checkpoint_key(version, i, count),
                            Bytes::from(sealed),
                        )
                        .await?;
                }
            }
        }
        {
            let mut g = lock(&self.inner);
            g.checkpoint_version = version;
            g.records_since_checkpoint = 0;
            g.logs_since_checkpoint = 0;
        }
        info!(version, "checkpoint written");
        self.cleanup_meta(version).await.map(|_| ())
    }

    /// Delete logs and checkpoints made obsolete by checkpoint `version`.
    async fn cleanup_meta(&self, version: u64) -> VaultResult<usize> {
        let listing = list_meta(&self.store).await?;
        let complete = listing.complete_checkpoints();
        let mut n = 0;
        let doomed = listing
            .logs
            .range(..=version)
            .map(|(_, k)| k.clone())
            .chain(
                listing
                    .checkpoints
                    .iter()
                    .filter(|((v, c), _)| {
                        *v < version || (*v == version && !complete.contains(&(*v, *c)))
                    })
                    .flat_map(|(_, parts)| parts.values().cloned()),
            );
        for key in doomed {
            match self.store.delete(&key).await {
                Ok(()) => n += 1,
                Err(e) => warn!(%key, error = %e, "could not delete obsolete metadata object"),
            }
        }
        Ok(n)
    }

    /// Remove obsolete metadata objects (leftovers of interrupted checkpoints).
    pub(crate) async fn cleanup_obsolete_meta(&self) -> VaultResult<usize> {
        let _c = self.commit_lock.lock().await;
        let cv = lock(&self.inner).checkpoint_version;
        let mut n = self.cleanup_meta(cv).await?;
        // incomplete or newer-than-committed checkpoints are crash leftovers
        let listing = list_meta(&self.store).await?;
        let complete = listing.complete_checkpoints();
        for (k, parts) in listing.checkpoints.range((cv + 1, 0)..) {
            if !complete.contains(k) {
                for key in parts.values() {
                    if self.store.delete(key).await.is_ok() {
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }

    /// Change the password: rewrap the master key in the header (nothing else
    /// is rewritten). `old` must unlock the current header.
    pub async fn change_password(
        &self,
        old: &[u8],
        new: &[u8],
        kdf: Option<KdfParams>,
    ) -> VaultResult<()> {
        let current = Vault::read_header(&self.store).await?;
        let master = current.unlock(old, &self.store_name)?;
        let mut h = current.clone();
        h.rewrap(&master, new, kdf.unwrap_or_else(|| current.kdf_params()))?;
        // Verify before replacing the only copy of the wrapped key.
        h.unlock(new, &self.store_name)?;
        self.check_writable().await?;
        self.store
            .put(HEADER_KEY, Bytes::from(h.to_bytes()?))
            .await?;
        *self.header.lock().unwrap_or_else(|e| e.into_inner()) = h;
        Ok(())
    }
}

fn state_dir(opts: &OpenOptions) -> PathBuf {
    opts.state_dir
        .clone()
        .unwrap_or_else(state::default_state_dir)
}

/// Owner of the root directory of a new vault: the creating user.
pub(crate) fn current_uid() -> u32 {
    proc_status_field("Uid:").unwrap_or(0)
}

pub(crate) fn current_gid() -> u32 {
    proc_status_field("Gid:").unwrap_or(0)
}

fn proc_status_field(field: &str) -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
