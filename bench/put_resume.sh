#!/usr/bin/env bash
# Benchmark: an interrupted `strata put` and its rerun over the bundled
# server on a shaped link. A tree of FILES random files of SIZE_MiB each is
# put to `strata cloud-server --bandwidth RATE`, killed with SIGKILL after
# KILL_AFTER seconds, then put again to the end. Prints what each run sent
# (STRATA_STATS), how long the rerun took, its summary line, and whether
# the vault then matches the source (get back + cmp).
#
#   bench/put_resume.sh [FILES (150)] [SIZE_MiB (2)] [KILL_AFTER (7)] [RATE (200mbit)]
# Env: BENCH_WORK=target/bench-resume (deleted at the end), STRATA_BIN=PATH
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-150}
SIZE=${2:-2}
KILL=${3:-7}
RATE=${4:-200mbit}
W=${BENCH_WORK:-$ROOT/target/bench-resume}
if [ -n "${STRATA_BIN:-}" ]; then
  BIN=$STRATA_BIN
else
  cargo build --release -q -p strata-cli
  BIN=$ROOT/target/release/strata
fi
rm -rf "$W"; mkdir -p "$W/src"
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

for i in $(seq 1 "$N"); do
  head -c $((SIZE * 1048576)) /dev/urandom >"$W/src/f$i"
done
total=$((N * SIZE * 1048576))

"$BIN" cloud-server "$W/cloud" --listen 127.0.0.1:0 --token-file "$W/token" \
  --bandwidth "$RATE" 2>"$W/server.log" &
server=$!
url=
for _ in $(seq 100); do
  url=$(sed -n 's/^ *store URL: //p' "$W/server.log" | head -1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "the server printed no store URL" >&2; exit 1; }

export STRATA_PASSWORD=bench STRATA_STATE_DIR=$W/state STRATA_STORE=$url STRATA_STATS=1
"$BIN" init -q >/dev/null
up() { sed -n 's/.* \([0-9]*\) bytes up.*/\1/p' "$1"; }

"$BIN" put "$W/src" / 2>"$W/first.err" &
pid=$!
sleep "$KILL"
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
committed=$("$BIN" ls /src 2>/dev/null | wc -l)
echo "tree: $N files x $SIZE MiB = $((total / 1048576)) MiB, link $RATE"
echo "first run: killed -9 after ${KILL}s with $committed of $N files committed"

t0=$(date +%s.%N)
rc=0
"$BIN" put "$W/src" / 2>"$W/second.err" || rc=$?
t1=$(date +%s.%N)
sent=$(up "$W/second.err")
awk -v s="$sent" -v t="$total" -v a="$t0" -v b="$t1" -v rc="$rc" \
  'BEGIN { printf "rerun: exit %d, %.1f s, sent %d bytes = %.1f %% of the tree\n", rc, b - a, s, 100 * s / t }'
grep -v '^strata: store requests' "$W/second.err" | sed 's/^/  /'

"$BIN" get -q /src "$W/back"
if diff -r "$W/src" "$W/back" >/dev/null; then echo "vault matches the source"; else echo "VAULT DIFFERS"; exit 1; fi
