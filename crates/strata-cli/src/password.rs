//! Where passwords come from: a password file (first line), an environment
//! variable, or a prompt on the terminal without echo. Passwords are kept in
//! zeroized buffers.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// A password held in memory (wiped on drop).
pub type Secret = Zeroizing<Vec<u8>>;

/// Environment variable holding the vault password.
pub const ENV_PASSWORD: &str = "STRATA_PASSWORD";
/// Environment variable holding the new password for `strata passwd`.
pub const ENV_NEW_PASSWORD: &str = "STRATA_NEW_PASSWORD";

/// Non-interactive sources for one password, in order of preference.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// `--password-file` (or `--new-password-file`) and its flag name.
    pub file: Option<&'a Path>,
    pub file_flag: &'a str,
    /// Environment variable to read.
    pub env: &'a str,
}

/// The first line of `bytes`, without its line ending.
fn first_line(bytes: &[u8]) -> &[u8] {
    let line = match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => &bytes[..i],
        None => bytes,
    };
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Read a password file: its first line, trailing newline stripped.
pub fn read_password_file(path: &Path) -> Result<Secret> {
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read password file {}", path.display()))?,
    );
    Ok(Zeroizing::new(first_line(&bytes).to_vec()))
}

fn from_sources(s: Sources<'_>) -> Result<Option<Secret>> {
    if let Some(p) = s.file {
        return read_password_file(p).map(Some);
    }
    if let Some(v) = std::env::var_os(s.env) {
        return Ok(Some(Zeroizing::new(OsString::into_vec(v))));
    }
    Ok(None)
}

fn no_terminal(s: Sources<'_>) -> anyhow::Error {
    anyhow::anyhow!(
        "no password given and standard input is not a terminal: pass {} PATH or set {}",
        s.file_flag,
        s.env
    )
}

fn prompt(text: &str) -> Result<Secret> {
    let p =
        rpassword::prompt_password(text).context("cannot read the password from the terminal")?;
    Ok(Zeroizing::new(p.into_bytes()))
}

/// The password of an existing vault.
pub fn existing(s: Sources<'_>, prompt_text: &str) -> Result<Secret> {
    if let Some(p) = from_sources(s)? {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(no_terminal(s));
    }
    prompt(prompt_text)
}

/// A new password: from the sources, or asked twice on the terminal.
/// Empty passwords are refused.
pub fn new(s: Sources<'_>, prompt_text: &str) -> Result<Secret> {
    if let Some(p) = from_sources(s)? {
        if p.is_empty() {
            bail!(
                "the new password is empty (from {} or {})",
                s.file_flag,
                s.env
            );
        }
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(no_terminal(s));
    }
    let first = prompt(prompt_text)?;
    if first.is_empty() {
        bail!("the password must not be empty");
    }
    let again = prompt("Repeat the password: ")?;
    if *first != *again {
        bail!("the passwords do not match; nothing was changed");
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_strips_line_endings() {
        assert_eq!(first_line(b"secret\n"), b"secret");
        assert_eq!(first_line(b"secret\r\nmore\n"), b"secret");
        assert_eq!(first_line(b"secret"), b"secret");
        assert_eq!(first_line(b"  spaced  \n"), b"  spaced  ");
        assert_eq!(first_line(b""), b"");
    }

    #[test]
    fn password_file_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pw");
        std::fs::write(&p, "hunter2\nignored\n").unwrap();
        assert_eq!(read_password_file(&p).unwrap().as_slice(), b"hunter2");
        let e = read_password_file(&d.path().join("missing")).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read password file"));
    }
}
