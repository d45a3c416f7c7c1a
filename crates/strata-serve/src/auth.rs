//! HTTP Basic authentication against an Apache htpasswd file. Only bcrypt
//! entries (`htpasswd -B`: `$2y$`, `$2b$`, `$2a$`) are accepted; a file with
//! any other kind of entry (MD5 `$apr1$`, SHA1 `{SHA}`, crypt, plain) is
//! refused when the server starts, naming the line, since those hashes are
//! weak against anyone who obtains the file.
//!
//! bcrypt is slow on purpose (tens of milliseconds per check), and WebDAV
//! clients send the credentials with every request, so a successful check
//! is remembered (as a keyed hash of user and password, never the password
//! itself) for the life of the server.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{bail, Context};
use base64::Engine;

/// The users of an htpasswd file.
pub struct Htpasswd {
    users: Vec<(String, String)>,
    /// keyed hashes of (user, password) pairs that checked out
    verified: Mutex<HashSet<[u8; 32]>>,
    key: [u8; 32],
}

impl Htpasswd {
    /// Read and check an htpasswd file.
    pub fn load(path: &Path) -> anyhow::Result<Htpasswd> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the htpasswd file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse htpasswd text (`what` names it in errors).
    pub fn parse(text: &str, what: &str) -> anyhow::Result<Htpasswd> {
        let mut users = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                bail!(
                    "{what} line {}: not `user:hash`; create entries with `htpasswd -B {what} USER`",
                    i + 1
                );
            };
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                bail!(
                    "{what} line {} (user {user:?}): not a bcrypt entry; only bcrypt is accepted \
                     (MD5, SHA1 and crypt hashes are weak): recreate it with `htpasswd -B {what} {user}`",
                    i + 1
                );
            }
            users.push((user.to_string(), hash.to_string()));
        }
        if users.is_empty() {
            bail!("{what} has no users; add one with `htpasswd -B {what} USER`");
        }
        let mut key = [0u8; 32];
        rand_key(&mut key);
        Ok(Htpasswd {
            users,
            verified: Mutex::new(HashSet::new()),
            key,
        })
    }

    /// Whether an `Authorization` header value names a user with the right
    /// password.
    pub fn check_header(&self, value: &[u8]) -> bool {
        let Some(b64) = value
            .strip_prefix(b"Basic ")
            .or_else(|| value.strip_prefix(b"basic "))
        else {
            return false;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim_ascii()) else {
            return false;
        };
        let Ok(s) = std::str::from_utf8(&raw) else {
            return false;
        };
        let Some((user, pw)) = s.split_once(':') else {
            return false;
        };
        self.check(user, pw)
    }

    /// Whether `password` is `user`'s.
    pub fn check(&self, user: &str, password: &str) -> bool {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&(user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        let tag: [u8; 32] = h.finalize().into();
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.contains(&tag) {
            return true;
        }
        drop(verified);
        let ok = self
            .users
            .iter()
            .filter(|(u, _)| u == user)
            .any(|(_, hash)| bcrypt::verify(password, hash).unwrap_or(false));
        if ok {
            verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            verified.insert(tag);
        }
        ok
    }
}

/// A random key (from the OS) for the verified-credentials hashes.
fn rand_key(key: &mut [u8; 32]) {
    let n =
        rustix::rand::getrandom(&mut key[..], rustix::rand::GetRandomFlags::empty()).unwrap_or(0);
    if n != key.len() {
        // fall back to something unpredictable enough for a cache key
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        *key = blake3::hash(
            &[
                t.to_le_bytes().as_slice(),
                &std::process::id().to_le_bytes(),
            ]
            .concat(),
        )
        .into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_entries_check_and_others_are_refused() {
        let hash = bcrypt::hash("s3cret", 4).unwrap_or_default();
        let h = Htpasswd::parse(&format!("# users\nalice:{hash}\n"), "test").unwrap();
        assert!(h.check("alice", "s3cret"));
        assert!(h.check("alice", "s3cret"), "cached");
        assert!(!h.check("alice", "wrong"));
        assert!(!h.check("bob", "s3cret"));
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        assert!(h.check_header(format!("Basic {b64}").as_bytes()));
        assert!(!h.check_header(b"Basic !!!"));
        assert!(!h.check_header(b"Bearer x"));
        let e = Htpasswd::parse("bob:$apr1$abc$def\n", "f")
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("not a bcrypt entry") && e.contains("htpasswd -B")));
        assert!(Htpasswd::parse("\n", "f").is_err());
    }
}
