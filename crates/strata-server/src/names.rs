//! Object names: what the API accepts, and how a name maps onto the root.

/// Longest object name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 1024;

/// The folder (under the root) holding uploads in progress.
pub(crate) const TMP_DIR: &str = ".tmp";

/// Bytes allowed in a name segment.
pub(crate) fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Whether `seg` is a valid segment: non-empty, not `.`/`..`, made of
/// `[A-Za-z0-9._-]`.
pub(crate) fn is_valid_segment(seg: &str) -> bool {
    !seg.is_empty() && seg != "." && seg != ".." && seg.bytes().all(is_segment_byte)
}

/// Checks an object name; the error says what is wrong (without the name,
/// which the caller may not want to echo).
pub(crate) fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err("must be 1 to 1024 bytes long");
    }
    if name.starts_with(TMP_DIR) {
        return Err("must not start with .tmp");
    }
    if name.starts_with('/') {
        return Err("must be relative (no leading /)");
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return Err("has an empty segment");
        }
        if seg == "." || seg == ".." {
            return Err("has a . or .. segment");
        }
        if !seg.bytes().all(is_segment_byte) {
            return Err("may only use [A-Za-z0-9._-] and / between segments");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "a/b/c",
            "x.y-z_1",
            "...",
            "a/.hidden",
            "A9/b",
            &"n".repeat(1024),
        ] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "./a",
            "a/.",
            ".tmp",
            ".tmp/x",
            ".tmpx",
            "a b",
            "a\\b",
            "é",
            "a\0b",
            &"n".repeat(1025),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
