//! A full cache disk (needs root: the cache lives on a small tmpfs the test
//! mounts). Another program fills that filesystem at several moments — with
//! closed files waiting for upload, before any write, during a big write,
//! while checkpoints are written, while the read cache holds most of it —
//! and each time the mount keeps uploading and committing, writers get
//! ENOSPC after a bounded wait rather than hanging, unmount finishes, and a
//! fresh mount (another cache directory) reads back every byte a write,
//! close or fsync was acknowledged for.

mod common;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmpfs of a given size, unmounted (lazily) on drop.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(dir: PathBuf, mib: u64) -> SmallFs {
        fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .expect("running mount");
        assert!(st.success(), "could not mount a tmpfs on {}", dir.display());
        SmallFs { dir }
    }

    fn fill(&self) -> PathBuf {
        fill(&self.dir)
    }
}

/// Fill the filesystem of `dir` to the last byte; returns the filler file.
/// A mount using that filesystem may free space meanwhile (an uploaded
/// chunk file deleted): the filler then takes that too, a few rounds.
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join(format!("filler-{:016x}", rand::random::<u64>()));
    let mut f = File::create(&p).unwrap();
    let free = || {
        let st = rustix::fs::statvfs(dir).unwrap();
        st.f_bavail * st.f_frsize
    };
    for _ in 0..20 {
        for size in [1 << 20, 64 << 10, 4 << 10] {
            let block = vec![0x5a; size];
            loop {
                match f.write(&block) {
                    Ok(n) if n == block.len() => {}
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling {}: {e}", p.display()),
                }
            }
        }
        if free() < 64 << 10 {
            break;
        }
    }
    assert!(
        free() < 64 << 10,
        "the tmpfs still has {} bytes free",
        free()
    );
    p
}

/// Take all the free space of `dir`'s filesystem with one allocation;
/// space freed afterwards stays free. Returns the filler file.
fn fill_at_once(dir: &Path) -> PathBuf {
    let p = dir.join("filler-at-once");
    let f = File::create(&p).unwrap();
    for _ in 0..10 {
        let st = rustix::fs::statvfs(dir).unwrap();
        let free = st.f_bavail * st.f_frsize;
        match rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, free) {
            Ok(()) => return p,
            // someone wrote meanwhile: measure again
            Err(e) if e == rustix::io::Errno::NOSPC => continue,
            Err(e) => panic!("allocating {free} bytes in {}: {e}", p.display()),
        }
    }
    panic!("could not take the free space of {}", dir.display());
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Write a whole file and close it; the error of whichever step failed.
fn write_file(p: &Path, data: &[u8], fsync: bool) -> io::Result<()> {
    let mut f = File::create(p)?;
    f.write_all(data)?;
    if fsync {
        f.sync_all()?;
    }
    drop(f);
    Ok(())
}

/// A cache directory and a state directory on a tmpfs of `mib` MiB.
fn on_small_fs(env: &Env, mib: u64) -> SmallFs {
    SmallFs::mount(env.root.join("smallfs"), mib)
}

fn small_fs_options(fs: &SmallFs) -> impl FnOnce(&mut strata_fuse::MountOptions) + '_ {
    move |o| {
        o.cache_dir = Some(fs.dir.join("cache"));
        o.state_dir = Some(fs.dir.join("state"));
        o.space_wait = Duration::from_secs(3);
    }
}

/// Mount with a fresh cache directory (off the tmpfs) and check `files`.
fn assert_in_store(env: &Env, files: &[(&str, &[u8])]) {
    let m = env.mount_with(&env.mnt, |o| {
        o.cache_dir = Some(env.root.join("fresh-cache"));
    });
    for (name, want) in files {
        let got = fs::read(env.mnt.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got.as_slice() == *want,
            "{name}: {} bytes in the store, {} written",
            got.len(),
            want.len()
        );
    }
    m.stop().unwrap();
    let _ = fs::remove_dir_all(env.root.join("fresh-cache"));
}

#[test]
fn disk_filled_after_close_does_not_wedge_the_commit() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let small = on_small_fs(&env, 96);
    let big = random(1, 20 << 20);
    let little = b"a small file, closed and not yet uploaded\n".to_vec();
    let m = env.mount_with(&env.mnt, small_fs_options(&small));
    write_file(&env.mnt.join("big"), &big, false).unwrap();
    write_file(&env.mnt.join("little"), &little, false).unwrap();
    // another program takes every byte left
    let filler = small.fill();
    let t = Instant::now();
    m.stop().expect("unmount with a full cache disk");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(60), "unmount took {took:?}");
    assert_in_store(&env, &[("big", &big), ("little", &little)]);
    fs::remove_file(filler).unwrap();
}

#[test]
fn writers_get_enospc_after_a_bounded_wait_and_keep_what_was_acknowledged() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let small = on_small_fs(&env, 64);
    let m = env.mount_with(&env.mnt, small_fs_options(&small));
    let kept = random(2, 3 << 20);
    write_file(&env.mnt.join("kept"), &kept, true).unwrap();
    let filler = small.fill();
    // nothing of ours to upload: the write waits `space_wait` without
    // progress, then fails with ENOSPC (at write, or at close)
    let t = Instant::now();
    let r = write_file(&env.mnt.join("refused"), &random(3, 2 << 20), false);
    let took = t.elapsed();
    assert_eq!(errno(r), libc::ENOSPC);
    assert!(took < Duration::from_secs(40), "ENOSPC took {took:?}");
    // the mount still works: metadata changes and reads
    fs::create_dir(env.mnt.join("dir")).unwrap();
    assert_eq!(fs::read(env.mnt.join("kept")).unwrap(), kept);
    // space back: writes work again
    fs::remove_file(&filler).unwrap();
    let later = random(4, 5 << 20);
    write_file(&env.mnt.join("dir/later"), &later, false).unwrap();
    m.stop().unwrap();
    assert_in_store(&env, &[("kept", &kept), ("dir/later", &later)]);
}

#[test]
fn a_big_write_through_a_small_cache_disk_waits_for_uploads() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let small = on_small_fs(&env, 64);
    let m = env.mount_with(&env.mnt, small_fs_options(&small));
    // three times the cache disk, while another program fills it for two
    // seconds in the middle of the write
    let data = random(5, 192 << 20);
    let dir = small.dir.clone();
    let filler = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let p = fill(&dir);
        std::thread::sleep(Duration::from_secs(2));
        fs::remove_file(p).unwrap();
    });
    write_file(&env.mnt.join("movie"), &data, true).expect("writing 192 MiB through 64 MiB");
    filler.join().unwrap();
    assert_eq!(fs::read(env.mnt.join("movie")).unwrap(), data);
    m.stop().unwrap();
    assert_in_store(&env, &[("movie", &data)]);
}

#[test]
fn checkpoints_are_written_while_the_cache_disk_is_full() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let small = on_small_fs(&env, 64);
    let m = env.mount_with(&env.mnt, |o| {
        small_fs_options(&small)(o);
        o.checkpoint_records = Some(40);
    });
    // the newest checkpoint's name (older ones are deleted as new ones land)
    let checkpoints = || {
        fs::read_dir(env.root.join("store/meta"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with("checkpoint."))
                    .max()
            })
            .unwrap_or(None)
    };
    let mut acked = Vec::new();
    for i in 0..20 {
        let data = random(100 + i, 3000);
        write_file(&env.mnt.join(format!("f{i}")), &data, false).unwrap();
        acked.push((format!("f{i}"), data));
    }
    let filler = small.fill();
    let before = checkpoints();
    // metadata-only changes need no new cache space (the journal keeps a
    // reserve): renames, directories, attribute changes, each committed.
    // 60 records: a checkpoint (every 40) is due after `before` was taken
    // even if one was written just before.
    for i in 0..20 {
        fs::create_dir(env.mnt.join(format!("d{i}"))).unwrap();
        let name = format!("d{i}/f{i}");
        fs::rename(env.mnt.join(format!("f{i}")), env.mnt.join(&name)).unwrap();
        fs::set_permissions(env.mnt.join(&name), fs::Permissions::from_mode(0o600)).unwrap();
        acked[i as usize].0 = name;
        File::open(env.mnt.join("d0")).unwrap().sync_all().unwrap();
    }
    let t = Instant::now();
    while checkpoints() <= before {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no checkpoint written with the cache disk full"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    m.stop().expect("unmount with a full cache disk");
    fs::remove_file(filler).unwrap();
    let files: Vec<(&str, &[u8])> = acked
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    assert_in_store(&env, &files);
}

#[test]
fn the_read_cache_gives_its_space_back_first() {
    let _g = serial();
    can_mount();
    let env = Env::new();
    let rt = runtime();
    // a remote store (the bundled server), so the mount has a read cache
    let cloud = Cloud::start(&rt, &env, |_| {});
    let url = cloud.url("");
    create_vault(&rt, &url, &env.state);
    let small = on_small_fs(&env, 64);
    let remote = |o: &mut strata_fuse::MountOptions| {
        o.store_url = url.clone();
        small_fs_options(&small)(o);
        o.read_cache_size = 1 << 30;
    };
    let stored = random(6, 40 << 20);
    let m = env.mount_with(&env.mnt, remote);
    write_file(&env.mnt.join("stored"), &stored, true).unwrap();
    m.stop().unwrap();
    let m = env.mount_with(&env.mnt, remote);
    // reading it fills the read cache with ~40 MiB of the 64
    assert_eq!(fs::read(env.mnt.join("stored")).unwrap(), stored);
    let used = |p: &Path| {
        let st = rustix::fs::statvfs(p).unwrap();
        (st.f_blocks - st.f_bfree) * st.f_frsize
    };
    assert!(used(&small.dir) > 30 << 20, "the read cache holds little");
    // Taken in one step: the mount may empty its read cache as soon as
    // the disk is full, and a filler that went on taking space would take
    // that too and leave nothing to give back (what made this test fail
    // now and then).
    let filler = fill_at_once(&small.dir);
    let fresh = random(7, 8 << 20);
    write_file(&env.mnt.join("fresh"), &fresh, true).expect("write with the read cache full");
    assert_eq!(fs::read(env.mnt.join("stored")).unwrap(), stored);
    m.stop().unwrap();
    fs::remove_file(filler).unwrap();
    let m = env.mount_with(&env.mnt, |o| {
        o.store_url = url.clone();
        o.cache_dir = Some(env.root.join("fresh-cache"));
    });
    assert_eq!(fs::read(env.mnt.join("fresh")).unwrap(), fresh);
    assert_eq!(fs::read(env.mnt.join("stored")).unwrap(), stored);
    m.stop().unwrap();
    cloud.stop(&rt);
}
