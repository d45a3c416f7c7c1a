//! The kernel's page cache of a mount (needs root): a small read decrypts
//! the whole 64 KiB segments it touches, and the rest of them is handed to
//! the kernel (`FUSE_NOTIFY_STORE`), so the next small reads there need no
//! request. Checked with `mincore` (which pages of the file the kernel
//! holds) and by reading the data back: never while the file is open for
//! writing, and never stale after a write or a truncate.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::*;

const SEG: usize = 64 * 1024;
const PAGE: usize = 4096;
const LEN: usize = 1 << 20;

/// Which 4 KiB pages of `f` (of `len` bytes) the kernel holds.
fn resident(f: &File, len: usize) -> Vec<bool> {
    // SAFETY: a fresh read-only shared mapping of `len` bytes of an open
    // file, only passed to mincore (never read: no page is faulted in) and
    // unmapped before returning; `vec` has one byte per page as mincore
    // requires.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let mut vec = vec![0u8; len.div_ceil(PAGE)];
        let rc = libc::mincore(p, len, vec.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(p, len);
        assert_eq!(rc, 0, "mincore: {err}");
        vec.iter().map(|b| b & 1 == 1).collect()
    }
}

/// Open `p` for reading with the kernel's read-ahead off (so a read
/// brings in only the pages it asks for).
fn open_random(p: &Path) -> File {
    let f = File::open(p).unwrap();
    // SAFETY: a plain advice call on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(rc, 0);
    f
}

fn pages(seg: usize) -> std::ops::Range<usize> {
    seg * SEG / PAGE..(seg + 1) * SEG / PAGE
}

/// A file of `LEN` random bytes in the store (written, then remounted so
/// nothing of it is pending or cached).
fn stored_file(env: &Env, name: &str, seed: u64) -> Vec<u8> {
    let data = random(seed, LEN);
    let m = env.mount();
    fs::write(m.mp.join(name), &data).unwrap();
    m.stop().unwrap();
    data
}

#[test]
fn small_reads_leave_their_segments_in_the_page_cache() {
    if !can_mount() {
        return;
    }
    let _s = serial();
    let env = Env::new();
    let data = stored_file(&env, "f", 1);
    let m = env.mount();
    let p = m.mp.join("f");
    let f = open_random(&p);
    assert!(
        resident(&f, LEN).iter().all(|r| !r),
        "a fresh mount caches nothing"
    );

    // 4 KiB in the middle of segment 1
    let mut buf = vec![0u8; PAGE];
    let at = SEG + 5 * PAGE;
    f.read_exact_at(&mut buf, at as u64).unwrap();
    assert_eq!(buf, data[at..at + PAGE]);
    wait_for(
        "segment 1 in the page cache",
        Duration::from_secs(10),
        || resident(&f, LEN)[pages(1)].iter().all(|r| *r),
    );
    let r = resident(&f, LEN);
    assert!(
        r[pages(0)].iter().chain(&r[pages(2)]).all(|r| !r),
        "only the segment that was read is cached"
    );

    // a read at the end of a short last segment: the cached tail stops at
    // the end of the file
    let short = File::create(m.mp.join("short")).unwrap();
    short.write_all_at(&data[..SEG + 10_000], 0).unwrap();
    drop(short);
    m.stop().unwrap();
    let m = env.mount();
    let g = open_random(&m.mp.join("short"));
    g.read_exact_at(&mut buf, SEG as u64).unwrap();
    assert_eq!(buf, data[SEG..SEG + PAGE]);
    wait_for(
        "the short tail in the page cache",
        Duration::from_secs(10),
        || resident(&g, SEG + 10_000)[SEG / PAGE..].iter().all(|r| *r),
    );
    assert_eq!(g.metadata().unwrap().len(), (SEG + 10_000) as u64);
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut File::open(m.mp.join("short")).unwrap(), &mut all).unwrap();
    assert_eq!(all, data[..SEG + 10_000]);

    // every byte of the first file reads back right, cached or not
    let f = open_random(&m.mp.join("f"));
    for seg in 0..LEN / SEG {
        let at = seg * SEG + (seg % 16) * PAGE;
        f.read_exact_at(&mut buf, at as u64).unwrap();
        assert_eq!(buf, data[at..at + PAGE], "segment {seg}");
    }
    let mut whole = vec![0u8; LEN];
    f.read_exact_at(&mut whole, 0).unwrap();
    assert!(whole == data, "the file reads back whole");
    m.stop().unwrap();
}

#[test]
fn nothing_is_cached_ahead_of_a_file_open_for_writing() {
    if !can_mount() {
        return;
    }
    let _s = serial();
    let env = Env::new();
    let data = stored_file(&env, "f", 2);
    let m = env.mount();
    let f = open_random(&m.mp.join("f"));
    let writer = OpenOptions::new().write(true).open(m.mp.join("f")).unwrap();
    let other = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(m.mp.join("other"))
        .unwrap();
    let mut buf = vec![0u8; PAGE];
    f.read_exact_at(&mut buf, 3 * SEG as u64).unwrap();
    assert_eq!(buf, data[3 * SEG..3 * SEG + PAGE]);
    // a read after it went through the same path: had a push been queued
    // for the first, it would have been stored by now or never
    f.read_exact_at(&mut buf, 4 * SEG as u64).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = resident(&f, LEN);
    assert!(r[pages(3)][0], "the page read is cached");
    assert!(
        r[pages(3)][1..].iter().all(|r| !r),
        "no page of a segment is cached ahead while the file is open for writing"
    );
    // once its writer is closed (the kernel sends the release in the
    // background), small reads are cached ahead again, though another file
    // is still open for writing
    drop(writer);
    let cached_ahead = (5..LEN / SEG).any(|seg| {
        f.read_exact_at(&mut buf, (seg * SEG) as u64).unwrap();
        (0..20).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            resident(&f, LEN)[pages(seg)].iter().all(|r| *r)
        })
    });
    assert!(
        cached_ahead,
        "no segment cached ahead after the writer closed"
    );
    drop(other);
    m.stop().unwrap();
}

#[test]
fn cached_segments_follow_writes_and_truncates() {
    if !can_mount() {
        return;
    }
    let _s = serial();
    let env = Env::new();
    let mut data = stored_file(&env, "f", 3);
    let m = env.mount();
    let p = m.mp.join("f");
    let f = open_random(&p);
    let mut buf = vec![0u8; PAGE];
    f.read_exact_at(&mut buf, 0).unwrap();
    wait_for(
        "segment 0 in the page cache",
        Duration::from_secs(10),
        || resident(&f, LEN)[pages(0)].iter().all(|r| *r),
    );

    // overwrite pages the kernel got ahead of any read, then cut the file
    // inside that segment and grow it again with a hole
    let w = OpenOptions::new().write(true).open(&p).unwrap();
    let new = random(4, 3 * PAGE);
    w.write_all_at(&new, 2 * PAGE as u64).unwrap();
    data[2 * PAGE..5 * PAGE].copy_from_slice(&new);
    drop(w);
    let cut = 9 * PAGE + 100;
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    data.truncate(cut);
    let grown = SEG + 7;
    File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(grown as u64)
        .unwrap();
    data.resize(grown, 0);

    for g in [open_random(&p), File::open(&p).unwrap()] {
        let mut all = vec![0u8; grown];
        g.read_exact_at(&mut all, 0).unwrap();
        assert!(all == data, "the file reads back as written");
        assert_eq!(g.metadata().unwrap().len(), grown as u64);
    }
    drop(f);
    m.stop().unwrap();
    let m = env.mount();
    assert!(
        fs::read(m.mp.join("f")).unwrap() == data,
        "and after a remount"
    );
    m.stop().unwrap();
}
