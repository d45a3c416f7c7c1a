//! Error reporting: `strata: error: …` lines on stderr, exit codes, and
//! [`Partial`] for verbs that go on after a failed operand (like `rm a b`)
//! and only exit non-zero at the end.

use std::process::ExitCode;

use crate::interrupt::Interrupted;

/// Some operands failed; each failure was already printed.
#[derive(Debug)]
pub struct AlreadyReported;

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("some operations failed")
    }
}

impl std::error::Error for AlreadyReported {}

/// The message of an error and its causes, without repeating a cause whose
/// text the message already includes.
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// Print one error as `strata: error: …`.
pub fn print(e: &anyhow::Error) {
    eprintln!("strata: error: {}", message(e));
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Print the final error of a command and choose the exit code.
pub fn exit(res: anyhow::Result<()>) -> ExitCode {
    let Err(e) = res else {
        return ExitCode::SUCCESS;
    };
    if e.downcast_ref::<AlreadyReported>().is_some() {
        return ExitCode::FAILURE;
    }
    if e.downcast_ref::<Interrupted>().is_some() {
        eprintln!("strata: interrupted");
        return ExitCode::from(130);
    }
    if is_broken_pipe(&e) {
        // the reader went away (e.g. `strata cat f | head`): not our error
        return ExitCode::from(141);
    }
    print(&e);
    ExitCode::FAILURE
}

/// Collects per-operand failures of a multi-operand verb.
#[derive(Default)]
pub struct Partial {
    failed: usize,
}

impl Partial {
    /// Report a failed operand and go on.
    pub fn fail(&mut self, e: anyhow::Error) {
        print(&e);
        self.failed += 1;
    }

    /// Record the result of one operand.
    pub fn check<T>(&mut self, r: anyhow::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// `Err(AlreadyReported)` if anything failed.
    pub fn finish(self) -> anyhow::Result<()> {
        if self.failed > 0 {
            Err(AlreadyReported.into())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::from(strata_core::VaultError::io("writing x", io));
        assert_eq!(message(&e), "writing x: disk on fire");
        let e: anyhow::Result<()> = Err(std::io::Error::other("inner")).context("outer");
        assert_eq!(message(&e.unwrap_err()), "outer: inner");
    }
}
