//! One module per verb; [`run`] dispatches the parsed command line.

mod cat;
mod check;
mod compare;
mod edit;
mod get;
mod info;
mod init;
mod ls;
mod maint;
pub mod mount;
mod passwd;
mod put;
pub mod serve;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::progress::Ui;

/// Run one parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    let ui = Ui { quiet: g.quiet };
    match &cli.command {
        Command::Init(a) => init::run(g, ui, a).await,
        Command::Put(a) => put::run(g, ui, a).await,
        Command::Get(a) => get::run(g, ui, a).await,
        Command::Ls(a) => ls::run(g, a).await,
        Command::Cat(a) => cat::run(g, a).await,
        Command::Mkdir(a) => edit::mkdir(g, ui, a).await,
        Command::Rm(a) => edit::rm(g, ui, a).await,
        Command::Mv(a) => edit::mv(g, ui, a).await,
        Command::Info(_) => info::run(g).await,
        Command::Passwd(a) => passwd::run(g, ui, a).await,
        Command::Gc(a) => maint::gc(g, ui, a).await,
        Command::Check(a) => check::run(g, ui, a).await,
        Command::Unmount(a) => mount::unmount(a),
        Command::Status(a) => mount::status(a),
        // handled before the runtime starts (see main.rs)
        Command::CloudServer(a) => mount::cloud_server(a).await,
        Command::Mount(_) | Command::Demo(_) | Command::Serve(_) => {
            anyhow::bail!("internal: mount runs outside the async runtime")
        }
    }
}
