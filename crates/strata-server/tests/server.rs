//! The server over real HTTP on 127.0.0.1, with reqwest as the client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use strata_server::{spawn, ServerConfig, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-token";

struct Server {
    _dir: tempfile::TempDir,
    /// The parent of `root`: nothing may ever appear here but `root`.
    outer: PathBuf,
    root: PathBuf,
    handle: ServerHandle,
    base: String,
    client: Client,
}

async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let outer = dir.path().to_path_buf();
    let root = outer.join("root");
    let mut cfg = ServerConfig::new(
        root.clone(),
        "127.0.0.1:0".parse().unwrap(),
        TOKEN.to_string(),
    );
    tweak(&mut cfg);
    let handle = spawn(cfg).await.unwrap();
    let base = format!("http://{}", handle.addr);
    Server {
        _dir: dir,
        outer,
        root,
        handle,
        base,
        client: Client::new(),
    }
}

fn form(name: &str, data: Vec<u8>) -> Form {
    Form::new()
        .text("name", name.to_string())
        .part("file", Part::bytes(data).file_name("whatever.bin"))
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn upload(&self, name: &str, data: &[u8]) -> reqwest::Response {
        self.client
            .post(self.url("/upload_file"))
            .bearer_auth(TOKEN)
            .multipart(form(name, data.to_vec()))
            .send()
            .await
            .unwrap()
    }

    async fn download(&self, name: &str) -> reqwest::Response {
        self.client
            .get(self.url("/download_file"))
            .bearer_auth(TOKEN)
            .query(&[("name", name)])
            .send()
            .await
            .unwrap()
    }

    async fn download_range(&self, name: &str, range: &str) -> reqwest::Response {
        self.client
            .get(self.url("/download_file"))
            .bearer_auth(TOKEN)
            .query(&[("name", name)])
            .header("Range", range)
            .send()
            .await
            .unwrap()
    }

    async fn delete(&self, name: &str) -> reqwest::Response {
        self.client
            .post(self.url("/delete_file"))
            .bearer_auth(TOKEN)
            .query(&[("name", name)])
            .send()
            .await
            .unwrap()
    }

    async fn list_page(&self, query: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .get(self.url("/list_files"))
            .bearer_auth(TOKEN)
            .query(query)
            .send()
            .await
            .unwrap()
    }

    /// Every name under `prefix`, following the page tokens.
    async fn list_all(&self, prefix: &str, limit: Option<usize>) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let limit = limit.map(|l| l.to_string());
        loop {
            let mut q = vec![("prefix", prefix)];
            if let Some(t) = &token {
                q.push(("page_token", t));
            }
            if let Some(l) = &limit {
                q.push(("limit", l));
            }
            let resp = self.list_page(&q).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let v: Value = resp.json().await.unwrap();
            let files = v["files"].as_array().unwrap();
            if let Some(l) = &limit {
                assert!(files.len() <= l.parse::<usize>().unwrap().min(10_000));
            }
            for f in files {
                out.push((
                    f["name"].as_str().unwrap().to_string(),
                    f["size"].as_u64().unwrap(),
                ));
            }
            match &v["next_page_token"] {
                Value::Null => break,
                Value::String(t) => token = Some(t.clone()),
                other => panic!("bad next_page_token {other:?}"),
            }
        }
        out
    }

    /// Files in `<root>/.tmp`.
    fn temp_files(&self) -> usize {
        std::fs::read_dir(self.root.join(".tmp")).unwrap().count()
    }

    /// Waits (up to 5 s) until no temp file is left.
    async fn wait_no_temp(&self) {
        let t0 = Instant::now();
        while self.temp_files() != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "temp files left behind"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything stored under the root (relative paths of files), but `.tmp`.
    fn stored(&self) -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                if rel.is_empty() && name == ".tmp" {
                    continue;
                }
                let r = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path(), &r, out);
                } else {
                    out.push(r);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, "", &mut out);
        out.sort();
        out
    }

    fn outer_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.outer)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn error_body(resp: reqwest::Response) -> String {
    let v: Value = resp.json().await.expect("JSON error body");
    v["error"].as_str().expect("error string").to_string()
}

#[tokio::test]
async fn round_trip_nested_and_empty() {
    let s = start(|_| {}).await;
    let big = pseudo_random(3 << 20, 1);
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("a", b"hello".to_vec()),
        ("dir/sub/b.bin", big.clone()),
        ("dir/c", b"c".to_vec()),
        ("empty", Vec::new()),
        ("x-y_z.1/...", b"dots".to_vec()),
    ];
    for (name, data) in &objects {
        let resp = s.upload(name, data).await;
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["name"], *name);
        assert_eq!(v["size"].as_u64().unwrap(), data.len() as u64);
    }
    for (name, data) in &objects {
        let resp = s.download(name).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-length"].to_str().unwrap(),
            data.len().to_string()
        );
        assert_eq!(resp.headers()["accept-ranges"], "bytes");
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            data.as_slice(),
            "{name}"
        );
    }

    // Listing: sorted, recursive, sizes and mtimes.
    let resp = s.list_page(&[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["next_page_token"], Value::Null);
    let files = v["files"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["a", "dir/c", "dir/sub/b.bin", "empty", "x-y_z.1/..."]
    );
    assert_eq!(files[2]["size"].as_u64().unwrap(), big.len() as u64);
    assert_eq!(files[3]["size"].as_u64().unwrap(), 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for f in files {
        let m = f["mtime"].as_u64().unwrap();
        assert!(m + 3600 > now && m <= now + 5, "mtime {m}");
    }

    // Overwrite replaces the whole object.
    assert_eq!(s.upload("a", b"bye").await.status(), StatusCode::OK);
    assert_eq!(
        s.download("a").await.bytes().await.unwrap().as_ref(),
        b"bye"
    );

    // Deletes; emptied folders go away.
    let resp = s.delete("dir/sub/b.bin").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["deleted"], true);
    assert!(!s.root.join("dir/sub").exists());
    assert!(s.root.join("dir").exists());
    let resp = s.delete("dir/sub/b.bin").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(!error_body(resp).await.is_empty());
    let resp = s.download("dir/sub/b.bin").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(!error_body(resp).await.is_empty());
    assert_eq!(s.delete("dir").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.download("dir").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.delete("empty").await.status(), StatusCode::OK);
    assert_eq!(s.stored(), ["a", "dir/c", "x-y_z.1/..."]);

    // A name that collides with a folder, or runs through an object.
    assert_eq!(s.upload("dir", b"x").await.status(), StatusCode::CONFLICT);
    assert_eq!(s.upload("a/b", b"x").await.status(), StatusCode::CONFLICT);

    assert_eq!(s.temp_files(), 0);
    let st = s.handle.stats();
    assert!(st.bytes_in > big.len() as u64, "{st:?}");
    assert!(st.bytes_out >= big.len() as u64, "{st:?}");
    assert_eq!(st.failures_injected, 0);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn listing_pagination_and_prefixes() {
    let s = start(|_| {}).await;
    // 2500 objects written straight into the folder (the listing is what is
    // under test), spread over folders, plus names whose byte order differs
    // from a folder-by-folder walk.
    let mut all: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..2500u64 {
        let name = match i % 5 {
            0 => format!("obj/{i:05}"),
            1 => format!("obj/sub{}/{i:05}.bin", i % 7),
            2 => format!("obj10/x{i}"),
            3 => format!("objx{i}"),
            _ => format!("z/{}/{}/{i}", i % 3, i % 11),
        };
        let size = i % 13;
        let path = s.root.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![7u8; size as usize]).unwrap();
        all.insert(name, size);
    }
    for name in ["a-b", "a.b", "a/b", "a0", "a/b-c", "a/b.c", "a/b/c", "a/b0"] {
        let path = s.root.join(name);
        if name == "a/b" {
            // "a/b" is a folder here (holding "a/b/c"); skip the file.
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        all.insert(name.to_string(), 0);
    }
    // Not objects: the temp folder, odd names, a symlink.
    std::fs::write(s.root.join(".tmp/leftover.part"), b"x").unwrap();
    std::fs::write(s.root.join("has space"), b"x").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", s.root.join("link")).unwrap();

    let expect = |prefix: &str| -> Vec<(String, u64)> {
        all.iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, s)| (n.clone(), *s))
            .collect()
    };
    let everything = s.list_all("", None).await;
    assert_eq!(everything.len(), all.len());
    assert_eq!(everything, expect(""));
    for (prefix, limit) in [
        ("", Some(7)),
        ("", Some(20_000)),
        ("obj", Some(333)),
        ("obj/", None),
        ("obj/0", Some(100)),
        ("obj/sub3/", Some(50)),
        ("obj/su", Some(1000)),
        ("obj1", Some(99)),
        ("ob", None),
        ("z/1/1", Some(10)),
        ("a", Some(1)),
        ("a/b", Some(2)),
        ("nothing", None),
        ("obj/00000", Some(1)),
    ] {
        let got = s.list_all(prefix, limit).await;
        assert_eq!(got, expect(prefix), "prefix {prefix:?} limit {limit:?}");
    }
    // Default page size is 1000 with a token to go on.
    let v: Value = s.list_page(&[]).await.json().await.unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 1000);
    assert!(v["next_page_token"].is_string());
    // Bad limits.
    for bad in ["0", "-1", "x", "1.5"] {
        let resp = s.list_page(&[("limit", bad)]).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(!error_body(resp).await.is_empty());
    }
    s.handle.shutdown().await;
}

#[tokio::test]
async fn authentication() {
    let s = start(|_| {}).await;
    assert_eq!(s.upload("obj", b"data").await.status(), StatusCode::OK);
    let c = &s.client;
    let make = |i: usize| match i {
        0 => c.get(s.url("/list_files")),
        1 => c.get(s.url("/download_file?name=obj")),
        2 => c.post(s.url("/delete_file?name=obj")),
        3 => c
            .post(s.url("/upload_file"))
            .multipart(form("evil", b"x".to_vec())),
        _ => c.get(s.url("/nowhere")),
    };
    for i in 0..5 {
        let variants = [
            make(i),
            make(i).bearer_auth("wrong"),
            make(i).bearer_auth(""),
            make(i).bearer_auth(format!("{TOKEN}x")),
            make(i).header("Authorization", format!("Basic {TOKEN}")),
            make(i).header("Authorization", TOKEN),
        ];
        for (j, req) in variants.into_iter().enumerate() {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{i}/{j}");
            assert!(resp.headers().contains_key("www-authenticate"));
            assert!(!error_body(resp).await.is_empty());
        }
    }
    // Nothing happened.
    assert_eq!(s.stored(), ["obj"]);
    assert_eq!(
        s.download("obj").await.bytes().await.unwrap().as_ref(),
        b"data"
    );
    s.handle.shutdown().await;
}

#[tokio::test]
async fn invalid_names_are_rejected() {
    let s = start(|_| {}).await;
    let too_long = "n".repeat(1025);
    let bad = [
        "../x",
        "../../escape",
        "/abs",
        "/tmp/abs",
        "a//b",
        "a/",
        "a/./b",
        "a/../../b",
        ".",
        "..",
        ".tmp/x",
        ".tmp",
        ".tmpfoo",
        "has space",
        "a b/c",
        "semi;colon",
        "back\\slash",
        "ünï",
        "",
        too_long.as_str(),
    ];
    for name in bad {
        let resp = s.upload(name, b"payload").await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "upload {name:?}");
        let msg = error_body(resp).await;
        assert!(msg.starts_with("invalid name"), "{msg}");
        let resp = s.download(name).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "download {name:?}");
        let resp = s.delete(name).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "delete {name:?}");
    }
    // Missing parameters and fields.
    let resp = s
        .client
        .get(s.url("/download_file"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = s
        .client
        .post(s.url("/upload_file"))
        .bearer_auth(TOKEN)
        .multipart(Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("f")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = s
        .client
        .post(s.url("/upload_file"))
        .bearer_auth(TOKEN)
        .body("not multipart")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // A multipart body that never gets to a boundary: refused long before
    // its end (the parser's buffer stays bounded).
    let junk: Vec<Result<Vec<u8>, std::io::Error>> = (0..64)
        .map(|i| Ok(pseudo_random(256 << 10, 100 + i)))
        .collect();
    let resp = s
        .client
        .post(s.url("/upload_file"))
        .bearer_auth(TOKEN)
        .header("Content-Type", "multipart/form-data; boundary=never")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(junk)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(s.handle.stats().bytes_in < 16 << 20);

    assert!(s.stored().is_empty(), "{:?}", s.stored());
    assert_eq!(s.temp_files(), 0);
    assert_eq!(s.outer_entries(), ["root"]);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn symlinks_never_lead_outside() {
    let s = start(|_| {}).await;
    let outside = s.outer.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, s.root.join("dirlink")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), s.root.join("filelink")).unwrap();

    assert_eq!(
        s.download("dirlink/secret").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.download("filelink").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        s.delete("dirlink/secret").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.upload("dirlink/new", b"x").await.status(),
        StatusCode::CONFLICT
    );
    assert!(s.list_all("", None).await.is_empty());
    let mut inside: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    inside.sort();
    assert_eq!(inside, ["secret"]);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    s.handle.shutdown().await;
}

/// Writes the start of a multipart upload by hand, then hangs up.
#[tokio::test]
async fn cut_upload_leaves_nothing() {
    let s = start(|_| {}).await;
    let boundary = "XyZzY-boundary";
    let head_part = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\ncut/object\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let total_len = head_part.len() + (4 << 20) + boundary.len() + 8;
    let mut sock = tokio::net::TcpStream::connect(s.handle.addr).await.unwrap();
    let req_head = format!(
        "POST /upload_file HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {total_len}\r\n\r\n"
    );
    sock.write_all(req_head.as_bytes()).await.unwrap();
    sock.write_all(head_part.as_bytes()).await.unwrap();
    sock.write_all(&pseudo_random(1 << 20, 3)).await.unwrap();
    sock.flush().await.unwrap();
    // The server has started a temp file...
    let t0 = Instant::now();
    while s.temp_files() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no temp file seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and the client disappears.
    drop(sock);
    s.wait_no_temp().await;
    assert!(s.stored().is_empty(), "{:?}", s.stored());

    // Same with a client whose body stream fails midway (chunked).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(pseudo_random(256 << 10, 4)),
        Ok(pseudo_random(256 << 10, 5)),
        Err(std::io::Error::other("client gave up")),
    ];
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let form = Form::new()
        .text("name", "cut2")
        .part("file", Part::stream(body).file_name("f"));
    let res = s
        .client
        .post(s.url("/upload_file"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await;
    assert!(res.is_err() || !res.unwrap().status().is_success());
    s.wait_no_temp().await;
    assert!(s.stored().is_empty(), "{:?}", s.stored());

    // A body that ends early (Content-Length says more) is cut too.
    let mut sock = tokio::net::TcpStream::connect(s.handle.addr).await.unwrap();
    sock.write_all(req_head.as_bytes()).await.unwrap();
    sock.write_all(head_part.as_bytes()).await.unwrap();
    sock.write_all(b"short").await.unwrap();
    sock.shutdown().await.unwrap();
    let mut reply = Vec::new();
    let _ = sock.read_to_end(&mut reply).await;
    s.wait_no_temp().await;
    assert!(s.stored().is_empty());

    // The server is fine afterwards.
    assert_eq!(s.upload("cut/object", b"ok").await.status(), StatusCode::OK);
    assert_eq!(s.stored(), ["cut/object"]);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn object_size_limit() {
    let limit = 1u64 << 20;
    let s = start(|c| c.max_object_size = Some(limit)).await;
    let exact = pseudo_random(limit as usize, 6);
    assert_eq!(s.upload("exact", &exact).await.status(), StatusCode::OK);
    assert_eq!(
        s.download("exact").await.bytes().await.unwrap().len(),
        exact.len()
    );

    // One byte over, with a Content-Length (multipart from bytes).
    let resp = s
        .upload("over", &pseudo_random(limit as usize + 1, 7))
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_body(resp).await.contains("too large"));
    // Far over: rejected up front from Content-Length.
    let resp = s.upload("far-over", &pseudo_random(3 << 20, 8)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Over without a Content-Length (chunked): counted while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..12).map(|i| Ok(pseudo_random(128 << 10, i))).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let form = Form::new()
        .text("name", "streamed-over")
        .part("file", Part::stream(body).file_name("f"));
    let resp = s
        .client
        .post(s.url("/upload_file"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // A client that waits for 100 Continue gets the 413 instead.
    let mut sock = tokio::net::TcpStream::connect(s.handle.addr).await.unwrap();
    let head = format!(
        "POST /upload_file HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        10 * limit
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut reply = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]).to_string();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    drop(sock);

    s.wait_no_temp().await;
    assert_eq!(s.stored(), ["exact"]);
    // The old object survives a too-large overwrite.
    let resp = s
        .upload("exact", &pseudo_random(limit as usize + 10, 9))
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        s.download("exact").await.bytes().await.unwrap().as_ref(),
        exact.as_slice()
    );
    s.handle.shutdown().await;
}

#[tokio::test]
async fn range_reads() {
    let s = start(|_| {}).await;
    let data = pseudo_random(100_000, 10);
    assert_eq!(s.upload("r", &data).await.status(), StatusCode::OK);
    assert_eq!(s.upload("empty", b"").await.status(), StatusCode::OK);
    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=99000-", 99_000, 99_999),
        ("bytes=99990-200000", 99_990, 99_999),
        ("bytes=-500", 99_500, 99_999),
        ("bytes=-200000", 0, 99_999),
        ("bytes=5-5", 5, 5),
    ] {
        let resp = s.download_range("r", range).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            resp.headers()["content-range"].to_str().unwrap(),
            format!("bytes {start}-{end}/100000")
        );
        assert_eq!(
            resp.headers()["content-length"].to_str().unwrap(),
            (end - start + 1).to_string()
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.as_ref(), &data[start..=end], "{range}");
    }
    for (name, range) in [
        ("r", "bytes=100000-"),
        ("r", "bytes=200000-300000"),
        ("r", "bytes=-0"),
        ("empty", "bytes=0-"),
        ("empty", "bytes=-1"),
    ] {
        let resp = s.download_range(name, range).await;
        assert_eq!(
            resp.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{name} {range}"
        );
        let len = if name == "r" { 100_000 } else { 0 };
        assert_eq!(
            resp.headers()["content-range"].to_str().unwrap(),
            format!("bytes */{len}")
        );
    }
    // Unusable ranges are ignored: the whole object.
    for range in ["bytes=0-1,5-6", "bytes=9-3", "items=0-5", "garbage"] {
        let resp = s.download_range("r", range).await;
        assert_eq!(resp.status(), StatusCode::OK, "{range}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), data.as_slice());
    }
    assert_eq!(
        s.download_range("missing", "bytes=0-1").await.status(),
        StatusCode::NOT_FOUND
    );
    s.handle.shutdown().await;

    // Range reads off: Range is ignored.
    let s = start(|c| c.range = false).await;
    assert_eq!(s.upload("r", &data).await.status(), StatusCode::OK);
    for range in ["bytes=0-99", "bytes=-500", "bytes=100000-"] {
        let resp = s.download_range("r", range).await;
        assert_eq!(resp.status(), StatusCode::OK, "{range}");
        assert!(resp.headers().get("content-range").is_none());
        assert_ne!(resp.headers()["accept-ranges"], "bytes");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), data.as_slice());
    }
    s.handle.shutdown().await;
}

#[tokio::test]
async fn bandwidth_is_shaped() {
    let s = start(|c| c.bandwidth = Some(strata_server::parse_rate("8mbit").unwrap())).await;
    let data = pseudo_random(2_000_000, 11);
    // Store it behind the server's back: only the download is timed here.
    std::fs::write(s.root.join("two-mb"), &data).unwrap();
    let t0 = Instant::now();
    let body = s.download("two-mb").await.bytes().await.unwrap();
    let took = t0.elapsed();
    assert_eq!(body.as_ref(), data.as_slice());
    assert!(
        took >= Duration::from_millis(1800),
        "2 MB at 1 MB/s took {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "2 MB at 1 MB/s took {took:?}"
    );

    // Uploads are shaped too (1 MB at 1 MB/s).
    let t0 = Instant::now();
    assert_eq!(
        s.upload("one-mb", &data[..1_000_000]).await.status(),
        StatusCode::OK
    );
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(850), "1 MB up took {took:?}");

    // Two downloads at once share the rate.
    let t0 = Instant::now();
    let (a, b) = tokio::join!(
        async { s.download("one-mb").await.bytes().await.unwrap() },
        async { s.download("one-mb").await.bytes().await.unwrap() },
    );
    let took = t0.elapsed();
    assert_eq!(a.len() + b.len(), 2_000_000);
    assert!(took >= Duration::from_millis(1800), "2×1 MB took {took:?}");
    s.handle.shutdown().await;
}

#[tokio::test]
async fn latency_is_added() {
    let s = start(|c| c.latency = Duration::from_millis(300)).await;
    for _ in 0..3 {
        let t0 = Instant::now();
        let resp = s.list_page(&[]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(t0.elapsed() >= Duration::from_millis(300));
    }
    // Unauthenticated requests wait too (the delay is in the "network").
    let t0 = Instant::now();
    let resp = s.client.get(s.url("/list_files")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    s.handle.shutdown().await;
}

/// Whether a request failed, the way a client sees it.
async fn failed(res: reqwest::Result<reqwest::Response>, expect: Option<&[u8]>) -> bool {
    let resp = match res {
        Ok(r) => r,
        Err(_) => return true,
    };
    if !resp.status().is_success() {
        return true;
    }
    match resp.bytes().await {
        Err(_) => true,
        Ok(b) => expect.is_some_and(|e| b.as_ref() != e),
    }
}

#[tokio::test]
async fn every_request_fails_at_rate_one() {
    let s = start(|c| {
        c.fail_rate = 1.0;
        c.seed = 42;
    })
    .await;
    let data = pseudo_random(300_000, 12);
    std::fs::write(s.root.join("obj"), &data).unwrap();
    // A fresh connection per request: no pooled-connection retries.
    let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let (mut statuses, mut dropped, mut truncated) = (0, 0, 0);
    for i in 0..40 {
        let (res, expect) = match i % 4 {
            0 => (
                client
                    .get(s.url("/download_file?name=obj"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await,
                Some(data.as_slice()),
            ),
            1 => (
                client
                    .get(s.url("/list_files"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await,
                None,
            ),
            2 => (
                client
                    .post(s.url("/upload_file"))
                    .bearer_auth(TOKEN)
                    .multipart(form(&format!("new{i}"), vec![1; 1000]))
                    .send()
                    .await,
                None,
            ),
            _ => (
                client
                    .post(s.url("/delete_file?name=obj"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await,
                None,
            ),
        };
        match &res {
            Ok(r) if r.status() == StatusCode::INTERNAL_SERVER_ERROR => statuses += 1,
            Ok(r) => {
                // Only downloads may start a reply: 200 with a cut body.
                assert_eq!(r.status(), StatusCode::OK);
                assert_eq!(i % 4, 0, "request {i}");
                assert_eq!(
                    r.headers()["content-length"].to_str().unwrap(),
                    data.len().to_string()
                );
                truncated += 1;
            }
            Err(_) => dropped += 1,
        }
        assert!(failed(res, expect).await, "request {i} succeeded");
    }
    assert!(
        statuses > 0 && dropped > 0 && truncated > 0,
        "500s: {statuses}, dropped: {dropped}, truncated: {truncated}"
    );
    let st = s.handle.stats();
    assert_eq!(st.failures_injected, 40, "{st:?}");
    assert_eq!(st.requests, 40, "{st:?}");
    // Injected failures have no effect.
    assert_eq!(s.stored(), ["obj"]);
    s.wait_no_temp().await;
    s.handle.shutdown().await;
}

#[tokio::test]
async fn some_requests_fail_at_rate_one_tenth() {
    let run = || async {
        let s = start(|c| {
            c.fail_rate = 0.1;
            c.seed = 7;
        })
        .await;
        let data = pseudo_random(50_000, 13);
        std::fs::write(s.root.join("obj"), &data).unwrap();
        let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let mut failures = 0u64;
        for i in 0..200 {
            let res = if i % 2 == 0 {
                client
                    .get(s.url("/download_file?name=obj"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
            } else {
                client
                    .get(s.url("/list_files"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
            };
            let expect = (i % 2 == 0).then_some(data.as_slice());
            if failed(res, expect).await {
                failures += 1;
            }
        }
        let st = s.handle.stats();
        s.handle.shutdown().await;
        assert_eq!(st.requests, 200);
        assert_eq!(st.failures_injected, failures, "{st:?}");
        failures
    };
    let first = run().await;
    assert!((10..=40).contains(&first), "{first} failures out of 200");
    // Same seed, same requests: same failures.
    assert_eq!(run().await, first);
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let s = start(|c| c.bandwidth = Some(1_000_000)).await;
    let data = pseudo_random(600_000, 14);
    std::fs::write(s.root.join("obj"), &data).unwrap();
    let url = s.url("/download_file?name=obj");
    let client = s.client.clone();
    let download = tokio::spawn(async move {
        let resp = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
        resp.bytes().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let addr = s.handle.addr;
    s.handle.shutdown().await;
    assert_eq!(download.await.unwrap().as_ref(), data.as_slice());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn config_is_checked_and_stale_temp_files_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let addr = "127.0.0.1:0".parse().unwrap();
    assert!(spawn(ServerConfig::new(root.clone(), addr, String::new()))
        .await
        .is_err());
    let mut cfg = ServerConfig::new(root.clone(), addr, TOKEN.into());
    cfg.fail_rate = 1.5;
    assert!(spawn(cfg).await.is_err());
    std::fs::create_dir_all(root.join(".tmp")).unwrap();
    std::fs::write(root.join(".tmp/stale.part"), b"x").unwrap();
    let h = spawn(ServerConfig::new(root.clone(), addr, TOKEN.into()))
        .await
        .unwrap();
    assert_eq!(std::fs::read_dir(root.join(".tmp")).unwrap().count(), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn server_info_advertises_the_limit_and_range_and_413s_carry_the_limit() {
    let s = start(|c| {
        c.max_object_size = Some(1 << 20);
        c.range = false;
    })
    .await;
    let get_info = |auth: bool| {
        let rb = s.client.get(s.url("/server_info"));
        if auth {
            rb.bearer_auth(TOKEN)
        } else {
            rb
        }
    };
    assert_eq!(
        get_info(false).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let v: Value = get_info(true).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["max_object_size"], 1 << 20);
    assert_eq!(v["range"], false);
    let resp = s.upload("over", &pseudo_random((1 << 20) + 1, 3)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["max_object_size"], 1 << 20, "{v}");
    s.handle.shutdown().await;

    let s = start(|_| {}).await;
    let v: Value = s
        .client
        .get(s.url("/server_info"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["max_object_size"].is_null(), "{v}");
    assert_eq!(v["range"], true);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn a_stalled_upload_is_timed_out_and_leaves_nothing() {
    let s = start(|c| c.idle_timeout = Duration::from_secs(2)).await;
    // An object that must survive the stalled overwrite.
    let old = pseudo_random(1000, 1);
    assert_eq!(s.upload("k", &old).await.status(), StatusCode::OK);
    let mut sock = tokio::net::TcpStream::connect(s.handle.addr).await.unwrap();
    let body_head = "--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nk\r\n\
                     --b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n";
    let head = format!(
        "POST /upload_file HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n{body_head}",
        body_head.len() + (1 << 20) + 8
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&pseudo_random(100_000, 2)).await.unwrap();
    // Now stall. The server must close the connection within the idle
    // timeout (plus slack), without a reply that claims success.
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut reply = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept a stalled upload open for 10 s"),
        }
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    let reply = String::from_utf8_lossy(&reply);
    assert!(!reply.starts_with("HTTP/1.1 200"), "{reply}");
    s.wait_no_temp().await;
    assert_eq!(s.stored(), ["k"]);
    assert_eq!(
        s.download("k").await.bytes().await.unwrap().as_ref(),
        old.as_slice()
    );
    s.handle.shutdown().await;
}
