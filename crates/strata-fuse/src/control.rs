//! Finding and controlling running mounts from outside: the runtime
//! directory and status files, `/proc/mounts`, [`unmount`] and [`status`].

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rustix::fs::{access, Access};
use rustix::io::Errno;
use rustix::mount::UnmountFlags;
use rustix::process::{geteuid, kill_process, Pid, Signal};

/// Where status files live, in order of preference: `$STRATA_RUNTIME_DIR`,
/// `/run/strata` if writable, `$XDG_RUNTIME_DIR/strata`, `/tmp/strata-<uid>`.
/// Creates the directory.
pub fn runtime_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("STRATA_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        make_private_dir(&d)?;
        return Ok(d);
    }
    let run = PathBuf::from("/run/strata");
    if make_private_dir(&run).is_ok() && writable(&run) {
        return Ok(run);
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(x).join("strata");
        if make_private_dir(&d).is_ok() && writable(&d) {
            return Ok(d);
        }
    }
    let uid = geteuid().as_raw();
    let d = PathBuf::from(format!("/tmp/strata-{uid}"));
    make_private_dir(&d)?;
    let md = std::fs::symlink_metadata(&d)?;
    if !md.is_dir() || md.uid() != uid {
        bail!(
            "{} is not a directory owned by this user; set STRATA_RUNTIME_DIR",
            d.display()
        );
    }
    Ok(d)
}

/// Every runtime directory a status file may be in (for lookups by another
/// user or with another environment than the mounting process).
fn runtime_dir_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("STRATA_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(d));
    }
    v.push(PathBuf::from("/run/strata"));
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(x).join("strata"));
    }
    v.push(PathBuf::from(format!("/tmp/strata-{}", geteuid().as_raw())));
    v
}

fn make_private_dir(d: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
}

fn writable(d: &Path) -> bool {
    access(d, Access::WRITE_OK).is_ok()
}

/// The mountpoint as an absolute path with symlinks resolved. A live mount's
/// root is resolved through the mount; a dead one (ENOTCONN) through its
/// parent only.
pub fn canonical_mountpoint(p: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Ok(c);
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    let name = abs
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a usable mountpoint", p.display()))?;
    let parent = abs.parent().unwrap_or(Path::new("/"));
    let parent = parent
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", parent.display()))?;
    Ok(parent.join(name))
}

/// File name of the status file of a mountpoint: a hash of its canonical path.
pub fn status_file_name(mountpoint: &Path) -> String {
    let h = blake3::hash(mountpoint.as_os_str().as_bytes());
    format!("{}.json", hex::encode(&h.as_bytes()[..16]))
}

fn find_status_file(mountpoint: &Path) -> Option<PathBuf> {
    let name = status_file_name(mountpoint);
    runtime_dir_candidates()
        .into_iter()
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
}

fn read_status_file(path: &Path) -> anyhow::Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid status file", path.display()))
}

/// Start time of a process (clock ticks since boot, field 22 of
/// `/proc/<pid>/stat`), to tell a live mount from a reused pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    // fields after the command: state is field 3, start time field 22
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that wrote `st` is still running.
fn owner_alive(st: &serde_json::Value) -> Option<u32> {
    let pid = u32::try_from(st.get("pid")?.as_u64()?).ok()?;
    let start = process_start_time(pid)?;
    match st.get("start_time").and_then(|v| v.as_u64()) {
        Some(s) if s != start => None,
        _ => Some(pid),
    }
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount_field(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The `/proc/mounts` entry (source, fstype) for `mountpoint`, if mounted.
pub fn mount_entry(mountpoint: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let want = mountpoint.as_os_str().as_bytes();
    let mut found = None;
    for line in text.lines() {
        let mut f = line.split(' ');
        let (Some(src), Some(mp), Some(ty)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if unescape_mount_field(mp) == want {
            found = Some((
                String::from_utf8_lossy(&unescape_mount_field(src)).into_owned(),
                ty.to_string(),
            ));
        }
    }
    found // the last entry is the one on top
}

/// Whether `mountpoint` is mounted at all.
pub fn is_mounted(mountpoint: &Path) -> bool {
    mount_entry(mountpoint).is_some()
}

/// Whether the top mount at `mountpoint` is a Strata FUSE mount.
pub fn is_strata_mount(mountpoint: &Path) -> bool {
    mount_entry(mountpoint)
        .is_some_and(|(src, ty)| ty.starts_with("fuse") && src.starts_with("strata:"))
}

/// Find `fusermount3` on PATH.
pub fn fusermount_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("fusermount3"))
        .chain([
            PathBuf::from("/usr/bin/fusermount3"),
            PathBuf::from("/bin/fusermount3"),
        ])
        .find(|p| p.is_file())
}

/// Unmount `mountpoint`: `umount2` as root, `fusermount3 -u` otherwise.
/// `lazy` detaches a busy mount (open files keep working).
pub fn unmount_now(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    if geteuid().is_root() {
        let c = CString::new(mountpoint.as_os_str().as_bytes())?;
        let flags = if lazy {
            UnmountFlags::DETACH
        } else {
            UnmountFlags::empty()
        };
        let Err(e) = rustix::mount::unmount(c.as_c_str(), flags) else {
            return Ok(());
        };
        if e != Errno::PERM {
            return Err(e.into());
        }
        // no CAP_SYS_ADMIN in this namespace: fall back to fusermount3
    }
    fusermount_unmount(mountpoint, lazy)
}

fn fusermount_unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let bin = fusermount_path()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "fusermount3 not found"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-u").arg("-q");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(mountpoint).output()?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.contains("busy") {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    Err(io::Error::other(format!("fusermount3 -u failed: {msg}")))
}

/// Abort the FUSE connection of a busy mount that is still attached: as
/// root, `umount2(MNT_FORCE)` aborts it (open files then fail with ENOTCONN).
pub fn force_abort(mountpoint: &Path) -> io::Result<()> {
    let c = CString::new(mountpoint.as_os_str().as_bytes())?;
    Ok(rustix::mount::unmount(c.as_c_str(), UnmountFlags::FORCE)?)
}

/// Stop the Strata mount at `mountpoint`: send SIGTERM to the process named
/// in its status file and wait (up to `timeout`) until it has flushed,
/// unmounted and exited (or, for an in-process mount, removed its status
/// file). A mount whose process is gone is unmounted with `fusermount3 -u`.
pub fn unmount(mountpoint: &Path, timeout: Duration) -> anyhow::Result<()> {
    let mp = canonical_mountpoint(mountpoint)?;
    let shown = mountpoint.display();
    let Some(path) = find_status_file(&mp) else {
        if is_strata_mount(&mp) {
            // a dead daemon that left no status file
            return cleanup_dead(&mp, None);
        }
        bail!("{shown} is not a Strata mount");
    };
    let st = read_status_file(&path)?;
    let Some(pid) = owner_alive(&st) else {
        return cleanup_dead(&mp, Some(&path));
    };
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| anyhow!("bad pid {pid} in {}", path.display()))?;
    if let Err(e) = kill_process(target, Signal::TERM) {
        if e == Errno::SRCH {
            return cleanup_dead(&mp, Some(&path));
        }
        let e = io::Error::from(e);
        bail!("cannot signal the Strata process {pid} of {shown}: {e}");
    }
    let start = Instant::now();
    let note = st
        .get("cache_dir")
        .and_then(|d| d.as_str())
        .map(|d| Path::new(d).join(UNFLUSHED_NOTE));
    loop {
        let gone = process_start_time(pid).is_none() || !path.exists();
        if gone && !is_strata_mount(&mp) {
            return unflushed(note.as_deref(), &shown.to_string());
        }
        if gone && process_start_time(pid).is_none() {
            // exited but left the mount behind (crashed while flushing)
            return cleanup_dead(&mp, None);
        }
        if start.elapsed() > timeout {
            bail!(
                "timed out after {}s waiting for process {pid} to unmount {shown}; it may still be \
                 uploading (see `strata status {shown}`)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// File in the cache directory where a mount that stopped with data not
/// yet in the store says what stays pending (removed by a complete flush).
pub const UNFLUSHED_NOTE: &str = "unflushed";

/// After an unmount: an error naming what stayed pending, if the mount
/// left a note about it.
fn unflushed(note: Option<&Path>, shown: &str) -> anyhow::Result<()> {
    let Some(msg) = note.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Ok(());
    };
    bail!("unmounted {shown}, but not everything reached the store: {msg}")
}

fn cleanup_dead(mp: &Path, status: Option<&Path>) -> anyhow::Result<()> {
    if let Some(p) = status {
        let _ = std::fs::remove_file(p);
    }
    if !is_strata_mount(mp) {
        return Ok(());
    }
    match fusermount_unmount(mp, false).or_else(|_| unmount_now(mp, false)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            unmount_now(mp, true).with_context(|| format!("cannot unmount {}", mp.display()))
        }
        Err(e) => Err(anyhow!("cannot unmount {}: {e}", mp.display())),
    }
}

/// The status of the Strata mount at `mountpoint`, as its process last wrote
/// it (about every second): pid, mountpoint, store, cache directory, the VFS
/// counters (dirty bytes, uploads, last error, …) and store request metrics.
pub fn status(mountpoint: &Path) -> anyhow::Result<serde_json::Value> {
    let mp = canonical_mountpoint(mountpoint)?;
    let shown = mountpoint.display();
    let Some(path) = find_status_file(&mp) else {
        if is_strata_mount(&mp) {
            bail!("{shown} is a Strata mount whose process is gone; run `strata unmount {shown}`");
        }
        bail!("{shown} is not a Strata mount");
    };
    let st = read_status_file(&path)?;
    if owner_alive(&st).is_none() {
        bail!(
            "the Strata process of {shown} is gone (stale status file {}); run `strata unmount {shown}`",
            path.display()
        );
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_unescape() {
        assert_eq!(
            unescape_mount_field(r"/mnt/a\040b\011c\134d"),
            b"/mnt/a b\tc\\d"
        );
        assert_eq!(unescape_mount_field(r"/x\04"), b"/x\\04");
        assert_eq!(
            unescape_mount_field("strata:file:///s"),
            b"strata:file:///s"
        );
    }

    #[test]
    fn status_names_and_process_times() {
        let a = status_file_name(Path::new("/mnt/a"));
        assert_eq!(a.len(), 32 + 5);
        assert!(a.ends_with(".json"));
        assert_ne!(a, status_file_name(Path::new("/mnt/b")));
        assert!(process_start_time(std::process::id()).is_some());
        assert!(process_start_time(u32::MAX).is_none());
    }
}
