//! Terminal feedback: byte progress bars (bytes, rate, ETA) drawn on stderr
//! only when it is a terminal and `--quiet` is off, plus warnings and
//! summaries that do not tear the bar.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata_core::data::Progress;

/// How chatty to be.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    pub quiet: bool,
}

impl Ui {
    /// A byte progress bar for `total` bytes (hidden when not wanted).
    pub fn bytes_bar(&self, total: u64, what: &str) -> Bar {
        let pb = if self.quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} {wide_bar:.cyan/blue} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            pb.set_style(style);
            pb.set_message(what.to_string());
            pb.enable_steady_tick(Duration::from_millis(200));
            pb
        };
        Bar { pb }
    }

    /// Print a warning (`strata: warning: …`) above any bar.
    pub fn warn(&self, bar: Option<&Bar>, msg: impl std::fmt::Display) {
        let line = format!("strata: warning: {msg}");
        match bar {
            Some(b) => b.pb.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Print a summary line on stderr unless `--quiet`.
    pub fn note(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }
}

/// A progress bar (possibly hidden); cleared when dropped.
pub struct Bar {
    pb: ProgressBar,
}

impl Bar {
    /// A callback the core calls with bytes processed.
    pub fn callback(&self) -> Progress {
        let pb = self.pb.clone();
        Arc::new(move |n| pb.inc(n))
    }
}

impl Drop for Bar {
    /// Clear the bar so that an error message (or the shell prompt) starts
    /// on a clean line.
    fn drop(&mut self) {
        self.pb.finish_and_clear();
    }
}
