//! `strata-testserver KIND` — start one of the kit's real servers on
//! 127.0.0.1 for a benchmark script, print how to reach it as shell
//! variable assignments, and stop it (removing its data) when standard input
//! reaches end of file. KIND: `s3`, `webdav-apache`, `webdav-rclone`, `sftp`.
//!
//! Printed: `STORE_URL` (a Strata store URL whose secrets are in files under
//! the server's temp dir) and the raw pieces a peer tool needs (`ENDPOINT`,
//! `BUCKET`, `ACCESS_KEY`, `SECRET_KEY`, `DAV_URL`, `DAV_USER`, `DAV_PASS`,
//! `SFTP_HOST`, `SFTP_PORT`, `SFTP_USER`, `SFTP_KEY`, `SFTP_KNOWN_HOSTS`).
//! Test credentials only: these servers live for one benchmark run.

use std::io::Read;
use std::path::Path;

use strata_testkit::{S3Server, SftpServer, WebDavServer};

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn write_secret(dir: &Path, name: &str, content: &str) -> Result<String, String> {
    let p = dir.join(name);
    std::fs::write(&p, content).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    Ok(p.display().to_string())
}

fn run() -> Result<(), String> {
    let kind = std::env::args().nth(1).unwrap_or_default();
    let secrets = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
    let mut vars: Vec<(&str, String)> = Vec::new();
    // Keep the server alive until stdin closes.
    let _guard: Box<dyn std::any::Any> = match kind.as_str() {
        "s3" => {
            let s = S3Server::start()?;
            let creds = write_secret(
                secrets.path(),
                "aws-credentials",
                &format!(
                    "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                    s.access_key, s.secret_key
                ),
            )?;
            vars.push((
                "STORE_URL",
                format!(
                    "s3://{}/strata?endpoint={}&region={}&credentials-file={creds}",
                    s.bucket, s.endpoint, s.region
                ),
            ));
            vars.push(("ENDPOINT", s.endpoint.clone()));
            vars.push(("REGION", s.region.clone()));
            vars.push(("BUCKET", s.bucket.clone()));
            vars.push(("ACCESS_KEY", s.access_key.clone()));
            vars.push(("SECRET_KEY", s.secret_key.clone()));
            Box::new(s)
        }
        "webdav-apache" | "webdav-rclone" => {
            let s = if kind == "webdav-apache" {
                WebDavServer::start_apache()?
            } else {
                WebDavServer::start_rclone()?
            };
            let pw = write_secret(secrets.path(), "dav-password", &s.password)?;
            vars.push((
                "STORE_URL",
                format!(
                    "webdav+http://{}@{}strata/?password-file={pw}",
                    s.user,
                    s.url.trim_start_matches("http://")
                ),
            ));
            vars.push(("DAV_URL", s.url.clone()));
            vars.push(("DAV_USER", s.user.clone()));
            vars.push(("DAV_PASS", s.password.clone()));
            Box::new(s)
        }
        "sftp" => {
            let s = SftpServer::start()?;
            vars.push(("STORE_URL", s.store_url()));
            vars.push(("SFTP_HOST", s.host.clone()));
            vars.push(("SFTP_PORT", s.port.to_string()));
            vars.push(("SFTP_USER", s.user.clone()));
            vars.push(("SFTP_KEY", s.key.display().to_string()));
            vars.push(("SFTP_KNOWN_HOSTS", s.known_hosts.display().to_string()));
            vars.push(("SFTP_ROOT", s.root.display().to_string()));
            Box::new(s)
        }
        other => {
            return Err(format!(
                "unknown server kind `{other}`; use s3, webdav-apache, webdav-rclone or sftp"
            ))
        }
    };
    for (k, v) in &vars {
        println!("{k}={}", q(v));
    }
    println!("READY=1");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("strata-testserver: {e}");
        std::process::exit(1);
    }
}
