//! The `basic+http://` backend against the real bundled server
//! (`strata-server` on 127.0.0.1:0 over a temp dir): the shared conformance
//! suite, paginated listings, range reads with ranges on and off, error
//! mapping (wrong token, server down, too large, truncated replies), profiles,
//! and a flaky server survived through `open_url`'s retry layer.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use strata_server::{ServerConfig, ServerHandle};
use strata_store::{open_url, Bytes, DynStore, HttpBasicStore, HttpProfile, Store, StoreErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{bytes_of, conformance_with, keys, many_objects, Expect};

const TOKEN: &str = "s3cr3t-t0ken";

/// A running server over a temp dir, with the token in a file.
struct Cloud {
    server: ServerHandle,
    dir: tempfile::TempDir,
    token_file: PathBuf,
}

impl Cloud {
    async fn start(tune: impl FnOnce(&mut ServerConfig)) -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(
            dir.path().join("root"),
            "127.0.0.1:0".parse().unwrap(),
            TOKEN.into(),
        );
        tune(&mut cfg);
        let server = strata_server::spawn(cfg).await.unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        Cloud {
            server,
            dir,
            token_file,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `basic+http://ADDR/?token-file=…` plus `extra` options.
    fn url(&self, extra: &str) -> String {
        let mut u = format!(
            "basic+http://{}/?token-file={}",
            self.addr(),
            self.token_file.display()
        );
        if !extra.is_empty() {
            u.push('&');
            u.push_str(extra);
        }
        u
    }

    /// The bare backend, default profile.
    fn store(&self) -> DynStore {
        self.store_with(HttpProfile::default())
    }

    fn store_with(&self, profile: HttpProfile) -> DynStore {
        Arc::new(
            HttpBasicStore::new(
                &format!("http://{}/", self.addr()),
                Some(TOKEN.into()),
                profile,
            )
            .unwrap(),
        )
    }

    fn requests(&self) -> u64 {
        self.server.stats().requests
    }
}

const HTTP_EXPECT: Expect = Expect {
    conditional_create: false,
    range_reads: true,
};

#[tokio::test]
async fn conformance_bare_backend() {
    let cloud = Cloud::start(|_| {}).await;
    let s = cloud.store();
    assert_eq!(s.describe(), format!("basic+http://{}/", cloud.addr()));
    conformance_with(s, HTTP_EXPECT).await;
    cloud.server.shutdown().await;
}

#[tokio::test]
async fn conformance_through_open_url() {
    let cloud = Cloud::start(|_| {}).await;
    let url = cloud.url("retries=2");
    let (s, m) = open_url(&url).unwrap();
    // describe() is the URL (the token file's path is no secret).
    assert_eq!(s.describe(), url);
    conformance_with(s, HTTP_EXPECT).await;
    let snap = m.snapshot();
    assert!(
        snap.puts > 10 && snap.gets > 10 && snap.lists > 10,
        "{snap:?}"
    );
    cloud.server.shutdown().await;
}

#[tokio::test]
async fn conformance_with_ranges_off_everywhere() {
    // Server without ranges; the URL says so too: callers see no range
    // reads, and get_range still works (whole object, sliced locally).
    let cloud = Cloud::start(|c| c.range = false).await;
    let (s, _) = open_url(&cloud.url("range-reads=false")).unwrap();
    assert!(!s.capabilities().range_reads);
    let e = s.get_range("x", 0..1).await.unwrap_err();
    assert_eq!(
        e.kind(),
        StoreErrorKind::Unsupported,
        "the cap layer says no"
    );
    // The backend itself, with a profile that knows the server has no ranges.
    let profile = HttpProfile::from_toml("[download]\nrange = false").unwrap();
    conformance_with(
        cloud.store_with(profile),
        Expect {
            conditional_create: false,
            range_reads: false,
        },
    )
    .await;
    cloud.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_of_2500_objects_pages_through() {
    let cloud = Cloud::start(|_| {}).await;
    let s = cloud.store();
    many_objects(s.clone(), 2500).await;
    // 2500 matches at 1000 a page: three list requests.
    let before = cloud.requests();
    let all = s.list("chunks/").await.unwrap();
    assert_eq!(all.len(), 2500);
    assert_eq!(cloud.requests() - before, 3);
    // A stat is a single one-entry listing.
    let before = cloud.requests();
    assert_eq!(s.stat(&all[1234].key).await.unwrap().unwrap(), all[1234]);
    assert_eq!(s.stat("chunks/00").await.unwrap(), None);
    assert_eq!(cloud.requests() - before, 2);
    cloud.server.shutdown().await;
}

#[tokio::test]
async fn range_reads_on_a_range_server_fetch_only_the_range() {
    let cloud = Cloud::start(|_| {}).await;
    let s = cloud.store();
    let v = bytes_of(1 << 20, 7);
    s.put("big", v.clone()).await.unwrap();
    let before = cloud.server.stats();
    assert_eq!(
        s.get_range("big", 1000..5000).await.unwrap(),
        v.slice(1000..5000)
    );
    let after = cloud.server.stats();
    assert_eq!(after.requests - before.requests, 1, "one request");
    assert_eq!(after.bytes_out - before.bytes_out, 4000, "only the range");
    // Clamped at the end, open-ended, and past the end.
    assert_eq!(
        s.get_range("big", (1 << 20) - 10..(1 << 20) + 10)
            .await
            .unwrap(),
        v.slice((1 << 20) - 10..)
    );
    assert_eq!(
        s.get_range("big", 100..u64::MAX).await.unwrap(),
        v.slice(100..)
    );
    assert!(s
        .get_range("big", 2 << 20..3 << 20)
        .await
        .unwrap()
        .is_empty());
    cloud.server.shutdown().await;
}

#[tokio::test]
async fn range_reads_on_a_server_without_ranges_are_sliced_locally() {
    let cloud = Cloud::start(|c| c.range = false).await;
    // The default profile believes in ranges: the 200 replies are sliced.
    let s = cloud.store();
    assert!(s.capabilities().range_reads);
    let v = bytes_of(300_000, 3);
    s.put("obj", v.clone()).await.unwrap();
    for (range, want) in [
        (10..20, v.slice(10..20)),
        (299_990..300_100, v.slice(299_990..)),
        (0..u64::MAX, v.clone()),
        (400_000..400_001, Bytes::new()),
    ] {
        let before = cloud.server.stats();
        assert_eq!(s.get_range("obj", range.clone()).await.unwrap(), want);
        let after = cloud.server.stats();
        assert_eq!(after.requests - before.requests, 1, "{range:?}");
        assert_eq!(after.bytes_out - before.bytes_out, 300_000, "whole object");
    }
    let e = s.get_range("nope", 0..5).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::NotFound);
    cloud.server.shutdown().await;
}

#[tokio::test]
async fn wrong_token_is_permission_denied_naming_the_store() {
    let cloud = Cloud::start(|_| {}).await;
    let bad = cloud.dir.path().join("bad-token");
    std::fs::write(&bad, "not-the-token").unwrap();
    let url = format!(
        "basic+http://{}/?token-file={}",
        cloud.addr(),
        bad.display()
    );
    let (s, m) = open_url(&url).unwrap();
    for e in [
        s.put("k", Bytes::from_static(b"x")).await.unwrap_err(),
        s.get("k").await.unwrap_err(),
        s.list("").await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), StoreErrorKind::PermissionDenied, "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("store {url}: ")), "{msg}");
        assert!(msg.contains("rejected the access token"), "{msg}");
        assert!(msg.contains("401"), "{msg}");
        assert!(
            !msg.contains("not-the-token") && !msg.contains(TOKEN),
            "{msg}"
        );
    }
    assert_eq!(m.snapshot().errors, 3, "not retried");
    cloud.server.shutdown().await;
}

#[tokio::test]
async fn server_down_is_a_transient_connection_error() {
    let cloud = Cloud::start(|_| {}).await;
    let addr = cloud.addr();
    let url = cloud.url("retries=1");
    let Cloud {
        server,
        dir: _dir,
        token_file: _,
    } = cloud;
    server.shutdown().await;
    // Opening contacts nothing, so it succeeds; the first use fails.
    let (s, m) = open_url(&url).unwrap();
    let e = s.get("some/key").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("store {url}: get some/key: ")),
        "{msg}"
    );
    assert!(msg.contains(&format!("cannot connect to {addr}")), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert_eq!(m.snapshot().gets, 2, "retried once");
}

#[tokio::test]
async fn over_limit_upload_is_too_large() {
    let cloud = Cloud::start(|c| c.max_object_size = Some(64 << 10)).await;
    let (s, _) = open_url(&cloud.url("retries=0")).unwrap();
    s.put("fits", bytes_of(64 << 10, 1)).await.unwrap();
    for n in [(64 << 10) + 1, 1 << 20] {
        let e = s.put("big", bytes_of(n, 2)).await.unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::TooLarge, "{e}");
        assert!(e.to_string().contains(&format!("{n} bytes")), "{e}");
        assert!(e.to_string().contains("413"), "{e}");
    }
    assert_eq!(s.stat("big").await.unwrap(), None);
    assert_eq!(s.get("fits").await.unwrap(), bytes_of(64 << 10, 1));

    // A profile that knows the limit refuses before sending anything.
    let profile_path = cloud.dir.path().join("limited.toml");
    std::fs::write(&profile_path, "max_object_size = \"64KiB\"\n").unwrap();
    let (s, _) = open_url(&cloud.url(&format!("profile={}", profile_path.display()))).unwrap();
    assert_eq!(s.capabilities().max_object_size, Some(64 << 10));
    let before = cloud.requests();
    let e = s.put("big", bytes_of(1 << 20, 2)).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::TooLarge, "{e}");
    assert_eq!(cloud.requests(), before);
    cloud.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_server_through_open_url_retries_and_counts() {
    let cloud = Cloud::start(|c| {
        c.fail_rate = 0.1;
        c.seed = 42;
    })
    .await;
    let (s, m) = open_url(&cloud.url("retries=10")).unwrap();
    let n = 300usize;
    stream::iter(0..n)
        .map(|i| {
            let s = s.clone();
            async move {
                let key = format!("flaky/{i:04}");
                let v = bytes_of(1000 + i * 37, i as u8);
                s.put(&key, v.clone()).await?;
                let got = s.get(&key).await?;
                assert_eq!(got, v, "{key}");
                Ok::<_, strata_store::StoreError>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let snap = m.snapshot();
    let injected = cloud.server.stats().failures_injected;
    // Every failed attempt was retried; every request that failed was an
    // injected failure (500, dropped connection or truncated body).
    assert!(snap.errors > 0, "{snap:?}");
    assert_eq!(
        snap.puts + snap.gets,
        2 * n as u64 + snap.errors,
        "{snap:?}"
    );
    assert_eq!(snap.errors, injected, "{snap:?}");
    assert_eq!(s.list("flaky/").await.unwrap().len(), n);
    cloud.server.shutdown().await;
}

#[tokio::test]
async fn a_silent_server_hits_the_idle_timeout() {
    let cloud = Cloud::start(|c| c.latency = Duration::from_millis(1500)).await;
    let s = HttpBasicStore::new(
        &format!("http://{}/", cloud.addr()),
        Some(TOKEN.into()),
        HttpProfile::default(),
    )
    .unwrap()
    .with_idle_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let e = s.get("k").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("idle timeout"), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    cloud.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_transfers_are_not_cut_by_the_idle_timeout() {
    // 384 KiB each way at 256 KiB/s: ~1.5 s per transfer, far above the
    // idle timeout, yet bytes keep flowing, so both succeed.
    let cloud = Cloud::start(|c| c.bandwidth = Some(256 << 10)).await;
    let s = HttpBasicStore::new(
        &format!("http://{}/", cloud.addr()),
        Some(TOKEN.into()),
        HttpProfile::default(),
    )
    .unwrap()
    .with_idle_timeout(Duration::from_millis(500));
    let v = bytes_of(384 << 10, 9);
    let t = Instant::now();
    s.put("slow", v.clone()).await.unwrap();
    assert_eq!(s.get("slow").await.unwrap(), v);
    assert!(t.elapsed() > Duration::from_secs(2), "{:?}", t.elapsed());
    cloud.server.shutdown().await;
}

#[tokio::test]
async fn token_sources_and_url_errors() {
    let cloud = Cloud::start(|_| {}).await;
    let addr = cloud.addr();
    let err = |u: &str| match open_url(u) {
        Ok(_) => panic!("{u} should fail"),
        Err(e) => e,
    };

    // Missing and empty token files fail at open, naming the file.
    let missing = cloud.dir.path().join("no-such-token");
    let e = err(&format!(
        "basic+http://{addr}/?token-file={}",
        missing.display()
    ));
    assert_eq!(e.kind(), StoreErrorKind::InvalidUrl, "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    let empty = cloud.dir.path().join("empty-token");
    std::fs::write(&empty, "\n  \n").unwrap();
    let e = err(&format!(
        "basic+http://{addr}/?token-file={}",
        empty.display()
    ));
    assert_eq!(e.kind(), StoreErrorKind::InvalidUrl, "{e}");
    assert!(e.to_string().contains("empty"), "{e}");
    assert!(e.to_string().contains(&empty.display().to_string()), "{e}");

    // token-env names a variable; a missing one is a clear error.
    let e = err(&format!(
        "basic+http://{addr}/?token-env=STRATA_TEST_NO_SUCH_VAR"
    ));
    assert!(e.to_string().contains("STRATA_TEST_NO_SUCH_VAR"), "{e}");
    std::env::set_var("STRATA_TEST_HTTP_TOKEN", TOKEN);
    let (s, _) = open_url(&format!(
        "basic+http://{addr}/?token-env=STRATA_TEST_HTTP_TOKEN"
    ))
    .unwrap();
    s.put("via-env", Bytes::from_static(b"e")).await.unwrap();
    assert_eq!(s.get("via-env").await.unwrap(), Bytes::from_static(b"e"));
    assert!(!s.describe().contains(TOKEN));

    // Backend options belong to basic+http only; others are still checked.
    assert_eq!(
        err("memory://x?token-file=/t").kind(),
        StoreErrorKind::InvalidUrl
    );
    let e = err(&cloud.url("bogus=1"));
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = err(&format!("basic+ftp://{addr}/"));
    assert!(e.to_string().contains("basic+http://"), "{e}");
    let e = err("nope://x");
    assert!(e.to_string().contains("basic+https://"), "{e}");
    let e = err(&format!(
        "basic+http://user:{TOKEN}@{addr}/?token-file={}",
        cloud.token_file.display()
    ));
    assert!(!e.to_string().contains(TOKEN), "{e}");
    let bad_profile = cloud.dir.path().join("bad.toml");
    std::fs::write(&bad_profile, "[list]\nformat = \"xml\"\n").unwrap();
    let e = err(&cloud.url(&format!("profile={}", bad_profile.display())));
    assert!(e.to_string().contains("bad.toml"), "{e}");
    assert!(e.to_string().contains("xml"), "{e}");
    cloud.server.shutdown().await;
}

#[tokio::test]
async fn a_base_path_and_a_custom_profile() {
    // The service lives under /api/v1/ and the profile spells everything
    // out (the bundled server's API again, but unsorted listings, no paging
    // parameters, bare-name entries would also do).
    let cloud = Cloud::start(|_| {}).await;
    let profile = cloud.dir.path().join("p.toml");
    let mut f = std::fs::File::create(&profile).unwrap();
    writeln!(
        f,
        r#"
[upload]
url = "{{base}}../../upload_file"
[download]
url = "{{base}}../../download_file?name={{name}}"
[list]
url = "{{base}}../../list_files?prefix={{prefix}}"
sorted = false
page_size = 7
[delete]
url = "{{base}}../../delete_file?name={{name}}"
"#
    )
    .unwrap();
    drop(f);
    let url = format!(
        "basic+http://{}/api/v1?token-file={}&profile={}",
        cloud.addr(),
        cloud.token_file.display(),
        profile.display()
    );
    let (s, _) = open_url(&url).unwrap();
    for i in 0..20u8 {
        s.put(&format!("p/{i:02}"), bytes_of(i.into(), i))
            .await
            .unwrap();
    }
    let before = cloud.requests();
    let l = s.list("p/").await.unwrap();
    assert_eq!(l.len(), 20);
    assert_eq!(cloud.requests() - before, 3, "pages of 7");
    assert_eq!(keys(&l)[19], "p/19");
    assert_eq!(l[5].size, 5);
    assert_eq!(s.stat("p/07").await.unwrap().unwrap().size, 7);
    s.delete("p/07").await.unwrap();
    assert_eq!(s.stat("p/07").await.unwrap(), None);
    cloud.server.shutdown().await;
}

// ---------------------------------------------------------------------------
// A scripted server for what the real one does not do
// ---------------------------------------------------------------------------

/// Serves one scripted reply per connection: `reply(method, target)` gives
/// the raw response bytes; the connection closes after it. Runs until the
/// test ends.
async fn scripted(reply: impl Fn(&str, &str) -> Vec<u8> + Send + Sync + 'static) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut first = text.lines().next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_owned();
                let target = first.next().unwrap_or("").to_owned();
                let _ = sock.write_all(&reply(&method, &target)).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\nconnection: close\r\n{headers}\r\n").into_bytes();
    r.extend_from_slice(body);
    r
}

#[tokio::test]
async fn truncated_replies_are_transient() {
    let addr = scripted(|_, _| {
        // Promises 100 bytes, sends 40, hangs up.
        response("200 OK", "content-length: 100\r\n", &[7u8; 40])
    })
    .await;
    let s = HttpBasicStore::new(
        &format!("http://{addr}/"),
        Some(TOKEN.into()),
        HttpProfile::default(),
    )
    .unwrap();
    let e = s.get("k").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("40 of 100"), "{e}");
}

#[tokio::test]
async fn server_errors_map_by_status() {
    let addr = scripted(|_, target| {
        let (status, body): (&str, &[u8]) = if target.contains("e503") {
            ("503 Service Unavailable", b"busy")
        } else if target.contains("e400") {
            ("400 Bad Request", br#"{"error":"invalid name: nope"}"#)
        } else if target.contains("e403") {
            ("403 Forbidden", b"")
        } else {
            ("418 I'm a teapot", b"short and stout")
        };
        response(status, &format!("content-length: {}\r\n", body.len()), body)
    })
    .await;
    let s = HttpBasicStore::new(
        &format!("http://{addr}/"),
        Some(TOKEN.into()),
        HttpProfile::default(),
    )
    .unwrap();
    let e = s.get("e503").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Transient, "{e}");
    assert!(
        e.to_string().contains("503") && e.to_string().contains("busy"),
        "{e}"
    );
    let e = s.get("e400").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Other, "{e}");
    assert!(e.to_string().contains("invalid name: nope"), "{e}");
    let e = s.get("e403").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::PermissionDenied, "{e}");
    let e = s.get("other").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Other, "{e}");
    assert!(e.to_string().contains("418"), "{e}");
}

#[tokio::test]
async fn lines_listing_without_sizes_and_token_in_the_url() {
    // A primitive service: token in the query, names one per line, sizes
    // only through HEAD of the download page.
    let addr = scripted(|method, target| {
        if !target.contains("token=tok%26en") {
            return response("401 Unauthorized", "content-length: 0\r\n", b"");
        }
        if target.starts_with("/list_files.aspx") {
            let body = b"docs/b\ndocs/a\t3\nother/x\n";
            response(
                "200 OK",
                &format!("content-length: {}\r\n", body.len()),
                body,
            )
        } else if target.starts_with("/download_file.aspx") && target.contains("file=docs/b") {
            let hdr = "content-length: 11\r\n";
            let body: &[u8] = if method == "HEAD" {
                b""
            } else {
                b"hello world"
            };
            response("200 OK", hdr, body)
        } else {
            response("404 Not Found", "content-length: 0\r\n", b"")
        }
    })
    .await;
    let profile = HttpProfile::from_toml(
        r#"
[auth]
header = ""
[upload]
url = "{base}upload_file.aspx?token={token}&file={name}"
name_field = ""
[download]
url = "{base}download_file.aspx?token={token}&file={name}"
range = false
[list]
url = "{base}list_files.aspx?token={token}&folder={prefix}"
format = "lines"
limit_param = ""
sorted = false
[delete]
url = ""
"#,
    )
    .unwrap();
    let s =
        HttpBasicStore::new(&format!("http://{addr}/"), Some("tok&en".into()), profile).unwrap();
    assert!(!s.capabilities().range_reads);
    let l = s.list("docs/").await.unwrap();
    assert_eq!(keys(&l), ["docs/a", "docs/b"]);
    assert_eq!((l[0].size, l[1].size), (3, 11));
    assert_eq!(s.stat("docs/b").await.unwrap().unwrap().size, 11);
    assert_eq!(s.stat("docs/zz").await.unwrap(), None);
    assert_eq!(
        s.get_range("docs/b", 6..100).await.unwrap(),
        Bytes::from_static(b"world")
    );
    let e = s.delete("docs/b").await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Unsupported, "{e}");
}

#[tokio::test]
async fn a_reply_declaring_a_huge_length_is_refused_before_allocating() {
    let addr = scripted(|_, _| {
        response(
            "200 OK",
            "content-length: 1099511627776\r\n",
            b"just a little",
        )
    })
    .await;
    let s = HttpBasicStore::new(
        &format!("http://{addr}/"),
        Some(TOKEN.into()),
        HttpProfile::default(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let e = s.get("meta/log.0000000000000001").await.unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let msg = e.to_string();
    assert!(msg.contains(&format!("basic+http://{addr}/")), "{msg}");
    assert!(msg.contains("meta/log.0000000000000001"), "{msg}");
    assert!(msg.contains("1099511627776"), "{msg}");
    assert!(!e.is_transient(), "{e}");
    // A listing too.
    let e = s.list("").await.unwrap_err();
    assert!(e.to_string().contains("1099511627776"), "{e}");
}
