//! `basic+http://` and `basic+https://`: [`HttpBasicStore`], a backend for
//! clouds whose whole API is a few web pages — upload a file, download a
//! file, list files (and, with luck, delete one) — like the
//! `upload_file.aspx` / `download_file.aspx` / `list_files.aspx` service
//! Strata was first written for. By default it speaks the API of the bundled
//! `strata-server`; a TOML *profile* points it at similar real services.
//!
//! The URL forms, the default API and the behaviour are documented on
//! [`HttpBasicStore`], the profile format on [`HttpProfile`].

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use reqwest::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use crate::error::{StoreError, StoreErrorKind, StoreResult};
use crate::{Capabilities, ObjectMeta, Store};

/// The environment variable holding the token when the URL names no
/// `token-file` or `token-env`.
pub const DEFAULT_TOKEN_ENV: &str = "STRATA_CLOUD_TOKEN";

/// Longest wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for the next bytes of a reply (an idle timeout, not a limit
/// on the whole transfer).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// URL query options this backend takes (the rest are general store options).
pub(crate) const URL_OPTIONS: &str = "token-file, token-env, profile, ca-file";

/// Objects whose sizes are looked up concurrently when a listing has none.
const SIZE_PROBES_IN_FLIGHT: usize = 8;

/// Largest reply body accepted (a declared `Content-Length` above it is
/// refused before anything is allocated; a body without one is counted).
/// Strata's objects are far smaller: chunks ≤ 256 MiB, metadata split by
/// `max-object-size`.
pub const MAX_REPLY: u64 = 1 << 30;

/// A listing with more entries than this is refused (a server that keeps
/// inventing pages would otherwise be followed forever).
const MAX_LIST_ENTRIES: usize = 50_000_000;

/// A lookup (stat) reading more listing pages than this gives up.
const MAX_LIST_PAGES: usize = 1_000_000;

/// Largest profile file read.
const MAX_PROFILE: u64 = 1 << 20;

/// At most this much of an error reply is read for its message.
const ERROR_BODY_LIMIT: usize = 4096;

/// Uploads are handed to the connection in pieces of this size (slices of
/// the caller's `Bytes`, not copies), so progress can be seen.
const UPLOAD_PIECE: usize = 64 << 10;

/// After an upload's last byte is handed over, the OS may still hold up to
/// this much of it in socket buffers…
const UPLOAD_BUFFERED: u64 = 4 << 20;

/// …which is assumed to drain at least this fast (bytes per second).
const UPLOAD_DRAIN_RATE: u64 = 32 << 10;

/// How far an upload got: when a piece was last handed to the connection,
/// and whether that was the last one.
#[derive(Debug)]
struct Progress {
    state: Mutex<(Instant, bool)>,
}

impl Progress {
    fn new(done: bool) -> Self {
        Progress {
            state: Mutex::new((Instant::now(), done)),
        }
    }

    fn touch(&self, done: bool) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = (Instant::now(), done);
    }

    fn get(&self) -> (Instant, bool) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `data` as a request body handed over in [`UPLOAD_PIECE`]s, recording
/// progress.
fn upload_body(data: Bytes, progress: Arc<Progress>) -> reqwest::Body {
    let len = data.len();
    let pieces = stream::iter((0..len).step_by(UPLOAD_PIECE)).map(move |start| {
        let end = start.saturating_add(UPLOAD_PIECE).min(len);
        progress.touch(end == len);
        Ok::<Bytes, std::io::Error>(data.slice(start..end))
    });
    reqwest::Body::wrap_stream(pieces)
}

// ---------------------------------------------------------------------------
// Profile
// ---------------------------------------------------------------------------

/// How to talk to one HTTP service: a TOML *profile* (`profile=PATH` in the
/// store URL). [`HttpProfile::default`] is the bundled server's API.
///
/// # Format
///
/// A profile is a TOML file; every key is optional and defaults to the
/// bundled server's API, so this complete example *is* the default profile:
///
/// ```toml
/// # Largest object the service accepts: bytes, or a size such as "100MiB".
/// # Larger puts fail with TooLarge before anything is sent. Default: none.
/// # max_object_size = "100MiB"
///
/// [auth]
/// # Header sent with every request ("" = none, e.g. when the token travels
/// # in the URL templates as {token}) and its value.
/// header = "Authorization"
/// format = "Bearer {token}"
///
/// [upload]
/// method = "POST"
/// url = "{base}upload_file"
/// # "multipart" (an HTML-form file upload) or "raw" (the request body is
/// # the object).
/// body = "multipart"
/// # Multipart text field carrying the object name; "" = none (the name then
/// # travels in the URL template and/or as the file part's file name).
/// name_field = "name"
/// # Multipart field carrying the object's bytes, and its file name.
/// file_field = "file"
/// file_name = "{name}"
///
/// [download]
/// method = "GET"
/// url = "{base}download_file?name={name}"
/// # The service honours `Range: bytes=a-b` with 206 replies. false: the
/// # store reports no range reads and callers fetch whole objects. (A 200
/// # reply to a range request is sliced locally either way.)
/// range = true
///
/// [list]
/// method = "GET"
/// url = "{base}list_files?prefix={prefix}"
/// # "json", or "lines": one name per line, optionally "name<TAB>size".
/// format = "json"
/// # json: the key of the array of files ("" = the reply is the array; dots
/// # walk into nested objects, e.g. "data.items"); each entry's name and size
/// # keys (entries may also be bare name strings; size_key = "" = the service
/// # gives no sizes); the key of the next-page token (a string or number;
/// # null, "" or missing = last page; next_key = "" = no paging).
/// files_key = "files"
/// name_key = "name"
/// size_key = "size"
/// next_key = "next_page_token"
/// # Query parameter carrying the page token on follow-up requests.
/// page_token_param = "page_token"
/// # Query parameter asking for a page size ("" = don't ask), and the size.
/// limit_param = "limit"
/// page_size = 1000
/// # The service lists names in byte order, so a stat can ask for one entry.
/// sorted = true
///
/// [delete]
/// method = "POST"
/// # "" = the service cannot delete (delete then fails as Unsupported).
/// url = "{base}delete_file?name={name}"
///
/// [info]
/// # GET, read when a vault is opened: JSON {"max_object_size": N | null,
/// # "range": true | false} narrows max_object_size and download.range.
/// # Any other reply (a 404, HTML…) is ignored. "" = don't ask.
/// url = "{base}server_info"
/// ```
///
/// URL templates take `{base}`, `{token}`, and `{name}` (upload, download,
/// delete, `file_name`) or `{prefix}` (list); `{{` and `}}` are literal
/// braces. Values are percent-encoded (`/` kept). A profile for a service in
/// the style of the `.aspx` pages, with the token in the query string,
/// whole-file downloads and a plain-text listing:
///
/// ```toml
/// max_object_size = "2GiB"
///
/// [auth]
/// header = ""
///
/// [upload]
/// url = "{base}upload_file.aspx?token={token}&path={name}"
/// name_field = ""
/// file_field = "uploadedfile"
///
/// [download]
/// url = "{base}download_file.aspx?token={token}&path={name}"
/// range = false
///
/// [list]
/// url = "{base}list_files.aspx?token={token}&folder={prefix}"
/// format = "lines"
/// limit_param = ""
/// sorted = false
///
/// [delete]
/// method = "GET"
/// url = "{base}delete_file.aspx?token={token}&path={name}"
/// ```
///
/// When a listing carries no sizes, each listed object's size is read with a
/// `HEAD` of its download URL (falling back to downloading it): correct but
/// slow on big listings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpProfile {
    /// Largest object the service accepts (`None` = no known limit).
    #[serde(deserialize_with = "de_size")]
    pub max_object_size: Option<u64>,
    pub auth: AuthProfile,
    pub upload: UploadProfile,
    pub download: DownloadProfile,
    pub list: ListProfile,
    pub delete: DeleteProfile,
    pub info: InfoProfile,
}

/// `[auth]`: the header carrying the token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthProfile {
    /// Header name; empty = send no auth header.
    pub header: String,
    /// Header value, with `{token}`.
    pub format: String,
}

impl Default for AuthProfile {
    fn default() -> Self {
        AuthProfile {
            header: "Authorization".into(),
            format: "Bearer {token}".into(),
        }
    }
}

/// How an upload carries the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadBody {
    /// A `multipart/form-data` form (an HTML file upload).
    #[default]
    Multipart,
    /// The request body is the object itself.
    Raw,
}

/// `[upload]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadProfile {
    pub method: String,
    /// URL template (`{base}`, `{name}`, `{token}`).
    pub url: String,
    pub body: UploadBody,
    /// Multipart text field with the object name; empty = none.
    pub name_field: String,
    /// Multipart field with the object bytes.
    pub file_field: String,
    /// The file part's file name (template with `{name}`).
    pub file_name: String,
}

impl Default for UploadProfile {
    fn default() -> Self {
        UploadProfile {
            method: "POST".into(),
            url: "{base}upload_file".into(),
            body: UploadBody::Multipart,
            name_field: "name".into(),
            file_field: "file".into(),
            file_name: "{name}".into(),
        }
    }
}

/// `[download]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownloadProfile {
    pub method: String,
    /// URL template (`{base}`, `{name}`, `{token}`).
    pub url: String,
    /// The service honours `Range` requests.
    pub range: bool,
}

impl Default for DownloadProfile {
    fn default() -> Self {
        DownloadProfile {
            method: "GET".into(),
            url: "{base}download_file?name={name}".into(),
            range: true,
        }
    }
}

/// Format of a listing reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListFormat {
    /// A JSON document (keys configured in [`ListProfile`]).
    #[default]
    Json,
    /// One name per line, optionally `name<TAB>size`.
    Lines,
}

/// `[list]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListProfile {
    pub method: String,
    /// URL template (`{base}`, `{prefix}`, `{token}`).
    pub url: String,
    pub format: ListFormat,
    /// JSON key (dotted path) of the array of files; empty = the reply itself.
    pub files_key: String,
    /// JSON key of an entry's name.
    pub name_key: String,
    /// JSON key of an entry's size; empty = no sizes in listings.
    pub size_key: String,
    /// JSON key (dotted path) of the next-page token; empty = no paging.
    pub next_key: String,
    /// Query parameter carrying the page token.
    pub page_token_param: String,
    /// Query parameter asking for a page size; empty = don't ask.
    pub limit_param: String,
    pub page_size: u32,
    /// Names are listed in byte order.
    pub sorted: bool,
}

impl Default for ListProfile {
    fn default() -> Self {
        ListProfile {
            method: "GET".into(),
            url: "{base}list_files?prefix={prefix}".into(),
            format: ListFormat::Json,
            files_key: "files".into(),
            name_key: "name".into(),
            size_key: "size".into(),
            next_key: "next_page_token".into(),
            page_token_param: "page_token".into(),
            limit_param: "limit".into(),
            page_size: 1000,
            sorted: true,
        }
    }
}

/// `[delete]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteProfile {
    pub method: String,
    /// URL template (`{base}`, `{name}`, `{token}`); empty = no delete.
    pub url: String,
}

impl Default for DeleteProfile {
    fn default() -> Self {
        DeleteProfile {
            method: "POST".into(),
            url: "{base}delete_file?name={name}".into(),
        }
    }
}

/// `[info]`: where the service says what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfoProfile {
    /// URL template (`{base}`, `{token}`) of a `GET` whose JSON reply may
    /// carry `max_object_size` (bytes or null) and `range` (bool); empty =
    /// the service has no such page. Read once when a vault is opened; a
    /// reply that is not such JSON (e.g. a 404) is ignored.
    pub url: String,
}

impl Default for InfoProfile {
    fn default() -> Self {
        InfoProfile {
            url: "{base}server_info".into(),
        }
    }
}

/// What the service said about itself (see [`InfoProfile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ServerInfo {
    max_object_size: Option<u64>,
    range: Option<bool>,
}

/// Longest `server_info` reply read.
const INFO_BODY_LIMIT: usize = 64 << 10;

/// Parse a `server_info` reply; `None` = not such a reply (ignored).
fn parse_server_info(body: &[u8]) -> Option<ServerInfo> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object()?;
    let max_object_size = match o.get("max_object_size") {
        Some(serde_json::Value::Number(n)) => n.as_u64().filter(|n| *n > 0),
        _ => None,
    };
    let range = o.get("range").and_then(serde_json::Value::as_bool);
    if max_object_size.is_none() && range.is_none() {
        return None;
    }
    Some(ServerInfo {
        max_object_size,
        range,
    })
}

/// `max_object_size = 1048576` or `= "1MiB"`.
fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(0) => Err(serde::de::Error::custom("max_object_size must be above 0")),
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(s) => match crate::url::parse_size(&s) {
            Ok(0) => Err(serde::de::Error::custom("max_object_size must be above 0")),
            Ok(n) => Ok(Some(n)),
            Err(e) => Err(serde::de::Error::custom(e)),
        },
    }
}

impl HttpProfile {
    /// Parse a TOML profile and check it ([`HttpProfile::validate`]).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let p: HttpProfile = toml::from_str(text).map_err(|e| e.to_string())?;
        p.validate()?;
        Ok(p)
    }

    /// Check methods, header names and URL templates (only known
    /// placeholders).
    pub fn validate(&self) -> Result<(), String> {
        let method = |what: &str, m: &str| {
            Method::from_bytes(m.as_bytes())
                .map(|_| ())
                .map_err(|_| format!("{what}.method: `{m}` is not an HTTP method"))
        };
        method("upload", &self.upload.method)?;
        method("download", &self.download.method)?;
        method("list", &self.list.method)?;
        method("delete", &self.delete.method)?;
        let check = |what: &str, t: &str, allowed: &[&str]| {
            expand(t, |p| allowed.contains(&p).then(String::new))
                .map(|_| ())
                .map_err(|e| format!("{what}: {e} (allowed: {})", braces(allowed)))
        };
        let named = ["base", "token", "name"];
        check("upload.url", &self.upload.url, &named)?;
        check("upload.file_name", &self.upload.file_name, &["name"])?;
        check("download.url", &self.download.url, &named)?;
        check("delete.url", &self.delete.url, &named)?;
        check("list.url", &self.list.url, &["base", "token", "prefix"])?;
        check("info.url", &self.info.url, &["base", "token"])?;
        check("auth.format", &self.auth.format, &["token"])?;
        for (what, t) in [
            ("upload.url", &self.upload.url),
            ("download.url", &self.download.url),
            ("list.url", &self.list.url),
        ] {
            if t.trim().is_empty() {
                return Err(format!("{what} must not be empty"));
            }
        }
        if !self.auth.header.is_empty()
            && HeaderName::from_bytes(self.auth.header.as_bytes()).is_err()
        {
            return Err(format!(
                "auth.header: `{}` is not a valid header name",
                self.auth.header
            ));
        }
        if self.upload.body == UploadBody::Multipart && self.upload.file_field.is_empty() {
            return Err("upload.file_field must not be empty for multipart uploads".into());
        }
        if self.list.page_size == 0 {
            return Err("list.page_size must be at least 1".into());
        }
        if self.list.format == ListFormat::Json && self.list.name_key.is_empty() {
            return Err("list.name_key must not be empty".into());
        }
        if !self.list.next_key.is_empty() && self.list.page_token_param.is_empty() {
            return Err("list.page_token_param must not be empty when list.next_key is set".into());
        }
        Ok(())
    }

    /// Whether requests carry the token (so one must be configured).
    pub fn needs_token(&self) -> bool {
        let uses = |t: &str| t.contains("{token}");
        (!self.auth.header.is_empty() && uses(&self.auth.format))
            || uses(&self.upload.url)
            || uses(&self.download.url)
            || uses(&self.list.url)
            || uses(&self.delete.url)
            || uses(&self.info.url)
    }
}

fn braces(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{{{n}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Expand `{placeholder}`s in `template` with `value` (`None` = unknown
/// placeholder, an error); `{{` and `}}` are literal braces.
fn expand(template: &str, mut value: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(after) = tail.strip_prefix('}') {
            out.push('}');
            rest = after;
        } else {
            let Some(end) = tail.find('}') else {
                return Err(format!("unclosed `{{` in `{template}`"));
            };
            let name = &tail[1..end];
            match value(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("unknown placeholder `{{{name}}}` in `{template}`")),
            }
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Percent-encode everything but unreserved characters and `/`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `%XX` escapes (a URL option value); invalid escapes stay as they are.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// URL handling (used by `open_url`)
// ---------------------------------------------------------------------------

/// Whether `scheme` (any case) is one of this backend's.
pub(crate) fn is_scheme(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("basic+http") || scheme.eq_ignore_ascii_case("basic+https")
}

/// Backend options taken out of a store URL's query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UrlOptions {
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub profile: Option<String>,
    pub ca_file: Option<String>,
}

/// Split a query into this backend's options and the rest (general store
/// options, returned as a query string).
pub(crate) fn split_query(query: &str) -> Result<(UrlOptions, String), String> {
    let mut o = UrlOptions::default();
    let mut rest = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (part, None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "token-file" => &mut o.token_file,
            "token-env" => &mut o.token_env,
            "profile" => &mut o.profile,
            "ca-file" => &mut o.ca_file,
            _ => {
                rest.push(part);
                continue;
            }
        };
        let v = value
            .map(decode)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("store option `{name}` needs a value"))?;
        if slot.replace(v).is_some() {
            return Err(format!("store option `{name}` is given twice"));
        }
    }
    if o.token_file.is_some() && o.token_env.is_some() {
        return Err("give either token-file or token-env, not both".into());
    }
    Ok((o, rest.join("&")))
}

/// `endpoint` without a leading `basic+` (any case).
fn strip_basic(endpoint: &str) -> &str {
    match endpoint.get(..6) {
        Some(p) if p.eq_ignore_ascii_case("basic+") => &endpoint[6..],
        _ => endpoint,
    }
}

/// `[basic+]http(s)://host[:port]/path` → (`http(s)://host[:port]/path/`,
/// `host:port`).
fn parse_endpoint(endpoint: &str) -> Result<(String, String), String> {
    let plain = strip_basic(endpoint);
    let mut url = ::url::Url::parse(plain).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "expected an http:// or https:// address, not `{}://`",
            url.scheme()
        ));
    }
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ => return Err("the URL has no host".into()),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials in the URL are not supported; give the token with token-file=PATH or token-env=VAR"
                .into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the base URL must not carry a query or fragment".into());
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    let authority = match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    Ok((url.to_string(), authority))
}

/// The token from `file`, the variable `env`, or [`DEFAULT_TOKEN_ENV`].
fn resolve_token(o: &UrlOptions, shown: &str) -> StoreResult<String> {
    let invalid = |msg: String| StoreError::invalid_url(shown, msg);
    if let Some(path) = &o.token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let kind = match e.kind() {
                std::io::ErrorKind::PermissionDenied => StoreErrorKind::PermissionDenied,
                _ => StoreErrorKind::InvalidUrl,
            };
            StoreError::new(
                kind,
                shown,
                "open",
                None,
                format!("cannot read token file {path}: {e}"),
            )
        })?;
        let t = text.trim();
        if t.is_empty() {
            return Err(invalid(format!("token file {path} is empty")));
        }
        return Ok(t.to_owned());
    }
    let (var, how) = match &o.token_env {
        Some(v) => (v.as_str(), format!("token-env={v}")),
        None => (
            DEFAULT_TOKEN_ENV,
            "give token-file=PATH or token-env=VAR, or set it".to_owned(),
        ),
    };
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        Ok(_) => Err(invalid(format!(
            "no access token: environment variable {var} is empty ({how})"
        ))),
        Err(std::env::VarError::NotPresent) => Err(invalid(format!(
            "no access token: environment variable {var} is not set ({how})"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(invalid(format!(
            "environment variable {var} is not valid UTF-8"
        ))),
    }
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

/// The token, kept out of `Debug` output.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Parsed HTTP methods of a profile.
#[derive(Debug, Clone)]
struct Methods {
    upload: Method,
    download: Method,
    list: Method,
    delete: Method,
}

/// One entry of a listing reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    size: Option<u64>,
}

/// A store over a basic upload / download / list HTTP API: the
/// `basic+http://` and `basic+https://` backend.
///
/// # Store URL
///
/// ```text
/// basic+http://HOST:PORT/BASE/?token-file=PATH
/// basic+https://HOST/BASE/?token-env=VAR&profile=PATH&range-reads=false
/// ```
///
/// * `token-file=PATH`: the access token is the content of PATH (surrounding
///   whitespace trimmed). A missing, unreadable or empty file fails at open,
///   naming the file.
/// * `token-env=VAR`: the token is in the environment variable VAR.
/// * neither: the token is in `STRATA_CLOUD_TOKEN` ([`DEFAULT_TOKEN_ENV`]).
///   (No token is needed when the profile sends none: `auth.header = ""` and
///   no `{token}` in any URL template.)
/// * `profile=PATH`: a TOML profile describing the service's API (see
///   [`HttpProfile`]); without it, the default API below.
/// * `ca-file=PATH`: for `basic+https://`, trust only the CA certificates in
///   this PEM file (a private CA) instead of the system's. A server whose
///   certificate no trusted CA signed is refused with an error naming the
///   store and suggesting `ca-file`.
/// * The general store options (`max-object-size`, `range-reads`, `no-range`,
///   `concurrency`, `retries`) work as for every store.
///
/// Option values may be percent-encoded (`%20`, `%26`…). `{base}` below is the
/// URL without `basic+` and without the query, ending in `/`:
/// `basic+http://127.0.0.1:8080/vault/?…` → `http://127.0.0.1:8080/vault/`.
///
/// The token is sent with every request and is never logged, never part of
/// `describe()` and never in an error message (`describe()` is the URL with
/// its query options; a token *file*'s path or a variable's *name* is not a
/// secret). Opening reads the token and the profile but contacts nothing:
/// a wrong address or token surfaces on first use.
///
/// # Default API (the bundled `strata-server`)
///
/// Every request carries `Authorization: Bearer <token>`.
///
/// | operation | request | reply |
/// |---|---|---|
/// | put | `POST {base}upload_file`, multipart form: text field `name`, file field `file` | 2xx |
/// | get | `GET {base}download_file?name=N` (+ `Range: bytes=a-b` for ranges) | 200 / 206 |
/// | list | `GET {base}list_files?prefix=P&limit=1000[&page_token=T]` | `{"files":[{"name","size"}],"next_page_token":…}` |
/// | delete | `POST {base}delete_file?name=N` | 2xx; 404 counts as success |
/// | stat | a listing with `prefix=` the key and `limit=1` | |
///
/// # Behaviour
///
/// * Capabilities: `range_reads` = the profile's `download.range`;
///   `conditional_create` = false (uploads always replace, so
///   `put_if_absent` is `Unsupported`); `max_object_size` = the profile's.
/// * Errors: connection refused/reset, timeouts, 408/425/429/5xx and replies
///   shorter than their `Content-Length` are `Transient` (the retry layer
///   retries them); 401/403 `PermissionDenied` (the token was rejected); 404
///   `NotFound` from a download (success from a delete; from any other page
///   it means a wrong base URL or profile: `Other`); 413 `TooLarge`; 400,
///   failed TLS handshakes and anything else `Other`, with the server's
///   error text. Messages name the store (`describe()`) and the key.
/// * Redirects: up to 5 are followed; to another host only when the token
///   travels in `Authorization` (which is then dropped) or in no header.
/// * Timeouts: 10 s to connect ([`CONNECT_TIMEOUT`]), then an idle timeout
///   of 60 s ([`READ_TIMEOUT`]): a request fails (as `Transient`) when no
///   upload bytes could be handed to the connection, no reply began, or no
///   reply bytes arrived for that long. Once an upload's last byte is handed
///   over, the reply may take a little longer (the OS may still be sending
///   what it buffered: up to 4 MiB at 32 KiB/s). No limit on a whole
///   transfer, so big objects over slow links work.
/// * Memory: an upload sends the caller's `Bytes` without copying it; a
///   download is received into one buffer sized by `Content-Length`.
pub struct HttpBasicStore {
    client: reqwest::Client,
    /// `http(s)://host:port/path/` (`{base}`).
    base: String,
    /// `host:port`, for messages.
    authority: String,
    profile: Arc<HttpProfile>,
    methods: Methods,
    token: Option<Token>,
    auth: Option<(HeaderName, HeaderValue)>,
    description: String,
    /// Idle timeout (see [`READ_TIMEOUT`]).
    idle: Duration,
    warned_ranges_ignored: AtomicBool,
    /// What the service said about itself in `prepare` (see [`InfoProfile`]).
    discovered: Mutex<ServerInfo>,
    /// `ca-file=` was given (for TLS error messages).
    has_ca_file: bool,
}

impl std::fmt::Debug for HttpBasicStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBasicStore")
            .field("description", &self.description)
            .field("base", &self.base)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl HttpBasicStore {
    /// A store at `endpoint` (`http(s)://host:port/base/`, `basic+` allowed),
    /// authenticating with `token` as `profile` says. Contacts nothing.
    /// `describe()` is `basic+<endpoint>` until [`with_description`].
    ///
    /// [`with_description`]: HttpBasicStore::with_description
    pub fn new(endpoint: &str, token: Option<String>, profile: HttpProfile) -> StoreResult<Self> {
        let plain = endpoint.split('?').next().unwrap_or_default();
        let shown = without_userinfo(&format!("basic+{}", strip_basic(plain)));
        let invalid = |msg: String| StoreError::invalid_url(shown.as_str(), msg);
        let (base, authority) = parse_endpoint(endpoint).map_err(invalid)?;
        let description = format!("basic+{base}");
        profile
            .validate()
            .map_err(|e| invalid(format!("bad profile: {e}")))?;
        let methods = Methods {
            upload: parse_method(&profile.upload.method).map_err(invalid)?,
            download: parse_method(&profile.download.method).map_err(invalid)?,
            list: parse_method(&profile.list.method).map_err(invalid)?,
            delete: parse_method(&profile.delete.method).map_err(invalid)?,
        };
        let token = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        if profile.needs_token() && token.is_none() {
            return Err(invalid("no access token given".into()));
        }
        let auth = match (&token, profile.auth.header.is_empty()) {
            (Some(t), false) => {
                let value = expand(&profile.auth.format, |p| (p == "token").then(|| t.clone()))
                    .map_err(|e| invalid(format!("bad profile: auth.format: {e}")))?;
                let name = HeaderName::from_bytes(profile.auth.header.as_bytes())
                    .map_err(|_| invalid("bad profile: auth.header is not a header name".into()))?;
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    invalid(
                        "the access token contains characters that cannot be sent in an HTTP header"
                            .into(),
                    )
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
            _ => None,
        };
        let client = build_client(&profile, None, &description)?;
        Ok(HttpBasicStore {
            client,
            base,
            authority,
            profile: Arc::new(profile),
            methods,
            token: token.map(Token),
            auth,
            description,
            idle: READ_TIMEOUT,
            warned_ranges_ignored: AtomicBool::new(false),
            discovered: Mutex::new(ServerInfo::default()),
            has_ca_file: false,
        })
    }

    /// Open from a store URL's parts: `base` is `basic+http(s)://…` without
    /// the query, `opts` this backend's query options, `shown_query` the
    /// redacted query (`?…` or empty) for `describe()`.
    pub(crate) fn open(base: &str, opts: &UrlOptions, shown_query: &str) -> StoreResult<Self> {
        let shown = format!("{}{shown_query}", without_userinfo(base));
        let profile = match &opts.profile {
            None => HttpProfile::default(),
            Some(path) => {
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                if size > MAX_PROFILE {
                    return Err(StoreError::invalid_url(
                        shown.as_str(),
                        format!(
                            "profile {path} is {size} bytes; a profile is a small TOML file \
                             (at most {MAX_PROFILE} bytes)"
                        ),
                    ));
                }
                let text = std::fs::read_to_string(path).map_err(|e| {
                    StoreError::invalid_url(
                        shown.as_str(),
                        format!("cannot read profile {path}: {e}"),
                    )
                })?;
                HttpProfile::from_toml(&text).map_err(|e| {
                    StoreError::invalid_url(shown.as_str(), format!("bad profile {path}: {e}"))
                })?
            }
        };
        let token = if profile.needs_token() {
            Some(resolve_token(opts, &shown)?)
        } else {
            None
        };
        let mut store = HttpBasicStore::new(base, token, profile).map_err(|mut e| {
            e.store = shown.clone();
            e
        })?;
        if let Some(ca) = &opts.ca_file {
            store = store.with_ca_file(ca).map_err(|mut e| {
                e.store = shown.clone();
                e
            })?;
        }
        let description = format!("{}{shown_query}", store.description);
        Ok(store.with_description(description))
    }

    /// Trust only the CA certificates in the PEM file `path` for https
    /// (`ca-file=PATH`), e.g. a private CA. Errors name the file.
    pub fn with_ca_file(mut self, path: &str) -> StoreResult<Self> {
        let certs = crate::tls::load_ca_file(path)
            .map_err(|e| StoreError::invalid_url(self.description.as_str(), e))?;
        self.client = build_client(&self.profile, Some(certs), &self.description)?;
        self.has_ca_file = true;
        Ok(self)
    }

    /// Replace what `describe()` says (never put secrets in it).
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Use `idle` instead of [`READ_TIMEOUT`] as the idle timeout.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// The profile in use.
    pub fn profile(&self) -> &HttpProfile {
        &self.profile
    }

    fn err(
        &self,
        kind: StoreErrorKind,
        op: &'static str,
        key: &str,
        message: impl Into<String>,
    ) -> StoreError {
        StoreError::new(kind, self.description.as_str(), op, Some(key), message)
    }

    fn check_key(&self, op: &'static str, key: &str) -> StoreResult<()> {
        validate_key(key)
            .map_err(|why| StoreError::invalid_key(self.description.as_str(), op, key, why))
    }

    /// The URL from `template` with `{name}` or `{prefix}` = `arg`.
    fn url(
        &self,
        op: &'static str,
        key: &str,
        template: &str,
        arg_name: &str,
        arg: &str,
    ) -> StoreResult<reqwest::Url> {
        let s = expand(template, |p| match p {
            "base" => Some(self.base.clone()),
            "token" => Some(encode(self.token.as_ref().map_or("", |t| t.0.as_str()))),
            p if p == arg_name => Some(encode(arg)),
            _ => None,
        })
        .map_err(|e| self.err(StoreErrorKind::Other, op, key, format!("bad profile: {e}")))?;
        // Never show the URL: it may carry the token.
        reqwest::Url::parse(&s).map_err(|e| {
            self.err(
                StoreErrorKind::Other,
                op,
                key,
                format!("the profile's URL template for {op} gives an invalid URL: {e}"),
            )
        })
    }

    fn request(&self, method: &Method, url: reqwest::Url) -> RequestBuilder {
        let rb = self.client.request(method.clone(), url);
        match &self.auth {
            Some((name, value)) => rb.header(name.clone(), value.clone()),
            None => rb,
        }
    }

    /// Send a request and wait for the reply's head, failing when nothing
    /// happens for the idle timeout. `upload` is the progress and size of an
    /// upload body.
    async fn send(
        &self,
        op: &'static str,
        key: &str,
        rb: RequestBuilder,
        upload: Option<(&Progress, u64)>,
    ) -> StoreResult<Response> {
        tracing::trace!(store = %self.description, op, key, "http request");
        let started = Instant::now();
        let state = || upload.map_or((started, true), |(p, _)| p.get());
        let fut = rb.send();
        tokio::pin!(fut);
        loop {
            let (last, done) = state();
            let mut allowed = self.idle;
            if let (Some((_, len)), true) = (upload, done) {
                allowed += Duration::from_secs(len.min(UPLOAD_BUFFERED) / UPLOAD_DRAIN_RATE);
            }
            let deadline = last + allowed;
            tokio::select! {
                r = &mut fut => return r.map_err(|e| self.net_err(op, key, e)),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if state() == (last, done) {
                        let secs = allowed.as_secs_f64();
                        let msg = if done {
                            format!("{} sent no reply for {secs:.1} s (idle timeout)", self.authority)
                        } else {
                            format!(
                                "the connection to {} took no upload data for {secs:.1} s (idle timeout)",
                                self.authority
                            )
                        };
                        return Err(self.err(StoreErrorKind::Transient, op, key, msg));
                    }
                }
            }
        }
    }

    /// Map a transport-level failure.
    fn net_err(&self, op: &'static str, key: &str, e: reqwest::Error) -> StoreError {
        let e = e.without_url();
        let cause = root_cause(&e);
        let (kind, msg) = if e.is_builder() {
            (
                StoreErrorKind::Other,
                format!("cannot build the request: {}", error_chain(&e)),
            )
        } else if e.is_redirect() {
            (
                StoreErrorKind::Other,
                format!("bad redirect from {}: {}", self.authority, error_chain(&e)),
            )
        } else if e.is_timeout() {
            (
                StoreErrorKind::Transient,
                format!(
                    "{} did not answer in time (connect timeout {} s): {cause}",
                    self.authority,
                    CONNECT_TIMEOUT.as_secs(),
                ),
            )
        } else if e.is_connect() {
            // rustls reports handshake failures (bad certificate, not a TLS
            // server…) as InvalidData: retrying will not help.
            if has_io_kind(&e, std::io::ErrorKind::InvalidData) {
                let hint = if self.has_ca_file {
                    "is it an https server with a certificate from the CA in ca-file?"
                } else {
                    crate::tls::PRIVATE_CA_HINT
                };
                (
                    StoreErrorKind::Other,
                    format!(
                        "TLS handshake with {} failed: {cause} ({hint})",
                        self.authority
                    ),
                )
            } else {
                let hint = if has_io_kind(&e, std::io::ErrorKind::ConnectionRefused) {
                    " (is the server running and the address right?)"
                } else {
                    ""
                };
                (
                    StoreErrorKind::Transient,
                    format!("cannot connect to {}: {cause}{hint}", self.authority),
                )
            }
        } else {
            (
                StoreErrorKind::Transient,
                format!(
                    "network error talking to {}: {}",
                    self.authority,
                    error_chain(&e)
                ),
            )
        };
        self.err(kind, op, key, msg)
    }

    /// Map an unsuccessful HTTP status (reads a little of the body for the
    /// server's message). `size` is the upload size for 413s.
    async fn status_err(
        &self,
        op: &'static str,
        key: &str,
        resp: Response,
        size: Option<u64>,
    ) -> StoreError {
        let status = resp.status();
        let body = error_body(resp, self.idle).await;
        let detail = detail_of(&body);
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        let reply = format!("HTTP {}{detail}", status_text(status));
        let (kind, msg) = match status.as_u16() {
            401 | 403 => (
                StoreErrorKind::PermissionDenied,
                format!(
                    "the server rejected the access token ({reply}); check the store's token-file / token-env"
                ),
            ),
            404 if matches!(op, "get" | "get_range") => {
                (StoreErrorKind::NotFound, "object not found".to_owned())
            }
            404 => (
                StoreErrorKind::Other,
                format!(
                    "the server has no such page ({reply}); check the store URL's base path and the profile"
                ),
            ),
            413 => (
                StoreErrorKind::TooLarge,
                match size {
                    Some(n) => format!(
                        "object of {n} bytes is larger than the server accepts ({reply})"
                    ),
                    None => format!("request too large for the server ({reply})"),
                },
            ),
            408 | 425 | 429 | 500..=599 => (
                StoreErrorKind::Transient,
                format!("server error ({reply})"),
            ),
            400 => (
                StoreErrorKind::Other,
                format!("the server refused the request ({reply})"),
            ),
            _ => (
                StoreErrorKind::Other,
                format!("unexpected reply from the server ({reply})"),
            ),
        };
        let limit = (kind == StoreErrorKind::TooLarge)
            .then(|| limit_in_reply(&body).or(self.capabilities().max_object_size))
            .flatten();
        self.err(kind, op, key, msg).with_limit(limit)
    }

    /// What the service said about itself in `prepare`.
    fn discovered(&self) -> ServerInfo {
        *self
            .discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Receive a reply body into one buffer sized by `Content-Length`, and
    /// check that exactly that many bytes arrived.
    async fn read_body(
        &self,
        op: &'static str,
        key: &str,
        mut resp: Response,
    ) -> StoreResult<Bytes> {
        let declared = content_length(&resp);
        let mut buf: Vec<u8> = Vec::new();
        let too_big = |n: u64| {
            self.err(
                StoreErrorKind::Other,
                op,
                key,
                format!(
                    "{} sent a reply of {n} bytes; Strata accepts at most {MAX_REPLY} bytes in \
                     one object (is the URL right?)",
                    self.authority
                ),
            )
        };
        if let Some(n) = declared {
            if n > MAX_REPLY {
                return Err(too_big(n));
            }
            let fits = usize::try_from(n)
                .ok()
                .is_some_and(|n| buf.try_reserve_exact(n).is_ok());
            if !fits {
                return Err(self.err(
                    StoreErrorKind::Other,
                    op,
                    key,
                    format!("reply of {n} bytes does not fit in memory"),
                ));
            }
        }
        loop {
            let next = match tokio::time::timeout(self.idle, resp.chunk()).await {
                Ok(r) => r,
                Err(_) => {
                    let of = declared.map_or(String::new(), |n| format!(" of {n}"));
                    return Err(self.err(
                        StoreErrorKind::Transient,
                        op,
                        key,
                        format!(
                            "reply from {} stalled after {}{of} bytes: nothing for {:.1} s (idle timeout)",
                            self.authority,
                            buf.len(),
                            self.idle.as_secs_f64()
                        ),
                    ));
                }
            };
            match next {
                Ok(Some(chunk)) => {
                    if buf.is_empty() && declared == Some(chunk.len() as u64) {
                        // The whole body in one piece: no copy needed.
                        return Ok(chunk);
                    }
                    let got = (buf.len() + chunk.len()) as u64;
                    if declared.is_none() && got > MAX_REPLY {
                        return Err(too_big(got));
                    }
                    if declared.is_some_and(|n| got > n) {
                        return Err(self.err(
                            StoreErrorKind::Transient,
                            op,
                            key,
                            "the server sent more bytes than its Content-Length",
                        ));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    let got = buf.len();
                    let of = declared.map_or(String::new(), |n| format!(" of {n}"));
                    let what = root_cause(&e.without_url());
                    return Err(self.err(
                        StoreErrorKind::Transient,
                        op,
                        key,
                        format!(
                            "reply from {} broke off after {got}{of} bytes: {what}",
                            self.authority
                        ),
                    ));
                }
            }
        }
        if let Some(n) = declared {
            if buf.len() as u64 != n {
                return Err(self.err(
                    StoreErrorKind::Transient,
                    op,
                    key,
                    format!(
                        "truncated reply from {}: {} of {n} bytes (Content-Length)",
                        self.authority,
                        buf.len()
                    ),
                ));
            }
        }
        Ok(Bytes::from(buf))
    }

    /// Download a whole object.
    async fn fetch(&self, op: &'static str, key: &str) -> StoreResult<Bytes> {
        let url = self.url(op, key, &self.profile.download.url, "name", key)?;
        let rb = self.request(&self.methods.download, url);
        let resp = self.send(op, key, rb, None).await?;
        if resp.status().is_success() {
            self.read_body(op, key, resp).await
        } else {
            Err(self.status_err(op, key, resp, None).await)
        }
    }

    /// One page of a listing.
    async fn list_page(
        &self,
        op: &'static str,
        prefix: &str,
        page_token: Option<&str>,
        limit: Option<u32>,
    ) -> StoreResult<(Vec<Entry>, Option<String>)> {
        let p = &self.profile.list;
        let mut url = self.url(op, prefix, &p.url, "prefix", prefix)?;
        let limit = limit.filter(|_| !p.limit_param.is_empty());
        if page_token.is_some() || limit.is_some() {
            let mut q = url.query_pairs_mut();
            if let Some(l) = limit {
                q.append_pair(&p.limit_param, &l.to_string());
            }
            if let Some(t) = page_token {
                q.append_pair(&p.page_token_param, t);
            }
        }
        let rb = self.request(&self.methods.list, url);
        let resp = self.send(op, prefix, rb, None).await?;
        if !resp.status().is_success() {
            return Err(self.status_err(op, prefix, resp, None).await);
        }
        let body = self.read_body(op, prefix, resp).await?;
        let parsed = match p.format {
            ListFormat::Json => parse_json_list(&body, p),
            ListFormat::Lines => parse_lines_list(&body).map(|e| (e, None)),
        };
        parsed.map_err(|e| {
            self.err(
                StoreErrorKind::Other,
                op,
                prefix,
                format!("cannot understand the listing: {e}"),
            )
        })
    }

    /// The size of `key` when the listing has none: `HEAD` of its download
    /// URL, or failing that a download. `None` = it does not exist.
    async fn probe_size(&self, op: &'static str, key: &str) -> StoreResult<Option<u64>> {
        let url = self.url(op, key, &self.profile.download.url, "name", key)?;
        let resp = self
            .send(op, key, self.request(&Method::HEAD, url), None)
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status.is_success() {
            if let Some(n) = content_length(&resp) {
                return Ok(Some(n));
            }
        }
        match self.fetch(op, key).await {
            Ok(b) => Ok(Some(b.len() as u64)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Fill in missing sizes (dropping objects that vanished meanwhile).
    async fn sizes(&self, op: &'static str, entries: Vec<Entry>) -> StoreResult<Vec<ObjectMeta>> {
        let metas: Vec<Option<ObjectMeta>> = stream::iter(entries)
            .map(|e| async move {
                let size = match e.size {
                    Some(s) => Some(s),
                    None => self.probe_size(op, &e.name).await?,
                };
                Ok::<_, StoreError>(size.map(|size| ObjectMeta { key: e.name, size }))
            })
            .buffered(SIZE_PROBES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(metas.into_iter().flatten().collect())
    }

    fn warn_ranges_ignored(&self) {
        if !self.warned_ranges_ignored.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                store = %self.description,
                "the server ignores Range requests and sends whole objects; slicing them \
                 locally (set `range = false` in the profile, or range-reads=false in the \
                 store URL, to stop asking for ranges)"
            );
        }
    }
}

/// The HTTP client for `profile`, trusting only `certs` when given.
fn build_client(
    profile: &HttpProfile,
    certs: Option<Vec<reqwest::Certificate>>,
    description: &str,
) -> StoreResult<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect_policy(
            profile.auth.header.is_empty()
                || profile.auth.header.eq_ignore_ascii_case("authorization"),
        ));
    crate::tls::with_roots(builder, certs).build().map_err(|e| {
        StoreError::new(
            StoreErrorKind::Other,
            description,
            "open",
            None,
            format!(
                "cannot set up the HTTP client: {}",
                error_chain(&e.without_url())
            ),
        )
    })
}

/// `scheme://user:pass@host/…` → `scheme://***@host/…` (for messages).
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[end..]),
        None => url.to_owned(),
    }
}

/// Follow up to 5 redirects; to another host only when `cross_host` (safe
/// when the token travels in no header or in `Authorization`, which is
/// dropped on such redirects — a custom header would not be).
fn redirect_policy(cross_host: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let same_origin = attempt.previous().first().is_none_or(|first| {
            first.host_str() == attempt.url().host_str()
                && first.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else if same_origin || cross_host {
            attempt.follow()
        } else {
            attempt.error("redirect to another host refused: it would carry the token header")
        }
    })
}

fn parse_method(m: &str) -> Result<Method, String> {
    Method::from_bytes(m.as_bytes())
        .map_err(|_| format!("bad profile: `{m}` is not an HTTP method"))
}

fn status_text(s: StatusCode) -> String {
    match s.canonical_reason() {
        Some(r) => format!("{} {r}", s.as_u16()),
        None => s.as_u16().to_string(),
    }
}

fn content_length(resp: &Response) -> Option<u64> {
    resp.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
}

/// The smaller of two optional limits (`None` = no limit).
fn min_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The object-size limit a 413 reply states: a JSON `max_object_size`
/// (the bundled server's) or `limit` field.
fn limit_in_reply(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["max_object_size", "limit"]
        .iter()
        .find_map(|k| v.get(*k).and_then(serde_json::Value::as_u64))
        .filter(|n| *n > 0)
}

/// The start of a reply's body (at most [`ERROR_BODY_LIMIT`] bytes).
async fn error_body(resp: Response, idle: Duration) -> Vec<u8> {
    error_body_limit(resp, idle, ERROR_BODY_LIMIT).await
}

/// The start of a reply's body: at most `limit` bytes, each piece within
/// `idle`.
async fn error_body_limit(mut resp: Response, idle: Duration, limit: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match tokio::time::timeout(idle, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(limit);
    buf
}

/// The server's explanation in an error reply: a JSON `error` / `message`
/// field, or the start of the text; one line, at most 300 characters.
async fn error_detail(resp: Response, idle: Duration) -> String {
    detail_of(&error_body(resp, idle).await)
}

/// [`error_detail`] of a body already read.
fn detail_of(buf: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(buf) {
        Ok(v) => ["error", "message", "detail"]
            .iter()
            .find_map(|k| v.get(*k).and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(buf).into_owned()),
        Err(_) => String::from_utf8_lossy(buf).into_owned(),
    };
    let one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if one_line.chars().count() > 300 {
        let cut: String = one_line.chars().take(300).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// An error and its sources, `: `-separated, without repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The innermost source's message (e.g. `Connection refused (os error 111)`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Whether an I/O error of `kind` is among `e` and its sources.
fn has_io_kind(e: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // An io::Error's source() skips the error it wraps: look inside.
            if io.kind() == kind || io.get_ref().is_some_and(|inner| has_io_kind(inner, kind)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Walk a dotted key path (`""` = the value itself).
fn walk<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    if path.is_empty() {
        return Some(v);
    }
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn parse_json_list(body: &[u8], p: &ListProfile) -> Result<(Vec<Entry>, Option<String>), String> {
    use serde_json::Value;
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let files = walk(&v, &p.files_key)
        .and_then(Value::as_array)
        .ok_or_else(|| match p.files_key.as_str() {
            "" => "the reply is not a JSON array".to_owned(),
            k => format!("no `{k}` array in the reply"),
        })?;
    let mut out = Vec::with_capacity(files.len());
    for item in files {
        let e = match item {
            Value::String(s) => Entry {
                name: s.clone(),
                size: None,
            },
            Value::Object(_) => {
                let name = walk(item, &p.name_key)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("an entry has no string `{}`", p.name_key))?;
                let size = if p.size_key.is_empty() {
                    None
                } else {
                    match walk(item, &p.size_key) {
                        None | Some(Value::Null) => None,
                        Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
                            format!("size of `{name}` is not a whole number: {n}")
                        })?),
                        Some(Value::String(s)) => Some(s.trim().parse::<u64>().map_err(|_| {
                            format!("size of `{name}` is not a whole number: `{s}`")
                        })?),
                        Some(other) => {
                            return Err(format!("size of `{name}` is not a number: {other}"))
                        }
                    }
                };
                Entry {
                    name: name.to_owned(),
                    size,
                }
            }
            other => return Err(format!("unexpected list entry {other}")),
        };
        out.push(e);
    }
    let next = if p.next_key.is_empty() {
        None
    } else {
        match walk(&v, &p.next_key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    };
    Ok((out, next))
}

fn parse_lines_list(body: &[u8]) -> Result<Vec<Entry>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the listing is not UTF-8 text".to_owned())?;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let e = match line.split_once('\t') {
            Some((name, size)) => {
                let size = size.trim();
                Entry {
                    name: name.trim().to_owned(),
                    size: Some(
                        size.parse::<u64>()
                            .map_err(|_| format!("bad size `{size}` for `{}`", name.trim()))?,
                    ),
                }
            }
            None => Entry {
                name: line.to_owned(),
                size: None,
            },
        };
        out.push(e);
    }
    Ok(out)
}

/// `Content-Range: bytes a-b/total` → `(a, b, total)` (`total` may be `*`).
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.trim().split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total))
}

/// `range` of `whole`, clamped to its end.
fn slice(whole: Bytes, range: &Range<u64>) -> Bytes {
    let len = whole.len() as u64;
    let start = range.start.min(len);
    let end = range.end.clamp(start, len);
    // Both are ≤ whole.len(), so they fit in usize.
    whole.slice(start as usize..end as usize)
}

use crate::keys::{validate_key, validate_prefix};

#[async_trait::async_trait]
impl Store for HttpBasicStore {
    fn capabilities(&self) -> Capabilities {
        let found = self.discovered();
        Capabilities {
            range_reads: self.profile.download.range && found.range != Some(false),
            conditional_create: false,
            max_object_size: min_limit(self.profile.max_object_size, found.max_object_size),
        }
    }

    async fn prepare(&self) -> StoreResult<()> {
        const OP: &str = "prepare";
        if self.profile.info.url.trim().is_empty() {
            return Ok(());
        }
        let url = self.url(OP, "", &self.profile.info.url, "", "")?;
        let resp = self
            .send(OP, "", self.request(&Method::GET, url), None)
            .await?;
        let status = resp.status();
        if matches!(status.as_u16(), 401 | 403 | 408 | 425 | 429 | 500..=599) {
            return Err(self.status_err(OP, "", resp, None).await);
        }
        if !status.is_success() {
            // No such page: a service that does not describe itself.
            let _ = error_body(resp, self.idle).await;
            return Ok(());
        }
        let body = error_body_limit(resp, self.idle, INFO_BODY_LIMIT).await;
        if let Some(info) = parse_server_info(&body) {
            tracing::debug!(store = %self.description, ?info, "the server describes itself");
            *self
                .discovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = info;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        const OP: &str = "put";
        self.check_key(OP, key)?;
        let len = data.len() as u64;
        if let Some(limit) = self.capabilities().max_object_size {
            if len > limit {
                return Err(StoreError::too_large(
                    self.description.as_str(),
                    OP,
                    key,
                    len,
                    limit,
                ));
            }
        }
        let up = &self.profile.upload;
        let url = self.url(OP, key, &up.url, "name", key)?;
        let rb = self.request(&self.methods.upload, url);
        let progress = Arc::new(Progress::new(data.is_empty()));
        // The Bytes go out as they are (sliced, never copied).
        let body = upload_body(data, progress.clone());
        let rb = match up.body {
            UploadBody::Raw => rb
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len)
                .body(body),
            UploadBody::Multipart => {
                let file_name = expand(&up.file_name, |p| (p == "name").then(|| key.to_owned()))
                    .map_err(|e| {
                        self.err(StoreErrorKind::Other, OP, key, format!("bad profile: {e}"))
                    })?;
                let part = reqwest::multipart::Part::stream_with_length(body, len)
                    .file_name(file_name)
                    .mime_str("application/octet-stream")
                    .map_err(|e| self.err(StoreErrorKind::Other, OP, key, error_chain(&e)))?;
                let mut form = reqwest::multipart::Form::new().percent_encode_noop();
                if !up.name_field.is_empty() {
                    form = form.text(up.name_field.clone(), key.to_owned());
                }
                rb.multipart(form.part(up.file_field.clone(), part))
            }
        };
        let resp = self.send(OP, key, rb, Some((&progress, len))).await?;
        if resp.status().is_success() {
            // Read the (small) reply so the connection can be reused.
            let _ = error_detail(resp, self.idle).await;
            Ok(())
        } else {
            Err(self.status_err(OP, key, resp, Some(len)).await)
        }
    }

    async fn put_if_absent(&self, key: &str, _data: Bytes) -> StoreResult<bool> {
        Err(StoreError::unsupported(
            self.description.as_str(),
            "put_if_absent",
            Some(key),
            "this HTTP API has no conditional create (an upload always replaces)",
        ))
    }

    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        self.check_key("get", key)?;
        self.fetch("get", key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        const OP: &str = "get_range";
        self.check_key(OP, key)?;
        if range.start >= range.end {
            // Nothing to read, but a missing object is still an error.
            return match self.stat(key).await {
                Ok(Some(_)) => Ok(Bytes::new()),
                Ok(None) => Err(StoreError::not_found(self.description.as_str(), OP, key)),
                Err(mut e) => {
                    e.op = OP;
                    Err(e)
                }
            };
        }
        if !self.profile.download.range {
            return Ok(slice(self.fetch(OP, key).await?, &range));
        }
        let header = if range.end == u64::MAX {
            format!("bytes={}-", range.start)
        } else {
            format!("bytes={}-{}", range.start, range.end - 1)
        };
        let url = self.url(OP, key, &self.profile.download.url, "name", key)?;
        let rb = self
            .request(&self.methods.download, url)
            .header(RANGE, header);
        let resp = self.send(OP, key, rb, None).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let served = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                let body = self.read_body(OP, key, resp).await?;
                if let Some((a, b, _)) = served {
                    if a != range.start
                        || b.checked_sub(a).map(|n| n + 1) != Some(body.len() as u64)
                    {
                        return Err(self.err(
                            StoreErrorKind::Other,
                            OP,
                            key,
                            format!(
                                "asked for bytes {}..{} but the server sent bytes {a}-{b} ({} bytes)",
                                range.start,
                                range.end,
                                body.len()
                            ),
                        ));
                    }
                }
                let want = range.end - range.start;
                Ok(if body.len() as u64 > want {
                    body.slice(..want as usize)
                } else {
                    body
                })
            }
            // The object exists but the range starts at or past its end.
            StatusCode::RANGE_NOT_SATISFIABLE => Ok(Bytes::new()),
            s if s.is_success() => {
                self.warn_ranges_ignored();
                Ok(slice(self.read_body(OP, key, resp).await?, &range))
            }
            _ => Err(self.status_err(OP, key, resp, None).await),
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        const OP: &str = "list";
        validate_prefix(prefix)
            .map_err(|why| StoreError::invalid_key(self.description.as_str(), OP, prefix, why))?;
        let p = &self.profile.list;
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        let mut page_token: Option<String> = None;
        loop {
            let (page, next) = self
                .list_page(OP, prefix, page_token.as_deref(), Some(p.page_size))
                .await?;
            // Keep only our objects (a service may ignore the prefix or list
            // files Strata could never have written).
            entries.extend(
                page.into_iter()
                    .filter(|e| e.name.starts_with(prefix) && validate_key(&e.name).is_ok()),
            );
            if entries.len() > MAX_LIST_ENTRIES {
                return Err(self.err(
                    StoreErrorKind::Other,
                    OP,
                    prefix,
                    format!(
                        "the server's listing goes on past {MAX_LIST_ENTRIES} objects; giving up"
                    ),
                ));
            }
            match next {
                None => break,
                Some(t) => {
                    if !seen.insert(t.clone()) {
                        return Err(self.err(
                            StoreErrorKind::Other,
                            OP,
                            prefix,
                            "the server's listing repeats a page token; giving up",
                        ));
                    }
                    page_token = Some(t);
                }
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        self.sizes(OP, entries).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        const OP: &str = "delete";
        self.check_key(OP, key)?;
        if self.profile.delete.url.trim().is_empty() {
            return Err(StoreError::unsupported(
                self.description.as_str(),
                OP,
                Some(key),
                "this store's profile declares no delete endpoint",
            ));
        }
        let url = self.url(OP, key, &self.profile.delete.url, "name", key)?;
        let resp = self
            .send(OP, key, self.request(&self.methods.delete, url), None)
            .await?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            let _ = error_detail(resp, self.idle).await;
            Ok(())
        } else {
            Err(self.status_err(OP, key, resp, None).await)
        }
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        const OP: &str = "stat";
        self.check_key(OP, key)?;
        let p = &self.profile.list;
        // Sorted: the key itself is the first name with its prefix, so one
        // entry answers.
        let limit = if p.sorted { 1 } else { p.page_size };
        let mut seen = HashSet::new();
        let mut page_token: Option<String> = None;
        loop {
            let (page, next) = self
                .list_page(OP, key, page_token.as_deref(), Some(limit))
                .await?;
            if let Some(e) = page.iter().find(|e| e.name == key) {
                let size = match e.size {
                    Some(s) => s,
                    None => match self.probe_size(OP, key).await? {
                        Some(s) => s,
                        None => return Ok(None),
                    },
                };
                return Ok(Some(ObjectMeta {
                    key: key.to_owned(),
                    size,
                }));
            }
            if p.sorted && page.iter().any(|e| e.name.as_str() > key) {
                return Ok(None);
            }
            if seen.len() > MAX_LIST_PAGES {
                return Err(self.err(
                    StoreErrorKind::Other,
                    OP,
                    key,
                    format!("the server's listing goes on past {MAX_LIST_PAGES} pages; giving up"),
                ));
            }
            match next {
                Some(t) if seen.insert(t.clone()) => page_token = Some(t),
                Some(_) => {
                    return Err(self.err(
                        StoreErrorKind::Other,
                        OP,
                        key,
                        "the server's listing repeats a page token; giving up",
                    ))
                }
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ```toml blocks of `HttpProfile`'s docs.
    fn doc_toml_blocks() -> Vec<String> {
        let src = include_str!("http_basic.rs");
        let start = src.find("/// How to talk to one HTTP service").unwrap();
        let mut blocks = Vec::new();
        let mut cur: Option<String> = None;
        for line in src[start..].lines().take_while(|l| l.starts_with("///")) {
            let l = line.strip_prefix("///").unwrap_or_default();
            let l = l.strip_prefix(' ').unwrap_or(l);
            match (&mut cur, l.trim()) {
                (None, "```toml") => cur = Some(String::new()),
                (Some(_), "```") => blocks.extend(cur.take()),
                (Some(b), _) => {
                    b.push_str(l);
                    b.push('\n');
                }
                (None, _) => {}
            }
        }
        blocks
    }

    #[test]
    fn documented_profile_is_the_default() {
        let blocks = doc_toml_blocks();
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        assert_eq!(
            HttpProfile::from_toml(&blocks[0]).unwrap(),
            HttpProfile::default()
        );
        assert_eq!(HttpProfile::from_toml("").unwrap(), HttpProfile::default());
        let aspx = HttpProfile::from_toml(&blocks[1]).unwrap();
        assert_eq!(aspx.max_object_size, Some(2 << 30));
        assert!(!aspx.download.range);
        assert_eq!(aspx.list.format, ListFormat::Lines);
        assert!(aspx.auth.header.is_empty());
        assert!(aspx.needs_token());
        assert_eq!(aspx.upload.file_field, "uploadedfile");
        assert_eq!(aspx.upload.method, "POST", "defaults fill the gaps");
        assert!(HttpProfile::default().needs_token());
    }

    #[test]
    fn bad_profiles_are_refused() {
        for (bad, want) in [
            ("[upload]\nurl = \"{base}up?x={nme}\"", "nme"),
            ("[list]\nurl = \"{base}l?p={name}\"", "{name}"),
            ("[download]\nmethod = \"G ET\"", "method"),
            ("[list]\nformat = \"xml\"", "xml"),
            ("[list]\npage_size = 0", "page_size"),
            ("max_object_size = \"lots\"", "lots"),
            ("max_object_size = 0", "above 0"),
            ("[auth]\nheader = \"Bad Header\"", "header"),
            ("[upload]\nurl = \"{base\"", "unclosed"),
            ("bogus = 1", "bogus"),
        ] {
            let e = HttpProfile::from_toml(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let p = HttpProfile::from_toml("[auth]\nheader = \"\"").unwrap();
        assert!(!p.needs_token());
        let p = HttpProfile::from_toml("max_object_size = 1024").unwrap();
        assert_eq!(p.max_object_size, Some(1024));
    }

    #[test]
    fn templates_expand_and_encode() {
        let v = |p: &str| match p {
            "base" => Some("http://h/b/".to_owned()),
            "name" => Some(encode("a/b c&d")),
            _ => None,
        };
        assert_eq!(
            expand("{base}dl?name={name}&x={{y}}", v).unwrap(),
            "http://h/b/dl?name=a/b%20c%26d&x={y}"
        );
        assert!(expand("{base}{nope}", v).unwrap_err().contains("nope"));
        assert_eq!(encode("data/ab-c_d.e~"), "data/ab-c_d.e~");
        assert_eq!(decode("a%20b%2Fc%zz%"), "a b/c%zz%");
        assert_eq!(decode("%41%4"), "A%4");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("basic+http://127.0.0.1:8080").unwrap(),
            (
                "http://127.0.0.1:8080/".to_owned(),
                "127.0.0.1:8080".to_owned()
            )
        );
        assert_eq!(
            parse_endpoint("BASIC+HTTPS://Cloud.Example.com/api/v1").unwrap(),
            (
                "https://cloud.example.com/api/v1/".to_owned(),
                "cloud.example.com:443".to_owned()
            )
        );
        assert!(parse_endpoint("basic+ftp://x/").is_err());
        assert!(parse_endpoint("basic+http://u:p@x/")
            .unwrap_err()
            .contains("token-file"));
        assert!(parse_endpoint("basic+http://").is_err());
        assert_eq!(
            without_userinfo("basic+http://u:pw@h:1/p/?x=y@z"),
            "basic+http://***@h:1/p/?x=y@z"
        );
        assert_eq!(without_userinfo("basic+http://h/"), "basic+http://h/");
    }

    #[test]
    fn query_split() {
        let (o, rest) =
            split_query("token-file=/run/t%20x&retries=2&profile=/p.toml&no-range").unwrap();
        assert_eq!(o.token_file.as_deref(), Some("/run/t x"));
        assert_eq!(o.profile.as_deref(), Some("/p.toml"));
        assert_eq!(rest, "retries=2&no-range");
        assert!(split_query("token-file=a&token-env=B").is_err());
        assert!(split_query("token-file").is_err());
        assert!(split_query("profile=a&profile=b").is_err());
    }

    #[test]
    fn listings_parse() {
        let p = ListProfile::default();
        let (e, next) = parse_json_list(
            br#"{"files":[{"name":"a","size":3,"mtime":1},{"name":"b","size":"4"}],"next_page_token":"t1"}"#,
            &p,
        )
        .unwrap();
        assert_eq!(
            e,
            [
                Entry {
                    name: "a".into(),
                    size: Some(3)
                },
                Entry {
                    name: "b".into(),
                    size: Some(4)
                }
            ]
        );
        assert_eq!(next.as_deref(), Some("t1"));
        let (_, next) = parse_json_list(br#"{"files":[],"next_page_token":null}"#, &p).unwrap();
        assert_eq!(next, None);
        assert!(parse_json_list(br#"{"items":[]}"#, &p)
            .unwrap_err()
            .contains("files"));
        assert!(parse_json_list(b"<html>", &p).unwrap_err().contains("JSON"));

        let nested = ListProfile {
            files_key: "data.items".into(),
            name_key: "path".into(),
            size_key: String::new(),
            next_key: "data.cursor".into(),
            ..ListProfile::default()
        };
        let (e, next) = parse_json_list(
            br#"{"data":{"items":[{"path":"x/y"},"z"],"cursor":7}}"#,
            &nested,
        )
        .unwrap();
        assert_eq!(
            e,
            [
                Entry {
                    name: "x/y".into(),
                    size: None
                },
                Entry {
                    name: "z".into(),
                    size: None
                }
            ]
        );
        assert_eq!(next.as_deref(), Some("7"));
        let bare = ListProfile {
            files_key: String::new(),
            ..ListProfile::default()
        };
        assert_eq!(parse_json_list(br#"["q"]"#, &bare).unwrap().0.len(), 1);

        assert_eq!(
            parse_lines_list(b"a/b\t12\r\n\nc\n").unwrap(),
            [
                Entry {
                    name: "a/b".into(),
                    size: Some(12)
                },
                Entry {
                    name: "c".into(),
                    size: None
                }
            ]
        );
        assert!(parse_lines_list(b"a\tbig\n").is_err());
    }

    #[test]
    fn content_ranges_and_slices() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 9, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        let b = Bytes::from_static(b"0123456789");
        assert_eq!(slice(b.clone(), &(2..5)), Bytes::from_static(b"234"));
        assert_eq!(slice(b.clone(), &(8..50)), Bytes::from_static(b"89"));
        assert!(slice(b, &(20..30)).is_empty());
    }

    #[test]
    fn token_never_shows() {
        let s = HttpBasicStore::new(
            "http://127.0.0.1:9/",
            Some("hunter2".into()),
            HttpProfile::default(),
        )
        .unwrap();
        assert_eq!(s.describe(), "basic+http://127.0.0.1:9/");
        assert!(!format!("{s:?}").contains("hunter2"));
        let e =
            HttpBasicStore::new("http://127.0.0.1:9/", None, HttpProfile::default()).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::InvalidUrl);
        let e = HttpBasicStore::new(
            "http://127.0.0.1:9/",
            Some("bad\ntoken".into()),
            HttpProfile::default(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("bad\ntoken"), "{e}");
    }

    mod hostile {
        //! Bytes from a hostile or broken server: the reply parsers return
        //! errors or nothing, never panic, whatever they are given.
        use super::super::*;
        use proptest::prelude::*;

        fn json_like() -> impl Strategy<Value = Vec<u8>> {
            let valid = r#"{"files":[{"name":"meta/log.0000000000000001","size":12},"data/ab/cd",{"name":"x","size":"7"}],"next_page_token":"t"}"#;
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..400),
                (0usize..valid.len(), any::<u8>()).prop_map(move |(i, b)| {
                    let mut v = valid.as_bytes().to_vec();
                    v[i] = b;
                    v
                }),
                (0usize..valid.len()).prop_map(move |n| valid.as_bytes()[..n].to_vec()),
                Just(br#"{"files":[{"name":"a","size":1e400}]}"#.to_vec()),
                Just(
                    br#"{"files":[{"name":"a","size":-1}],"next_page_token":18446744073709551615}"#
                        .to_vec()
                ),
                Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".repeat(200)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn reply_parsers_never_panic(body in json_like(), files_key in prop_oneof![Just(""), Just("files"), Just("data.items")]) {
                let p = ListProfile { files_key: files_key.to_owned(), ..ListProfile::default() };
                let _ = parse_json_list(&body, &p);
                let _ = parse_lines_list(&body);
                let _ = parse_server_info(&body);
                let _ = limit_in_reply(&body);
                let d = detail_of(&body);
                prop_assert!(d.chars().count() <= 301);
                if let Ok(t) = std::str::from_utf8(&body) {
                    let _ = parse_content_range(t);
                }
            }
        }

        #[test]
        fn server_info_is_read_only_when_it_says_something() {
            assert_eq!(parse_server_info(b"<html>404</html>"), None);
            assert_eq!(parse_server_info(b"{}"), None);
            assert_eq!(
                parse_server_info(br#"{"max_object_size":0,"range":false}"#),
                Some(ServerInfo {
                    max_object_size: None,
                    range: Some(false)
                })
            );
            assert_eq!(
                parse_server_info(br#"{"max_object_size":1048576,"range":true}"#),
                Some(ServerInfo {
                    max_object_size: Some(1 << 20),
                    range: Some(true)
                })
            );
            assert_eq!(
                limit_in_reply(br#"{"error":"x","max_object_size":5}"#),
                Some(5)
            );
            assert_eq!(limit_in_reply(b"nope"), None);
        }
    }
}
