#!/bin/bash
# Idle cost and handoff time of mounts on a file:// store (needs root and
# fusermount3). Prints:
#   - store requests of an idle writer mount over 180 s (after 70 s settling)
#   - store requests of an idle read-only follower (default --refresh 60)
#   - how long a second device's writer mount waits for the handoff, with a
#     file closed but not yet uploaded on the first (default lease poll, 60 s,
#     and with STRATA_LEASE_POLL=5)
# Usage: bench/idle_cost.sh [path to strata binary]
set -u
B=${1:-$(dirname "$0")/../target/release/strata}
T=$(mktemp -d /tmp/strata-idle.XXXXXX)
trap 'for m in $T/w $T/f $T/a $T/b; do fusermount3 -uz $m 2>/dev/null; done; rm -rf $T' EXIT
export STRATA_PASSWORD=pw STRATA_STORE=file://$T/store STRATA_STATE_DIR=$T/state
export STRATA_RUNTIME_DIR=$T/run
mkdir -p $T/store $T/w $T/f $T/a $T/b
$B init >/dev/null 2>&1 || { echo "init failed"; exit 1; }
reqs() { $B status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics"]["requests"])'; }
wait_mounted() { for _ in $(seq 600); do mountpoint -q "$1" && return 0; sleep 0.05; done; return 1; }

$B mount --cache-dir $T/cw $T/w >/dev/null 2>&1 &
wait_mounted $T/w
echo hi > $T/w/x; sync
$B mount --read-only --cache-dir $T/cf $T/f >/dev/null 2>&1 &
wait_mounted $T/f
sleep 70
w0=$(reqs $T/w); f0=$(reqs $T/f)
sleep 180
w1=$(reqs $T/w); f1=$(reqs $T/f)
echo "idle writer mount:                    $((w1-w0)) store requests in 180 s"
echo "idle follower (--refresh 60):         $((f1-f0)) store requests in 180 s"
$B unmount $T/f >/dev/null; $B unmount $T/w >/dev/null

handoff() { # $1: label; $2: seconds idle before asking; env for both mounts follows
    local label=$1 idle=$2; shift 2
    local n=$((++runs))
    env "$@" $B mount --cache-dir $T/ca$n $T/a >/dev/null 2>&1 &
    wait_mounted $T/a
    head -c 20000000 /dev/urandom > $T/big$n # closed on A, maybe not uploaded yet
    cp $T/big$n $T/a/big$n
    sleep "$idle"
    local t0=$(date +%s.%N)
    env "$@" $B mount --cache-dir $T/cb$n $T/b >/dev/null 2>$T/b.log &
    wait_mounted $T/b || { echo "handoff ($label): the second mount did not come up"; cat $T/b.log; return; }
    local t1=$(date +%s.%N)
    cmp -s $T/big$n $T/b/big$n && ok=identical || ok=DIFFERENT
    echo "handoff ($label): second mount ready after $(python3 -c "print(f'{$t1-$t0:.1f}')") s; the file closed on the first reads $ok on the second"
    $B unmount $T/b >/dev/null; $B unmount $T/a >/dev/null
}
runs=0
wait_mounted() { for _ in $(seq 3000); do mountpoint -q "$1" && return 0; sleep 0.05; done; return 1; }
handoff "holder just wrote, default lease poll 60 s" 0
handoff "holder idle for 90 s, default lease poll 60 s" 90
handoff "holder idle for 90 s, lease poll 10 s" 90 STRATA_LEASE_POLL=10
