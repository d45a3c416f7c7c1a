#!/usr/bin/env bash
# Benchmark: a vault of many small files (default 100 000 in 100 folders).
# Prints, for strata (file:// store) and gocryptfs on the same disk:
#   - how long it took to fill (strata: `strata put` of the tree;
#     gocryptfs: `cp -a` into its mount, then `sync`)
#   - a cold mount (page cache dropped): until the mountpoint is live
#   - `ls -lR` of the whole tree right after that cold mount
#   - the daemon's peak RSS
#
# Usage: bench/many_files.sh [FILES (100000)]   (as root: FUSE, drop_caches)
# Env:   SYSTEMS="strata gocryptfs"  BENCH_WORK=target/bench-many (deleted at the end)
#        STRATA_BIN=PATH (another strata binary; no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-100000}
SYSTEMS=${SYSTEMS:-"strata gocryptfs"}
W=${BENCH_WORK:-$ROOT/target/bench-many}
[ "$(id -u)" = 0 ] || { echo "run as root (FUSE mounts, drop_caches)" >&2; exit 1; }
command -v fusermount3 >/dev/null || apt-get install -y -qq fuse3 >/dev/null
case " $SYSTEMS " in *" gocryptfs "*) command -v gocryptfs >/dev/null || apt-get install -y -qq gocryptfs >/dev/null ;; esac
if [ -n "${STRATA_BIN:-}" ]; then
  BIN=$STRATA_BIN   # another build, e.g. an older one for a before/after
else
  cargo build --release -q -p strata-cli
  BIN=$ROOT/target/release/strata
fi

rm -rf "$W"; mkdir -p "$W/src" "$W/mnt"
cleanup() {
  grep -q " $W/mnt " /proc/mounts && fusermount3 -u -z "$W/mnt" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

python3 - "$W/src" "$N" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per = max(1, n // 100)
for i in range(n):
    d = os.path.join(root, f"d{i // per:03d}")
    if i % per == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "w") as f:
        f.write(f"file {i}\n")
EOF

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
wait_mounted() {
  for _ in $(seq 2000); do grep -q " $W/mnt " /proc/mounts && return 0; sleep 0.005; done
  echo "mount did not come up" >&2; return 1
}
report() { printf "%-10s fill %8s s   cold mount %6s s   ls -lR %6s s   peak RSS %5s MB\n" "$@"; }

echo "$N files of a few bytes in 100 folders"
for s in $SYSTEMS; do
  case $s in
    strata)
      export STRATA_PASSWORD=bench STRATA_STATE_DIR=$W/state STRATA_RUNTIME_DIR=$W/run \
        STRATA_STORE=file://$W/vault
      "$BIN" init -q >/dev/null
      t0=$(now); "$BIN" -q put "$W/src" / >/dev/null; t1=$(now); fill=$(secs "$t0" "$t1")
      drop_caches
      t0=$(now)
      "$BIN" mount "$W/mnt" --cache-dir "$W/cache" </dev/null >"$W/mount.log" 2>&1 &
      pid=$!
      wait_mounted; t1=$(now); mnt=$(secs "$t0" "$t1")
      t0=$(now); ls -lR "$W/mnt" >/dev/null; t1=$(now); ls=$(secs "$t0" "$t1")
      rss=$(awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
      "$BIN" unmount "$W/mnt" >/dev/null; wait "$pid" || true
      ;;
    gocryptfs)
      mkdir -p "$W/gc"
      gocryptfs -init -q -extpass 'echo pw' "$W/gc" >/dev/null
      gocryptfs -q -nosyslog -extpass 'echo pw' "$W/gc" "$W/mnt"
      t0=$(now); cp -a "$W/src/." "$W/mnt/"; sync; t1=$(now); fill=$(secs "$t0" "$t1")
      fusermount3 -u "$W/mnt"
      drop_caches
      t0=$(now)
      gocryptfs -fg -q -nosyslog -extpass 'echo pw' "$W/gc" "$W/mnt" </dev/null >/dev/null 2>&1 &
      pid=$!
      wait_mounted; t1=$(now); mnt=$(secs "$t0" "$t1")
      t0=$(now); ls -lR "$W/mnt" >/dev/null; t1=$(now); ls=$(secs "$t0" "$t1")
      rss=$(awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
      fusermount3 -u "$W/mnt"; wait "$pid" || true
      ;;
  esac
  report "$s" "$fill" "$mnt" "$ls" "$rss"
done
