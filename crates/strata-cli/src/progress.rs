//! Terminal feedback: progress bars (files, bytes, rate, ETA) drawn on
//! stderr only when it is a terminal and `--quiet` is off, plus warnings and
//! summaries that do not tear the bar.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
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

    /// A bar for a transfer whose size is still being counted: files done
    /// out of files found, and bytes (of the files to copy) with rate and
    /// ETA. See [`Transfer`].
    pub fn transfer_bar(&self, what: &str) -> Transfer {
        let pb = if self.quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} {msg} {wide_bar:.cyan/blue} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            pb.set_style(style);
            pb.set_prefix(what.to_string());
            pb.enable_steady_tick(Duration::from_millis(200));
            pb
        };
        let counts = Arc::new(Counts::default());
        redraw(&pb, &counts);
        Transfer {
            bar: Bar { pb },
            counts,
        }
    }

    /// Print a warning (`strata: warning: …`) above any bar.
    pub fn warn(&self, bar: Option<&Bar>, msg: impl std::fmt::Display) {
        let line = format!("strata: warning: {msg}");
        match bar {
            Some(b) => b.pb.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Print an error (`strata: error: …`) above any bar.
    pub fn error(&self, bar: Option<&Bar>, e: &anyhow::Error) {
        match bar {
            Some(b) => b.pb.suspend(|| crate::report::print(e)),
            None => crate::report::print(e),
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

#[derive(Default)]
struct Counts {
    /// Files found so far, and whether the count is complete (1).
    files: AtomicU64,
    counted: AtomicU64,
    /// Files finished (copied, unchanged or failed).
    done: AtomicU64,
    /// Bytes of every file found, and of the files that needed no copy.
    bytes: AtomicU64,
    skipped_bytes: AtomicU64,
}

fn redraw(pb: &ProgressBar, c: &Counts) {
    if pb.is_hidden() {
        return;
    }
    let bytes = c.bytes.load(Ordering::Relaxed);
    let skipped = c.skipped_bytes.load(Ordering::Relaxed);
    pb.set_length(bytes.saturating_sub(skipped));
    let files = c.files.load(Ordering::Relaxed);
    let more = if c.counted.load(Ordering::Relaxed) == 0 {
        "+"
    } else {
        ""
    };
    pb.set_message(format!(
        "{}/{files}{more} files",
        c.done.load(Ordering::Relaxed)
    ));
}

/// The progress of a transfer: the bar's length is the bytes of every file
/// found so far minus those found unchanged, so rate and ETA are about what
/// is really copied; the message counts files ("12/150 files", with a `+`
/// while the tree is still being counted). Cleared when dropped.
pub struct Transfer {
    bar: Bar,
    counts: Arc<Counts>,
}

/// What the walk that counts the tree updates (see [`Transfer::counter`]).
#[derive(Clone)]
pub struct Counter {
    pb: ProgressBar,
    counts: Arc<Counts>,
}

impl Counter {
    /// `files` more files holding `bytes` were found.
    pub fn found(&self, files: u64, bytes: u64) {
        self.counts.files.fetch_add(files, Ordering::Relaxed);
        self.counts.bytes.fetch_add(bytes, Ordering::Relaxed);
        redraw(&self.pb, &self.counts);
    }

    /// The whole tree has been counted.
    pub fn counted(&self) {
        self.counts.counted.store(1, Ordering::Relaxed);
        redraw(&self.pb, &self.counts);
    }
}

impl Transfer {
    /// A handle for the counting walk.
    pub fn counter(&self) -> Counter {
        Counter {
            pb: self.bar.pb.clone(),
            counts: self.counts.clone(),
        }
    }

    /// A file is finished; `unsent` of its bytes were not copied (it was
    /// unchanged, or failed before they were).
    pub fn file_done(&self, unsent: u64) {
        self.counts.done.fetch_add(1, Ordering::Relaxed);
        self.counts
            .skipped_bytes
            .fetch_add(unsent, Ordering::Relaxed);
        redraw(&self.bar.pb, &self.counts);
    }

    /// A callback the core calls with bytes copied.
    pub fn callback(&self) -> Progress {
        self.bar.callback()
    }

    /// The bar, for warnings printed above it.
    pub fn bar(&self) -> &Bar {
        &self.bar
    }
}
