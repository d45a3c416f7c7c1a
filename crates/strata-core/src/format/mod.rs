//! The on-store format, version 2 (specified in docs/FORMAT.md): object
//! names, the public header, data blob layout, packs, and metadata objects
//! (logs and checkpoints). Everything here is pure byte layout — no store I/O.

pub mod blob;
pub mod header;
pub mod meta;
pub mod pack;

/// Format version written by this build: 2 = packs (FORMAT §5.6, §12).
pub const FORMAT_VERSION: u32 = 2;
/// Oldest format version this build reads (and upgrades in place when it
/// first writes a pack into it).
pub const MIN_FORMAT_VERSION: u32 = 1;

/// Name of the public header object.
pub const HEADER_KEY: &str = "strata.vault";
/// Prefix of metadata objects.
pub const META_PREFIX: &str = "meta/";
/// Prefix of data blobs.
pub const DATA_PREFIX: &str = "data/";

/// `meta/log.<16 hex>`
pub fn log_key(version: u64) -> String {
    format!("meta/log.{version:016x}")
}

/// `meta/checkpoint.<16 hex version>.<4 hex part>.<4 hex count>`
pub fn checkpoint_key(version: u64, part: u32, count: u32) -> String {
    format!("meta/checkpoint.{version:016x}.{part:04x}.{count:04x}")
}

/// `data/<2 hex>/<62 hex>`
pub fn blob_key(id: &strata_crypto::BlobId) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], &h[2..])
}

/// Parsed name of a metadata object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaName {
    Log(u64),
    Checkpoint { version: u64, part: u32, count: u32 },
}

/// Parse a `meta/…` key; `None` for anything else.
pub fn parse_meta_key(key: &str) -> Option<MetaName> {
    let rest = key.strip_prefix(META_PREFIX)?;
    if let Some(v) = rest.strip_prefix("log.") {
        if v.len() != 16 {
            return None;
        }
        return u64::from_str_radix(v, 16).ok().map(MetaName::Log);
    }
    let v = rest.strip_prefix("checkpoint.")?;
    let mut it = v.split('.');
    let (ver, part, count) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || ver.len() != 16 || part.len() != 4 || count.len() != 4 {
        return None;
    }
    Some(MetaName::Checkpoint {
        version: u64::from_str_radix(ver, 16).ok()?,
        part: u32::from_str_radix(part, 16).ok()?,
        count: u32::from_str_radix(count, 16).ok()?,
    })
}

/// Parse a `data/<2>/<62>` key into a blob id.
pub fn parse_blob_key(key: &str) -> Option<strata_crypto::BlobId> {
    let rest = key.strip_prefix(DATA_PREFIX)?;
    let (a, b) = rest.split_once('/')?;
    if a.len() != 2 || b.len() != 62 {
        return None;
    }
    strata_crypto::BlobId::from_hex(&format!("{a}{b}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        assert_eq!(parse_meta_key(&log_key(42)), Some(MetaName::Log(42)));
        assert_eq!(
            parse_meta_key(&checkpoint_key(7, 1, 3)),
            Some(MetaName::Checkpoint {
                version: 7,
                part: 1,
                count: 3
            })
        );
        assert_eq!(parse_meta_key("meta/log.12"), None);
        let id = strata_crypto::BlobId([0xab; 32]);
        assert_eq!(parse_blob_key(&blob_key(&id)), Some(id));
        assert!(blob_key(&id).starts_with("data/ab/"));
    }
}
