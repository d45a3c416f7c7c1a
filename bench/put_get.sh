#!/usr/bin/env bash
# Benchmark: `strata put` / `strata get` of a large random file on a file://
# store on the local disk, next to `cp` + `sync` of the same file on the same
# disk. Prints MB/s, CPU seconds and peak RSS. Page cache dropped before each
# step (needs root) so reads come from the disk.
#
#   bench/put_get.sh [SIZE_MiB (default 1024)] [WORKDIR (default ./target/bench)]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
work=${2:-$PWD/target/bench}
command -v /usr/bin/time >/dev/null 2>&1 || { apt-get install -y -qq time >/dev/null; }
cargo build --release -q -p strata-cli
bin=$PWD/target/release/strata

rm -rf "$work"; mkdir -p "$work"
trap 'rm -rf "$work"' EXIT  # no GiB-sized leftovers, even on failure
src=$work/src.bin
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$src"
bytes=$(stat -c %s "$src")

drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
# run LABEL CMD...: prints label, seconds, MB/s, user+sys CPU s, peak RSS MB
run() {
  local label=$1; shift
  drop
  # GNU time writes its figures with -o: redirecting the command's stderr
  # (as this script once did) also silenced time's own report.
  local tf=$work/time.out
  if ! /usr/bin/time -o "$tf" -f "%e %U %S %M" "$@" >/dev/null 2>"$work/cmd.err"; then
    echo "$label failed:" >&2; cat "$work/cmd.err" >&2; exit 1
  fi
  read -r el us sy rss <"$tf"
  awk -v l="$label" -v e="$el" -v u="$us" -v s="$sy" -v r="$rss" -v b="$bytes" \
    'BEGIN { printf "%-26s %7.2f s %9.1f MB/s %7.2f CPU-s %8.1f MB RSS\n", l, e, b/e/1e6, u+s, r/1024 }'
}

export STRATA_PASSWORD=bench STRATA_STATE_DIR=$work/state
store="file://$work/vault"
$bin init "$store" -q >/dev/null
echo "file: $((bytes / 1048576)) MiB random, disk: $(df -h "$work" | awk 'NR==2 {print $1}')"
run "cp + sync"         sh -c "cp '$src' '$work/copy.bin' && sync"
rm -f "$work/copy.bin"  # keep disk use at 3x the file size
run "strata put"        $bin --store "$store" -q put "$src" /big.bin
mkdir -p "$work/out"
run "strata get"        $bin --store "$store" -q get /big.bin "$work/out"
cmp "$src" "$work/out/big.bin" && echo "round trip: identical"
$bin --store "$store" info | grep -Ei 'stored|blobs' || true
rm -rf "$work"
