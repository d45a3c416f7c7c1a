#!/usr/bin/env bash
# Benchmark: `strata put` of a tree of many small files (default 200 000;
# in 1000 folders from 200 000 files on, else 100) to a file:// store on
# the local disk. Prints the time and peak RSS of the put, then of a second put of the
# same tree (everything skipped as unchanged). The peak RSS of the put is
# mostly the vault's in-memory tree (about 225 bytes per small file,
# docs/ARCHITECTURE.md "The tree in memory") plus one checkpoint part of at
# most 4 MiB; the second put's peak is the checkpoint load (its parts'
# ciphertext, fetched whole, beside the tree being decoded from them).
#
#   bench/put_many.sh [FILES (200000)]
# Env: BENCH_WORK=target/bench-put-many (deleted at the end), STRATA_BIN=PATH
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-200000}
W=${BENCH_WORK:-$ROOT/target/bench-put-many}
command -v /usr/bin/time >/dev/null 2>&1 || apt-get install -y -qq time >/dev/null
if [ -n "${STRATA_BIN:-}" ]; then
  BIN=$STRATA_BIN
else
  cargo build --release -q -p strata-cli
  BIN=$ROOT/target/release/strata
fi
rm -rf "$W"; mkdir -p "$W"
trap 'rm -rf "$W"' EXIT

python3 - "$W/src" "$N" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
dirs = 1000 if n >= 200000 else 100
per = max(1, n // dirs)
for i in range(n):
    d = os.path.join(root, f"d{i // per:04d}")
    if i % per == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07d}"), "w") as f:
        f.write(f"file {i}\n")
EOF

export STRATA_PASSWORD=bench STRATA_STATE_DIR=$W/state STRATA_STORE=file://$W/vault
"$BIN" init -q >/dev/null
run() {
  local label=$1; shift
  /usr/bin/time -o "$W/time" -f "%e %M" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
  read -r el rss <"$W/time"
  awk -v l="$label" -v e="$el" -v r="$rss" 'BEGIN { printf "%-24s %8.1f s %8.1f MiB peak RSS\n", l, e, r / 1024 }'
}
echo "$N files of a few bytes"
run "put" "$BIN" -q put "$W/src" /
run "put again (unchanged)" "$BIN" put "$W/src" /
grep '^stored' "$W/err" | sed 's/^/  /'
