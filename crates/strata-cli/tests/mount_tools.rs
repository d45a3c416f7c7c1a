//! Real programs through a real FUSE mount of the `strata` binary (runs as
//! root; needs /dev/fuse and fusermount3, installed by scripts/test.sh):
//! cp -a, tar, git, sqlite3, rsync; a SIGKILL crash test; daemon memory.
//! Every mount is unmounted by a guard, even when an assertion fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

#[test]
fn real_tools_in_the_mount_survive_remount() {
    let e = Env::new();
    let work = e.p("work");
    // a local tree with a large file, small files, a symlink, odd modes
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    fill_random(&tree.join("large.bin"), 40 << 20, 7);
    for i in 0..200 {
        std::fs::write(
            tree.join(format!("sub/small-{i}.txt")),
            format!("small file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    std::fs::write(tree.join("sub/deeper/exec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    sh(&tree, "chmod 750 sub/deeper/exec.sh && ln -s sub/deeper/exec.sh link && touch -d '2001-02-03 04:05:06' sub/small-1.txt");
    let archive = crate_archive();

    let m = e.mount(&[]);
    let mnt = e.mnt();
    // cp -a of the tree
    sh(&mnt, &format!("cp -a '{}' ./tree", tree.display()));
    // tar x of a real source archive, also locally for comparison
    sh(
        &mnt,
        &format!("mkdir src && tar xzf '{}' -C src", archive.display()),
    );
    sh(
        &work,
        &format!("mkdir src && tar xzf '{}' -C src", archive.display()),
    );
    // git: init, commits, fsck
    sh(
        &mnt,
        "mkdir repo && cd repo && git init -q && git config user.email t@e && git config user.name t \
         && for i in 1 2 3 4 5; do echo line $i >> file.txt; git add file.txt; git commit -qm c$i; done \
         && git fsck --full && git gc -q && git fsck --full",
    );
    let log = sh(&mnt.join("repo"), "git log --oneline | wc -l");
    assert_eq!(log.trim(), "5");
    // sqlite3: random writes into a database file
    sh(
        &mnt,
        "sqlite3 db.sqlite 'create table t(k integer primary key, v text);' \
         && for i in $(seq 1 20); do sqlite3 db.sqlite \"insert into t(v) select hex(randomblob(300)) from (select 1 union select 2 union select 3 union select 4);\"; done \
         && sqlite3 db.sqlite 'update t set v = upper(v) where k % 3 = 0; delete from t where k % 7 = 0; pragma integrity_check;'",
    );
    let count = sh(
        &mnt,
        "sqlite3 db.sqlite 'select count(*) from t; pragma integrity_check;'",
    );
    // rsync round trip: into the mount and back out
    sh(&mnt, &format!("rsync -a '{}/' ./rsynced/", tree.display()));
    sh(
        &work,
        &format!("rsync -a '{}/rsynced/' ./back/", mnt.display()),
    );
    assert_eq!(snapshot(&work.join("back")), snapshot(&tree));

    let before = snapshot(&mnt);
    m.unmount();
    assert!(
        std::fs::read_dir(e.mnt()).unwrap().next().is_none(),
        "mountpoint empty after unmount"
    );

    let m = e.mount(&[]);
    let after = snapshot(&e.mnt());
    assert_eq!(after.len(), before.len());
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "{k} differs after remount");
    }
    assert_eq!(
        snapshot(&e.mnt().join("tree")),
        snapshot(&tree),
        "cp -a copy is exact"
    );
    assert_eq!(
        snapshot(&e.mnt().join("src")),
        snapshot(&work.join("src")),
        "tar x is exact"
    );
    sh(&e.mnt().join("repo"), "git fsck --full");
    assert_eq!(
        sh(
            &e.mnt(),
            "sqlite3 db.sqlite 'select count(*) from t; pragma integrity_check;'"
        ),
        count
    );
    // mtimes survive too
    let t = std::fs::metadata(e.mnt().join("tree/sub/small-1.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        t,
        std::fs::metadata(tree.join("sub/small-1.txt"))
            .unwrap()
            .modified()
            .unwrap()
    );
    // status reports on the live mount
    let st = e
        .cmd()
        .args(["status", e.mnt().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    m.unmount();
    // and the CLI sees the same vault
    let ls = e.cmd().args(["ls", "/tree/sub/deeper"]).output().unwrap();
    assert!(String::from_utf8_lossy(&ls.stdout).contains("exec.sh"));
}

#[test]
fn fsynced_data_survives_sigkill_of_the_mount() {
    acknowledged_data_survives_sigkill(&[], true, 10);
}

/// `--close buffered`: close returns before any sync, yet what was
/// closed survives a crash of the mount (the kernel keeps the cache's
/// writes).
#[test]
fn closed_data_survives_sigkill_with_buffered_close() {
    // fewer rounds: without fsyncs many more files are written per round
    acknowledged_data_survives_sigkill(&["--close", "buffered"], false, 4);
}

/// Mounts with `args`, writes files (each acknowledged once its fsync,
/// or with `fsync` false its close, returned), kills the mount with
/// SIGKILL at a pseudo-random moment, and checks every acknowledged file
/// after a remount; `rounds` times (or `$STRATA_CRASH_ITERATIONS`).
fn acknowledged_data_survives_sigkill(args: &[&str], fsync: bool, rounds: u64) {
    let e = Env::new();
    let iterations: u64 = std::env::var("STRATA_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(rounds);
    // name → (length, seed) of every file acknowledged
    let mut done: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let content = |len: u64, seed: u64| -> Vec<u8> {
        (0..len).map(|k| ((k * 31 + seed) % 251) as u8).collect()
    };
    let mut rng = 0x5eed_u64;
    for it in 0..iterations {
        let m = e.mount(args);
        let mnt = e.mnt();
        if it == 0 && args.contains(&"buffered") {
            let st = e
                .cmd()
                .args(["status", mnt.to_str().unwrap()])
                .output()
                .unwrap();
            let st = String::from_utf8_lossy(&st.stdout);
            assert!(st.contains("close:             buffered ("), "{st}");
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // a writer thread: write + fsync files, report what was acknowledged
        let (tx, rx) = std::sync::mpsc::channel::<(String, (u64, u64))>();
        let dir = mnt.clone();
        let stop2 = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut i = 0u64;
            // never touch the bare directory once the mount is gone
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("it{it}-f{i}");
                let len = (i * 7919 + it * 104729) % (3 << 20) + 1;
                let seed = i + it;
                let r = (|| -> std::io::Result<()> {
                    let mut f = std::fs::File::create(dir.join(&name))?;
                    f.write_all(&content(len, seed))?;
                    if fsync {
                        f.sync_all()?;
                    }
                    // close, and see its error (a drop would ignore it: the
                    // flush of a killed mount fails)
                    use std::os::fd::IntoRawFd;
                    let fd = f.into_raw_fd();
                    // SAFETY: `fd` was just taken out of the File, which no
                    // longer owns it; it is closed exactly once, here.
                    if unsafe { libc::close(fd) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })();
                if r.is_err() || tx.send((name, (len, seed))).is_err() {
                    return;
                }
                i += 1;
            }
        });
        // kill at a pseudo-random moment
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (rng >> 33) % 1500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        m.kill9();
        let _ = writer.join();
        done.extend(rx.try_iter());
        // remount: everything acknowledged by fsync is there, byte for byte
        let m = e.mount(&[]);
        for (n, (len, seed)) in &done {
            let got = std::fs::read(e.mnt().join(n))
                .unwrap_or_else(|err| panic!("iteration {it}: {n}: {err}"));
            assert!(
                got == content(*len, *seed),
                "iteration {it}: {n} differs ({} vs {len} bytes)",
                got.len()
            );
        }
        // the tree is consistent: every entry is readable
        for ent in std::fs::read_dir(e.mnt()).unwrap() {
            let p = ent.unwrap().path();
            std::fs::read(&p).unwrap_or_else(|err| panic!("{}: {err}", p.display()));
        }
        m.unmount();
    }
    assert!(
        done.len() as u64 >= iterations,
        "the writer made progress ({} files)",
        done.len()
    );
    let check = e.cmd().args(["check"]).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn copying_a_2gib_file_keeps_daemon_memory_bounded() {
    let e = Env::new();
    let size: u64 = std::env::var("STRATA_MEM_TEST_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048)
        << 20;
    let src = e.p("work/big.bin");
    fill_random(&src, size, 99);
    let m = e.mount(&["--cache-size", "256MiB"]);
    let pid = m.pid();
    sh(&e.mnt(), &format!("cp '{}' big.bin && sync", src.display()));
    let copy_rss = peak_rss_kib(pid);
    // read it back through the mount (cold) and compare
    sh(&e.mnt(), &format!("cmp big.bin '{}'", src.display()));
    let rss = peak_rss_kib(pid).max(copy_rss);
    m.unmount();
    eprintln!(
        "daemon peak RSS while copying {} MiB: {} MiB",
        size >> 20,
        rss / 1024
    );
    assert!(rss > 0);
    assert!(
        rss < 200 * 1024,
        "daemon peak RSS {} MiB > 200 MiB",
        rss / 1024
    );
}

#[test]
fn mount_helper_and_daemon_mode() {
    // contrib/mount.fuse.strata is what `mount -t fuse.strata` runs; call it
    // the way mount(8) does. It backgrounds the daemon and returns when ready.
    let e = Env::new();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/mount.fuse.strata");
    std::fs::write(e.p("pw"), "pw\n").unwrap();
    let out = Command::new("bash")
        .arg(&helper)
        .arg(e.store())
        .arg(e.mnt())
        .arg("-o")
        .arg(format!(
            "rw,password_file={},cache_dir={},state_dir={},fsync=local,close=buffered,_netdev",
            e.p("pw").display(),
            e.p("cache").display(),
            e.p("state").display()
        ))
        .env("STRATA_BIN", BIN)
        .env("STRATA_RUNTIME_DIR", e.p("run"))
        .env_remove("STRATA_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let guard = Mount {
        env: &e,
        child: None,
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mounted(&e.mnt()), "helper returned before the mount was up");
    std::fs::write(e.mnt().join("via-helper.txt"), b"mounted by the helper").unwrap();
    let st = e
        .cmd()
        .args(["status", "--json", e.mnt().to_str().unwrap()])
        .output()
        .unwrap();
    let js = String::from_utf8_lossy(&st.stdout);
    assert!(js.contains("\"fsync_mode\": \"Local\""), "{js}");
    assert!(js.contains("\"close_mode\": \"Buffered\""), "{js}");
    let un = e
        .cmd()
        .args(["unmount", e.mnt().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        un.status.success(),
        "{}",
        String::from_utf8_lossy(&un.stderr)
    );
    assert!(!mounted(&e.mnt()));
    drop(guard);
    let cat = e.cmd().args(["cat", "/via-helper.txt"]).output().unwrap();
    assert_eq!(cat.stdout, b"mounted by the helper");
}

#[test]
fn demo_runs_headless_and_stops_cleanly_on_ctrl_c() {
    let e = Env::new();
    let demo_dir = e.p("demo");
    let drive = e.p("StrataDrive");
    let run = || {
        let log = std::fs::File::create(e.p("demo.log")).unwrap();
        e.cmd()
            .env("STRATA_DEMO_DIR", &demo_dir)
            .args(["demo"])
            .arg(&drive)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let stop = |mut child: Child| {
        let start = Instant::now();
        while !mounted(&drive) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{}",
                std::fs::read_to_string(e.p("demo.log")).unwrap_or_default()
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "demo exited: {}",
                std::fs::read_to_string(e.p("demo.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    };
    let child = stop(run());
    let _guard = Mount {
        env: &e,
        child: None,
    };
    std::fs::write(drive.join("hello.txt"), b"hello from the demo").unwrap();
    // Ctrl-C: flush, unmount, exit 0
    let st = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = child;
    let code = child.wait().unwrap();
    let log = std::fs::read_to_string(e.p("demo.log")).unwrap_or_default();
    assert!(code.success(), "demo exit {code}: {log}");
    assert!(log.contains("mounted at"), "{log}");
    assert!(!mounted(&drive));
    // the file is in the vault, visible to the CLI
    let ls = e
        .cmd()
        .env(
            "STRATA_STORE",
            format!("file://{}", demo_dir.join("objects").display()),
        )
        .args(["ls", "/"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("hello.txt"),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    // running it again reopens the same vault
    let child = stop(run());
    assert_eq!(
        std::fs::read(drive.join("hello.txt")).unwrap(),
        b"hello from the demo"
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let mut child = child;
    assert!(child.wait().unwrap().success());
}
