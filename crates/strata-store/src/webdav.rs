//! Exclusive create (`put_if_absent`) on WebDAV stores, done with our own
//! HTTP requests because opendal's webdav service has no create-if-absent
//! (its `PUT` never carries `If-None-Match`).
//!
//! ## Why a lock, and not just `PUT` with `If-None-Match: *`
//!
//! RFC 7232 / RFC 4918 let a client `PUT` with `If-None-Match: *`, answered
//! `412 Precondition Failed` when the resource exists. Apache's mod_dav
//! checks that condition when the request arrives (`dav_method_put` →
//! `dav_meets_conditions`), then streams the body into a temporary file and
//! renames it over the target (mod_dav_fs `dav_fs_close_stream`). Two
//! creators racing both pass the check and both get `201`: with 8 creators
//! started together on loopback, about half the rounds had several winners.
//! Only a *sequential* second creator is refused. `MOVE` with
//! `Overwrite: F` is the same check-then-rename. WebDAV `LOCK`s did not help
//! either: two exclusive `LOCK`s of one resource were granted at once in
//! about a fifth of such rounds (apparently the guard around mod_dav_fs's
//! lock database, a file lock, does not exclude the threads of one server
//! process).
//!
//! What the server does atomically is `MKCOL`: it is `mkdir(2)`, so of
//! several creators of one collection exactly one gets `201` and the others
//! `405` (or `403`, Apache's answer when its own existence check passed and
//! `mkdir` then failed). So a collection serves as the lock. A create is:
//!
//! 1. `MKCOL <root>/.strata-lock/`: `201` means we hold the lock; `405` or
//!    `403` with the collection there means another client holds it: wait
//!    and try again.
//! 2. `PUT <root>/<key>` with `If-None-Match: *`: `201`/`204` created,
//!    `412` already there. No other creator can be between this check and
//!    the rename behind it, since they all wait for the lock.
//! 3. `DELETE <root>/.strata-lock/` (always, also when the `PUT` failed).
//!
//! Three requests instead of one; only the writer lease, the vault header
//! and metadata logs are created this way. (No round of 300 8-way races had
//! two holders or two creators.)
//!
//! The lock only excludes creators that take it, i.e. Strata's; the lease
//! and logs are written by Strata alone. A client that dies holding it
//! leaves the collection behind: a waiter that has seen the *same*
//! collection (same ETag and modification time) refuse it for
//! [`STALE_AFTER`] (longer than any holder may take) deletes it and goes
//! on. Two waiters breaking one stale lock at the same moment is the one
//! case left where two creates could overlap: one must delete the new lock
//! the other made within one round trip of both deciding it was stale.
//!
//! Nothing here is trusted until [`crate::cloud::prepare`] has proven it on
//! the server: the probe takes the lock, checks that a second `MKCOL` of it
//! is refused, creates a probe object and creates it again under the same
//! hold, and checks that the second create was refused and left the first
//! content. A server that ignores
//! `If-None-Match` (rclone's, for one) fails the probe, and the store
//! reports no conditional create (the lease then settles instead). The
//! probe runs requests one after another: that `MKCOL` is atomic under
//! races is a property of the server (a filesystem's `mkdir` on Apache),
//! shown by the racing tests, not proven at open.
//!
//! The requests go through the opendal operator's own HTTP transport (the
//! same client, connection pool and `ca-file` roots), to the same endpoint
//! and root, with the same basic-auth header opendal builds; each one has
//! the cloud backends' request time limit.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, StatusCode};
use opendal::{Buffer, Operator};

use crate::cloud::Flavor;
use crate::error::{StoreError, StoreErrorKind};

/// The reserved name at the store root whose collection is the create lock.
pub(crate) const LOCK_NAME: &str = ".strata-lock";

/// A lock refused this long with the same collection there belongs to a
/// client that died: longer than a holder may take (its `PUT` is bounded
/// by [`crate::cloud::REQUEST_TIMEOUT`], the `MKCOL` and `DELETE` around it
/// take a round trip each).
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(180);

/// A real create reports a `MKCOL` of the lock refused while no lock is
/// there only after this long (see [`DavCreate::held`]).
const REFUSED_GIVE_UP: Duration = Duration::from_secs(30);

/// How to reach a WebDAV store for the requests opendal cannot send.
pub(crate) struct DavCreate {
    /// `http(s)://HOST[:PORT]`, as given to opendal.
    endpoint: String,
    /// The store's folder, decoded, with leading and trailing `/` (what
    /// opendal calls the root).
    root: String,
    /// `Basic …`, marked sensitive (never printed).
    auth: Option<HeaderValue>,
}

impl std::fmt::Debug for DavCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DavCreate")
            .field("endpoint", &self.endpoint)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Why a create did not happen.
pub(crate) enum CreateError {
    /// The collection `dir` (a key prefix ending in `/`, or `""` for the
    /// store root) is missing: `409`/`404` (RFC 4918 §9.3.1, §9.7.1).
    MissingParent(String),
    Store(StoreError),
}

impl From<StoreError> for CreateError {
    fn from(e: StoreError) -> Self {
        CreateError::Store(e)
    }
}

/// The operator to send through, and where errors are reported: the
/// store, the operation and the key.
pub(crate) struct Ctx<'a> {
    pub(crate) op: &'a Operator,
    pub(crate) store: &'a str,
    pub(crate) flavor: &'a Flavor,
    pub(crate) what: &'static str,
    pub(crate) key: &'a str,
}

/// What a refused `MKCOL` of the lock found.
enum Held {
    /// The lock collection is there: someone holds it. Its ETag and
    /// modification time tell one holder's lock from the next.
    By(String),
    /// Gone already: try again at once.
    Released,
}

impl DavCreate {
    /// For `endpoint` and `root` as given to opendal's webdav builder.
    pub(crate) fn new(
        endpoint: &str,
        root: &str,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self, String> {
        let auth = match user {
            Some(u) => {
                let v = opendal::raw::format_authorization_by_basic(u, password.unwrap_or(""))
                    .map_err(|e| format!("cannot build the WebDAV authorization header: {e}"))?;
                let mut v = HeaderValue::from_str(&v).map_err(|_| {
                    "the WebDAV user name or password has characters an HTTP header cannot carry"
                        .to_owned()
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(DavCreate {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            root: opendal::raw::normalize_root(root),
            auth,
        })
    }

    /// The URL of `path` (relative to the root), encoded as opendal does.
    fn url(&self, path: &str) -> String {
        let full = format!("{}{path}", self.root);
        format!(
            "{}{}",
            self.endpoint,
            opendal::raw::percent_encode_path(&full)
        )
    }

    /// `endpoint` + root, for messages.
    fn shown(&self) -> String {
        self.url("")
    }

    /// Create `key` with `data` unless it exists: `Ok(true)` created,
    /// `Ok(false)` it was there.
    pub(crate) async fn create(&self, cx: &Ctx<'_>, data: Bytes) -> Result<bool, CreateError> {
        self.lock(cx, true).await?;
        let res = self.put_if_none_match(cx, data).await;
        self.unlock(cx).await;
        res
    }

    /// The probe of [`crate::cloud::prepare`], under one hold of the lock:
    /// a second `MKCOL` of the lock must be refused, then `key` is created
    /// with `first` and created again with `second`. `Ok(None)`: the first
    /// create found `key` there; `Ok(Some(refused))`: whether the second
    /// was refused.
    pub(crate) async fn probe(
        &self,
        cx: &Ctx<'_>,
        first: Bytes,
        second: Bytes,
    ) -> Result<Option<bool>, CreateError> {
        self.lock(cx, false).await?;
        let res = async {
            self.check_exclusive(cx).await?;
            if !self.put_if_none_match(cx, first).await? {
                return Ok(None);
            }
            Ok(Some(!self.put_if_none_match(cx, second).await?))
        }
        .await;
        self.unlock(cx).await;
        res
    }

    /// Step 1: take the lock, waiting while another client holds it, and
    /// breaking a lock left by a client that died.
    /// `patient`: false for the probe (see [`DavCreate::held`]).
    async fn lock(&self, cx: &Ctx<'_>, patient: bool) -> Result<(), CreateError> {
        let mut pause = Duration::from_millis(5);
        // The holder we are waiting for, and since when.
        let mut waiting: Option<(String, Instant)> = None;
        let mut told = false;
        let mut gone = None;
        loop {
            let status = self.mkcol_lock(cx).await?;
            if status == StatusCode::CREATED {
                return Ok(());
            }
            let holder = match status {
                // 405: it exists (RFC 4918 §9.3.1). 403: Apache's answer
                // when mkdir lost a race, or a real refusal: look.
                StatusCode::METHOD_NOT_ALLOWED | StatusCode::FORBIDDEN => {
                    self.held(cx, status, &mut gone, patient).await?
                }
                StatusCode::CONFLICT | StatusCode::NOT_FOUND => {
                    return Err(CreateError::MissingParent(String::new()))
                }
                s if s.is_success() => {
                    return Err(self
                        .error(
                            cx,
                            StoreErrorKind::Unsupported,
                            format!(
                                "MKCOL {LOCK_NAME}/ answered {s}, not 201 Created: the \
                                 server's collections cannot serve as a lock"
                            ),
                        )
                        .into())
                }
                s => return Err(self.status_error(cx, "MKCOL", LOCK_NAME, s).into()),
            };
            let Held::By(id) = holder else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            match &waiting {
                Some((seen, since)) if *seen == id => {
                    if since.elapsed() >= STALE_AFTER {
                        tracing::warn!(
                            store = %cx.store,
                            "removing the create lock {LOCK_NAME}/ held for over {} s by a \
                             client that must have died",
                            STALE_AFTER.as_secs()
                        );
                        if !self.unlock(cx).await {
                            return Err(self
                                .error(
                                    cx,
                                    StoreErrorKind::Other,
                                    format!(
                                        "the create lock {LOCK_NAME}/ was left by a client \
                                         that died and cannot be removed; remove that folder"
                                    ),
                                )
                                .into());
                        }
                        waiting = None;
                        continue;
                    }
                    if !told && since.elapsed() > Duration::from_secs(2) {
                        told = true;
                        tracing::info!(
                            store = %cx.store,
                            key = %cx.key,
                            "waiting for another client's create lock ({LOCK_NAME}/); one left \
                             by a client that died is removed after {} s",
                            STALE_AFTER.as_secs()
                        );
                    }
                }
                _ => waiting = Some((id, Instant::now())),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn mkcol_lock(&self, cx: &Ctx<'_>) -> Result<StatusCode, StoreError> {
        let req = self.request(cx, "MKCOL", &format!("{LOCK_NAME}/"))?;
        Ok(self.send(cx, req, Buffer::new()).await?.status())
    }

    /// After a refused `MKCOL` of the lock: who holds it, if anyone.
    /// `gone` counts the refusals in a row after which the lock was not
    /// there, and since when: such is a lost race whose winner was quick
    /// (common when many creators contend), but a server that refuses us
    /// `MKCOL` itself (read-only credentials: `403`; no collections: `405`)
    /// looks the same. The probe gives up after a few; a real create, only
    /// once that has gone on for [`REFUSED_GIVE_UP`].
    async fn held(
        &self,
        cx: &Ctx<'_>,
        status: StatusCode,
        gone: &mut Option<(u32, Instant)>,
        patient: bool,
    ) -> Result<Held, StoreError> {
        match cx.op.stat(&format!("{LOCK_NAME}/")).await {
            Ok(m) => {
                *gone = None;
                Ok(Held::By(format!("{:?} {:?}", m.etag(), m.last_modified())))
            }
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                let (n, since) = gone.get_or_insert((0, Instant::now()));
                *n += 1;
                if *n < 5 || (patient && since.elapsed() < REFUSED_GIVE_UP) {
                    return Ok(Held::Released);
                }
                Err(if status == StatusCode::FORBIDDEN {
                    self.status_error(cx, "MKCOL", LOCK_NAME, status)
                } else {
                    self.error(
                        cx,
                        StoreErrorKind::Unsupported,
                        format!(
                            "MKCOL {LOCK_NAME}/ keeps being answered {status} while no such \
                             folder exists: the server does not let us create folders"
                        ),
                    )
                })
            }
            Err(e) => Err(crate::cloud::explain(
                &e,
                cx.flavor,
                cx.store,
                cx.what,
                Some(cx.key),
            )),
        }
    }

    /// The probe's check that the server refuses a second `MKCOL` of the
    /// lock while we hold it.
    async fn check_exclusive(&self, cx: &Ctx<'_>) -> Result<(), CreateError> {
        let status = self.mkcol_lock(cx).await?;
        if matches!(
            status,
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::FORBIDDEN
        ) {
            return Ok(());
        }
        Err(self
            .error(
                cx,
                StoreErrorKind::Unsupported,
                format!(
                    "a second MKCOL of the existing collection {LOCK_NAME}/ was answered \
                     {status}, not 405: the server's collections cannot serve as a lock"
                ),
            )
            .into())
    }

    /// Step 2.
    async fn put_if_none_match(&self, cx: &Ctx<'_>, data: Bytes) -> Result<bool, CreateError> {
        let req = self
            .request(cx, "PUT", cx.key)?
            .header("if-none-match", "*")
            .header("content-length", data.len());
        let resp = self.send(cx, req, Buffer::from(data)).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::PRECONDITION_FAILED => Ok(false),
            StatusCode::CONFLICT | StatusCode::NOT_FOUND => Err(CreateError::MissingParent(
                cx.key
                    .rfind('/')
                    .map(|i| cx.key[..=i].to_owned())
                    .unwrap_or_default(),
            )),
            s => Err(self.status_error(cx, "PUT", cx.key, s).into()),
        }
    }

    /// Step 3, best effort: a lock left behind is removed by the next
    /// creator after [`STALE_AFTER`].
    async fn unlock(&self, cx: &Ctx<'_>) -> bool {
        // A lock left behind stalls every create for minutes: try again on
        // a failure that may pass.
        for attempt in 1..=3 {
            let res = match self.request(cx, "DELETE", &format!("{LOCK_NAME}/")) {
                Ok(req) => self.send(cx, req, Buffer::new()).await.map(|r| r.status()),
                Err(e) => Err(e),
            };
            let again = match &res {
                Ok(s) if s.is_success() || *s == StatusCode::NOT_FOUND => return true,
                Ok(s) => s.is_server_error(),
                Err(e) => e.kind == StoreErrorKind::Transient,
            };
            if again && attempt < 3 {
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                continue;
            }
            match res {
                Ok(s) => tracing::warn!(
                    store = %cx.store,
                    "DELETE {LOCK_NAME}/ answered {s}; other creates wait until it counts as \
                     stale ({} s)",
                    STALE_AFTER.as_secs()
                ),
                Err(e) => tracing::warn!(
                    store = %cx.store,
                    error = %e,
                    "DELETE {LOCK_NAME}/ failed; other creates wait until it counts as stale \
                     ({} s)",
                    STALE_AFTER.as_secs()
                ),
            }
            break;
        }
        false
    }

    fn request(
        &self,
        cx: &Ctx<'_>,
        method: &'static str,
        path: &str,
    ) -> Result<http::request::Builder, StoreError> {
        let m = Method::from_bytes(method.as_bytes()).map_err(|e| {
            self.error(
                cx,
                StoreErrorKind::Other,
                format!("bad method {method}: {e}"),
            )
        })?;
        let mut b = Request::builder().method(m).uri(self.url(path));
        if let Some(a) = &self.auth {
            b = b.header(http::header::AUTHORIZATION, a.clone());
        }
        Ok(b)
    }

    async fn send(
        &self,
        cx: &Ctx<'_>,
        req: http::request::Builder,
        body: Buffer,
    ) -> Result<http::Response<Buffer>, StoreError> {
        let req = req.body(body).map_err(|e| {
            self.error(
                cx,
                StoreErrorKind::Other,
                format!("cannot build the request: {e}"),
            )
        })?;
        let transport = cx.op.context().http_transport();
        match tokio::time::timeout(crate::cloud::REQUEST_TIMEOUT, transport.send(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(crate::cloud::explain(
                &e,
                cx.flavor,
                cx.store,
                cx.what,
                Some(cx.key),
            )),
            Err(_) => Err(self.error(
                cx,
                StoreErrorKind::Transient,
                format!(
                    "cannot reach {}: no answer within {} s",
                    self.shown(),
                    crate::cloud::REQUEST_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    fn error(&self, cx: &Ctx<'_>, kind: StoreErrorKind, message: String) -> StoreError {
        StoreError::new(
            kind,
            cx.store,
            cx.what,
            Some(cx.key),
            format!("{}: {message}", self.shown()),
        )
    }

    /// An unexpected answer to `method` on `path`.
    fn status_error(
        &self,
        cx: &Ctx<'_>,
        method: &str,
        path: &str,
        status: StatusCode,
    ) -> StoreError {
        use StoreErrorKind as K;
        let (kind, hint) = match status.as_u16() {
            401 => (
                K::PermissionDenied,
                format!(
                    "the server rejected the user name or password; check {} / {} or \
                     password-file",
                    crate::cloud::WEBDAV_USER_ENV,
                    crate::cloud::WEBDAV_PASSWORD_ENV
                ),
            ),
            403 => (
                K::PermissionDenied,
                "the credentials lack permission for it".to_owned(),
            ),
            413 => (
                K::TooLarge,
                "the object is too large for the server".to_owned(),
            ),
            501 | 400 | 415 if method == "MKCOL" => (
                K::Unsupported,
                "the server cannot create collections, so objects cannot be created \
                 exclusively there"
                    .to_owned(),
            ),
            408 | 423 | 429 | 500 | 502 | 503 | 504 => (K::Transient, "try again later".to_owned()),
            _ => (K::Other, "unexpected answer".to_owned()),
        };
        self.error(
            cx,
            kind,
            format!("{method} {path} answered {status}: {hint}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_encoded_like_opendal_and_secrets_never_print() {
        let d = DavCreate::new("http://h:8080/", "/my dav/x", Some("u"), Some("s3cret")).unwrap();
        assert_eq!(d.url("lease/01"), "http://h:8080/my%20dav/x/lease/01");
        assert_eq!(
            d.url(".strata-lock/"),
            "http://h:8080/my%20dav/x/.strata-lock/"
        );
        let shown = format!("{d:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        // base64("u:s3cret")
        assert!(!shown.contains("dTpzM2NyZXQ"), "{shown}");
        assert!(d.auth.as_ref().is_some_and(|a| a.is_sensitive()));
        let none = DavCreate::new("https://h", "", None, None).unwrap();
        assert_eq!(none.url("k"), "https://h/k");
        assert!(none.auth.is_none());
    }
}
