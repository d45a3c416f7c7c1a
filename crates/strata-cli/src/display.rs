//! Formatting for humans: byte sizes, `ls -l` mode strings, timestamps and
//! vault names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_core::{Kind, Ts};

/// `1536` → `1.5 KiB`; below 1 KiB plain bytes.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A size with the exact byte count when it is not tiny: `1.5 KiB (1536 bytes)`.
pub fn size_exact(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{} ({n} bytes)", size(n))
    }
}

/// `ls -l` style mode string, e.g. `-rw-r--r--`, `drwxr-xr-x`, `lrwxrwxrwx`.
pub fn mode_string(kind: Kind, perm: u32) -> String {
    let t = match kind {
        Kind::File => '-',
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
        Kind::CharDev => 'c',
        Kind::BlockDev => 'b',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set_x, set_nox)) in special.iter().enumerate() {
        let shift = 6 - 3 * i as u32;
        let bits = (perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (perm & bit != 0, x) {
            (true, true) => *set_x,
            (true, false) => *set_nox,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// Local time as `2026-11-21 23:59` (UTC if the time zone is unknown).
pub fn time(ts: Ts) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ts)) {
        Ok(t) => t
            .to_zoned(jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC))
            .strftime("%Y-%m-%d %H:%M")
            .to_string(),
        Err(_) => "????-??-?? ??:??".to_string(),
    }
}

/// A vault timestamp as a `SystemTime`.
pub fn system_time(ts: Ts) -> SystemTime {
    let d = Duration::from_nanos(ts.unsigned_abs());
    let t = if ts >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// What a transfer (`put`, `get`) did, for its summary line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Files copied that were not at the destination.
    pub added: u64,
    /// Files copied over a different one at the destination.
    pub replaced: u64,
    /// Files already at the destination, unchanged: not copied.
    pub unchanged: u64,
    /// Bytes of the files copied.
    pub copied: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symbolic links created, and found already there.
    pub links: u64,
    pub links_unchanged: u64,
    /// Entries not stored (special files, names that are not UTF-8).
    pub ignored: u64,
    /// Entries that failed (each reported on its own).
    pub failed: u64,
}

/// "stored 150 files: 80 added, 10 replaced, 60 skipped (unchanged);
/// 200.0 MiB copied; 3 directories created, 1 symbolic link; ignored
/// 1 entry; 2 failed"
pub fn tally(verb: &str, t: &Tally) -> String {
    let files = t.added + t.replaced + t.unchanged;
    let mut msg = format!(
        "{verb} {}: {} added, {} replaced, {} skipped (unchanged); {} copied",
        plural(files, "file", "files"),
        t.added,
        t.replaced,
        t.unchanged,
        size(t.copied)
    );
    if t.dirs > 0 {
        msg.push_str(&format!(
            "; {} created",
            plural(t.dirs, "directory", "directories")
        ));
    }
    if t.links + t.links_unchanged > 0 {
        msg.push_str(&format!(
            "; {} ({} unchanged)",
            plural(
                t.links + t.links_unchanged,
                "symbolic link",
                "symbolic links"
            ),
            t.links_unchanged
        ));
    }
    if t.ignored > 0 {
        msg.push_str(&format!(
            "; ignored {}",
            plural(t.ignored, "entry", "entries")
        ));
    }
    if t.failed > 0 {
        msg.push_str(&format!("; {} failed", t.failed));
    }
    msg
}

/// `1 file`, `2 files`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A vault name (bytes) for display.
pub fn name(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

/// Join a vault directory path and a child name.
pub fn join(dir: &str, child: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{child}")
    } else {
        format!("{dir}/{child}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 20), "5.0 MiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
        assert_eq!(size_exact(2048), "2.0 KiB (2048 bytes)");
    }

    #[test]
    fn modes() {
        assert_eq!(mode_string(Kind::File, 0o644), "-rw-r--r--");
        assert_eq!(mode_string(Kind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(Kind::Symlink, 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(Kind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Kind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(Kind::File, 0o2640), "-rw-r-S---");
    }

    #[test]
    fn times_round_trip() {
        let t = system_time(1_700_000_000_123_456_789);
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_700_000_000, 123_456_789)
        );
        let before = system_time(-5_000_000_001);
        assert_eq!(
            UNIX_EPOCH.duration_since(before).unwrap(),
            Duration::new(5, 1)
        );
        assert_eq!(time(0).len(), "1970-01-01 00:00".len());
    }

    #[test]
    fn joins() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(join("/a/", "b"), "/a/b");
    }
}
