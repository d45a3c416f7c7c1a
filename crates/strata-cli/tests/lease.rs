//! The writer lease through the `strata` binary: CLI writers against a lease
//! held by another process (this test process, through the library), and
//! real FUSE mounts (runs as root; needs /dev/fuse and fusermount3) against
//! CLI writers and second mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use strata_core::{LeaseOptions, OpenOptions, Vault, VaultError};

mod common;

use common::*;

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(e: &Env, args: &[&str]) -> Output {
    e.cmd().args(args).output().unwrap()
}

fn ok(e: &Env, args: &[&str]) -> String {
    let o = run(e, args);
    assert!(o.status.success(), "strata {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Expect exit status 1 with the "in use" message naming `holder`.
fn refused(e: &Env, args: &[&str], holder: &str) -> String {
    let o = run(e, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "strata {args:?}: {}", text(&o));
    for want in [
        "strata: error: ",
        &format!("vault is in use by {holder} on "),
        "its lease expires at ",
        "Mount with --read-only",
        "retry with --break-lease",
    ] {
        assert!(
            err.contains(want),
            "strata {args:?}: {want:?} missing: {err}"
        );
    }
    err
}

fn lease_objects(e: &Env) -> Vec<String> {
    let dir = e.p("store/lease");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn check_passes(e: &Env) {
    let out = ok(e, &["check", "--read-data"]);
    assert!(!out.contains("damaged"), "{out}");
}

/// The vault of `e` opened in this process, holding the writer lease.
async fn hold(e: &Env, label: &str) -> Vault {
    let (store, _) = strata_store::open_url(&e.store()).unwrap();
    Vault::open(
        store,
        b"pw",
        OpenOptions {
            state_dir: Some(e.p("state-holder")),
            lease: Some(LeaseOptions {
                ttl: Duration::from_secs(3),
                ..LeaseOptions::new(label)
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writers_are_refused_while_another_process_holds_the_lease() {
    let e = Env::new();
    let local = e.p("work/file.txt");
    std::fs::write(&local, b"local file").unwrap();
    let holder = hold(&e, "test holder").await;
    holder.mkdir("/by-holder", 0o755, false).unwrap();
    holder.commit().await.unwrap();

    let err = refused(&e, &["mkdir", "/x"], "test holder");
    assert!(
        err.contains(&format!("(pid {})", std::process::id())),
        "{err}"
    );
    refused(&e, &["put", local.to_str().unwrap(), "/"], "test holder");
    refused(&e, &["rm", "-r", "/by-holder"], "test holder");
    refused(&e, &["mv", "/by-holder", "/moved"], "test holder");
    refused(&e, &["gc"], "test holder");
    refused(&e, &["passwd"], "test holder");
    // readers take no lease
    assert!(ok(&e, &["ls", "/"]).contains("by-holder"));
    let info = ok(&e, &["info"]);
    assert!(
        info.contains("writer lease:") && info.contains("held by test holder on "),
        "{info}"
    );
    check_passes(&e);
    // refused writers changed nothing and left no lease
    assert_eq!(lease_objects(&e).len(), 1);
    let ls = ok(&e, &["ls", "/"]);
    assert!(!ls.contains("file.txt") && !ls.contains("moved"), "{ls}");

    holder.release_lease().await.unwrap();
    assert!(lease_objects(&e).is_empty());
    ok(&e, &["put", local.to_str().unwrap(), "/"]);
    ok(&e, &["mkdir", "/x"]);
    // every CLI writer gave its lease back
    assert!(lease_objects(&e).is_empty());
    assert!(ok(&e, &["info"]).contains("free (no writer)"));
    // a failing writer gives it back too
    let o = run(&e, &["mkdir", "/x"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(lease_objects(&e).is_empty());
    check_passes(&e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_lease_warns_takes_over_and_the_holder_stops_committing() {
    let e = Env::new();
    let holder = hold(&e, "old holder").await;
    holder.mkdir("/committed", 0o755, false).unwrap();
    holder.commit().await.unwrap();
    holder.mkdir("/uncommitted", 0o755, false).unwrap();

    let o = run(&e, &["mkdir", "--break-lease", "/by-breaker"]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: --break-lease") && err.contains("stops committing"),
        "{err}"
    );

    let e2 = holder.commit().await.unwrap_err();
    assert!(matches!(e2, VaultError::LeaseLost { .. }), "{e2}");
    assert!(
        e2.to_string().contains("lost the vault's writer lease"),
        "{e2}"
    );
    let ls = ok(&e, &["ls", "/"]);
    assert!(
        ls.contains("committed") && ls.contains("by-breaker") && !ls.contains("uncommitted"),
        "{ls}"
    );
    check_passes(&e);
    holder.release_lease().await.unwrap();
}

// ---------------------------------------------------------------------------
// Real mounts
// ---------------------------------------------------------------------------

/// A `strata mount` child on its own mountpoint and cache dir; killed and
/// unmounted on drop.
struct Extra {
    mnt: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Extra {
    fn start(e: &Env, name: &str, extra: &[&str], envs: &[(&str, &str)]) -> Extra {
        let mnt = e.p(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let log = e.p(&format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let mut c = e.cmd();
        c.args(["mount", mnt.to_str().unwrap(), "--cache-dir"])
            .arg(e.p(&format!("{name}-cache")))
            .args(extra)
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        for (k, v) in envs {
            c.env(k, v);
        }
        let child = c.spawn().unwrap();
        Extra {
            mnt,
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until mounted (panics if the process exits first).
    fn wait_mounted(&mut self) {
        let start = Instant::now();
        while !mounted(&self.mnt) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("mount exited early ({st}): {}", self.log());
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the process to exit; return (success, log).
    fn wait_exit(&mut self) -> (bool, String) {
        let st = self.child.take().unwrap().wait().unwrap();
        (st.success(), self.log())
    }
}

impl Drop for Extra {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mnt);
    }
}

fn status(e: &Env, mnt: &Path) -> String {
    ok(e, &["status", mnt.to_str().unwrap()])
}

#[test]
fn a_mount_holds_the_vault_against_cli_writers_and_second_mounts() {
    let e = Env::new();
    let m = e.mount(&[]);
    std::fs::write(e.mnt().join("hello.txt"), b"hello from the mount").unwrap();
    let holder = format!("mount at {}", e.mnt().display());

    refused(&e, &["mkdir", "/x"], &holder);
    let st = status(&e, &e.mnt());
    assert!(st.contains("writer lease:      held (lease/"), "{st}");
    assert!(ok(&e, &["info"]).contains(&format!("held by {holder} on ")));

    // read-only works meanwhile and takes no lease
    let mut ro = Extra::start(&e, "mnt3", &["--read-only"], &[]);
    ro.wait_mounted();
    let st = status(&e, &ro.mnt);
    assert!(
        st.contains("writer lease:      none (read-only mount)"),
        "{st}"
    );
    ok(&e, &["unmount", ro.mnt.to_str().unwrap()]);
    let (success, log) = ro.wait_exit();
    assert!(success, "{log}");
    assert_eq!(lease_objects(&e).len(), 1);

    // a second read-write mount (its own cache dir, as on another machine)
    // asks the first to hand over, and gets the vault
    let mut second = Extra::start(&e, "mnt2", &["--refresh", "1"], &[]);
    second.wait_mounted();
    let log = second.log();
    assert!(
        log.contains(&format!("the vault is in use by {holder} on "))
            && log.contains("asked it to hand over"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(second.mnt.join("hello.txt")).unwrap(),
        b"hello from the mount"
    );
    let second_holder = format!("mount at {}", second.mnt.display());
    let want = format!("handoff:           handed over to {second_holder} on ");
    let t = Instant::now();
    loop {
        // the status file is rewritten every second
        let st = status(&e, &e.mnt());
        if st.contains(&want) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{want:?} missing: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = std::fs::write(e.mnt().join("late.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    refused(&e, &["mkdir", "/x"], &second_holder);

    // a CLI writer takes it with --take-over; the mount follows it
    let out = run(&e, &["mkdir", "--take-over", "/x"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("asked it to hand over"), "{said}");
    let t = Instant::now();
    while !second.mnt.join("x").is_dir() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "mnt2 never showed /x"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lease_objects(&e).is_empty(), "{:?}", lease_objects(&e));

    ok(&e, &["unmount", second.mnt.to_str().unwrap()]);
    let (success, log) = second.wait_exit();
    assert!(success, "{log}");
    m.unmount();
    assert!(lease_objects(&e).is_empty());
    ok(&e, &["mkdir", "/y"]);
    assert!(ok(&e, &["ls", "/"]).contains("hello.txt"));
    check_passes(&e);
}

#[test]
fn a_killed_mount_does_not_block_the_next_writer_on_this_machine() {
    let e = Env::new();
    let m = e.mount(&[]);
    std::fs::write(e.mnt().join("a.txt"), b"a").unwrap();
    // committed, so the cache holds nothing the next mount must replay
    std::fs::File::open(e.mnt().join("a.txt"))
        .unwrap()
        .sync_all()
        .unwrap();
    m.kill9();
    assert_eq!(lease_objects(&e).len(), 1, "the lease is left behind");
    // its process is gone: taken over at once, no --break-lease needed
    ok(&e, &["mkdir", "/after-crash"]);
    let m = e.mount(&[]);
    assert!(e.mnt().join("after-crash").is_dir());
    assert_eq!(std::fs::read(e.mnt().join("a.txt")).unwrap(), b"a");
    m.unmount();
    check_passes(&e);
}

#[test]
fn a_mount_that_loses_its_lease_says_so_and_keeps_its_changes() {
    let e = Env::new();
    // renew every second
    let mut a = Extra::start(&e, "mnt-a", &[], &[("STRATA_LEASE_TTL", "3")]);
    a.wait_mounted();
    let mnt = a.mnt.clone();
    std::fs::write(mnt.join("before.txt"), b"committed").unwrap();
    std::fs::File::open(mnt.join("before.txt"))
        .unwrap()
        .sync_all()
        .unwrap();

    let o = run(&e, &["mkdir", "--break-lease", "/by-breaker"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: --break-lease"));

    // the mount still takes writes into its cache ...
    std::fs::write(mnt.join("after.txt"), b"kept in the cache").unwrap();
    // ... but cannot make them durable in the store
    let f = std::fs::File::open(mnt.join("after.txt")).unwrap();
    assert!(f.sync_all().is_err(), "fsync must fail without the lease");
    drop(f);
    // and its status says why
    let start = Instant::now();
    let st = loop {
        let st = status(&e, &mnt);
        if st.contains("writer lease:      LOST") {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        st.contains("last error:        lost the writer lease"),
        "{st}"
    );

    // unmount gives up quickly, saying where the changes are (and exits 1:
    // not everything reached the store)
    let o = run(&e, &["unmount", mnt.to_str().unwrap(), "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("lost the vault's writer lease") && said.contains("mnt-a-cache"),
        "{said}"
    );
    let (success, log) = a.wait_exit();
    assert!(!success, "{log}");
    assert!(log.contains("lost the vault's writer lease"), "{log}");
    assert!(log.contains("mnt-a-cache"), "{log}");

    // the breaker changed the vault: the changes are not replayed onto it
    let mut again = Extra::start(&e, "mnt-a", &[], &[]);
    let (success, log) = again.wait_exit();
    assert!(!success, "{log}");
    assert!(log.contains("never reached the store"), "{log}");
    let ls = ok(&e, &["ls", "/"]);
    assert!(
        ls.contains("before.txt") && ls.contains("by-breaker") && !ls.contains("after.txt"),
        "{ls}"
    );
    assert!(lease_objects(&e).is_empty());
    check_passes(&e);
    // the cache still holds them
    let cache = e.p("mnt-a-cache");
    assert!(
        std::fs::metadata(cache.join("journal")).unwrap().len() > strata_vfs::journal::EMPTY_LEN
    );
}
