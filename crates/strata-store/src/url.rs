//! Store URLs: [`open_url`] parses `file:///abs/path`, a bare filesystem
//! path, `memory://NAME`, `basic+http(s)://HOST/BASE/` (see
//! [`HttpBasicStore`](crate::HttpBasicStore)), `s3://BUCKET[/PREFIX]`,
//! `webdav+http(s)://[USER@]HOST[:PORT]/PATH`, `onedrive:/PATH` or
//! `sftp://USER@HOST:PORT/ABS/PATH?key=PATH&known-hosts=PATH`, plus query options
//! ([`StoreOptions`]), and builds the standard layer stack; [`parse_size`]
//! reads sizes like `100MiB`.

use std::path::Path;
use std::sync::Arc;

use crate::backend::OpendalStore;
use crate::cloud;
use crate::error::{StoreError, StoreResult};
use crate::http_basic::{self, HttpBasicStore};
use crate::layers::{CapStore, ConcurrencyLimit, Metrics, MetricsStore, RetryPolicy, RetryStore};
use crate::DynStore;

/// The schemes [`open_url`] understands, for error messages.
const SUPPORTED: &str = "file:// (or a plain filesystem path), memory://, basic+http://, \
     basic+https://, s3://, webdav+http://, webdav+https://, onedrive:, sftp://";

/// The option names a store URL may carry, for error messages.
const OPTIONS: &str = "max-object-size, range-reads, no-range, concurrency, retries";

/// Options from a store URL's query string, e.g.
/// `memory://t?max-object-size=100MiB&no-range&concurrency=4&retries=2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// `max-object-size=SIZE`: reject bigger puts (see [`parse_size`]).
    pub max_object_size: Option<u64>,
    /// `range-reads=false` or `no-range`: disable `get_range`.
    pub range_reads: bool,
    /// `concurrency=N`: at most N requests in flight (N ≥ 1; default 16).
    pub concurrency: usize,
    /// `retries=N`: retry a transient failure up to N times (default 5,
    /// i.e. 6 attempts in all).
    pub retries: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_object_size: None,
            range_reads: true,
            concurrency: ConcurrencyLimit::<DynStore>::DEFAULT_LIMIT,
            retries: RetryPolicy::default().max_attempts.saturating_sub(1),
        }
    }
}

impl StoreOptions {
    /// Parse a query string (without the `?`): `&`-separated `name=value`
    /// pairs or bare flags. Unknown names are errors.
    pub fn from_query<'a>(query: &'a str) -> Result<Self, String> {
        let mut o = StoreOptions::default();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (part, None),
            };
            let need = |v: Option<&'a str>| -> Result<&'a str, String> {
                v.filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("store option `{name}` needs a value"))
            };
            match name.to_ascii_lowercase().as_str() {
                "max-object-size" => {
                    let v = need(value)?;
                    let n = parse_size(v).map_err(|e| format!("max-object-size: {e}"))?;
                    if n == 0 {
                        return Err("max-object-size must be above 0".into());
                    }
                    o.max_object_size = Some(n);
                }
                "range-reads" => o.range_reads = parse_flag(name, value)?,
                "no-range" => o.range_reads = !parse_flag(name, value)?,
                "concurrency" => {
                    let v = need(value)?;
                    o.concurrency = match v.parse::<usize>() {
                        Ok(n) if n >= 1 => n,
                        _ => {
                            return Err(format!(
                                "concurrency must be a whole number ≥ 1, not `{v}`"
                            ))
                        }
                    };
                }
                "retries" => {
                    let v = need(value)?;
                    o.retries = v
                        .parse::<u32>()
                        .map_err(|_| format!("retries must be a whole number ≥ 0, not `{v}`"))?;
                }
                _ => {
                    return Err(format!(
                        "unknown store option `{name}` (supported: {OPTIONS}; basic+http(s):// \
                         stores also take {})",
                        http_basic::URL_OPTIONS
                    ))
                }
            }
        }
        Ok(o)
    }

    /// The retry policy these options ask for.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.retries.saturating_add(1),
            ..RetryPolicy::default()
        }
    }
}

pub(crate) fn parse_flag(name: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("true") | Some("yes") | Some("on") | Some("1") => Ok(true),
        Some("false") | Some("no") | Some("off") | Some("0") => Ok(false),
        Some(v) => Err(format!(
            "store option `{name}` takes true or false, not `{v}`"
        )),
    }
}

/// Open a store by URL and build the standard layer stack, outermost first:
/// retry → metrics → concurrency limit → caps → backend (so retries are
/// counted as real requests). Returns the stack and its metrics.
///
/// Accepted: `file:///abs/path`, a bare (absolute or relative) filesystem
/// path, `memory://NAME` (shared by name within the process; `memory://`
/// alone is private), `basic+http://HOST:PORT/BASE/` or `basic+https://…`
/// (a basic upload/download/list web API, see
/// [`HttpBasicStore`](crate::HttpBasicStore); it also takes `token-file`,
/// `token-env` and `profile` options), `s3://BUCKET[/PREFIX]`,
/// `webdav+http(s)://[USER@]HOST[:PORT]/PATH` and `onedrive:/PATH` (cloud
/// services through opendal) and `sftp://[USER@]HOST[:PORT]/ABS/PATH` (these
/// take options of their own too), each optionally followed by `?options`
/// (see [`StoreOptions`]). `describe()` of the stack is the URL
/// with secrets removed.
pub fn open_url(url: &str) -> StoreResult<(DynStore, Metrics)> {
    let shown = redact_url(url);
    let invalid = |msg: String| StoreError::invalid_url(shown.as_str(), msg);
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    // basic+http(s):// takes options of its own; the rest are general.
    let is_http = split_scheme(base).is_some_and(|(scheme, _)| http_basic::is_scheme(scheme));
    let (http_opts, query) = if is_http {
        http_basic::split_query(query).map_err(invalid)?
    } else {
        (http_basic::UrlOptions::default(), query.to_owned())
    };
    // Cloud backends take options of their own too.
    let cloud_names: &[&str] = match split_scheme(base).map(|(s, _)| s.to_ascii_lowercase()) {
        Some(s) if s == "s3" => cloud::S3_OPTIONS,
        Some(s) if s == "webdav+http" || s == "webdav+https" => cloud::WEBDAV_OPTIONS,
        Some(s) if s == "sftp" => crate::sftp::SFTP_OPTIONS,
        _ if is_onedrive(base) => cloud::ONEDRIVE_OPTIONS,
        _ => &[],
    };
    let (extra, query) = cloud::Extra::split(&query, cloud_names);
    let opts = StoreOptions::from_query(&query).map_err(invalid)?;
    let redacted_query = match shown.split_once('?') {
        Some((_, q)) if !q.is_empty() => format!("?{q}"),
        _ => String::new(),
    };

    let cloud_err = |msg: String| invalid(msg);
    let backend: DynStore = match split_scheme(base) {
        None if is_onedrive(base) => {
            let path = &base["onedrive:".len()..];
            let d = format!("{base}{redacted_query}");
            Arc::new(cloud::open_onedrive(path, &extra, d).map_err(cloud_err)?)
        }
        None => {
            if base.is_empty() {
                return Err(invalid(format!(
                    "empty store URL; supported schemes: {SUPPORTED}"
                )));
            }
            Arc::new(fs_store(Path::new(base), &redacted_query)?)
        }
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let parsed = ::url::Url::parse(base)
                    .map_err(|e| invalid(format!("not a valid file URL: {e}")))?;
                let path = match parsed.host_str() {
                    Some(h) if !h.is_empty() && h != "localhost" => {
                        return Err(invalid(format!(
                            "file URLs take an absolute path (file:///abs/path), not host `{h}`; \
                             for a relative path, give the bare path without file://"
                        )))
                    }
                    _ => parsed
                        .to_file_path()
                        .map_err(|()| invalid("file URL has no usable absolute path".into()))?,
                };
                Arc::new(fs_store(&path, &redacted_query)?)
            }
            "memory" => {
                let name = rest.trim_end_matches('/');
                if !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                {
                    return Err(invalid(format!(
                        "memory store names may only contain A-Z a-z 0-9 . _ -, not `{name}`"
                    )));
                }
                let d = format!("memory://{name}{redacted_query}");
                Arc::new(OpendalStore::memory(name)?.with_description(d))
            }
            "s3" => {
                let d = format!("{base}{redacted_query}");
                Arc::new(cloud::open_s3(rest, &extra, d).map_err(cloud_err)?)
            }
            s @ ("webdav+http" | "webdav+https") => {
                let d = format!("{}{redacted_query}", redact_url(base));
                Arc::new(cloud::open_webdav(s, rest, &extra, d).map_err(cloud_err)?)
            }
            "sftp" => {
                let d = format!("{base}{redacted_query}");
                Arc::new(crate::sftp::open_url(base, url, d)?)
            }
            "basic+http" | "basic+https" => {
                Arc::new(HttpBasicStore::open(base, &http_opts, &redacted_query)?)
            }
            other => {
                return Err(invalid(format!(
                    "unsupported store scheme `{other}://`; supported: {SUPPORTED}"
                )))
            }
        },
    };
    Ok(build_stack(backend, &opts))
}

fn fs_store(path: &Path, redacted_query: &str) -> StoreResult<OpendalStore> {
    let store = OpendalStore::fs(path)?;
    let d = format!("{}{redacted_query}", crate::Store::describe(&store));
    Ok(store.with_description(d))
}

/// Wrap `base` in the standard layer stack for `opts` (what [`open_url`]
/// does after opening the backend): retry → metrics → concurrency limit →
/// caps → `base`. Handy to put a [`FaultStore`](crate::FaultStore) under the
/// real layers in tests.
pub fn build_stack(base: DynStore, opts: &StoreOptions) -> (DynStore, Metrics) {
    let metrics = Metrics::new();
    let capped = CapStore::new(base)
        .with_max_object_size(opts.max_object_size)
        .with_range_reads(opts.range_reads);
    let limited = ConcurrencyLimit::new(capped, opts.concurrency);
    let counted = MetricsStore::new(limited, metrics.clone());
    let retried = RetryStore::new(counted, opts.retry_policy());
    (Arc::new(retried), metrics)
}

/// `~/x` → `$HOME/x` in a path option (the local user's home, as ssh and
/// the shell read it); other paths as given.
pub(crate) fn expand_home(path: &str) -> std::path::PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => std::path::PathBuf::from(path),
    }
}

/// `onedrive:/path` (the one scheme written without `//`).
fn is_onedrive(base: &str) -> bool {
    base.get(..9)
        .is_some_and(|p| p.eq_ignore_ascii_case("onedrive:"))
}

/// `scheme://rest` → `(scheme, rest)` when `scheme` looks like a URL scheme.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    ok.then_some((scheme, rest))
}

/// `url` with secrets removed: a password in the user-info part and the
/// values of query options whose name mentions token, password, secret or key.
fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match split_scheme(base) {
        Some((scheme, rest)) => {
            let auth_end = rest.find('/').unwrap_or(rest.len());
            let (auth, path) = rest.split_at(auth_end);
            let auth = match auth.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***@{host}"),
                    None => format!("{userinfo}@{host}"),
                },
                None => auth.to_owned(),
            };
            format!("{scheme}://{auth}{path}")
        }
        None => base.to_owned(),
    };
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((name, _)) if is_secret_name(name) => format!("{name}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    // `token-file=PATH`, `token-env=VAR`: where the secret is, not the
    // secret; likewise sftp's `key=PATH` (the private key file).
    if n.ends_with("-file") || n.ends_with("-env") || n == "key" {
        return false;
    }
    ["token", "password", "passwd", "secret", "key", "credential"]
        .iter()
        .any(|s| n.contains(s))
}

/// Parse a size: plain bytes (`1048576`) or a number with a unit suffix,
/// case-insensitive, optionally separated by a space: `B`; decimal `K`/`KB`,
/// `M`/`MB`, `G`/`GB`, `T`/`TB`, `P`/`PB` (powers of 1000); binary `KiB`,
/// `MiB`, `GiB`, `TiB`, `PiB` (powers of 1024). A fraction is allowed with a
/// unit (`1.5GiB`) and rounded down to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(format!(
            "`{s}` is not a size (expected e.g. 4096, 64KiB, 100MB)"
        ));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "p" | "pb" => 1000u64.pow(5),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "pib" => 1 << 50,
        _ => {
            return Err(format!(
            "unknown size unit `{unit}` in `{s}` (use B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB)"
        ))
        }
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || frac.contains('.')
        || (num.contains('.') && frac.is_empty())
    {
        return Err(format!("`{s}` is not a size (bad number `{num}`)"));
    }
    let too_big = || format!("size `{s}` is too large");
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse::<u128>().map_err(|_| too_big())?
    };
    let mut total = int_v.checked_mul(u128::from(mult)).ok_or_else(too_big)?;
    if !frac.is_empty() {
        if frac.len() > 18 {
            return Err(format!("`{s}`: too many decimal places"));
        }
        let frac_v: u128 = frac.parse().map_err(|_| too_big())?;
        let scale = 10u128.pow(frac.len() as u32);
        total = total
            .checked_add(frac_v * u128::from(mult) / scale)
            .ok_or_else(too_big)?;
    }
    u64::try_from(total).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("s3://user:hunter2@host/b?token=abc&region=x&SecretKey=y"),
            "s3://user:***@host/b?token=***&region=x&SecretKey=***"
        );
        assert_eq!(redact_url("memory://a"), "memory://a");
        assert_eq!(redact_url("/tmp/x?no-range"), "/tmp/x?no-range");
        assert_eq!(
            redact_url("basic+http://h:1/?token-file=/t&token-env=V&token=x"),
            "basic+http://h:1/?token-file=/t&token-env=V&token=***"
        );
    }

    #[test]
    fn scheme_split() {
        assert_eq!(split_scheme("file:///x"), Some(("file", "/x")));
        assert_eq!(split_scheme("memory://a"), Some(("memory", "a")));
        assert_eq!(split_scheme("/abs/path"), None);
        assert_eq!(split_scheme("./a://b"), None);
    }
}
