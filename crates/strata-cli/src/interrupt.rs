//! Ctrl-C handling for long transfers: the first Ctrl-C asks the running
//! command to stop cleanly (`put` commits what is complete, `get` removes its
//! temporary file); a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tokio::sync::Notify;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);

fn notify() -> &'static Notify {
    static N: OnceLock<Notify> = OnceLock::new();
    N.get_or_init(Notify::new)
}

/// The command stopped because the user pressed Ctrl-C.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Start handling Ctrl-C (call from inside the runtime, after any password
/// prompt so a Ctrl-C at the prompt still ends the program the usual way).
pub fn install() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async {
        loop {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("strata: interrupted again; exiting now");
                std::process::exit(130);
            }
            notify().notify_waiters();
        }
    });
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Resolves once Ctrl-C is pressed (at once if it already was).
pub async fn wait() {
    loop {
        let n = notify().notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if requested() {
            return;
        }
        n.await;
    }
}
