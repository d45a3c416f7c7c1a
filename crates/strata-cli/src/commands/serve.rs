//! `strata serve webdav|http`: the vault over the network (strata-serve).
//! Like a mount, it runs outside the CLI's async runtime (it brings its own).

use std::io::Write;

use anyhow::{bail, Result};
use strata_serve::{run_serve, Protocol, ServeOptions};
use strata_vfs::session::SessionOptions;

use crate::cli::{Global, ServeArgs, ServeCommand};
use crate::config;
use crate::password;
use crate::session::password_sources;

fn serve_options(g: &Global, proto: Protocol, a: &ServeArgs, url: String) -> Result<ServeOptions> {
    if a.lease.break_lease && (a.read_only || proto == Protocol::Http) {
        bail!("--break-lease does not go with a read-only server: it takes no writer lease");
    }
    let mut o = ServeOptions::new(proto, url.clone());
    if let Some(l) = a.listen {
        o.listen = l;
    }
    strata_serve::check_listen(o.listen, a.htpasswd.is_some())?;
    o.htpasswd = a.htpasswd.clone();
    o.tls = a.tls_cert.clone().zip(a.tls_key.clone());
    o.refresh = std::time::Duration::from_secs(a.refresh);
    let mut s = SessionOptions::new(url);
    s.cache_dir = a.cache_dir.clone();
    (s.cache_size, s.read_cache_size) = super::mount::cache_budget(&a.cache_size)?;
    s.read_only = a.read_only || proto == Protocol::Http;
    s.state_dir = g.state_dir.clone();
    s.accept_rollback = g.accept_rollback;
    s.break_lease = a.lease.break_lease;
    (s.lease_ttl, s.lease_poll) = crate::session::lease_timing(a.lease_poll);
    o.session = s;
    Ok(o)
}

/// `strata serve webdav` / `strata serve http`.
pub fn serve(g: &Global, c: &ServeCommand) -> Result<()> {
    let (proto, a) = match c {
        ServeCommand::Webdav(a) => (Protocol::WebDav, a),
        ServeCommand::Http(a) => (Protocol::Http, a),
    };
    let url = config::resolve_store(g.store.as_deref())?;
    let opts = serve_options(g, proto, a, url.clone())?;
    if a.lease.break_lease {
        eprintln!("{}", crate::session::BREAK_LEASE_WARNING);
    }
    let pw = password::existing(password_sources(g), &format!("Password for {url}: "))?;
    let quiet = g.quiet;
    let kind = match proto {
        Protocol::WebDav => "WebDAV",
        Protocol::Http => "HTTP",
    };
    run_serve(opts, pw, |r| {
        // the address goes to stdout (scripts read it); the rest is chatter
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", r.url).and_then(|_| out.flush());
        if !quiet {
            eprintln!(
                "strata: serving the vault over {kind}{} at {}; stop with Ctrl-C",
                if r.read_only { " (read-only)" } else { "" },
                r.url
            );
        }
    })
}
