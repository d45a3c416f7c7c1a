#!/usr/bin/env bash
# Benchmark: one GET of a large file through `strata serve http` (curl to
# /dev/null) next to a cold sequential read of the same file through
# `strata mount` (dd bs=1M to /dev/null), over the same file:// store on this
# disk, alternating, each run cold: a fresh server / mount and the page cache
# dropped before. Target (issue 12): serve >= 0.8x the mount.
#
# Measured (2 cores, 24 GiB, virtio disk; release build; 1 GiB, median of 3):
#   mount 1.71 s (600 MiB/s), serve http 1.83 s (558 MiB/s): 0.93x.
#
# Usage: bench/serve_http.sh   (as root: FUSE mount and drop_caches)
# Env:   SIZE_MIB=1024 RUNS=3
#        STRATA_BIN=PATH (another strata binary; no cargo build)
#        NO_BUILD=1 (use target/release/strata as it is)
#        BENCH_WORK=target/bench-serve (deleted at the end unless KEEP=1)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
W=${BENCH_WORK:-$PWD/target/bench-serve}
if [ -n "${STRATA_BIN:-}" ]; then
  bin=$(realpath "$STRATA_BIN")
else
  [ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p strata-cli
  bin=$PWD/target/release/strata
fi
spid=
mpid=
cleanup() {
  [ -n "$spid" ] && { kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; }
  if [ -n "$mpid" ]; then
    fusermount3 -u -z "$W/mnt" 2>/dev/null || true
    kill "$mpid" 2>/dev/null || true
    wait "$mpid" 2>/dev/null || true
  fi
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
rm -rf "$W"
mkdir -p "$W/mnt"
export STRATA_PASSWORD=bench STRATA_STATE_DIR=$W/state STRATA_RUNTIME_DIR=$W/run
export STRATA_STORE=file://$W/store
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

$bin init -q
head -c $((SIZE_MIB << 20)) /dev/urandom >"$W/big.bin"
$bin -q put "$W/big.bin" /big.bin
rm -f "$W/big.bin"
bytes=$((SIZE_MIB << 20))

serve_once() {
  drop_caches
  $bin serve http --listen 127.0.0.1:0 --cache-dir "$W/cache-s" >"$W/url" 2>"$W/serve.log" &
  spid=$!
  for _ in $(seq 600); do [ -s "$W/url" ] && break; sleep 0.05; done
  url=$(head -n1 "$W/url")
  out=$(curl -s -S -o /dev/null -w '%{time_total} %{size_download} %{http_code}' "${url}big.bin")
  kill -TERM "$spid"
  wait "$spid"
  spid=
  read -r t got code <<<"$out"
  [ "$code" = 200 ] && [ "$got" = "$bytes" ] || { echo "serve: HTTP $code, $got bytes" >&2; exit 1; }
  echo "$t"
}

mount_once() {
  drop_caches
  $bin mount "$W/mnt" --read-only --cache-dir "$W/cache-m" 2>"$W/mount.log" &
  mpid=$!
  for _ in $(seq 600); do grep -q " $W/mnt " /proc/mounts && break; sleep 0.05; done
  t0=$(now)
  dd if="$W/mnt/big.bin" of=/dev/null bs=1M status=none
  t1=$(now)
  $bin unmount "$W/mnt" >/dev/null
  wait "$mpid"
  mpid=
  echo "$t1 - $t0" | bc -l
}

mibs() { echo "scale=1; $SIZE_MIB / $1" | bc -l; }
s_all=() m_all=()
for r in $(seq "$RUNS"); do
  m=$(mount_once)
  s=$(serve_once)
  m_all+=("$m") s_all+=("$s")
  printf 'run %d: mount %.2f s (%s MiB/s), serve http %.2f s (%s MiB/s)\n' \
    "$r" "$m" "$(mibs "$m")" "$s" "$(mibs "$s")"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m=$(median "${m_all[@]}")
s=$(median "${s_all[@]}")
printf '\n%s MiB, median of %d cold runs:\n' "$SIZE_MIB" "$RUNS"
printf '  mount (dd bs=1M)     %6.2f s  %7s MiB/s\n' "$m" "$(mibs "$m")"
printf '  serve http (curl)    %6.2f s  %7s MiB/s\n' "$s" "$(mibs "$s")"
printf '  serve / mount        %6.2fx  (target >= 0.8x)\n' "$(echo "$m / $s" | bc -l)"
