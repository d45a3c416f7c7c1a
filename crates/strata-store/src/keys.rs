//! Object keys: which names every backend accepts (relative, `/`-separated
//! segments of `[A-Za-z0-9._-]`, no empty, `.` or `..` segment, ≤ 1024 bytes)
//! and which list prefixes.

/// Check an object key.
pub(crate) fn validate_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty key");
    }
    if key.len() > 1024 {
        return Err("key longer than 1024 bytes");
    }
    if !key.bytes().all(is_key_byte) {
        return Err("keys may only contain A-Z a-z 0-9 . _ - /");
    }
    for seg in key.split('/') {
        match seg {
            "" => return Err("empty path segment (leading, trailing or double '/')"),
            "." | ".." => return Err("'.' and '..' segments are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// A list prefix: empty, or key characters not starting with `/`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.starts_with('/') {
        return Err("prefix must not start with '/'");
    }
    if !prefix.bytes().all(is_key_byte) {
        return Err("prefixes may only contain A-Z a-z 0-9 . _ - /");
    }
    if prefix.split('/').any(|s| s == "..") {
        return Err("'..' segments are not allowed");
    }
    Ok(())
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')
}
