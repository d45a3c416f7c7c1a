//! The writer role moves between devices by handoff (needs root). Each
//! "device" is a mount with its own mountpoint, cache and state directory.
//! A second device's writer mount asks the first to hand over: the first
//! waits for its file open for writing, uploads and commits, lets go, and
//! follows the second from then on (writes there get EROFS). On file://,
//! on the bundled server and on S3 (SeaweedFS).

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use strata_core::vault::OpenOptions;
use strata_core::Vault;
use strata_fuse::MountOptions;

struct Device {
    mnt: PathBuf,
    cache: PathBuf,
    state: PathBuf,
    url: String,
}

impl Device {
    fn new(env: &Env, name: &str, url: &str) -> Device {
        let d = Device {
            mnt: env.root.join(format!("{name}-mnt")),
            cache: env.root.join(format!("{name}-cache")),
            state: env.root.join(format!("{name}-state")),
            url: url.to_string(),
        };
        fs::create_dir_all(&d.mnt).unwrap();
        d
    }

    fn options(&self, env: &Env) -> MountOptions {
        let mut o = env.options(&self.mnt);
        o.store_url = self.url.clone();
        o.cache_dir = Some(self.cache.clone());
        o.state_dir = Some(self.state.clone());
        o.refresh = Duration::from_secs(1);
        o.lease_poll = Duration::from_secs(1);
        o
    }
}

fn status(mp: &Path, key: &str) -> String {
    strata_fuse::control::status(mp)
        .ok()
        .and_then(|v| v.get(key).and_then(|x| x.as_str()).map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_second_device_takes_the_vault_over_by_handoff() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let url = env.store_url.clone();
    take_over(&env, &url);
}

#[test]
fn a_handoff_over_the_bundled_server() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let rt = runtime();
    let cloud = Cloud::start(&rt, &env, |_| {});
    let url = cloud.url("");
    create_vault(&rt, &url, &env.root.join("creator-state"));
    take_over(&env, &url);
    cloud.stop(&rt);
}

#[test]
fn a_handoff_over_s3() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let server = strata_testkit::S3Server::start().unwrap();
    let url = server.store_url(&env.root, "vault");
    let rt = runtime();
    create_vault(&rt, &url, &env.root.join("creator-state"));
    take_over(&env, &url);
}

/// Device A mounts `url`, closes a file and keeps one open for writing;
/// device B's writer mount asks and gets the vault; A follows B.
fn take_over(env: &Env, url: &str) {
    let (a, b) = (Device::new(env, "a", url), Device::new(env, "b", url));
    let ma = Mounted::start(a.options(env)).unwrap();
    // closed on A (perhaps not uploaded yet), and one file still open for
    // writing there
    let big = random(1, 3 << 20);
    fs::write(a.mnt.join("closed.bin"), &big).unwrap();
    let mut open = fs::File::create(a.mnt.join("open.txt")).unwrap();
    open.write_all(b"part one, ").unwrap();

    // B asks; its mount is ready once it holds the lease
    let asked = Instant::now();
    let ob = b.options(env);
    let mb = std::thread::spawn(move || Mounted::start(ob));
    wait_for(
        "A showing that it waits for the open file",
        Duration::from_secs(15),
        || status(&ma.mp, "handoff").contains("waiting for 1 file open for writing"),
    );
    assert!(
        !mb.is_finished(),
        "B must wait while A has a file open for writing"
    );
    open.write_all(b"part two").unwrap();
    drop(open);
    let mb = mb.join().unwrap().expect("B's mount takes the vault over");
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "handoff took {:?}",
        asked.elapsed()
    );

    // everything A accepted is on B
    assert_eq!(fs::read(b.mnt.join("closed.bin")).unwrap(), big);
    assert_eq!(
        fs::read(b.mnt.join("open.txt")).unwrap(),
        b"part one, part two"
    );
    // A is a follower now: it refuses writes and follows B
    wait_for("A saying it handed over", Duration::from_secs(5), || {
        status(&ma.mp, "handoff").contains("handed over to mount at")
    });
    let erofs = |r: std::io::Result<()>| match r {
        Err(e) => e.raw_os_error() == Some(libc::EROFS),
        Ok(()) => false,
    };
    assert!(
        erofs(fs::write(a.mnt.join("new-on-a"), b"x")),
        "create on A"
    );
    assert!(
        erofs(
            fs::OpenOptions::new()
                .append(true)
                .open(a.mnt.join("open.txt"))
                .map(drop)
        ),
        "open for writing on A"
    );
    assert!(erofs(fs::create_dir(a.mnt.join("dir-on-a"))), "mkdir on A");
    assert_eq!(
        fs::read(a.mnt.join("closed.bin")).unwrap(),
        big,
        "A still reads"
    );
    let fresh = random(2, 200_000);
    {
        let mut f = fs::File::create(b.mnt.join("from-b.bin")).unwrap();
        f.write_all(&fresh).unwrap();
        f.sync_all().unwrap();
    }
    fs::rename(b.mnt.join("open.txt"), b.mnt.join("renamed.txt")).unwrap();
    fs::hard_link(b.mnt.join("from-b.bin"), b.mnt.join("linked.bin")).unwrap();
    fs::File::open(b.mnt.join("renamed.txt"))
        .unwrap()
        .sync_all()
        .unwrap();
    wait_for("A following B", Duration::from_secs(6), || {
        fs::read(a.mnt.join("from-b.bin")).ok().as_deref() == Some(&fresh[..])
            && !a.mnt.join("open.txt").exists()
            && a.mnt.join("renamed.txt").exists()
            && fs::read(a.mnt.join("linked.bin")).ok().as_deref() == Some(&fresh[..])
    });
    {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(a.mnt.join("linked.bin")).unwrap();
        let n = fs::metadata(a.mnt.join("from-b.bin")).unwrap();
        assert_eq!((m.ino(), m.nlink()), (n.ino(), 2), "one inode, two links");
    }
    mb.stop().unwrap();
    ma.stop().unwrap();

    // the store holds all of it, and every byte authenticates
    let rt = runtime();
    rt.block_on(async {
        let (s, _) = strata_store::open_url(url).unwrap();
        let o = OpenOptions {
            state_dir: Some(env.root.join("checker-state")),
            ..OpenOptions::default()
        };
        let v = Vault::open(s, PASSWORD, o).await.unwrap();
        let r = v.check(true, None).await.unwrap();
        assert!(r.damaged.is_empty(), "{:?}", r.damaged);
        assert!(v.stat_path("/renamed.txt").is_ok());
        assert!(v.stat_path("/from-b.bin").is_ok());
    });
}

#[test]
fn the_first_device_writes_again_after_the_second_hands_back() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let url = env.store_url.clone();
    let (a, b) = (Device::new(&env, "a", &url), Device::new(&env, "b", &url));
    let ma = Mounted::start(a.options(&env)).unwrap();
    fs::write(a.mnt.join("one"), b"1").unwrap();
    let mb = Mounted::start(b.options(&env)).unwrap();
    fs::write(b.mnt.join("two"), b"2").unwrap();
    // A unmounts (a follower: nothing to flush) and asks back
    ma.stop().unwrap();
    let ma = Mounted::start(a.options(&env)).unwrap();
    assert_eq!(fs::read(a.mnt.join("two")).unwrap(), b"2");
    fs::write(a.mnt.join("three"), b"3").unwrap();
    wait_for("B following A", Duration::from_secs(6), || {
        fs::read(b.mnt.join("three")).ok().as_deref() == Some(b"3")
    });
    ma.stop().unwrap();
    mb.stop().unwrap();
}

#[test]
fn a_holder_stays_the_writer_when_the_asker_stops_waiting() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let url = env.store_url.clone();
    let a = Device::new(&env, "a", &url);
    let ma = Mounted::start(a.options(&env)).unwrap();
    let mut open = fs::File::create(a.mnt.join("long.log")).unwrap();
    open.write_all(b"still writing").unwrap();
    // an impatient asker on another device
    let rt = runtime();
    let err = rt.block_on(async {
        let (s, _) = strata_store::open_url(&url).unwrap();
        let o = OpenOptions {
            state_dir: Some(env.root.join("asker-state")),
            lease: Some(strata_core::LeaseOptions {
                take_over: true,
                local_liveness: false,
                handoff_answer: Duration::from_secs(5),
                handoff_drain: Duration::from_secs(2),
                handoff_poll: Duration::from_millis(100),
                ..strata_core::LeaseOptions::new("impatient asker")
            }),
            ..OpenOptions::default()
        };
        match Vault::open(s, PASSWORD, o).await {
            Ok(_) => panic!("the asker got the vault while a file was open for writing"),
            Err(e) => e.to_string(),
        }
    });
    assert!(err.contains("did not finish handing over"), "{err}");
    // the holder notices the asker is gone and carries on as the writer
    wait_for("A giving the handoff up", Duration::from_secs(15), || {
        status(&ma.mp, "handoff").is_empty()
    });
    open.write_all(b", and more").unwrap();
    drop(open);
    fs::write(a.mnt.join("after.txt"), b"A still writes").unwrap();
    ma.stop().unwrap();
    let mb = Mounted::start(Device::new(&env, "b", &url).options(&env)).unwrap();
    assert_eq!(
        fs::read(mb.mp.join("long.log")).unwrap(),
        b"still writing, and more"
    );
    assert_eq!(
        fs::read(mb.mp.join("after.txt")).unwrap(),
        b"A still writes"
    );
    mb.stop().unwrap();
}
