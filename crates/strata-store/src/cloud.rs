//! Cloud backends reached through `opendal`: `s3://`, `webdav+http(s)://`
//! and `onedrive:` — their URL options, where their credentials come from,
//! the capability probe run by [`Store::prepare`](crate::Store::prepare), and
//! error messages that name the store and the cause (unreachable endpoint,
//! rejected credentials, missing bucket, TLS failure) instead of a raw
//! HTTP dump.
//!
//! Secrets never appear in URLs: S3 keys come from the usual
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables, an AWS profile or
//! a credentials file; WebDAV passwords from `STRATA_WEBDAV_PASSWORD` or a
//! password file; OneDrive tokens from files.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opendal::Operator;
use rand::RngCore;

use crate::backend::{OpendalStore, Remote};
use crate::error::{StoreError, StoreErrorKind, StoreResult};
use crate::{Capabilities, Store};

/// Options `s3://` URLs take besides the general ones.
pub(crate) const S3_OPTIONS: &[&str] = &[
    "endpoint",
    "region",
    "profile",
    "credentials-file",
    "virtual-host",
    "imds",
    "ca-file",
];
/// Options `webdav+http(s)://` URLs take besides the general ones.
pub(crate) const WEBDAV_OPTIONS: &[&str] = &["user", "password-file", "ca-file"];
/// Options `onedrive:` URLs take besides the general ones.
pub(crate) const ONEDRIVE_OPTIONS: &[&str] = &[
    "token-file",
    "refresh-token-file",
    "client-id",
    "client-secret-file",
    "ca-file",
];

/// Environment variables for WebDAV credentials.
pub const WEBDAV_USER_ENV: &str = "STRATA_WEBDAV_USER";
pub const WEBDAV_PASSWORD_ENV: &str = "STRATA_WEBDAV_PASSWORD";

/// Whole-request and idle-I/O time limits for cloud requests: a server that
/// stops answering fails the request (and the retry layer tries again)
/// instead of hanging a mount forever.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Which cloud a [`Remote`] store talks to, for error messages.
#[derive(Debug, Clone)]
pub(crate) enum Flavor {
    S3 { endpoint: String, bucket: String },
    WebDav { endpoint: String },
    OneDrive,
}

/// Backend-specific options split off a store URL's query string.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    pairs: Vec<(String, Option<String>)>,
}

impl Extra {
    /// Split the options named in `names` off `query`; returns them and the
    /// rest of the query (the general options).
    pub(crate) fn split(query: &str, names: &[&str]) -> (Extra, String) {
        let mut extra = Extra::default();
        let mut rest = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (part, None),
            };
            let lname = name.to_ascii_lowercase();
            if names.contains(&lname.as_str()) {
                let value = value.map(percent_decode);
                extra.pairs.push((lname, value));
            } else {
                rest.push(part);
            }
        }
        (extra, rest.join("&"))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> Result<bool, String> {
        match self.pairs.iter().rev().find(|(n, _)| n == name) {
            None => Ok(false),
            Some((_, v)) => crate::url::parse_flag(name, v.as_deref()),
        }
    }
}

fn percent_decode(v: &str) -> String {
    ::url::form_urlencoded::parse(format!("v={v}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Read a secret from a file (trimmed); errors name the file and what it is for.
fn read_secret_file(path: &str, what: &str) -> Result<String, String> {
    let p = crate::url::expand_home(path);
    match std::fs::read_to_string(&p) {
        Ok(s) => {
            let s = s.trim().to_owned();
            if s.is_empty() {
                Err(format!("{what} file {} is empty", p.display()))
            } else {
                Ok(s)
            }
        }
        Err(e) => Err(format!("cannot read {what} file {}: {e}", p.display())),
    }
}

/// With `ca-file=PATH`: `op` sending its requests through a client that
/// trusts only the CA certificates in that file.
fn with_ca_file(op: Operator, extra: &Extra) -> Result<Operator, String> {
    let Some(path) = extra.get(crate::tls::CA_FILE) else {
        return Ok(op);
    };
    let certs = crate::tls::load_ca_file(path)?;
    let client = crate::tls::with_roots(reqwest::Client::builder(), Some(certs))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client with CA file {path}: {e}"))?;
    let transport = opendal::HttpTransporter::new(
        opendal_http_transport_reqwest::ReqwestTransport::new(client),
    );
    let ctx = opendal::OperationContext::new().with_http_transport(transport);
    Ok(op.with_context(ctx))
}

fn finish(op: Operator) -> Operator {
    op.layer(
        opendal::layers::TimeoutLayer::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_io_timeout(IO_TIMEOUT),
    )
}

fn remote_store(
    op: Operator,
    description: String,
    flavor: Flavor,
    can_try_conditional: bool,
    dav: Option<crate::webdav::DavCreate>,
) -> OpendalStore {
    OpendalStore::remote(
        op,
        description,
        Capabilities {
            range_reads: true,
            // Not trusted until `prepare` proves it.
            conditional_create: false,
            max_object_size: None,
        },
        Arc::new(Remote {
            flavor,
            can_try_conditional,
            dav,
            conditional_proven: AtomicBool::new(false),
            prepared: AtomicBool::new(false),
        }),
    )
}

/// `s3://BUCKET[/PREFIX]` with options `endpoint=URL`, `region=NAME`
/// (default `us-east-1` when an endpoint is given), `profile=NAME`,
/// `credentials-file=PATH` (AWS INI format), `virtual-host` (virtual-hosted
/// style instead of path style), `imds` (allow the EC2 metadata service).
pub(crate) fn open_s3(
    rest: &str,
    extra: &Extra,
    description: String,
) -> Result<OpendalStore, String> {
    let rest = rest.trim_matches('/');
    if rest.split('/').next().is_some_and(|b| b.contains('@')) {
        return Err("s3 URLs carry no credentials: set AWS_ACCESS_KEY_ID and \
                    AWS_SECRET_ACCESS_KEY, or give profile=NAME or credentials-file=PATH"
            .into());
    }
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    };
    if bucket.is_empty() {
        return Err("s3 URLs name a bucket: s3://BUCKET/PREFIX?endpoint=…".into());
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
    {
        return Err(format!(
            "`{bucket}` is not a valid bucket name (lower-case letters, digits, `.` and `-`)"
        ));
    }
    let mut b = opendal::services::S3::default()
        .bucket(bucket)
        .root(&format!("/{prefix}"));
    let endpoint = extra.get("endpoint").map(|e| e.trim_end_matches('/'));
    if let Some(e) = endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(format!(
                "endpoint must start with http:// or https://, not `{e}`"
            ));
        }
        b = b.endpoint(e);
    }
    let region = extra.get("region").map(str::to_owned).or_else(|| {
        std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .ok()
    });
    match (region, endpoint) {
        (Some(r), _) => b = b.region(&r),
        (None, Some(_)) => b = b.region("us-east-1"),
        (None, None) => {
            return Err(
                "give the bucket's region=NAME (or set AWS_REGION), or endpoint=URL \
                        for an S3-compatible server"
                    .into(),
            )
        }
    }
    if !extra.flag("imds")? {
        // Never probe 169.254.169.254 unless asked: off EC2 it only hangs.
        b = b.disable_ec2_metadata();
    }
    if extra.flag("virtual-host")? {
        b = b.enable_virtual_host_style();
    }
    if let Some(file) = extra.get("credentials-file") {
        let profile = extra.get("profile").unwrap_or("default");
        let (ak, sk, token) = read_aws_credentials(file, profile)?;
        b = b.access_key_id(&ak).secret_access_key(&sk);
        if let Some(t) = token {
            b = b.session_token(&t);
        }
    } else if let Some(profile) = extra.get("profile") {
        b = b.profile(profile);
    }
    let op = Operator::new(b).map_err(|e| format!("cannot set up the S3 client: {e}"))?;
    let op = with_ca_file(op, extra)?;
    let flavor = Flavor::S3 {
        endpoint: endpoint
            .map(str::to_owned)
            .unwrap_or_else(|| "AWS".to_owned()),
        bucket: bucket.to_owned(),
    };
    Ok(remote_store(finish(op), description, flavor, true, None))
}

/// Read `[profile]`'s keys from an AWS shared-credentials (INI) file.
fn read_aws_credentials(
    path: &str,
    profile: &str,
) -> Result<(String, String, Option<String>), String> {
    let p = crate::url::expand_home(path);
    let text = std::fs::read_to_string(&p)
        .map_err(|e| format!("cannot read credentials file {}: {e}", p.display()))?;
    let (mut ak, mut sk, mut token) = (None, None, None);
    let mut in_profile = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_profile = name == profile || name == format!("profile {profile}");
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => ak = Some(v),
                "aws_secret_access_key" => sk = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (ak, sk) {
        (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Ok((a, s, token)),
        _ => Err(format!(
            "credentials file {} has no aws_access_key_id and aws_secret_access_key \
             under [{profile}]",
            p.display()
        )),
    }
}

/// `webdav+http(s)://[USER@]HOST[:PORT]/PATH` with options `user=NAME`,
/// `password-file=PATH`; otherwise `STRATA_WEBDAV_USER` /
/// `STRATA_WEBDAV_PASSWORD`.
pub(crate) fn open_webdav(
    scheme: &str,
    rest: &str,
    extra: &Extra,
    description: String,
) -> Result<OpendalStore, String> {
    let http = scheme.trim_start_matches("webdav+");
    let parsed = ::url::Url::parse(&format!("{http}://{rest}"))
        .map_err(|e| format!("not a valid WebDAV URL: {e}"))?;
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("WebDAV URLs need a host: webdav+https://HOST/PATH")?;
    if parsed.password().is_some() {
        return Err(format!(
            "do not put the password in the URL; set {WEBDAV_PASSWORD_ENV} or password-file=PATH"
        ));
    }
    let endpoint = match parsed.port() {
        Some(p) => format!("{http}://{host}:{p}"),
        None => format!("{http}://{host}"),
    };
    let root = parsed.path().to_owned();
    let root = if root.ends_with('/') {
        root
    } else {
        format!("{root}/")
    };
    let shown = format!("{endpoint}{root}");
    let root = percent_decode(&root);
    let mut b = opendal::services::Webdav::default()
        .endpoint(&endpoint)
        .root(&root);
    let user = extra
        .get("user")
        .map(str::to_owned)
        .or_else(|| (!parsed.username().is_empty()).then(|| percent_decode(parsed.username())))
        .or_else(|| {
            std::env::var(WEBDAV_USER_ENV)
                .ok()
                .filter(|u| !u.is_empty())
        });
    let password = match extra.get("password-file") {
        Some(f) => Some(read_secret_file(f, "WebDAV password")?),
        None => std::env::var(WEBDAV_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty()),
    };
    match (&user, &password) {
        (Some(u), Some(p)) => b = b.username(u).password(p),
        (Some(u), None) => b = b.username(u),
        (None, Some(_)) => {
            return Err(format!(
                "a WebDAV password was given but no user: put it in the URL \
                 (webdav+https://USER@HOST/…), user=NAME or {WEBDAV_USER_ENV}"
            ))
        }
        (None, None) => {}
    }
    // Parent folders are created on a 409 answer instead (backend.rs):
    // one request per put instead of two.
    b = b.disable_create_dir(true);
    let op = Operator::new(b).map_err(|e| format!("cannot set up the WebDAV client: {e}"))?;
    let op = with_ca_file(op, extra)?;
    // Exclusive create through a WebDAV lock (webdav.rs), tried by the
    // probe in `prepare`.
    let dav =
        crate::webdav::DavCreate::new(&endpoint, &root, user.as_deref(), password.as_deref())?;
    let flavor = Flavor::WebDav { endpoint: shown };
    Ok(remote_store(
        finish(op),
        description,
        flavor,
        true,
        Some(dav),
    ))
}

/// `onedrive:/PATH` with `token-file=PATH` (an access token), or
/// `refresh-token-file=PATH` + `client-id=ID` (+ `client-secret-file=PATH`
/// for confidential apps) so the token is renewed.
pub(crate) fn open_onedrive(
    path: &str,
    extra: &Extra,
    description: String,
) -> Result<OpendalStore, String> {
    let root = format!("/{}/", path.trim_matches('/'));
    let root = if root == "//" { "/".to_owned() } else { root };
    let mut b = opendal::services::Onedrive::default().root(&root);
    let access = extra.get("token-file");
    let refresh = extra.get("refresh-token-file");
    match (access, refresh) {
        (None, None) => {
            return Err("OneDrive needs token-file=PATH (an access token), or \
                 refresh-token-file=PATH with client-id=ID so the token can be renewed"
                .into())
        }
        (a, r) => {
            if let Some(a) = a {
                b = b.access_token(&read_secret_file(a, "OneDrive access token")?);
            }
            if let Some(r) = r {
                let Some(id) = extra.get("client-id") else {
                    return Err("refresh-token-file needs client-id=ID (the app's \
                                Application (client) ID) to renew the token"
                        .into());
                };
                b = b
                    .refresh_token(&read_secret_file(r, "OneDrive refresh token")?)
                    .client_id(id);
                if let Some(s) = extra.get("client-secret-file") {
                    b = b.client_secret(&read_secret_file(s, "OneDrive client secret")?);
                }
            }
        }
    }
    let op = Operator::new(b).map_err(|e| format!("cannot set up the OneDrive client: {e}"))?;
    let op = with_ca_file(op, extra)?;
    Ok(remote_store(
        finish(op),
        description,
        Flavor::OneDrive,
        false,
        None,
    ))
}

/// Turn an opendal error from a cloud backend into a [`StoreError`] whose
/// message says what happened and what to do.
pub(crate) fn explain(
    err: &opendal::Error,
    flavor: &Flavor,
    store: &str,
    op: &'static str,
    key: Option<&str>,
) -> StoreError {
    let mut e = StoreError::from_opendal(err, store, op, key);
    let text = error_chain(err);
    let lower = text.to_ascii_lowercase();
    let has = |s: &str| lower.contains(&s.to_ascii_lowercase());
    let endpoint = match flavor {
        Flavor::S3 { endpoint, .. } | Flavor::WebDav { endpoint } => endpoint.as_str(),
        Flavor::OneDrive => "graph.microsoft.com",
    };
    if has("certificate") || has("tls") || has("invalidcontenttype") || has("handshake") {
        e.kind = StoreErrorKind::Other;
        let hint =
            if has("unknownissuer") || has("unknown issuer") || has("invalid peer certificate") {
                crate::tls::PRIVATE_CA_HINT
            } else {
                "check the URL's scheme and the server's certificate"
            };
        e.message = format!(
            "TLS failure talking to {endpoint}: {} ({hint})",
            short_cause(&text)
        );
    } else if has("connection refused")
        || has("dns error")
        || has("failed to lookup")
        || has("error trying to connect")
        || has("client error (connect)")
        || has("connection reset")
        || (has("timeout") && !has("requesttimeout"))
    {
        e.kind = StoreErrorKind::Transient;
        e.message = format!(
            "cannot reach {endpoint}: {} (is the server running and the endpoint right?)",
            short_cause(&text)
        );
    } else if has("failed to load signing credential") || has("no valid credential") {
        e.kind = StoreErrorKind::PermissionDenied;
        e.message = "no S3 credentials found: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or give profile=NAME or credentials-file=PATH"
            .to_owned();
    } else if has("InvalidAccessKeyId") || has("SignatureDoesNotMatch") || has("status: 401") {
        e.kind = StoreErrorKind::PermissionDenied;
        e.message = match flavor {
            Flavor::S3 { .. } => format!(
                "{endpoint} rejected the credentials ({}); check AWS_ACCESS_KEY_ID / \
                 AWS_SECRET_ACCESS_KEY, the profile or the credentials file",
                s3_code(&text).unwrap_or("401")
            ),
            Flavor::WebDav { .. } => format!(
                "{endpoint} rejected the user name or password (401); check \
                 {WEBDAV_USER_ENV} / {WEBDAV_PASSWORD_ENV} or password-file"
            ),
            Flavor::OneDrive => "OneDrive rejected the access token (401): it is wrong or \
                 expired; get a new one, or give refresh-token-file and client-id"
                .to_owned(),
        };
    } else if has("NoSuchBucket") {
        e.kind = StoreErrorKind::NotFound;
        if let Flavor::S3 { bucket, .. } = flavor {
            e.message = format!(
                "bucket `{bucket}` does not exist at {endpoint}; create it first (with the \
                 provider's console or tools) or fix the URL"
            );
        }
    } else if has("AccessDenied") || has("status: 403") {
        e.kind = StoreErrorKind::PermissionDenied;
        e.message = format!(
            "{endpoint} denied {op}{}: the credentials lack permission for it",
            key.map(|k| format!(" of {k}")).unwrap_or_default()
        );
    } else if e.kind == StoreErrorKind::TooLarge || crate::error::says_too_large(&text) {
        // Permanent: the same object will be refused again.
        e.kind = StoreErrorKind::TooLarge;
        e.message = format!(
            "{endpoint} refused the object as too large ({})",
            short_cause(&text)
        );
    } else if e.kind == StoreErrorKind::Other || e.kind == StoreErrorKind::Transient {
        e.message = short_cause(&text);
    }
    e
}

/// A WebDAV `409 Conflict` (RFC 4918: the parent collection is missing).
pub(crate) fn is_conflict(err: &opendal::Error) -> bool {
    let text = error_chain(err);
    text.contains("409") && text.to_ascii_lowercase().contains("conflict")
}

/// The S3 error code in a response body, e.g. `InvalidAccessKeyId`.
fn s3_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// The error and its sources, one string.
fn error_chain(err: &opendal::Error) -> String {
    let mut s = err.to_string();
    let mut src = std::error::Error::source(err);
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

/// A short, single-line cause: the innermost error, or the S3 code.
fn short_cause(text: &str) -> String {
    if let Some(code) = s3_code(text) {
        return code.to_owned();
    }
    let last = text.rsplit(": ").next().unwrap_or(text);
    let one_line: String = last.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 300 {
        one_line.chars().take(300).collect::<String>() + "…"
    } else {
        one_line
    }
}

/// [`Store::prepare`](crate::Store::prepare) for a cloud store: one round
/// trip proves the store is reachable and the credentials work (so errors
/// come at open, not at the first write), then probes conditional create by
/// writing one probe object twice: enforced only if the second create is
/// refused and the first content survives. Servers that accept
/// `If-None-Match: *` and overwrite anyway are caught here, and so are
/// WebDAV servers whose locks are not exclusive (webdav.rs).
pub(crate) async fn prepare(store: &OpendalStore, remote: &Remote) -> StoreResult<()> {
    if remote.prepared.load(Ordering::SeqCst) {
        return Ok(());
    }
    // Reachability + credentials + bucket: a one-entry listing of the root
    // (unlike a HEAD, its error answers carry the reason, e.g. S3's
    // InvalidAccessKeyId or NoSuchBucket).
    store.probe_list().await?;
    let proven = if remote.can_try_conditional {
        match probe_conditional(store).await {
            Ok(p) => p,
            // Read-only credentials: a reader needs no conditional create.
            Err(e) if e.kind == StoreErrorKind::PermissionDenied => false,
            // A WebDAV server without (exclusive) locks: the store works,
            // only without conditional create.
            Err(e) if remote.dav.is_some() && e.kind != StoreErrorKind::Transient => {
                tracing::info!(
                    store = %store.description(),
                    reason = %e,
                    "no exclusive create on this WebDAV server"
                );
                false
            }
            Err(e) => return Err(e),
        }
    } else {
        false
    };
    remote.conditional_proven.store(proven, Ordering::SeqCst);
    remote.prepared.store(true, Ordering::SeqCst);
    tracing::info!(
        store = %store.description(),
        conditional_create = proven,
        "store prepared"
    );
    Ok(())
}

async fn probe_conditional(store: &OpendalStore) -> StoreResult<bool> {
    let mut r = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut r);
    let key = format!("probe.{}", hex(&r));
    let first = Bytes::from_static(b"strata conditional-create probe 1");
    let second = Bytes::from_static(b"strata conditional-create probe 2");
    let result = async {
        // WebDAV: both creates under one hold of the lock, which also
        // checks that the server refuses a second one (webdav.rs).
        if let Some(probed) = store.probe_dav(&key, first.clone(), second.clone()).await {
            let refused = match probed {
                Ok(Some(refused)) => refused,
                Ok(None) => return Ok(false),
                Err(e) => return Err(e),
            };
            let kept = store.get(&key).await? == first;
            return Ok(refused && kept);
        }
        match store
            .put_inner("put_if_absent", &key, first.clone(), true)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) if e.kind == StoreErrorKind::Unsupported => return Ok(false),
            Err(e) => return Err(e),
        }
        let refused = match store.put_inner("put_if_absent", &key, second, true).await {
            Ok(created) => !created,
            Err(e) if e.kind == StoreErrorKind::Unsupported => false,
            Err(e) => return Err(e),
        };
        let kept = store.get(&key).await? == first;
        Ok(refused && kept)
    }
    .await;
    // Best effort: a leftover probe object is harmless (nothing reads it).
    let _ = store.delete(&key).await;
    result
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_extracts_named_options() {
        let (extra, rest) = Extra::split(
            "endpoint=http%3A%2F%2F127.0.0.1%3A9000&no-range&region=eu&concurrency=2",
            S3_OPTIONS,
        );
        assert_eq!(extra.get("endpoint"), Some("http://127.0.0.1:9000"));
        assert_eq!(extra.get("region"), Some("eu"));
        assert_eq!(rest, "no-range&concurrency=2");
        assert!(!extra.flag("virtual-host").unwrap());
    }

    #[test]
    fn aws_credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id = AK1\naws_secret_access_key=SK1\n\n\
             [profile other]\naws_access_key_id=AK2\naws_secret_access_key=SK2\naws_session_token=T\n",
        )
        .unwrap();
        let p = f.to_str().unwrap();
        assert_eq!(
            read_aws_credentials(p, "default").unwrap(),
            ("AK1".into(), "SK1".into(), None)
        );
        assert_eq!(
            read_aws_credentials(p, "other").unwrap(),
            ("AK2".into(), "SK2".into(), Some("T".into()))
        );
        let e = read_aws_credentials(p, "nope").unwrap_err();
        assert!(e.contains("[nope]"), "{e}");
        let e = read_aws_credentials("/nonexistent/creds", "default").unwrap_err();
        assert!(e.contains("/nonexistent/creds"), "{e}");
    }

    #[test]
    fn s3_code_is_found() {
        assert_eq!(
            s3_code("x <Error><Code>NoSuchBucket</Code></Error>"),
            Some("NoSuchBucket")
        );
        assert_eq!(s3_code("no code"), None);
    }
}
