#!/usr/bin/env bash
# Benchmark: put/get of one large file and of many small files through each
# real backend on loopback (SeaweedFS S3, Apache WebDAV, rclone WebDAV,
# OpenSSH SFTP — the same servers the tests use, started by
# strata-testserver), next to `rclone copy` through a crypt remote to the
# same server in the same run. Prints seconds, MB/s and requests per
# workload (strata: its store counters via STRATA_STATS; rclone: HTTP
# requests counted from --dump headers; SFTP requests are not counted).
# As root it also reads the large file cold (page cache dropped, fresh
# mount, empty cache dir) with `dd bs=1M` through `strata mount` and
# through `rclone mount --vfs-cache-mode full` of the crypt remote (MOUNTS=0
# skips that; for the mount, requests are the daemon's store gets).
#
#   bench/backends.sh [SIZE_MiB (1024)] [SMALL_FILES (5000)] [KINDS ("s3 webdav-apache webdav-rclone sftp")]
#   env: MOUNTS=1 (0: no mount reads), ONLY="" ("large": skip the small files)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
nsmall=${2:-5000}
kinds=${3:-"s3 webdav-apache webdav-rclone sftp"}
mounts=${MOUNTS:-1}
[ "$(id -u)" = 0 ] || mounts=0
only=${ONLY:-}
work=$PWD/target/bench-backends
command -v /usr/bin/time >/dev/null 2>&1 || apt-get install -y -qq time >/dev/null
command -v rclone >/dev/null || { echo "rclone missing: apt-get install rclone" >&2; exit 1; }
cargo build --release -q -p strata-cli -p strata-testkit
bin=$PWD/target/release/strata
ts=$PWD/target/release/strata-testserver

rm -rf "$work"; mkdir -p "$work"
server_pid=
mnt=$work/mnt
cleanup() {
  exec 3>&- 2>/dev/null || true
  if [ -d "$mnt" ] && mountpoint -q "$mnt"; then fusermount3 -u -z "$mnt" 2>/dev/null || true; fi
  [ -n "$server_pid" ] && wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

big=$work/big.bin
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$big"
small=$work/small
python3 - "$small" "$nsmall" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 50:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(4096))
EOF
big_bytes=$(stat -c %s "$big")
small_bytes=$((nsmall * 4096))

# timed LABEL BYTES REQS_CMD CMD...: one result line. REQS_CMD prints the
# request count from $work/cmd.err.
timed() {
  local label=$1 bytes=$2 reqs=$3; shift 3
  sync
  local tf=$work/time.out
  if ! /usr/bin/time -o "$tf" -f "%e %M" "$@" >/dev/null 2>"$work/cmd.err"; then
    case $label in
      rclone*)  # the peer may hit a server limit strata works around: report it
        printf "  %-34s FAILED: %s\n" "$label" \
          "$(grep -E 'ERROR|Failed' "$work/cmd.err" | tail -1 | sed 's/^.*: //')"
        return 0 ;;
    esac
    echo "$label failed:" >&2; tail -20 "$work/cmd.err" >&2; exit 1
  fi
  read -r el rss <"$tf"
  local n; n=$($reqs)
  awk -v l="$label" -v e="$el" -v b="$bytes" -v n="$n" -v r="$rss" \
    'BEGIN { printf "  %-34s %8.2f s %8.1f MB/s %9s requests %7.0f MB RSS\n", l, e, b/e/1e6, n, r/1024 }'
}
strata_reqs() { grep -o 'store requests: [0-9]*' "$work/cmd.err" | awk '{print $3}' | tail -1; }
mount_reqs() { $bin status "$mnt" --json 2>/dev/null | python3 -c 'import json,sys; m=json.load(sys.stdin)["metrics"]; print(m["gets"] + m["range_gets"])' 2>/dev/null || echo n/a; }
none_reqs() { echo n/a; }
rclone_reqs() {
  if [ "$kind" = sftp ]; then echo n/a; else grep -c 'HTTP REQUEST' "$work/cmd.err" || true; fi
}

export STRATA_PASSWORD=bench STRATA_STATS=1
echo "large file: $size_mib MiB random; small files: $nsmall x 4 KiB in 50 folders"
for kind in $kinds; do
  rm -f "$work/ctl" "$work/info"; mkfifo "$work/ctl"
  "$ts" "$kind" <"$work/ctl" >"$work/info" &
  server_pid=$!
  exec 3>"$work/ctl"
  for _ in $(seq 300); do grep -q '^READY=1' "$work/info" 2>/dev/null && break; sleep 0.1; done
  grep -q '^READY=1' "$work/info" || { echo "$kind server did not start" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$work/info"
  echo "== $kind"

  export STRATA_STATE_DIR=$work/state-$kind
  $bin --store "$STORE_URL" -q init >/dev/null 2>&1
  rm -rf "$work/out"; mkdir -p "$work/out"
  timed "strata put large" "$big_bytes" strata_reqs $bin --store "$STORE_URL" -q put "$big" /big.bin
  timed "strata get large" "$big_bytes" strata_reqs $bin --store "$STORE_URL" -q get /big.bin "$work/out"
  cmp "$big" "$work/out/big.bin"
  if [ "$only" != large ]; then
    timed "strata put small files" "$small_bytes" strata_reqs $bin --store "$STORE_URL" -q put "$small" /small
    timed "strata get small files" "$small_bytes" strata_reqs $bin --store "$STORE_URL" -q get /small "$work/out"
    diff -r "$small" "$work/out/small" >/dev/null
  fi
  if [ "$mounts" = 1 ]; then
    rm -rf "$work/cache-strata"; mkdir -p "$mnt"
    $bin --store "$STORE_URL" -q mount "$mnt" --cache-dir "$work/cache-strata" --daemon >/dev/null 2>"$work/mount.err"
    sync; echo 3 >/proc/sys/vm/drop_caches
    timed "strata mount cold read large" "$big_bytes" mount_reqs dd if="$mnt/big.bin" of=/dev/null bs=1M
    $bin unmount "$mnt" >/dev/null
  fi
  rm -rf "$work/out"; mkdir -p "$work/out"

  # rclone: a crypt remote over the same server (config in the environment).
  unset "${!RCLONE_CONFIG_@}"
  case $kind in
    s3)
      export RCLONE_CONFIG_BASE_TYPE=s3 RCLONE_CONFIG_BASE_PROVIDER=Other \
        RCLONE_CONFIG_BASE_ENDPOINT=$ENDPOINT RCLONE_CONFIG_BASE_REGION=$REGION \
        RCLONE_CONFIG_BASE_ACCESS_KEY_ID=$ACCESS_KEY RCLONE_CONFIG_BASE_SECRET_ACCESS_KEY=$SECRET_KEY
      base="base:$BUCKET/rclone" ;;
    webdav-*)
      export RCLONE_CONFIG_BASE_TYPE=webdav RCLONE_CONFIG_BASE_URL=$DAV_URL \
        RCLONE_CONFIG_BASE_VENDOR=other RCLONE_CONFIG_BASE_USER=$DAV_USER \
        RCLONE_CONFIG_BASE_PASS=$(rclone obscure "$DAV_PASS")
      base="base:rclone" ;;
    sftp)
      export RCLONE_CONFIG_BASE_TYPE=sftp RCLONE_CONFIG_BASE_HOST=$SFTP_HOST \
        RCLONE_CONFIG_BASE_PORT=$SFTP_PORT RCLONE_CONFIG_BASE_USER=$SFTP_USER \
        RCLONE_CONFIG_BASE_KEY_FILE=$SFTP_KEY RCLONE_CONFIG_BASE_KNOWN_HOSTS_FILE=$SFTP_KNOWN_HOSTS
      base="base:$SFTP_ROOT/rclone" ;;
  esac
  export RCLONE_CONFIG_CR_TYPE=crypt RCLONE_CONFIG_CR_REMOTE=$base \
    RCLONE_CONFIG_CR_PASSWORD=$(rclone obscure bench)
  # AWS_CA_BUNDLE (set on some machines) makes rclone's S3 client fail on
  # its own transport; loopback needs no CA bundle.
  rc=(env -u AWS_CA_BUNDLE rclone --config /dev/null --dump headers --log-file /dev/stderr)
  timed "rclone crypt copy large" "$big_bytes" rclone_reqs "${rc[@]}" copy "$big" cr:big
  timed "rclone crypt copy large back" "$big_bytes" rclone_reqs "${rc[@]}" copy cr:big "$work/out"
  cmp -s "$big" "$work/out/big.bin" || echo "  (rclone: large file did not round-trip)"
  if [ "$only" != large ]; then
    timed "rclone crypt copy small files" "$small_bytes" rclone_reqs "${rc[@]}" copy "$small" cr:small
    timed "rclone crypt copy small back" "$small_bytes" rclone_reqs "${rc[@]}" copy cr:small "$work/out/small"
    diff -r "$small" "$work/out/small" >/dev/null || echo "  (rclone: small files did not round-trip)"
  fi
  if [ "$mounts" = 1 ]; then
    rm -rf "$work/cache-rclone"; mkdir -p "$mnt"
    "${rc[@]:0:6}" mount cr: "$mnt" --vfs-cache-mode full --cache-dir "$work/cache-rclone" \
      --read-only --log-file "$work/rclone-mount.log" </dev/null >/dev/null 2>&1 &
    rclone_pid=$!
    for _ in $(seq 200); do mountpoint -q "$mnt" && break; sleep 0.05; done
    mountpoint -q "$mnt" || { echo "rclone mount failed" >&2; tail "$work/rclone-mount.log" >&2; exit 1; }
    sync; echo 3 >/proc/sys/vm/drop_caches
    timed "rclone mount (full) cold read large" "$big_bytes" none_reqs dd if="$mnt/big/big.bin" of=/dev/null bs=1M
    fusermount3 -u "$mnt"; wait "$rclone_pid" || true
  fi
  rm -rf "$work/out" "$work/state-$kind"

  exec 3>&-
  wait "$server_pid" || true
  server_pid=
done
