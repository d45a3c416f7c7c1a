//! The HTTP API: routes, authentication, fault injection, uploads,
//! downloads, listings and deletes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, HttpBody};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use rand::Rng;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

use crate::fsops::{self, FsError, TempGuard};
use crate::names::{validate_name, MAX_NAME_LEN};
use crate::Shared;

/// Largest `limit` a listing accepts.
const MAX_LIST_LIMIT: usize = 10_000;
/// `limit` of a listing when the client gives none.
const DEFAULT_LIST_LIMIT: usize = 1000;
/// After an early error reply to an upload, the rest of the body is read
/// and thrown away (so the client sees the reply rather than a reset) for at
/// most this long...
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// ...and at most this many bytes.
const DRAIN_BYTES: u64 = 64 << 20;

/// Most fields an upload may have.
const MAX_FIELDS: usize = 16;
/// Most bytes the multipart parser may hold that are not yet field data
/// (a frame or two of body plus headers and boundaries).
const MAX_FRAMING: u64 = 4 << 20;

/// Marks a response the connection layer must turn into a dropped
/// connection (no response at all).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropConnection;

/// An injected download failure: send only this fraction of the body.
#[derive(Debug, Clone, Copy)]
struct Truncate(f64);

/// A JSON error reply: `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    msg: String,
    /// For 413 replies: the object-size limit, sent as `max_object_size`.
    limit: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            msg: msg.into(),
            limit: None,
        }
    }
    fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    fn invalid_name(why: &str) -> Self {
        Self::bad_request(format!("invalid name: {why}"))
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no such object")
    }
    fn too_large(max: Option<u64>) -> Self {
        let msg = match max {
            Some(m) => format!("object too large (limit {m} bytes)"),
            None => "request body too large".to_string(),
        };
        let mut e = Self::new(StatusCode::PAYLOAD_TOO_LARGE, msg);
        e.limit = max;
        e
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::warn!("internal error: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.limit {
            Some(m) => serde_json::json!({ "error": self.msg, "max_object_size": m }),
            None => serde_json::json!({ "error": self.msg }),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<FsError> for ApiError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::NotFound => ApiError::not_found(),
            FsError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, why),
            FsError::Io(e) => ApiError::internal(e),
        }
    }
}

/// Runs blocking filesystem work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, FsError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// The router of the whole API.
pub(crate) fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/upload_file", post(upload))
        .route("/download_file", get(download))
        .route("/list_files", get(list))
        .route("/delete_file", post(delete))
        .route("/server_info", get(server_info))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(sh.clone(), front))
        .with_state(sh)
}

/// Whether the request carries `Authorization: Bearer <token>`; the token
/// is compared in constant time.
fn authorized(token: &[u8], headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some((scheme, given)) = value.as_bytes().split_first_chunk::<7>() else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(given.trim_ascii().ct_eq(token))
}

/// What every request goes through first: counting, the added latency,
/// authentication, then maybe an injected failure.
async fn front(State(sh): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    sh.stats.requests.fetch_add(1, Ordering::Relaxed);
    if !sh.latency.is_zero() {
        tokio::time::sleep(sh.latency).await;
    }
    if !authorized(&sh.token, req.headers()) {
        let err = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        return reply_early(&sh, req, err.into_response());
    }
    if let Some(fault) = pick_fault(&sh, req.uri().path() == "/download_file") {
        sh.stats.failures_injected.fetch_add(1, Ordering::Relaxed);
        match fault {
            Fault::Error => {
                let err = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
                return reply_early(&sh, req, err.into_response());
            }
            Fault::Drop => return drop_connection(),
            Fault::Truncate(frac) => {
                req.extensions_mut().insert(Truncate(frac));
            }
        }
    }
    next.run(req).await
}

/// An injected failure.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// A 500 reply.
    Error,
    /// The connection is dropped without a reply.
    Drop,
    /// Downloads only: the body stops after this fraction, then the
    /// connection is dropped.
    Truncate(f64),
}

fn pick_fault(sh: &Shared, download: bool) -> Option<Fault> {
    if sh.fail_rate <= 0.0 {
        return None;
    }
    let mut rng = sh.rng.lock().unwrap_or_else(|e| e.into_inner());
    if rng.gen::<f64>() >= sh.fail_rate {
        return None;
    }
    let kinds = if download { 3 } else { 2 };
    Some(match rng.gen_range(0..kinds) {
        0 => Fault::Error,
        1 => Fault::Drop,
        _ => Fault::Truncate(rng.gen::<f64>()),
    })
}

fn drop_connection() -> Response {
    let mut resp = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    resp.extensions_mut().insert(DropConnection);
    resp
}

/// Replies before the request body was read: the body is drained in the
/// background (bounded) so that the client gets to read the reply, unless
/// the client waits for `100 Continue` before sending it.
fn reply_early(sh: &Shared, req: Request, resp: Response) -> Response {
    let (parts, body) = req.into_parts();
    if !expects_continue(&parts.headers) {
        drain(sh, body.into_data_stream());
    }
    resp
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn drain(sh: &Shared, mut body: BodyDataStream) {
    if body.is_end_stream() {
        return;
    }
    let stats = sh.stats.clone();
    tokio::spawn(tokio::time::timeout(DRAIN_TIME, async move {
        let mut n = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            n += chunk.len() as u64;
            stats
                .bytes_in
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if n > DRAIN_BYTES {
                break;
            }
        }
    }));
}

// ---------------------------------------------------------------- upload --

/// Why reading an upload body failed.
#[derive(Debug)]
enum BodyError {
    /// The body exceeds the request body limit.
    TooLarge,
    /// The multipart parser holds too much that is not field data
    /// (enormous headers, a body without boundaries).
    Framing,
    /// The client went away or sent a broken body.
    Read(axum::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => f.write_str("request body too large"),
            BodyError::Framing => f.write_str("too much multipart framing"),
            BodyError::Read(e) => write!(f, "reading the request body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// The request body as the multipart parser sees it: cut into pieces,
/// paced by the shaper, counted, and limited. The raw body stays reachable
/// through `inner` so that it can be drained after an early reply.
struct UploadBody {
    inner: Arc<Mutex<Option<BodyDataStream>>>,
    /// Field bytes the handler took from the parser so far.
    consumed: Arc<AtomicU64>,
    sh: Arc<Shared>,
    pending: Bytes,
    held: Option<Bytes>,
    delay: Option<Pin<Box<Sleep>>>,
    total: u64,
    done: bool,
}

impl Stream for UploadBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(delay) = this.delay.as_mut() {
                ready!(delay.as_mut().poll(cx));
                this.delay = None;
            }
            if let Some(piece) = this.held.take() {
                return Poll::Ready(Some(Ok(piece)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if !this.pending.is_empty() {
                let n = match this.sh.bucket {
                    Some(_) => this.pending.len().min(this.sh.piece),
                    None => this.pending.len(),
                };
                let piece = this.pending.split_to(n);
                this.sh
                    .stats
                    .bytes_in
                    .fetch_add(n as u64, Ordering::Relaxed);
                if let Some(bucket) = &this.sh.bucket {
                    let wait = bucket.reserve(n);
                    if !wait.is_zero() {
                        this.delay = Some(Box::pin(tokio::time::sleep(wait)));
                        this.held = Some(piece);
                        continue;
                    }
                }
                return Poll::Ready(Some(Ok(piece)));
            }
            // What was passed on but not taken out as field data sits in the
            // parser's buffer: keep that bounded.
            if this.total - this.consumed.load(Ordering::Relaxed) > MAX_FRAMING {
                this.done = true;
                return Poll::Ready(Some(Err(BodyError::Framing)));
            }
            let polled = {
                let mut guard = this.inner.lock().unwrap_or_else(|e| e.into_inner());
                match guard.as_mut() {
                    Some(body) => body.poll_next_unpin(cx),
                    None => Poll::Ready(None),
                }
            };
            match ready!(polled) {
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(BodyError::Read(e))));
                }
                Some(Ok(chunk)) => {
                    this.total += chunk.len() as u64;
                    if this.total > this.sh.body_limit {
                        this.done = true;
                        return Poll::Ready(Some(Err(BodyError::TooLarge)));
                    }
                    this.pending = chunk;
                }
            }
        }
    }
}

fn multipart_error(sh: &Shared, e: multer::Error) -> ApiError {
    if let multer::Error::StreamReadFailed(inner) = &e {
        return match inner.downcast_ref::<BodyError>() {
            Some(BodyError::TooLarge) => ApiError::too_large(sh.max_object_size),
            Some(BodyError::Framing) => {
                ApiError::bad_request("malformed multipart body: too much framing")
            }
            _ => ApiError::bad_request("upload body interrupted"),
        };
    }
    ApiError::bad_request(format!("malformed multipart body: {e}"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `POST /upload_file`: multipart with a text field `name` and a file
/// field `file`.
async fn upload(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let boundary = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok());
    let Some(boundary) = boundary else {
        let err = ApiError::bad_request("expected a multipart/form-data body");
        return reply_early(&sh, Request::from_parts(parts, body), err.into_response());
    };
    if content_length(&parts.headers).is_some_and(|len| len > sh.body_limit) {
        let err = ApiError::too_large(sh.max_object_size);
        return reply_early(&sh, Request::from_parts(parts, body), err.into_response());
    }
    let consumed = Arc::new(AtomicU64::new(0));
    let inner = Arc::new(Mutex::new(Some(body.into_data_stream())));
    let stream = UploadBody {
        inner: inner.clone(),
        consumed: consumed.clone(),
        sh: sh.clone(),
        pending: Bytes::new(),
        held: None,
        delay: None,
        total: 0,
        done: false,
    };
    let mut multipart = multer::Multipart::new(stream, boundary);
    let result = receive(&sh, &mut multipart, &consumed).await;
    drop(multipart);
    match result {
        Ok((name, size)) => Json(serde_json::json!({ "name": name, "size": size })).into_response(),
        Err(err) => {
            let body = inner.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(body) = body {
                drain(&sh, body);
            }
            err.into_response()
        }
    }
}

/// Reads the multipart fields, storing the file in a temp file, then
/// commits it under its name.
async fn receive(
    sh: &Arc<Shared>,
    multipart: &mut multer::Multipart<'static>,
    consumed: &AtomicU64,
) -> Result<(String, u64), ApiError> {
    let mut name: Option<String> = None;
    let mut stored: Option<(TempGuard, u64)> = None;
    let mut fields = 0;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(sh, e))?
    {
        fields += 1;
        if fields > MAX_FIELDS {
            return Err(ApiError::bad_request("too many multipart fields"));
        }
        match field.name() {
            Some("name") => {
                if name.is_some() {
                    return Err(ApiError::bad_request("field name given twice"));
                }
                let mut buf = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(sh, e))? {
                    consumed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    buf.extend_from_slice(&chunk);
                    if buf.len() > MAX_NAME_LEN {
                        return Err(ApiError::invalid_name("must be 1 to 1024 bytes long"));
                    }
                }
                let text =
                    String::from_utf8(buf).map_err(|_| ApiError::invalid_name("not UTF-8"))?;
                validate_name(&text).map_err(ApiError::invalid_name)?;
                name = Some(text);
            }
            Some("file") => {
                if stored.is_some() {
                    return Err(ApiError::bad_request("field file given twice"));
                }
                stored = Some(write_temp(sh, &mut field, consumed).await?);
            }
            _ => {
                // Unknown fields are read and ignored (the body limit bounds them).
                while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(sh, e))? {
                    consumed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }
    let name = name.ok_or_else(|| ApiError::bad_request("missing field name"))?;
    let (temp, size) = stored.ok_or_else(|| ApiError::bad_request("missing field file"))?;
    let root = sh.root.clone();
    let commit_name = name.clone();
    blocking(move || fsops::commit(&root, temp, &commit_name)).await?;
    Ok((name, size))
}

/// Streams the `file` field into a fresh temp file and fsyncs it.
async fn write_temp(
    sh: &Arc<Shared>,
    field: &mut multer::Field<'static>,
    consumed: &AtomicU64,
) -> Result<(TempGuard, u64), ApiError> {
    let tmp_dir = sh.tmp.clone();
    let (guard, file) = blocking(move || TempGuard::create(&tmp_dir).map_err(FsError::Io)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(sh, e))? {
        size += chunk.len() as u64;
        consumed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if sh.max_object_size.is_some_and(|max| size > max) {
            return Err(ApiError::too_large(sh.max_object_size));
        }
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    file.sync_all().await.map_err(ApiError::internal)?;
    drop(file);
    Ok((guard, size))
}

// -------------------------------------------------------------- download --

#[derive(Debug, Deserialize)]
struct NameQuery {
    name: Option<String>,
}

fn name_param(req: &Request) -> Result<String, ApiError> {
    let Query(q) = Query::<NameQuery>::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let name = q
        .name
        .ok_or_else(|| ApiError::bad_request("missing query parameter name"))?;
    validate_name(&name).map_err(ApiError::invalid_name)?;
    Ok(name)
}

/// A `Range` header, resolved against the object size.
#[derive(Debug, PartialEq, Eq)]
enum RangeReq {
    /// No (usable) range: the whole object.
    Full,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// A valid range that selects nothing.
    Unsatisfiable,
}

fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Resolves a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range. Anything
/// else (several ranges, other units, bad syntax) is ignored, which RFC 9110
/// allows.
fn parse_range(value: &str, len: u64) -> RangeReq {
    let value = value.trim();
    let Some((unit, spec)) = value.split_once('=') else {
        return RangeReq::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Some(n) = parse_digits(b) else {
            return RangeReq::Full;
        };
        if n == 0 || len == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Part(len.saturating_sub(n), len - 1);
    }
    let Some(start) = parse_digits(a) else {
        return RangeReq::Full;
    };
    let end = if b.is_empty() {
        None
    } else {
        match parse_digits(b) {
            Some(e) if e >= start => Some(e),
            _ => return RangeReq::Full,
        }
    };
    if start >= len {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part(start, end.unwrap_or(len - 1).min(len - 1))
}

/// `GET /download_file?name=NAME`.
async fn download(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let truncate = req.extensions().get::<Truncate>().map(|t| t.0);
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let name = name_param(&req);
    drop(req);
    let resp = match download_inner(&sh, name, range, truncate).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    if truncate.is_some() && resp.extensions().get::<Truncated>().is_none() {
        // The injected truncation could not apply (error reply, empty
        // body): fail another way.
        return drop_connection();
    }
    resp
}

/// Marks a download response whose body is truncated on purpose.
#[derive(Debug, Clone, Copy)]
struct Truncated;

async fn download_inner(
    sh: &Arc<Shared>,
    name: Result<String, ApiError>,
    range: Option<String>,
    truncate: Option<f64>,
) -> Result<Response, ApiError> {
    let name = name?;
    let root = sh.root.clone();
    let (mut file, len) = blocking(move || fsops::open_object(&root, &name)).await?;
    let range = match range {
        Some(r) if sh.range => parse_range(&r, len),
        _ => RangeReq::Full,
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::ACCEPT_RANGES,
            if sh.range { "bytes" } else { "none" },
        );
    let (start, count) = match range {
        RangeReq::Full => {
            builder = builder.status(StatusCode::OK);
            (0, len)
        }
        RangeReq::Part(start, end) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (start, end - start + 1)
        }
        RangeReq::Unsatisfiable => {
            let mut resp =
                ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable")
                    .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    if start > 0 {
        file = blocking(move || {
            fsops::seek(&mut file, start)?;
            Ok(file)
        })
        .await?;
    }
    let keep = match truncate {
        Some(frac) if count > 0 => Some(((count as f64 * frac) as u64).min(count - 1)),
        _ => None,
    };
    let body = download_body(sh.clone(), tokio::fs::File::from_std(file), count, keep);
    let mut resp = builder
        .header(header::CONTENT_LENGTH, count)
        .body(body)
        .map_err(ApiError::internal)?;
    if keep.is_some() {
        resp.extensions_mut().insert(Truncated);
    }
    Ok(resp)
}

struct Download {
    file: tokio::fs::File,
    remaining: u64,
    keep: Option<u64>,
    sh: Arc<Shared>,
    done: bool,
}

/// The object's bytes in pieces (small ones when shaping, so the pacing is
/// smooth), paced by the shaper and counted; with `keep`, the stream fails
/// after that many bytes so that the connection is cut.
fn download_body(sh: Arc<Shared>, file: tokio::fs::File, count: u64, keep: Option<u64>) -> Body {
    let state = Download {
        file,
        remaining: count,
        keep,
        sh,
        done: false,
    };
    Body::from_stream(futures::stream::unfold(state, |mut st| async move {
        if st.done || st.remaining == 0 {
            return None;
        }
        if st.keep == Some(0) {
            st.done = true;
            // Let hyper flush the head and the bytes so far (it does when
            // the body is not ready) before the error cuts the connection.
            tokio::task::yield_now().await;
            let err = io::Error::other("injected failure: truncated body");
            return Some((Err(err), st));
        }
        let piece = if st.sh.bucket.is_some() {
            st.sh.piece
        } else {
            crate::UNSHAPED_PIECE
        };
        let mut want = st.remaining.min(piece as u64);
        if let Some(k) = st.keep {
            want = want.min(k);
        }
        let mut buf = vec![0u8; want as usize];
        if let Err(e) = st.file.read_exact(&mut buf).await {
            st.done = true;
            return Some((Err(e), st));
        }
        if let Some(bucket) = &st.sh.bucket {
            let wait = bucket.reserve(buf.len());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        st.remaining -= want;
        if let Some(k) = st.keep.as_mut() {
            *k -= want;
        }
        st.sh.stats.bytes_out.fetch_add(want, Ordering::Relaxed);
        Some((Ok(Bytes::from(buf)), st))
    }))
}

// ------------------------------------------------------------------ list --

#[derive(Debug, Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    page_token: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct ListReply {
    files: Vec<fsops::Entry>,
    next_page_token: Option<String>,
}

/// `GET /list_files?prefix=P&page_token=T&limit=N`.
async fn list(State(sh): State<Arc<Shared>>, req: Request) -> Result<Response, ApiError> {
    let Query(q) = Query::<ListQuery>::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let prefix = q.prefix.unwrap_or_default();
    if prefix.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request("prefix longer than 1024 bytes"));
    }
    let after = q.page_token.filter(|t| !t.is_empty());
    if after.as_ref().is_some_and(|t| t.len() > MAX_NAME_LEN) {
        return Err(ApiError::bad_request("invalid page_token"));
    }
    let limit = match q.limit.as_deref() {
        None | Some("") => DEFAULT_LIST_LIMIT,
        Some(s) => match parse_digits(s) {
            Some(n) if n >= 1 => (n.min(MAX_LIST_LIMIT as u64)) as usize,
            _ => {
                return Err(ApiError::bad_request(
                    "limit must be a number from 1 to 10000",
                ))
            }
        },
    };
    let root = sh.root.clone();
    let (files, more) =
        blocking(move || fsops::list(&root, &prefix, after.as_deref(), limit).map_err(FsError::Io))
            .await?;
    let next_page_token = if more {
        files.last().map(|e| e.name.clone())
    } else {
        None
    };
    Ok(Json(ListReply {
        files,
        next_page_token,
    })
    .into_response())
}

// ----------------------------------------------------------- server_info --

/// `GET /server_info`: what a client cannot guess — the object-size limit
/// (`null` = none) and whether `Range` requests are honoured.
async fn server_info(State(sh): State<Arc<Shared>>) -> Response {
    Json(serde_json::json!({
        "api": "strata-basic",
        "version": 1,
        "max_object_size": sh.max_object_size,
        "range": sh.range,
    }))
    .into_response()
}

// ---------------------------------------------------------------- delete --

/// `POST /delete_file?name=NAME`.
async fn delete(State(sh): State<Arc<Shared>>, req: Request) -> Result<Response, ApiError> {
    let name = name_param(&req)?;
    drop(req);
    let root = sh.root.clone();
    blocking(move || fsops::delete(&root, &name)).await?;
    Ok(Json(serde_json::json!({ "deleted": true })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeReq::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-200", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=10-", 100), Part(10, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-3", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
        assert_eq!(parse_range("bytes=x", 100), Full);
    }

    #[test]
    fn auth() {
        let mut h = HeaderMap::new();
        assert!(!authorized(b"tok", &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert!(authorized(b"tok", &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  tok "),
        );
        assert!(authorized(b"tok", &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer toke"),
        );
        assert!(!authorized(b"tok", &h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic tok"));
        assert!(!authorized(b"tok", &h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert!(!authorized(b"tok", &h));
    }
}
