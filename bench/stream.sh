#!/usr/bin/env bash
# Streaming over a slow link (issue 4: VLC on a bus over LTE), Strata next to
# rclone in the same run, through the SAME emulated link.
#
# The kernel has no netem, so bench/linkem.py is the link: a loopback TCP
# proxy with a bandwidth limit in each direction, a one-way delay and one
# RTT of handshake per new connection, shared by every connection, and a
# byte counter. Behind it, with no server-side knobs:
#   strata         `strata cloud-server` (ranges on), cold `strata mount`
#   strata-norange the same server with --no-range, mount with range-reads=false
#   rclone         `rclone serve webdav`, cold `rclone mount` of a crypt remote
#                  over it, rclone's defaults (--vfs-cache-mode off)
#   rclone-tuned   the same with $RCLONE_TUNED (default "--buffer-size 0")
#
# Workloads, each on a fresh mount (nothing cached):
#   player  read 10 MiB at 0 (256 KiB reads), seek to 150 MiB, read 10 MiB:
#           TTFB, seek -> first byte, fetched / read (bytes over the link from
#           mount to unmount, 2 s after the player stops, / bytes read)
#   seq     one long sequential read of $SEQ_MIB MiB from 0: throughput after
#           the first byte as a share of the link, and fetched / read
#
#   bench/stream.sh [RATE (default 20mbit)] [ONE_WAY_DELAY_MS (default 25)]
#   env: SYSTEMS="strata strata-norange rclone rclone-tuned" SEQ_MIB=48
#        RUNS=1 RCLONE_TUNED="--buffer-size 0" KEEP=0 (keep target/bench-stream)
#        NO_BUILD=1 (use target/release/strata as it is)
#        STRATA_BIN=PATH (another strata binary, e.g. an older build, for a before/after)
# Needs root (FUSE), rclone, python3. Uses ~700 MB under target/bench-stream,
# removed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-20mbit}
delay=${2:-25}
SYSTEMS=${SYSTEMS:-"strata strata-norange rclone rclone-tuned"}
SEQ_MIB=${SEQ_MIB:-48}
RUNS=${RUNS:-1}
RCLONE_TUNED=${RCLONE_TUNED:-"--buffer-size 0"}
bench=$PWD/bench
if [ -n "${STRATA_BIN:-}" ]; then
  bin=$(realpath "$STRATA_BIN")
else
  [ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p strata-cli
  bin=$PWD/target/release/strata
fi
work=$PWD/target/bench-stream
pids=()
cleanup() {
  for m in "$work"/mnt*; do
    [ -d "$m" ] && { fusermount3 -u -z "$m" 2>/dev/null || true; }
  done
  for p in "${pids[@]}" ${spid:-}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$work/dav"
export STRATA_PASSWORD=bench STRATA_STATE_DIR=$work/state STRATA_RUNTIME_DIR=$work/run
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
sport=$(free_port) wport=$(free_port) lsport=$(free_port) lwport=$(free_port)
token="token-file=$work/token"

serve_strata() { # [server flags]: (re)start the cloud server, no shaping
  if [ -n "${spid:-}" ]; then kill "$spid"; wait "$spid" 2>/dev/null || true; fi
  $bin cloud-server "$work/cloud" --listen "127.0.0.1:$sport" --token-file "$work/token" "$@" 2>/dev/null &
  spid=$!
  wait_port "$sport"
}

# --- data: the same 200 MiB of random bytes in both, at full speed ---------------
serve_strata
$bin --store "basic+http://127.0.0.1:$sport/?$token" init -q
head -c $((200 << 20)) /dev/urandom >"$work/movie.bin"
$bin --store "basic+http://127.0.0.1:$sport/?$token" -q put "$work/movie.bin" /movie.bin
pw=$(rclone obscure bench)
cat >"$work/rclone.conf" <<EOF
[fill]
type = crypt
remote = $work/dav
password = $pw
[dav]
type = webdav
url = http://127.0.0.1:$lwport/
vendor = other
[sec]
type = crypt
remote = dav:
password = $pw
EOF
rclone --config "$work/rclone.conf" copyto "$work/movie.bin" fill:movie.bin
rm "$work/movie.bin"
rclone serve webdav "$work/dav" --addr "127.0.0.1:$wport" --config /dev/null >"$work/webdav.log" 2>&1 &
pids+=($!)
wait_port "$wport"

# --- the link ---------------------------------------------------------------------
python3 "$bench/linkem.py" --rate "$rate" --delay-ms "$delay" \
  --forward "$lsport:$sport" --forward "$lwport:$wport" --stats "$work/link.json" >/dev/null &
pids+=($!)
wait_port "$lsport"
link_down() { # bytes delivered down the link through listen port $1 so far
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["down"])' "$work/link.json" "$1"
}
link_Bps=$(python3 -c "import re,sys; m=re.fullmatch(r'([0-9.]+)([kmg]?)bit', '$rate'.lower()) or sys.exit('RATE like 20mbit'); print(float(m.group(1))*{'':1,'k':1e3,'m':1e6,'g':1e9}[m.group(2)]/8)")

mount_sys() { # mount_sys SYSTEM MOUNTPOINT: cold mount through the link
  local sys=$1 mnt=$2
  rm -rf "$work/cache-$sys"; mkdir -p "$mnt"
  case $sys in
    strata)
      $bin --store "basic+http://127.0.0.1:$lsport/?$token" -q mount "$mnt" --cache-dir "$work/cache-$sys" --daemon >/dev/null 2>>"$work/mount.log" ;;
    strata-norange)
      $bin --store "basic+http://127.0.0.1:$lsport/?$token&range-reads=false" -q mount "$mnt" --cache-dir "$work/cache-$sys" --daemon >/dev/null 2>>"$work/mount.log" ;;
    rclone | rclone-tuned)
      local extra=()
      [ "$sys" = rclone-tuned ] && read -r -a extra <<<"$RCLONE_TUNED"
      rclone mount sec: "$mnt" --config "$work/rclone.conf" --cache-dir "$work/cache-$sys" \
        --read-only "${extra[@]}" --log-file "$work/$sys.log" </dev/null >/dev/null 2>&1 &
      for _ in $(seq 200); do mountpoint -q "$mnt" && break; sleep 0.05; done ;;
  esac
  mountpoint -q "$mnt"
}
unmount_sys() { # unmount_sys SYSTEM MOUNTPOINT
  case $1 in
    strata*) $bin unmount "$2" >/dev/null ;;
    *) fusermount3 -u "$2"; for _ in $(seq 100); do pgrep -f "rclone mount sec: $2" >/dev/null || break; sleep 0.05; done ;;
  esac
}

run() { # run SYSTEM RUN -> one line of figures
  local sys=$1 port mnt=$work/mnt-$1
  case $sys in strata-norange) serve_strata --no-range ;; strata) serve_strata ;; esac
  case $sys in strata*) port=$lsport ;; *) port=$lwport ;; esac
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  # player
  mount_sys "$sys" "$mnt"
  sleep 0.3; local d0; d0=$(link_down "$port")
  local p; p=$(python3 "$bench/stream_player.py" player "$mnt/movie.bin")
  sleep 2; unmount_sys "$sys" "$mnt"; sleep 0.3
  local d1; d1=$(link_down "$port")
  # long sequential read
  rm -rf "$work/cache-$sys"
  mount_sys "$sys" "$mnt"
  sleep 0.3; local d2; d2=$(link_down "$port")
  local s; s=$(python3 "$bench/stream_player.py" seq "$mnt/movie.bin" "$SEQ_MIB")
  unmount_sys "$sys" "$mnt"; sleep 0.3
  local d3; d3=$(link_down "$port")
  python3 - "$sys" "$p" "$s" "$((d1 - d0))" "$((d3 - d2))" "$link_Bps" <<'PY'
import json, sys
name, p, s = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
pdown, sdown, link = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
print(f"{name:<15} {p['ttfb']:7.3f} s {p['ttfb256']:6.3f} s {p['seek']:7.3f} s {p['seek256']:6.3f} s"
      f" {pdown / p['read']:8.3f} {100 * s['steady_Bps'] / link:7.1f} % {s['steady_Bps'] / 1e6:5.2f} MB/s"
      f" {sdown / s['read']:8.3f}")
PY
}

echo "link: $rate each way, ${delay} ms one way (RTT $((2 * delay)) ms), via bench/linkem.py; 200 MiB file"
echo "player: read 10 MiB, seek to 150 MiB, read 10 MiB; seq: read ${SEQ_MIB} MiB from 0; cold mounts"
echo "$(rclone version | head -1); rclone-tuned = $RCLONE_TUNED"
echo "TTFB = first byte (a 4 KiB read), 256K = until the first 256 KiB arrived; seek likewise;"
echo "f/rd = bytes over the link / bytes read; seq = throughput after the first 256 KiB"
printf "%-15s %9s %8s %9s %8s %8s %19s %8s\n" system TTFB 256K seek→byte 256K "f/rd" "seq (share, rate)" "seq f/rd"
for ((r = 1; r <= RUNS; r++)); do
  for sys in $SYSTEMS; do run "$sys"; done
done
