//! https with a private CA: `strata cloud-server --tls-cert --tls-key` (a
//! real server on 127.0.0.1) with a certificate from a CA made here. A store
//! URL with `ca-file=` works; without it, or with another CA, every command
//! is refused with a message naming the store and suggesting `ca-file`.
//! The opendal-based stores (WebDAV, S3) take `ca-file=` too: pointed at
//! the same server, their TLS handshake passes with it and fails without.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA and a certificate for 127.0.0.1 / localhost signed by it, as PEM
/// files in `dir` (named with `tag`).
fn make_pki(dir: &Path, tag: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("Strata test CA {tag}"));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let pki = Pki {
        ca: dir.join(format!("{tag}-ca.pem")),
        cert: dir.join(format!("{tag}-cert.pem")),
        key: dir.join(format!("{tag}-key.pem")),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

fn https_server(dir: &Path, pki: &Pki) -> Served {
    Served::start(
        &dir.join("cloud"),
        &dir.join("token"),
        &[
            "--tls-cert",
            pki.cert.to_str().unwrap(),
            "--tls-key",
            pki.key.to_str().unwrap(),
        ],
    )
}

#[test]
fn https_with_a_private_ca_works_with_ca_file_and_is_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = make_pki(d, "good");
    let other = make_pki(d, "other");
    let s = https_server(d, &pki);
    assert!(s.url.starts_with("basic+https://127.0.0.1:"), "{}", s.url);

    // Without ca-file: refused, naming the store and the fix.
    let out = env_cmd(d, &s.url).args(["init", &s.url]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "init over an unknown CA succeeded");
    let shown = s.url.split('?').next().unwrap();
    assert!(
        err.contains(shown),
        "the error does not name the store: {err}"
    );
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("ca-file"), "{err}");

    // With another CA's file: refused too.
    let wrong = format!("{}&ca-file={}", s.url, other.ca.display());
    let out = env_cmd(d, &wrong).args(["init", &wrong]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "init with the wrong CA succeeded");
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains(shown), "{err}");

    // A CA file that is not PEM: the error names the file.
    let junk = d.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let bad = format!("{}&ca-file={}", s.url, junk.display());
    let out = env_cmd(d, &bad).args(["init", &bad]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(junk.to_str().unwrap()), "{err}");

    // With the right CA: init, put, get work.
    let url = format!("{}&ca-file={}", s.url, pki.ca.display());
    run_ok({
        let mut c = env_cmd(d, &url);
        c.args(["init", &url]);
        c
    });
    let src = d.join("src");
    fill_random(&src, 3 << 20, 5);
    run_ok({
        let mut c = env_cmd(d, &url);
        c.arg("put").arg(&src).arg("/f");
        c
    });
    let back = d.join("back");
    run_ok({
        let mut c = env_cmd(d, &url);
        c.args(["get", "/f"]).arg(&back);
        c
    });
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&back).unwrap());
    drop(s);
}

/// The first line of `strata ls` against `url`: the error (or success).
fn ls_error(d: &Path, url: &str) -> String {
    let out = env_cmd(d, url)
        .env("STRATA_WEBDAV_USER", "u")
        .env("STRATA_WEBDAV_PASSWORD", "p")
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .args(["ls", "/"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "ls against a non-WebDAV/S3 server succeeded"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn webdav_and_s3_urls_take_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = make_pki(d, "dav");
    let s = https_server(d, &pki);
    let hostport = s
        .url
        .trim_start_matches("basic+https://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let ca = pki.ca.display().to_string();
    let stores = [
        (
            format!("webdav+https://{hostport}/dav?retries=0"),
            format!("webdav+https://{hostport}/dav?retries=0&ca-file={ca}"),
        ),
        (
            format!("s3://bucket/p?endpoint=https://{hostport}&retries=0"),
            format!("s3://bucket/p?endpoint=https://{hostport}&retries=0&ca-file={ca}"),
        ),
    ];
    for (without, with) in stores {
        // The bundled server speaks neither WebDAV nor S3, so both fail;
        // but only the one without ca-file fails in the TLS handshake.
        let e = ls_error(d, &without);
        assert!(e.contains("TLS"), "{without}: {e}");
        assert!(e.contains("ca-file"), "{without}: {e}");
        let e = ls_error(d, &with);
        assert!(!e.contains("TLS"), "{with}: the handshake failed: {e}");
    }
    // A missing CA file is named.
    let e = ls_error(
        d,
        &format!(
            "webdav+https://{hostport}/dav?ca-file={}",
            d.join("nope.pem").display()
        ),
    );
    assert!(e.contains("nope.pem"), "{e}");
    drop(s);
}
