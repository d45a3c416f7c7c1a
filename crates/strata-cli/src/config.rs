//! The config file and store resolution: `--store` takes a URL, a path or the
//! name of a store saved in `[stores]` of `$STRATA_CONFIG` (default
//! `~/.config/strata/config.toml`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// The parts of the config file the CLI reads.
#[derive(Debug, Default, Deserialize)]
pub struct Config {
    /// Saved stores: name → URL.
    #[serde(default)]
    pub stores: BTreeMap<String, String>,
}

/// Where the config file lives.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STRATA_CONFIG") {
        return Some(PathBuf::from(p));
    }
    dirs::config_dir().map(|d| d.join("strata").join("config.toml"))
}

/// Load the config file at `path` (a missing file is an empty config).
pub fn load(path: &Path) -> Result<Config> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read config file {}", path.display()))
        }
    };
    toml::from_str(&text).map_err(|e| anyhow!("config file {} is invalid: {e}", path.display()))
}

/// Whether a `--store` value is a URL or path rather than a saved name.
pub fn is_url_or_path(s: &str) -> bool {
    s.contains("://") || s.starts_with('/') || s.starts_with('.')
}

/// Turn the `--store` value (or its absence) into a store URL.
pub fn resolve_store(value: Option<&str>) -> Result<String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        bail!(
            "no store given: pass --store URL (e.g. --store file:///path/to/vault) \
             or set STRATA_STORE"
        );
    };
    if is_url_or_path(v) {
        return Ok(v.to_string());
    }
    let Some(path) = config_path() else {
        bail!("`{v}` is not a URL, and there is no config file to look it up in; use a URL like file:///path or a path like ./{v}");
    };
    if !path.exists() {
        bail!(
            "`{v}` is not a URL or path, and there is no config file {} to look it up in; \
             for a directory, write a path like ./{v} or a URL like file:///path",
            path.display()
        );
    }
    let cfg = load(&path)?;
    match cfg.stores.get(v) {
        Some(url) => Ok(url.clone()),
        None => {
            let known = if cfg.stores.is_empty() {
                "none".to_string()
            } else {
                cfg.stores.keys().cloned().collect::<Vec<_>>().join(", ")
            };
            bail!(
                "no store named `{v}` in {} (saved stores: {known}); \
                 for a directory, write a path like ./{v} or a URL like file:///path",
                path.display()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_recognised() {
        assert!(is_url_or_path("file:///x"));
        assert!(is_url_or_path("memory://a"));
        assert!(is_url_or_path("/abs"));
        assert!(is_url_or_path("./rel"));
        assert!(is_url_or_path("../rel"));
        assert!(!is_url_or_path("photos"));
    }

    #[test]
    fn config_parses() {
        let c: Config = toml::from_str("[stores]\nphotos = \"file:///p\"\n").unwrap();
        assert_eq!(
            c.stores.get("photos").map(String::as_str),
            Some("file:///p")
        );
        let empty: Config = toml::from_str("").unwrap();
        assert!(empty.stores.is_empty());
    }

    #[test]
    fn missing_store_is_explained() {
        let e = resolve_store(None).unwrap_err().to_string();
        assert!(e.contains("--store") && e.contains("STRATA_STORE"), "{e}");
    }
}
