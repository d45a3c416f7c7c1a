//! The real backends: [`OpendalStore`] over an `opendal::Operator` for
//! `memory://` (process-wide stores shared by name), `file://` (a local
//! directory, with durable, atomic writes done by this module itself) and
//! the cloud services set up in [`crate::cloud`] (S3, WebDAV, OneDrive).
//!
//! ## The `file://` data path
//!
//! opendal's fs writer fsyncs the file (and, with `atomic_write_dir`, writes a
//! temp file and renames it), but never fsyncs the directory, so a put could
//! be lost by a crash after it returned; its reader also streams in chunks
//! that would have to be copied together again. So for `file://` the data
//! path (put, put_if_absent, get, get_range, stat, delete) is plain `std::fs`
//! on the blocking pool ([`crate::local`]), and opendal is used for listing:
//!
//! * `put`: write the bytes to a fresh temp file in `<root>/.strata-tmp/`,
//!   `fsync` it, `rename` it over the key's path (atomic: readers see the old
//!   or the new object, never a partial one), then `fsync` the key's directory
//!   (and, when directories had to be created, each new directory's parent),
//!   so the object is durable when `put` returns.
//! * `put_if_absent`: the same, but `hard_link` instead of `rename`; the link
//!   fails if the key exists, which the kernel enforces atomically. Declared
//!   only after a probe at open proves hard links work on that filesystem.
//! * Temp files left by a crash are never listed and are swept at open once
//!   they are an hour old. Keys under `.strata-tmp/` are reserved.

use crate::keys::validate_prefix;
use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use opendal::{EntryMode, Operator};

use crate::error::{StoreError, StoreErrorKind, StoreResult};
use crate::local::{
    fs_delete, fs_put, fs_read, fs_read_range, fs_stat, fs_will_need, fsync_dir, lock,
    probe_hard_links, sweep_stale_tmp, sync_each, syncfs, FsDirs, Unsynced, SYNC_AT_PUT,
};
use crate::{Capabilities, ObjectMeta, Store};

/// First key segment reserved for the fs backend's temp files.
const TMP_DIR: &str = ".strata-tmp";

/// Process-wide named memory stores: reopening `memory://NAME` sees the same objects.
static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Operator>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A backend store reached through `opendal` (see the module docs for what
/// the `file://` backend does itself).
#[derive(Clone)]
pub struct OpendalStore {
    op: Operator,
    description: String,
    caps: Capabilities,
    fs: Option<Arc<FsDirs>>,
    remote: Option<Arc<Remote>>,
}

/// State of a cloud store (see [`crate::cloud`]).
#[derive(Debug)]
pub(crate) struct Remote {
    pub(crate) flavor: crate::cloud::Flavor,
    /// opendal can send a conditional create to this service (it may still
    /// be ignored by the server: `prepare` probes it).
    pub(crate) can_try_conditional: bool,
    /// WebDAV: exclusive create through a lock (see [`crate::webdav`]).
    pub(crate) dav: Option<crate::webdav::DavCreate>,
    /// `prepare` proved the server enforces conditional create.
    pub(crate) conditional_proven: std::sync::atomic::AtomicBool,
    pub(crate) prepared: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for OpendalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpendalStore")
            .field("description", &self.description)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl OpendalStore {
    /// A store in the local directory `root` (made absolute). The directory is
    /// created if missing, but its parent must exist.
    pub fn fs(root: &Path) -> StoreResult<Self> {
        let shown = format!("file://{}", root.display());
        let root = std::path::absolute(root)
            .map_err(|e| StoreError::from_io(&e, shown.as_str(), "open", None))?;
        let description = format!("file://{}", root.display());
        let open_err = |e: &io::Error, what: &str| {
            let mut err = StoreError::from_io(e, description.as_str(), "open", None);
            err.message = format!("{what}: {e}");
            err
        };

        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::new(
                    StoreErrorKind::Other,
                    description.as_str(),
                    "open",
                    None,
                    "store root exists but is not a directory",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = root.parent().unwrap_or(Path::new("/"));
                if !parent.is_dir() {
                    return Err(StoreError::new(
                        StoreErrorKind::NotFound,
                        description.as_str(),
                        "open",
                        None,
                        format!(
                            "parent directory {} of the store root does not exist",
                            parent.display()
                        ),
                    ));
                }
                match std::fs::create_dir(&root) {
                    Ok(()) => {}
                    // Lost a race with another opener: fine.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(open_err(&e, "cannot create store root")),
                }
                fsync_dir(parent).map_err(|e| open_err(&e, "cannot sync store root's parent"))?;
            }
            Err(e) => return Err(open_err(&e, "cannot access store root")),
        }

        let tmp = root.join(TMP_DIR);
        if !tmp.is_dir() {
            match std::fs::create_dir(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(open_err(&e, "cannot create temp directory")),
            }
            fsync_dir(&root).map_err(|e| open_err(&e, "cannot sync store root"))?;
        }
        sweep_stale_tmp(&tmp);
        let hard_links = probe_hard_links(&tmp);

        let root_str = root.to_str().ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Other,
                description.as_str(),
                "open",
                None,
                "store root path is not valid UTF-8",
            )
        })?;
        let op = Operator::new(opendal::services::Fs::default().root(root_str))
            .map_err(|e| StoreError::from_opendal(&e, description.as_str(), "open", None))?;

        Ok(OpendalStore {
            op,
            description,
            caps: Capabilities {
                range_reads: true,
                conditional_create: hard_links,
                max_object_size: None,
            },
            fs: Some(Arc::new(FsDirs {
                root,
                tmp,
                unsynced: Mutex::new(Unsynced::Keys(Vec::new())),
                open: Default::default(),
            })),
            remote: None,
        })
    }

    /// A cloud store (built by [`crate::cloud`]).
    pub(crate) fn remote(
        op: Operator,
        description: String,
        caps: Capabilities,
        remote: Arc<Remote>,
    ) -> Self {
        OpendalStore {
            op,
            description,
            caps,
            fs: None,
            remote: Some(remote),
        }
    }

    /// One cheap listing request at the root (for `prepare`): a missing
    /// root folder is fine, anything else is reported.
    pub(crate) async fn probe_list(&self) -> StoreResult<()> {
        match self.op.list_with("").limit(1).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound && !self.is_s3() => Ok(()),
            Err(e) => Err(self.err_opendal(&e, "list", "")),
        }
    }

    /// For a WebDAV store, `key`'s parent folder (`a/b/` for `a/b/c`).
    fn missing_parent(&self, key: &str) -> Option<String> {
        match self.remote.as_deref().map(|r| &r.flavor) {
            Some(crate::cloud::Flavor::WebDav { .. }) => {
                key.rfind('/').map(|i| key[..=i].to_owned())
            }
            _ => None,
        }
    }

    fn is_s3(&self) -> bool {
        matches!(
            self.remote.as_deref().map(|r| &r.flavor),
            Some(crate::cloud::Flavor::S3 { .. })
        )
    }

    pub(crate) fn description(&self) -> &str {
        &self.description
    }

    /// An in-memory store. Stores are shared by `name` within the process
    /// (reopening `memory://foo` sees the same objects); an empty `name` gives
    /// a fresh private store.
    pub fn memory(name: &str) -> StoreResult<Self> {
        let description = format!("memory://{name}");
        let build = || {
            Operator::new(opendal::services::Memory::default())
                .map_err(|e| StoreError::from_opendal(&e, description.as_str(), "open", None))
        };
        let op = if name.is_empty() {
            build()?
        } else {
            let mut stores = MEMORY_STORES.lock().unwrap_or_else(|p| p.into_inner());
            match stores.get(name) {
                Some(op) => op.clone(),
                None => {
                    let op = build()?;
                    stores.insert(name.to_owned(), op.clone());
                    op
                }
            }
        };
        Ok(OpendalStore {
            op,
            description,
            caps: Capabilities {
                range_reads: true,
                // opendal's memory service checks and inserts under one lock.
                conditional_create: true,
                max_object_size: None,
            },
            fs: None,
            remote: None,
        })
    }

    /// Replace the description used by `describe()` and in errors (e.g. by
    /// the full store URL). Must not contain secrets.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The root directory of a `file://` store (`None` for other backends).
    pub fn fs_root(&self) -> Option<&Path> {
        self.fs.as_deref().map(|d| d.root.as_path())
    }

    /// Bytes `range` of `key`, received straight into one buffer (from
    /// [`crate::bufpool`]) as the reply arrives, instead of collected in
    /// the transport's pieces and copied together at the end.
    async fn read_pooled(&self, key: &str, range: Range<u64>) -> opendal::Result<Bytes> {
        // A range may run far past the object's end (the server clamps
        // it): reserve at most a few chunks up front, the buffer grows if
        // more arrives.
        const RESERVE_MAX: u64 = 16 << 20;
        let len = usize::try_from((range.end - range.start).min(RESERVE_MAX)).unwrap_or(0);
        let mut buf = crate::bufpool::take(len);
        let reader = self.op.reader(key).await?;
        reader.read_into(&mut buf, range).await?;
        Ok(Bytes::from(buf))
    }

    fn err_opendal(&self, e: &opendal::Error, op: &'static str, key: &str) -> StoreError {
        match &self.remote {
            Some(r) => crate::cloud::explain(e, &r.flavor, &self.description, op, Some(key)),
            None => StoreError::from_opendal(e, self.description.as_str(), op, Some(key)),
        }
    }

    fn conditional_create(&self) -> bool {
        match &self.remote {
            Some(r) => r
                .conditional_proven
                .load(std::sync::atomic::Ordering::SeqCst),
            None => self.caps.conditional_create,
        }
    }

    fn err_io(&self, e: &io::Error, op: &'static str, key: &str) -> StoreError {
        StoreError::from_io(e, self.description.as_str(), op, Some(key))
    }

    fn check_key(&self, op: &'static str, key: &str) -> StoreResult<()> {
        validate_key(key)
            .map_err(|why| StoreError::invalid_key(self.description.as_str(), op, key, why))
    }

    /// Run blocking fs work on the blocking pool.
    async fn blocking<T, F>(&self, op: &'static str, key: &str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        match crate::inline::run(f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err_io(&e, op, key)),
            Err(e) => Err(StoreError::new(
                StoreErrorKind::Other,
                self.description.as_str(),
                op,
                Some(key),
                format!("blocking task failed: {e}"),
            )),
        }
    }

    pub(crate) async fn put_inner(
        &self,
        op: &'static str,
        key: &str,
        data: Bytes,
        if_absent: bool,
    ) -> StoreResult<bool> {
        self.check_key(op, key)?;
        if let Some(dirs) = &self.fs {
            let dirs = dirs.clone();
            let k = key.to_owned();
            dirs.open.forget(key);
            return self
                .blocking(op, key, move || fs_put(&dirs, &k, &data, if_absent, true))
                .await;
        }
        if if_absent {
            if let Some(dav) = self.remote.as_deref().and_then(|r| r.dav.as_ref()) {
                return self.dav_create(dav, op, key, data).await;
            }
        }
        let write = |data: Bytes| async move {
            if if_absent {
                self.op.write_with(key, data).if_not_exists(true).await
            } else {
                self.op.write(key, data).await
            }
        };
        let mut res = write(data.clone()).await;
        if let (Err(e), Some(parent)) = (&res, self.missing_parent(key)) {
            // WebDAV without opendal's per-put parent check (it costs a
            // PROPFIND on every put): 409 Conflict (RFC 4918; rclone says
            // 404) means the parent collection is missing; create it and
            // put again.
            if e.kind() == opendal::ErrorKind::NotFound || crate::cloud::is_conflict(e) {
                // Puts into one new folder race to create it (and its
                // parents); Apache refuses a losing MKCOL (403, "File
                // exists"), which stops opendal before the deeper levels.
                // So put again whatever MKCOL said, a few times, and report
                // MKCOL's error only if the last put fails too.
                for attempt in 1..=3 {
                    let mkcol = self.op.create_dir(&parent).await;
                    res = write(data.clone()).await;
                    match (&res, mkcol) {
                        (Ok(_), _) => break,
                        (Err(_), Err(e)) if attempt == 3 => {
                            return Err(self.err_opendal(&e, op, key))
                        }
                        _ => {}
                    }
                }
            }
        }
        match res {
            Ok(_) => Ok(true),
            Err(e) if if_absent && e.kind() == opendal::ErrorKind::ConditionNotMatch => Ok(false),
            Err(e) => Err(self.err_opendal(&e, op, key)),
        }
    }
}

impl OpendalStore {
    /// On WebDAV, the probe of [`crate::cloud::prepare`] ([`crate::webdav`]):
    /// `None` for other stores; else `Ok(None)` if the first create found
    /// `key` there, `Ok(Some(refused))` whether the second was refused.
    pub(crate) async fn probe_dav(
        &self,
        key: &str,
        first: Bytes,
        second: Bytes,
    ) -> Option<StoreResult<Option<bool>>> {
        let dav = self.remote.as_deref()?.dav.as_ref()?;
        let op = "put_if_absent";
        Some(match self.check_key(op, key) {
            Err(e) => Err(e),
            Ok(()) => self.dav_run(dav, op, key, first, Some(second)).await,
        })
    }

    /// `put_if_absent` on WebDAV ([`crate::webdav`]).
    async fn dav_create(
        &self,
        dav: &crate::webdav::DavCreate,
        op: &'static str,
        key: &str,
        data: Bytes,
    ) -> StoreResult<bool> {
        Ok(self
            .dav_run(dav, op, key, data, None)
            .await?
            .unwrap_or(false))
    }

    /// A create (`second` = None: `Some(created)`) or the probe, creating
    /// missing parent folders the way plain puts do: on a 409, MKCOL the
    /// folder (and its missing parents) and go again, a few times, since
    /// creates into one new folder race to make it and Apache refuses the
    /// losing MKCOL.
    async fn dav_run(
        &self,
        dav: &crate::webdav::DavCreate,
        op: &'static str,
        key: &str,
        data: Bytes,
        second: Option<Bytes>,
    ) -> StoreResult<Option<bool>> {
        use crate::webdav::CreateError;
        let Some(remote) = self.remote.as_deref() else {
            return Err(StoreError::unsupported(
                self.description.as_str(),
                op,
                Some(key),
                "not a WebDAV store",
            ));
        };
        let cx = crate::webdav::Ctx {
            op: &self.op,
            store: &self.description,
            flavor: &remote.flavor,
            what: op,
            key,
        };
        let mut mkcol_err = None;
        for _ in 0..3 {
            let res = match &second {
                None => dav.create(&cx, data.clone()).await.map(Some),
                Some(s) => dav.probe(&cx, data.clone(), s.clone()).await,
            };
            match res {
                Ok(r) => return Ok(r),
                Err(CreateError::Store(e)) => return Err(e),
                Err(CreateError::MissingParent(dir)) => {
                    let path = if dir.is_empty() { "/" } else { dir.as_str() };
                    mkcol_err = self.op.create_dir(path).await.err();
                }
            }
        }
        Err(match mkcol_err {
            Some(e) => self.err_opendal(&e, op, key),
            None => StoreError::new(
                StoreErrorKind::NotFound,
                self.description.as_str(),
                op,
                Some(key),
                "the server keeps answering that the key's folder is missing",
            ),
        })
    }
}

#[async_trait::async_trait]
impl Store for OpendalStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_create: self.conditional_create(),
            ..self.caps.clone()
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.put_inner("put", key, data, false).await.map(|_| ())
    }

    async fn put_deferred(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let Some(dirs) = &self.fs else {
            return self.put(key, data).await;
        };
        self.check_key("put", key)?;
        dirs.open.forget(key);
        let dirs = dirs.clone();
        let k = key.to_owned();
        self.blocking("put", key, move || {
            if data.len() >= SYNC_AT_PUT {
                // Synced now: see SYNC_AT_PUT.
                fs_put(&dirs, &k, &data, false, true)?;
                return Ok(());
            }
            fs_put(&dirs, &k, &data, false, false)?;
            lock(&dirs.unsynced).add(k);
            Ok(())
        })
        .await
    }

    fn will_need(&self, key: &str) {
        if let Some(dirs) = &self.fs {
            if self.check_key("will_need", key).is_ok() {
                fs_will_need(dirs, key);
            }
        }
    }

    async fn sync(&self) -> StoreResult<()> {
        let Some(dirs) = &self.fs else { return Ok(()) };
        let pending = std::mem::replace(&mut *lock(&dirs.unsynced), Unsynced::Keys(Vec::new()));
        if matches!(&pending, Unsynced::Keys(k) if k.is_empty()) {
            return Ok(());
        }
        let d = dirs.clone();
        let res = self
            .blocking("sync", "", move || match pending {
                Unsynced::Keys(keys) => sync_each(&d.root, &keys),
                Unsynced::Many => syncfs(&d.root),
            })
            .await;
        if res.is_err() {
            // Some may be synced, some not: all of the filesystem next time.
            *lock(&dirs.unsynced) = Unsynced::Many;
        }
        res
    }

    async fn prepare(&self) -> StoreResult<()> {
        match &self.remote {
            Some(r) => crate::cloud::prepare(self, r).await,
            None => Ok(()),
        }
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> StoreResult<bool> {
        if !self.conditional_create() {
            let why = if self.remote.is_some() {
                "this server was not proven to enforce conditional create (see `prepare`)"
            } else {
                "this filesystem does not support hard links, so conditional create cannot be enforced"
            };
            return Err(StoreError::unsupported(
                self.description.as_str(),
                "put_if_absent",
                Some(key),
                why,
            ));
        }
        self.put_inner("put_if_absent", key, data, true).await
    }

    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        self.check_key("get", key)?;
        if let Some(dirs) = &self.fs {
            let path = dirs.root.join(key);
            return self
                .blocking("get", key, move || fs_read(&path, None))
                .await;
        }
        match self.op.read(key).await {
            Ok(buf) => Ok(buf.to_bytes()),
            Err(e) if self.remote.is_some() && e.kind() != opendal::ErrorKind::NotFound => {
                // Some WebDAV servers answer a GET of a folder with an error
                // of their own; a folder is not an object.
                match self.op.stat(key).await {
                    Ok(m) if m.mode() == EntryMode::DIR => {
                        Err(StoreError::not_found(self.description.as_str(), "get", key))
                    }
                    _ => Err(self.err_opendal(&e, "get", key)),
                }
            }
            Err(e) => Err(self.err_opendal(&e, "get", key)),
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        self.check_key("get_range", key)?;
        if let Some(dirs) = &self.fs {
            let dirs = dirs.clone();
            let k = key.to_owned();
            return self
                .blocking("get_range", key, move || fs_read_range(&dirs, &k, range))
                .await;
        }
        if self.remote.is_some() && range.start < range.end {
            // One request: the server clamps a range running past the end.
            // Only a range starting at or past the end needs a stat.
            // opendal refuses a short answer ("reader got too little data"),
            // which is what a range running past the end gets: then clamp.
            match self.read_pooled(key, range.clone()).await {
                Ok(buf) => return Ok(buf),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                    return Err(self.err_opendal(&e, "get_range", key))
                }
                Err(e) if e.is_temporary() => return Err(self.err_opendal(&e, "get_range", key)),
                Err(_) => {}
            }
        }
        // Clamp to the object's end ourselves so every backend behaves alike.
        let size = match self.op.stat(key).await {
            Ok(m) if m.mode() == EntryMode::FILE => m.content_length(),
            Ok(_) => {
                return Err(StoreError::not_found(
                    self.description.as_str(),
                    "get_range",
                    key,
                ))
            }
            Err(e) => return Err(self.err_opendal(&e, "get_range", key)),
        };
        let start = range.start.min(size);
        let end = range.end.clamp(start, size);
        if start == end {
            return Ok(Bytes::new());
        }
        match self.read_pooled(key, start..end).await {
            Ok(buf) => Ok(buf),
            Err(e) => Err(self.err_opendal(&e, "get_range", key)),
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        validate_prefix(prefix).map_err(|why| {
            StoreError::invalid_key(self.description.as_str(), "list", prefix, why)
        })?;
        // List the deepest directory that contains every match, then filter:
        // a prefix need not end on a `/` boundary.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "",
        };
        let entries = match self.op.list_with(dir).recursive(true).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err_opendal(&e, "list", prefix)),
        };
        let mut out: Vec<ObjectMeta> = entries
            .into_iter()
            .filter(|e| e.metadata().mode() == EntryMode::FILE)
            .filter_map(|e| {
                let key = e.path().trim_start_matches('/');
                let reserved = key == TMP_DIR
                    || key == crate::webdav::LOCK_NAME
                    || key
                        .strip_prefix(TMP_DIR)
                        .is_some_and(|rest| rest.starts_with('/'));
                (key.starts_with(prefix) && !reserved).then(|| ObjectMeta {
                    key: key.to_owned(),
                    size: e.metadata().content_length(),
                })
            })
            .collect();
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.check_key("delete", key)?;
        if let Some(dirs) = &self.fs {
            let path = dirs.root.join(key);
            dirs.open.forget(key);
            return self.blocking("delete", key, move || fs_delete(&path)).await;
        }
        match self.op.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err_opendal(&e, "delete", key)),
        }
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.check_key("stat", key)?;
        if let Some(dirs) = &self.fs {
            let path = dirs.root.join(key);
            let size = self.blocking("stat", key, move || fs_stat(&path)).await?;
            return Ok(size.map(|size| ObjectMeta {
                key: key.to_owned(),
                size,
            }));
        }
        match self.op.stat(key).await {
            Ok(m) if m.mode() == EntryMode::FILE => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: m.content_length(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err_opendal(&e, "stat", key)),
        }
    }
}

/// A valid key of an opendal store: a valid key ([`crate::keys`]) not under
/// the `file://` backend's temp folder and not WebDAV's lock name.
fn validate_key(key: &str) -> Result<(), &'static str> {
    crate::keys::validate_key(key)?;
    if key.split('/').next() == Some(TMP_DIR) {
        return Err("keys under .strata-tmp/ are reserved");
    }
    if key == crate::webdav::LOCK_NAME {
        return Err("the key .strata-lock is reserved (WebDAV's create lock)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_validation() {
        for ok in ["a", "data/ab/cdef", "meta/x.json", "a-b_c.d/e"] {
            assert_eq!(validate_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/../b",
            "./a",
            "a b",
            "a\\b",
            ".strata-tmp/x",
            ".strata-lock",
            "é",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(validate_key("x/.strata-tmp/y").is_ok());
        assert!(validate_key("x/.strata-lock").is_ok());
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("data/").is_ok());
        assert!(validate_prefix("/data").is_err());
        assert!(validate_prefix("../x").is_err());
    }
}
