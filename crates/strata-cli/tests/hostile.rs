//! Hostile store input through the `strata` command: every object of a real
//! vault (file:// store) in turn gets a flipped bit, a truncation, random
//! bytes, 0xff length fields, or is swapped with another object; then `ls`,
//! `get`, `info` and `check --read-data` run with a 4 GiB address-space
//! limit (`ulimit -v`). None may panic, abort, hit the limit or run past
//! 30 s; a failure is one `strata: error:` message.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Run `strata ARGS` on store `url` under a 4 GiB address-space limit;
/// return (exit code, stderr). Fails the test on a panic, a signal or a
/// run past 30 s.
fn run_limited(dir: &Path, url: &str, args: &[&str], what: &str) -> (i32, String) {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -v 4194304 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        .env("STRATA_PASSWORD", "pw")
        .env("STRATA_STATE_DIR", dir.join("state"))
        .env("STRATA_RUNTIME_DIR", dir.join("run"))
        .env("STRATA_STORE", url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = c.spawn().unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: `strata {}` ran past 30 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut err);
    }
    let code = match status.code() {
        Some(c) => c,
        None => panic!(
            "{what}: `strata {}` died of a signal (abort or out of memory): {err}",
            args.join(" ")
        ),
    };
    assert_ne!(
        code,
        101,
        "{what}: `strata {}` panicked: {err}",
        args.join(" ")
    );
    assert!(
        !err.contains("panicked")
            && !err.contains("memory allocation")
            && !err.contains("Cannot allocate memory"),
        "{what}: {err}"
    );
    if code != 0 {
        assert!(
            err.contains("strata: error:") || err.contains("damaged") || err.contains("strata:"),
            "{what}: a failure without a message: {err}"
        );
    }
    (code, err)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

fn objects(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn mutated_objects_never_crash_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base");
    let url = format!("file://{}", base.display());
    run_ok({
        let mut c = env_cmd(d, &url);
        c.args(["init", "--chunk-size", "64KiB", &url]);
        c
    });
    let src = d.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    fill_random(&src.join("big"), 300_000, 1);
    fill_random(&src.join("sub/small"), 100, 2);
    std::fs::write(src.join("sub/empty"), b"").unwrap();
    run_ok({
        let mut c = env_cmd(d, &url);
        c.arg("put").arg(&src).arg("/src");
        c
    });
    run_ok({
        let mut c = env_cmd(d, &url);
        c.args(["mkdir", "/later"]);
        c
    });
    // Control: the untouched vault works under the same limits.
    for args in [vec!["ls", "-l", "-R", "/"], vec!["check", "--read-data"]] {
        let (code, err) = run_limited(d, &url, &args, "untouched vault");
        assert_eq!(code, 0, "{err}");
    }
    let objs = objects(&base);
    assert!(objs.len() >= 8, "{objs:?}");
    let mut case = 0u64;
    let mut failures_seen = 0;
    for (i, obj) in objs.iter().enumerate() {
        let rel = obj.strip_prefix(&base).unwrap().to_path_buf();
        for kind in 0..5 {
            case += 1;
            let work = d.join(format!("case{case}"));
            let store = work.join("store");
            copy_tree(&base, &store);
            let target = store.join(&rel);
            let mut bytes = std::fs::read(&target).unwrap();
            let what = match kind {
                0 => {
                    if !bytes.is_empty() {
                        let p = (case as usize * 7919) % bytes.len();
                        bytes[p] ^= 0x10;
                    }
                    format!("flipped a bit of {}", rel.display())
                }
                1 => {
                    bytes.truncate(bytes.len() / 2);
                    format!("truncated {}", rel.display())
                }
                2 => {
                    let mut x = case | 1;
                    bytes = (0..bytes.len().max(1))
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect();
                    format!("random bytes in {}", rel.display())
                }
                3 => {
                    for b in bytes.iter_mut().skip(8).take(8) {
                        *b = 0xff;
                    }
                    format!("0xff length field in {}", rel.display())
                }
                _ => {
                    let other = &objs[(i + 1) % objs.len()];
                    bytes = std::fs::read(other).unwrap();
                    let other_rel = other.strip_prefix(&base).unwrap().to_path_buf();
                    std::fs::write(store.join(&other_rel), std::fs::read(&target).unwrap())
                        .unwrap();
                    format!("swapped {} and {}", rel.display(), other_rel.display())
                }
            };
            std::fs::write(&target, &bytes).unwrap();
            let u = format!("file://{}", store.display());
            let out = work.join("out");
            let mut failed = false;
            for args in [
                vec!["ls", "-l", "-R", "/"],
                vec!["get", "/src", out.to_str().unwrap()],
                vec!["info"],
                vec!["check", "--read-data"],
            ] {
                let (code, _) = run_limited(&work, &u, &args, &what);
                failed |= code != 0;
            }
            if failed {
                failures_seen += 1;
            }
            std::fs::remove_dir_all(&work).unwrap();
        }
    }
    // Most mutations must be noticed (the rest may hit padding). The
    // control above shows the limits themselves break nothing.
    assert!(
        failures_seen * 2 > case,
        "only {failures_seen} of {case} mutations were noticed"
    );
}
