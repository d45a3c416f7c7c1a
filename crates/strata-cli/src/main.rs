//! `strata`: the command-line client of Strata, an encrypted virtual drive
//! over cloud storage.
//!
//! This file only wires things up: parse the command line ([`cli`]), set up
//! logging and the tokio runtime, run the verb ([`commands`]) and turn its
//! result into `strata: error: …` and an exit status ([`report`]): 0 success,
//! 1 failure, 2 usage error (from clap), 130 interrupted.

mod cli;
mod commands;
mod config;
mod display;
mod interrupt;
mod password;
mod progress;
mod report;
mod session;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose >= 2)
        .try_init();
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.global.verbose);
    // A mount or server runs its own runtime and threads: not inside ours.
    match &cli.command {
        cli::Command::Mount(a) => return report::exit(commands::mount::mount(&cli.global, a)),
        cli::Command::Demo(a) => return report::exit(commands::mount::demo(&cli.global, a)),
        cli::Command::Serve(c) => return report::exit(commands::serve::serve(&cli.global, c)),
        // long transfers: chunk buffers back to the system, few arenas
        cli::Command::Put(_) | cli::Command::Get(_) => strata_vfs::session::bound_allocator(),
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(commands::run(cli));
    // don't wait for stray blocking tasks (e.g. a reader cut short by an error)
    rt.shutdown_timeout(Duration::from_secs(1));
    session::print_store_stats();
    report::exit(res)
}
