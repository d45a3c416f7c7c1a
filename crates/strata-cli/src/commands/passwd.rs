//! `strata passwd`: change the vault password (rewraps the master key in
//! the header; no data is re-encrypted).

use anyhow::Result;
use strata_core::Vault;

use crate::cli::{Global, PasswdArgs};
use crate::password::{self, Sources};
use crate::progress::Ui;
use crate::session;

pub async fn run(g: &Global, ui: Ui, a: &PasswdArgs) -> Result<()> {
    let (vault, old) = session::open_writer(g, "passwd", &a.lease).await?;
    let res = change(&vault, &old, ui, a).await;
    session::finish(&vault, res).await
}

async fn change(vault: &Vault, old: &[u8], ui: Ui, a: &PasswdArgs) -> Result<()> {
    let new = password::new(
        Sources {
            file: a.new_password_file.as_deref(),
            file_flag: "--new-password-file",
            env: password::ENV_NEW_PASSWORD,
        },
        "New password: ",
    )?;
    vault.change_password(old, &new, None).await?;
    ui.note(format!("password changed for {}", vault.store_name()));
    Ok(())
}
