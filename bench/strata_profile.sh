#!/usr/bin/env bash
# Where does a Strata mount spend its time? Runs the workloads of
# bench/mount_bench.sh on a strata mount alone (file:// store, default
# options) and prints, per workload: wall time, CPU seconds of the daemon
# (user/sys, from /proc/PID/stat), store requests and bytes (from `strata
# status --json` metrics), and syscall counts of the daemon (strace -c,
# second pass, slow: timings of that pass are not used). With PERF=1 it also
# records `perf record` of the daemon per workload and prints the top
# symbols (self time).
#
# Usage: bench/strata_profile.sh    (root)
# Env:   SIZE_MIB=1024 NFILES=5000 FIO_RUNTIME=10 STRACE=1 PERF=1
#        MOUNT_ARGS="" (extra `strata mount` options, e.g. "--fsync local")
#        WRAP="" (command prefix for the daemon, for what-if runs: "eatmydata"
#        = every fsync a no-op; "env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
#        = another allocator, which ignores the daemon's glibc mallopt tuning)
#        WORKLOADS="write_fsync write_close read_seq randread small"
#        BENCH_WORK=target/bench-mount-profile BENCH_OUT=target/bench-results/profile-<time>
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE_MIB=${SIZE_MIB:-1024}
NFILES=${NFILES:-5000}
FIO_RUNTIME=${FIO_RUNTIME:-10}
STRACE=${STRACE:-1}
PERF=${PERF:-1}
MOUNT_ARGS=${MOUNT_ARGS:-}
WRAP=${WRAP:-}
W=${BENCH_WORK:-$ROOT/target/bench-mount-profile}
OUT=${BENCH_OUT:-$ROOT/target/bench-results/profile-$(date +%Y%m%d-%H%M%S)}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
for c in fio:fio jq:jq strace:strace; do
  command -v "${c%%:*}" >/dev/null || apt-get install -y -qq "${c##*:}" >/dev/null
done
[ "$PERF" = 1 ] && ! command -v perf >/dev/null && { echo "no perf: PERF=0" >&2; PERF=0; }
cargo build --release -q -p strata-cli
BIN=$ROOT/target/release/strata
mkdir -p "$OUT"
grep -q " $W/mnt " /proc/mounts && fusermount3 -u -z "$W/mnt" || true
rm -rf "$W"; mkdir -p "$W/mnt"
S_ENV=(STRATA_PASSWORD=benchpw "STRATA_STATE_DIR=$W/state" "STRATA_RUNTIME_DIR=$W/run"
  "STRATA_STORE=file://$W/vault")
st() { env "${S_ENV[@]}" "$BIN" "$@"; }
PID=
mnt=$W/mnt
cleanup() {
  local rc=$?
  set +e
  if grep -q " $mnt " /proc/mounts; then st unmount --timeout 120 "$mnt" >/dev/null 2>&1; fi
  [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null && { kill "$PID"; wait "$PID"; }
  grep -q " $mnt " /proc/mounts && fusermount3 -u -z "$mnt"
  rm -rf "$W"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
now() { date +%s.%N; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
mount_cold() {
  rm -rf "$W/cache"; mkdir -p "$W/cache"
  # shellcheck disable=SC2086
  env "${S_ENV[@]}" $WRAP "$BIN" mount "$mnt" --cache-dir "$W/cache" $MOUNT_ARGS </dev/null \
    >>"$OUT/mount.log" 2>&1 &
  PID=$!
  until grep -q " $mnt " /proc/mounts; do kill -0 "$PID" || exit 1; sleep 0.05; done
  drop_caches
}
unmount() { st unmount "$mnt" >>"$OUT/mount.log" 2>&1; wait "$PID" || true; PID=; }
# bytes through read/write syscalls and to/from the block layer (/proc/PID/io), MB
io() { awk '/^(rchar|wchar|read_bytes|write_bytes):/ { printf "%s ", $2 }' "/proc/$PID/io"; }
cpu() { awk '{ printf "%.2f %.2f", $14 / 100, $15 / 100 }' "/proc/$PID/stat"; } # utime stime (USER_HZ=100)
metrics() { st status "$mnt" --json | jq -c '[.metrics.puts, .metrics.gets, .metrics.range_gets, .metrics.bytes_up, .metrics.bytes_down, .commits, (.read_cache.hits // 0), (.read_cache.misses // 0)]'; }
wait_clean() {
  local t_end=$1 sf
  sf=$(ls "$W"/run/*.json | head -1)
  while :; do
    if awk -v a="$(stat -c %.9Y "$sf")" -v b="$t_end" 'BEGIN { exit !(a > b) }' &&
      st status "$mnt" --json | jq -e '.dirty_bytes == 0 and .dirty_chunks == 0 and .uploads_in_flight == 0 and .uncommitted_records == 0' >/dev/null; then
      return 0
    fi
    sleep 0.1
  done
}

BYTES=$((SIZE_MIB << 20))
SRC=$W/src.bin
head -c "$BYTES" /dev/urandom >"$SRC"
SRC2=$W/src2.bin # other bytes for the no-fsync write (chunks are deduplicated)
head -c "$BYTES" /dev/urandom >"$SRC2"
BLK=$(head -c 4000 /dev/urandom | base64 -w0)
BLK=${BLK:0:4087} # no `| head`: its early exit could fail the pipe (pipefail)
st init -q >/dev/null

# workloads: each runs on a cold mount; names are also file names
w_write_fsync() { cat "$SRC" >/dev/null; dd if="$SRC" of="$mnt/f" bs=1M conv=fsync status=none; }
w_write_close() { cat "$SRC2" >/dev/null; dd if="$SRC2" of="$mnt/g" bs=1M status=none; }
w_read_seq() { dd if="$mnt/f" of=/dev/null bs=1M status=none; }
w_randread() {
  fio --name=rr --filename="$mnt/f" --rw=randread --bs=4k --size="${SIZE_MIB}M" --runtime="$FIO_RUNTIME" \
    --time_based --ioengine=psync --numjobs=1 --output-format=json >"$OUT/fio-$PASS.json"
}
w_small() {
  local i d=$mnt/small$PASS
  mkdir "$d"
  for ((i = 0; i < NFILES; i++)); do
    ((i % 100 == 0)) && mkdir "$d/d$((i / 100))"
    printf '%08d%s\n' "$i" "$BLK" >"$d/d$((i / 100))/f$i"
  done
}
WORKLOADS=${WORKLOADS:-"write_fsync write_close read_seq randread small"}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg); wrap: ${WRAP:-none}; mount args: ${MOUNT_ARGS:-none}" | tee "$OUT/summary.txt"
printf '%-12s %8s %8s %8s %8s %8s %8s %8s %8s %7s   %s\n' workload wall_s clean_s user_s sys_s \
  rchar_MB wchar_MB rdisk_MB wdisk_MB hwm_MB "store delta [puts gets range_gets bytes_up bytes_down commits rc_hits rc_misses]" | tee -a "$OUT/summary.txt"
PASS=0
for w in $WORKLOADS; do
  mount_cold
  m0=$(metrics); read -r u0 s0 <<<"$(cpu)"; read -r ra0 wa0 rb0 wb0 <<<"$(io)"
  pf=
  if [ "$PERF" = 1 ]; then
    perf record -F 999 -p "$PID" -o "$OUT/perf-$w.data" >/dev/null 2>&1 &
    pf=$!
    sleep 0.3
  fi
  t0=$(now)
  "w_$w"
  t1=$(now)
  wait_clean "$t1"
  t2=$(now)
  [ -n "$pf" ] && { kill -INT "$pf"; wait "$pf" || true; }
  read -r u1 s1 <<<"$(cpu)"; read -r ra1 wa1 rb1 wb1 <<<"$(io)"
  hwm=$(awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$PID/status")
  m1=$(metrics)
  delta=$(jq -nc --argjson a "$m0" --argjson b "$m1" '[range(0; $a|length) as $i | $b[$i] - $a[$i]]')
  awk -v w="$w" -v a="$t0" -v b="$t1" -v c="$t2" -v u="$(awk -v x="$u1" -v y="$u0" 'BEGIN{print x-y}')" \
    -v s="$(awk -v x="$s1" -v y="$s0" 'BEGIN{print x-y}')" -v d="$delta" \
    -v io="$((ra1 - ra0)) $((wa1 - wa0)) $((rb1 - rb0)) $((wb1 - wb0))" -v hwm="$hwm" \
    'BEGIN { split(io, x, " "); printf "%-12s %8.2f %8.2f %8.2f %8.2f %8.0f %8.0f %8.0f %8.0f %7s   %s\n", w, b - a, c - a, u, s, x[1] / 1e6, x[2] / 1e6, x[3] / 1e6, x[4] / 1e6, hwm, d }' | tee -a "$OUT/summary.txt"
  st status "$mnt" >"$OUT/status-$w.txt" 2>&1 || true
  if [ "$w" = write_close ]; then rm -f "$mnt/g"; wait_clean "$(now)"; fi
  unmount
  if [ -n "$pf" ]; then
    perf report -i "$OUT/perf-$w.data" --no-children --sort symbol --stdio 2>/dev/null |
      grep -E '^ +[0-9]+\.[0-9]+%' | head -25 >"$OUT/perf-$w.top" || true
    perf report -i "$OUT/perf-$w.data" --no-children --sort comm --stdio 2>/dev/null |
      grep -E '^ +[0-9]+\.[0-9]+%' | head -12 >"$OUT/perf-$w.threads" || true
    rm -f "$OUT/perf-$w.data"
  fi
done

if [ "$STRACE" = 1 ]; then
  PASS=1
  for w in $WORKLOADS; do
    mount_cold
    strace -c -f -w -p "$PID" -o "$OUT/strace-$w.txt" 2>/dev/null &
    sp=$!
    sleep 0.5
    "w_$w"
    wait_clean "$(now)"
    kill -INT "$sp"; wait "$sp" || true
    if [ "$w" = write_close ]; then rm -f "$mnt/g"; wait_clean "$(now)"; fi
    unmount
  done
fi
echo "per-workload details in $OUT (status-*.txt, perf-*.top, strace-*.txt)"
