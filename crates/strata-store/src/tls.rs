//! `ca-file=PATH` on HTTP-based store URLs: trust the CA certificates in a
//! PEM file (and only those, like `curl --cacert`) instead of the system's,
//! for servers with a private CA. Shared by `basic+https://`, `s3://`,
//! `webdav+https://` and `onedrive:`.

/// The store-URL option naming the CA file.
pub(crate) const CA_FILE: &str = "ca-file";

/// What to add to a TLS error message: how to trust a private CA.
pub(crate) const PRIVATE_CA_HINT: &str = "if the server's certificate comes from a private CA, \
     add ca-file=PATH (that CA's certificate, PEM) to the store URL";

/// Longest CA file read (a bundle of a few hundred certificates fits).
const MAX_CA_FILE: u64 = 4 << 20;

/// The certificates of a PEM file; errors name the file and say what is
/// wrong.
pub(crate) fn load_ca_file(path: &str) -> Result<Vec<reqwest::Certificate>, String> {
    let p = crate::url::expand_home(path);
    let shown = p.display();
    let len = std::fs::metadata(&p)
        .map_err(|e| format!("cannot read CA file {shown}: {e}"))?
        .len();
    if len > MAX_CA_FILE {
        return Err(format!(
            "CA file {shown} is {len} bytes; expected a PEM file of CA certificates \
             (at most {MAX_CA_FILE} bytes)"
        ));
    }
    let pem = std::fs::read(&p).map_err(|e| format!("cannot read CA file {shown}: {e}"))?;
    if !contains(&pem, b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "CA file {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("CA file {shown} is not a valid PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!("CA file {shown} holds no certificate"));
    }
    Ok(certs)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `builder` trusting only `certs` (when given).
pub(crate) fn with_roots(
    builder: reqwest::ClientBuilder,
    certs: Option<Vec<reqwest::Certificate>>,
) -> reqwest::ClientBuilder {
    match certs {
        Some(c) => builder.tls_certs_only(c),
        None => builder,
    }
}
