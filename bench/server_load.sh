#!/usr/bin/env bash
# Benchmark: the bundled server (`strata cloud-server`, on 127.0.0.1) under
# CLIENTS concurrent clients (default 64) for SECS seconds (default 60), each
# looping: upload a SIZE_KIB object (default 256) to one of 8 shared names,
# download one of them and check it is whole. Every object carries the
# SHA-256 of its payload in its first 64 bytes, so a torn or mixed object
# (a non-atomic replace) is seen. Meanwhile STALLERS connections (default 8)
# send half an upload and stall: the server must close them after its idle
# timeout (--idle-timeout-secs 5 here) and store nothing from them.
# Prints operations, errors, torn objects, stalled connections closed, and
# the server's peak RSS (sampled every second, and VmHWM).
#
#   CLIENTS=64 SECS=60 SIZE_KIB=256 bench/server_load.sh [WORKDIR]
# STRATA_BIN=path/to/strata to use a given build (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${CLIENTS:-64}
secs=${SECS:-60}
size_kib=${SIZE_KIB:-256}
stallers=${STALLERS:-8}
work=${1:-$PWD/target/bench-server}
bin=${STRATA_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -q -p strata-cli
  bin=$PWD/target/release/strata
fi
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }

rm -rf "$work"; mkdir -p "$work/c"
"$bin" cloud-server "$work/root" --listen 127.0.0.1:0 --token-file "$work/token" \
  --idle-timeout-secs 5 2>"$work/server.log" &
spid=$!
trap 'kill $spid 2>/dev/null || true; wait $spid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "store URL" "$work/server.log" && break; sleep 0.1; done
addr=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/server.log" | head -1 | sed 's|http://||')
[ -n "$addr" ] || { cat "$work/server.log" >&2; exit 1; }
token=$(cat "$work/token")
port=${addr##*:}
end=$(( $(date +%s) + secs ))

client() {
  local i=$1 ops=0 errs=0 torn=0 notyet=0
  local up=$work/c/u$i down=$work/c/d$i
  while [ "$(date +%s)" -lt "$end" ]; do
    head -c $((size_kib * 1024 - 64)) /dev/urandom >"$up.payload"
    { sha256sum <"$up.payload" | cut -c1-64 | tr -d '\n'; cat "$up.payload"; } >"$up"
    code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
      -F "name=shared/k$((RANDOM % 8))" -F "file=@$up" "http://$addr/upload_file" 2>/dev/null || echo 000)
    [ "$code" = 200 ] || errs=$((errs + 1))
    code=$(curl -sS -o "$down" -w '%{http_code}' -H "Authorization: Bearer $token" \
      "http://$addr/download_file?name=shared/k$((RANDOM % 8))" 2>/dev/null || echo 000)
    if [ "$code" = 200 ]; then
      want=$(head -c 64 "$down")
      got=$(tail -c +65 "$down" | sha256sum | cut -c1-64)
      [ "$want" = "$got" ] || torn=$((torn + 1))
    elif [ "$code" = 404 ]; then
      notyet=$((notyet + 1))
    else
      errs=$((errs + 1))
    fi
    ops=$((ops + 2))
  done
  echo "$ops $errs $torn $notyet" >"$work/c/r$i"
}

staller() {
  local i=$1 t0 t1
  t0=$(date +%s.%N)
  # Headers promising 1 MiB, 10 KiB of it, then nothing; wait for the close.
  timeout 60 bash -c "
    exec 3<>/dev/tcp/127.0.0.1/$port
    printf 'POST /upload_file HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer $token\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1048576\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nstalled/s$i\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n' >&3
    head -c 10240 /dev/zero >&3
    cat <&3 >/dev/null
  " && t1=$(date +%s.%N) && echo "closed $(echo "$t1 - $t0" | bc)" >"$work/c/s$i" \
    || echo "open" >"$work/c/s$i"
}

peak=0
for i in $(seq "$clients"); do client "$i" & done
for i in $(seq "$stallers"); do staller "$i" & done
while [ "$(date +%s)" -lt "$end" ]; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$spid/status")
  [ "$rss" -gt "$peak" ] && peak=$rss
  sleep 1
done
wait $(jobs -p | grep -v "^$spid$") 2>/dev/null || true
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$spid/status")

cat "$work"/c/r* | awk -v c="$clients" -v s="$secs" -v k="$size_kib" '
  { ops += $1; errs += $2; torn += $3; nf += $4 }
  END { printf "clients %d, %d s, %d KiB objects: %d requests (%.0f/s), %d errors, %d torn objects, %d 404 before first upload\n", c, s, k, ops, ops / s, errs, torn, nf }'
closed=$(cat "$work"/c/s* | grep -c closed || true)
echo "stalled uploads closed by the server: $closed of $stallers ($(grep -ho 'closed [0-9.]*' "$work"/c/s* | awk '{printf "%.1fs ", $2}'))"
stalled_stored=$( (find "$work/root/stalled" -type f 2>/dev/null || true) | wc -l)
temps=$( (find "$work/root/.tmp" -type f 2>/dev/null || true) | wc -l)
echo "objects stored from stalled uploads: $stalled_stored; temp files left: $temps"
echo "server peak RSS: sampled $((peak / 1024)) MiB, VmHWM $((hwm / 1024)) MiB"
