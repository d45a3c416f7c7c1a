#!/usr/bin/env bash
# Streaming over a slow link (issue: VLC on a bus over LTE). The bundled
# cloud server shapes bandwidth and adds latency in user space (no netem
# here). A player-like reader reads 10 MiB, seeks to 150 MiB, reads 10 MiB
# of a 200 MiB file through a cold mount; we report time to first byte,
# seek-to-first-byte, sequential throughput as a share of the link, and
# bytes fetched from the store / bytes read — with and without range reads.
#
#   bench/stream.sh [RATE (default 20mbit)] [RTT_MS (default 50 = 25 ms each way)]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-20mbit}
rtt=${2:-50}
cargo build --release -q -p strata-cli
bin=$PWD/target/release/strata
work=$PWD/target/bench-stream
cleanup() {
  for m in "$work"/mnt*; do fusermount3 -u -z "$m" 2>/dev/null || true; done
  [ -n "${spid:-}" ] && kill "$spid" 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$work"; mkdir -p "$work/mnt"
export STRATA_PASSWORD=bench STRATA_STATE_DIR=$work/state STRATA_RUNTIME_DIR=$work/run
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="basic+http://127.0.0.1:$port/?token-file=$work/token"

serve() { # serve [extra server flags]
  [ -n "${spid:-}" ] && { kill "$spid"; wait "$spid" 2>/dev/null || true; }
  $bin cloud-server "$work/cloud" --listen "127.0.0.1:$port" --token-file "$work/token" "$@" 2>/dev/null &
  spid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
}

# 1. fill the vault at full speed
serve
$bin --store "$url" init -q
head -c $((200 << 20)) /dev/urandom >"$work/movie.bin"
$bin --store "$url" -q put "$work/movie.bin" /movie.bin
rm "$work/movie.bin"

player() { # player MOUNTPOINT -> prints ttfb seek_ttfb seq_MBps
  python3 - "$1/movie.bin" <<'PY'
import os, sys, time
p = sys.argv[1]
f = os.open(p, os.O_RDONLY)
def read_span(off, n):
    os.lseek(f, off, 0)
    t0 = time.monotonic(); first = None; got = 0
    while got < n:
        b = os.read(f, min(256 * 1024, n - got))
        if not b: break
        if first is None: first = time.monotonic() - t0
        got += len(b)
    return first, got, time.monotonic() - t0
ttfb, n1, t1 = read_span(0, 10 << 20)
seek, n2, t2 = read_span(150 << 20, 10 << 20)
print(f"{ttfb:.3f} {seek:.3f} {(n1 + n2) / (t1 + t2) / 1e6:.3f} {n1 + n2}")
PY
}

run() { # run LABEL MOUNT_URL_SUFFIX [server flags...]
  local label=$1 suffix=$2; shift 2
  serve --bandwidth "$rate" --latency-ms "$rtt" "$@"
  local mnt=$work/mnt-$label cache=$work/cache-$label
  mkdir -p "$mnt"; rm -rf "$cache"
  $bin --store "$url$suffix" -q mount "$mnt" --cache-dir "$cache" --daemon
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  read -r ttfb seek mbps nread < <(player "$mnt")
  sleep 1.5  # the status file is rewritten every second
  down=$($bin status --json "$mnt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics"]["bytes_down"])')
  $bin unmount "$mnt" >/dev/null
  local link=$(python3 -c "import sys; r='$rate'.lower(); import re; m=re.match(r'([0-9.]+)([kmg]?)bit', r); print(float(m.group(1))*{'':1,'k':1e3,'m':1e6,'g':1e9}[m.group(2)]/8/1e6)")
  awk -v l="$label" -v t="$ttfb" -v s="$seek" -v m="$mbps" -v d="$down" -v n="$nread" -v k="$link" \
    'BEGIN { printf "%-14s %8.3f s %8.3f s %8.2f MB/s %6.0f %% of link %8.3f\n", l, t, s, m, 100*m/k, d/n }'
}

echo "link: $rate, RTT ${rtt} ms; 200 MiB file; read 10 MiB, seek to 150 MiB, read 10 MiB (cold mount)"
printf "%-14s %10s %10s %14s %12s %8s\n" "store" "TTFB" "seek→byte" "throughput" "share" "fetched/read"
run ranges ""
run no-ranges "&range-reads=false" --no-range
