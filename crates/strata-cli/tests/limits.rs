//! Limits discovered, not guessed: `strata cloud-server --max-object-size`
//! (a real server on 127.0.0.1) prints a store URL that works as is, a vault
//! made through it (or through a URL without the limit) keeps every object
//! under the limit, and a store that refuses an object without saying its
//! limit up front gets an error naming the option that fixes it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Every object file under `root` (the server's folder), with its size.
fn objects(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_name() == ".tmp" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push((p, e.metadata().unwrap().len()));
            }
        }
    }
    out
}

/// init, put and get of a 10 MiB file through `url`; every stored object
/// is at most 1 MiB.
fn ten_mib_round_trip(dir: &Path, root: &Path, url: &str) {
    let src = dir.join("big");
    fill_random(&src, 10 << 20, 7);
    let said = run_ok({
        let mut c = env_cmd(dir, url);
        c.args(["init", url]);
        c
    });
    assert!(said.contains("chunk size"), "{said}");
    run_ok({
        let mut c = env_cmd(dir, url);
        c.arg("put").arg(&src).arg("/big");
        c
    });
    let back = dir.join("back");
    run_ok({
        let mut c = env_cmd(dir, url);
        c.args(["get", "/big"]).arg(&back);
        c
    });
    assert!(
        std::fs::read(&src).unwrap() == std::fs::read(&back).unwrap(),
        "the file read back differs"
    );
    let objs = objects(root);
    assert!(objs.len() >= 10, "expected ≥ 10 objects, got {objs:?}");
    for (p, len) in &objs {
        assert!(
            *len <= 1 << 20,
            "{} is {len} bytes, over 1 MiB",
            p.display()
        );
    }
}

#[test]
fn the_printed_url_of_a_limited_server_works_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cloud");
    let s = Served::start(
        &root,
        &dir.path().join("token"),
        &["--max-object-size", "1MiB"],
    );
    assert!(
        s.url.contains("max-object-size=1048576"),
        "the URL does not carry the limit: {}",
        s.url
    );
    assert!(s.url.starts_with("basic+http://127.0.0.1:"), "{}", s.url);
    // Used from another directory: the token path in it is absolute.
    ten_mib_round_trip(dir.path(), &root, &s.url);
    drop(s);
}

#[test]
fn a_url_without_the_limit_learns_it_from_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cloud");
    let s = Served::start(
        &root,
        &dir.path().join("token"),
        &["--max-object-size", "1MiB", "--no-range"],
    );
    assert!(s.url.contains("no-range"), "{}", s.url);
    let bare = s.url.split('&').next().unwrap().to_owned();
    assert!(!bare.contains("max-object-size"), "{bare}");
    ten_mib_round_trip(dir.path(), &root, &bare);
    drop(s);
}

#[test]
fn a_store_that_refuses_big_objects_gets_a_permanent_error_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cloud");
    let s = Served::start(
        &root,
        &dir.path().join("token"),
        &["--max-object-size", "1MiB"],
    );
    // A profile that does not ask the server about itself: the limit is
    // only learnt from the 413.
    let profile = dir.path().join("profile.toml");
    std::fs::write(&profile, "[info]\nurl = \"\"\n").unwrap();
    let bare = s.url.split('&').next().unwrap();
    let url = format!("{bare}&profile={}", profile.display());
    run_ok({
        let mut c = env_cmd(dir.path(), &url);
        c.args(["init", "--chunk-size", "4MiB", &url]);
        c
    });
    let src = dir.path().join("big");
    fill_random(&src, 10 << 20, 9);
    let started = Instant::now();
    let out = env_cmd(dir.path(), &url)
        .arg("put")
        .arg(&src)
        .arg("/big")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "put over the limit succeeded: {err}");
    assert!(err.contains("413"), "{err}");
    assert!(
        err.contains("max-object-size=1048576"),
        "the error does not name the option that fixes it: {err}"
    );
    // Permanent: not retried with backoff for long.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // The suggested fix works.
    let fixed = format!("{url}&max-object-size=1048576");
    run_ok({
        let mut c = env_cmd(dir.path(), &fixed);
        c.arg("put").arg(&src).arg("/big");
        c
    });
    for (p, len) in objects(&root) {
        assert!(len <= 1 << 20, "{} is {len} bytes", p.display());
    }
    drop(s);
}
