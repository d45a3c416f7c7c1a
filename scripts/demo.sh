#!/usr/bin/env bash
# The quickstart: build Strata and mount a local encrypted vault at
# ./StrataDrive (created on first run; password asked, or STRATA_PASSWORD).
# Ctrl-C uploads what is pending and unmounts. Installs fuse3 if missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v fusermount3 >/dev/null 2>&1; then
  echo "installing fuse3 (FUSE mount helper)…"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq fuse3 >/dev/null; else sudo apt-get install -y -qq fuse3 >/dev/null; fi
fi
cargo build --release -q --manifest-path "$here/Cargo.toml" -p strata-cli
exec "$here/target/release/strata" demo "$@"
