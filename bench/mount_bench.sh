#!/usr/bin/env bash
# Benchmark: a Strata FUSE mount next to gocryptfs and rclone (crypt remote,
# --vfs-cache-mode full), all on the same local disk, in one run:
#
#   (a) strata    `strata mount` over a file:// store (vault dir on this disk),
#                 default options (2 GiB cache, --fsync cloud)
#   (b) gocryptfs `gocryptfs -init` on a dir, mounted with defaults
#   (c) rclone    `rclone mount` of a crypt remote over a local dir,
#                 --vfs-cache-mode full --vfs-write-back $RCLONE_WRITE_BACK
#
# Figures (each phase from a fresh mount; "cold" means: unmounted, local
# caches of the system removed -- strata's cache dir, rclone's VFS cache dir --
# remounted and the page cache dropped; the systems run one after the other,
# all phases of one, then its data is deleted, to keep the disk use low):
#   - the same write without fsync, first (diagnostic): SIZE_MiB of the
#     source rotated by 1 MiB + 4 KiB through a pipe (other chunk contents, as
#     strata deduplicates chunks), time until close returns and until in
#     store; then deleted
#   - sequential write of SIZE_MiB (random data, source file in page cache)
#     with `dd bs=1M conv=fsync`; for strata (--fsync cloud) fsync returns once
#     data and metadata are in the store. rclone's fsync only syncs its local
#     VFS cache file: it does NOT upload (upload starts after close, after
#     --vfs-write-back); so for rclone we also time until the upload into the
#     remote is done ("until in store").
#   - cold sequential read of that file (dd bs=1M to /dev/null)
#   - cold 4 KiB random read IOPS (fio psync, FIO_RUNTIME s, 1 job)
#   - creation of NFILES 4 KiB files (distinct content, 100 per directory) by
#     a bash loop (builtin printf, no fork per file), until close and until
#     the data is in the store: strata = `strata status --json` shows
#     dirty_bytes, dirty_chunks, uploads_in_flight and uncommitted_records all
#     0 (time = mtime of the first such status file written after the loop;
#     it is rewritten every second, so this errs up to ~1 s against strata);
#     gocryptfs = `sync` returned; rclone = its log says "Copied" for every
#     file (the upload into the remote finished)
#   - `ls -lR` of those files after a cold remount (median of LS_REPEAT)
#   - untar of real source trees (.crate files from the cargo registry cache,
#     tokio + a few big ones) until in store, as above
#   - peak RSS (VmHWM) of the daemon process, max over all mounts of the run
#   - CPU time (user + system) of the daemon processes, summed over the run
#
# Durability differs: strata's file:// store fsyncs every object; gocryptfs
# data is durable after `sync`; rclone's local backend never fsyncs (its
# "in store" means written into the remote dir, in the page cache).
#
# Usage: bench/mount_bench.sh   (as root: FUSE mounts and drop_caches)
# Env:   SIZE_MIB=1024 NFILES=5000 FIO_RUNTIME=20 LS_REPEAT=3 SYSTEMS="strata gocryptfs rclone"
#        PHASES="write read randread small ls untar" (a subset: only those, in order;
#        read and randread read the file that write leaves)
#        RCLONE_WRITE_BACK=0s (rclone's own default is 5s; 0s is its best case)
#        STRATA_BIN=PATH (another strata binary, e.g. an older build; no cargo build)
#        STRATA_MOUNT_ARGS="--close buffered" (extra `strata mount` options; e.g. the
#        opt-in close without a sync: SYSTEMS="strata gocryptfs" PHASES="small untar")
#        BENCH_WORK=target/bench-mount (deleted at the end)
#        BENCH_OUT=target/bench-results/mount-<time> (logs, results.tsv, table)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE_MIB=${SIZE_MIB:-1024}
NFILES=${NFILES:-5000}
FIO_RUNTIME=${FIO_RUNTIME:-20}
LS_REPEAT=${LS_REPEAT:-3}
SYSTEMS=${SYSTEMS:-"strata gocryptfs rclone"}
read -r -a STRATA_MOUNT_ARGS <<<"${STRATA_MOUNT_ARGS:-}"
PHASES=${PHASES:-"write read randread small ls untar"}
RCLONE_WRITE_BACK=${RCLONE_WRITE_BACK:-0s}
W=${BENCH_WORK:-$ROOT/target/bench-mount}
OUT=${BENCH_OUT:-$ROOT/target/bench-results/mount-$(date +%Y%m%d-%H%M%S)}

[ "$(id -u)" = 0 ] || { echo "run as root (FUSE mounts, drop_caches)" >&2; exit 1; }

# --- peers -------------------------------------------------------------------
missing=()
for c in gocryptfs:gocryptfs rclone:rclone fio:fio /usr/bin/time:time jq:jq \
         fusermount3:fuse3; do
  command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

if [ -n "${STRATA_BIN:-}" ]; then
  BIN=$STRATA_BIN   # another build, e.g. an older one for a before/after
else
  cargo build --release -q -p strata-cli
  BIN=$ROOT/target/release/strata
fi

# --- work dirs, cleanup ------------------------------------------------------
mkdir -p "$OUT"
LOG=$OUT/run.log
RES=$OUT/results.tsv
: >"$RES"
for s in strata gocryptfs rclone; do
  [ -d "$W/$s/mnt" ] && grep -q " $W/$s/mnt " /proc/mounts && fusermount3 -u -z "$W/$s/mnt" || true
done
rm -rf "$W"
mkdir -p "$W"/{strata,gocryptfs,rclone}/mnt

declare -A PID=()     # system -> daemon pid of the current mount
declare -A PEAK=()    # system -> max VmHWM KiB over the run
declare -A CPU=()     # system -> daemon CPU ticks (user + system) over the run

is_mounted() { grep -q " $1 " /proc/mounts; }

cleanup() {
  local rc=$? s m
  set +e
  for s in strata gocryptfs rclone; do
    m=$W/$s/mnt
    if is_mounted "$m"; then
      echo "cleanup: unmounting $m" >&2
      if [ "$s" = strata ]; then st unmount --timeout 120 "$m" >/dev/null 2>&1; fi
      fusermount3 -u "$m" 2>/dev/null || fusermount3 -u -z "$m" 2>/dev/null
    fi
    if [ -n "${PID[$s]:-}" ] && kill -0 "${PID[$s]}" 2>/dev/null; then
      sleep 1
      kill -0 "${PID[$s]}" 2>/dev/null && kill "${PID[$s]}" 2>/dev/null
      wait "${PID[$s]}" 2>/dev/null
    fi
    is_mounted "$m" && fusermount3 -u -z "$m" 2>/dev/null
  done
  rm -rf "$W"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
log() { echo "[$(date +%T)] $*" | tee -a "$LOG" >&2; }
# rec KEY SYSTEM VALUE
rec() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RES"; log "  $1 [$2] = $3"; }
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
peak_note() { # system: fold the daemon's VmHWM into PEAK and its CPU time into CPU
  local s=$1 k t
  k=$(awk '/^VmHWM:/ {print $2}' "/proc/${PID[$s]}/status" 2>/dev/null || echo 0)
  [ -n "$k" ] || k=0
  if [ "$k" -gt "${PEAK[$s]:-0}" ]; then PEAK[$s]=$k; fi
  # utime + stime (fields 14, 15) up to now; what unmount itself costs is not counted
  t=$(awk '{print $14 + $15}' "/proc/${PID[$s]}/stat" 2>/dev/null || echo 0)
  [ -n "$t" ] || t=0
  CPU[$s]=$(( ${CPU[$s]:-0} + t ))
}
wait_mounted() { # mnt pid
  local i
  for ((i = 0; i < 600; i++)); do
    is_mounted "$1" && return 0
    kill -0 "$2" 2>/dev/null || { log "daemon for $1 exited"; return 1; }
    sleep 0.05
  done
  log "$1 did not come up"; return 1
}
wait_exit() { # pid
  local i
  for ((i = 0; i < 1200; i++)); do kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }; sleep 0.1; done
  log "pid $1 did not exit"; return 1
}

# --- source data ---------------------------------------------------------------
a=$(df -Pm "$W" | awk 'NR==2 { print $4 }')
if [ "$a" -lt $((4 * SIZE_MIB + 1024)) ]; then
  echo "need $((4 * SIZE_MIB + 1024)) MiB free on $W, have $a" >&2; exit 1
fi
SRC=$W/src.bin
BYTES=$((SIZE_MIB * 1024 * 1024))
log "preparing $SIZE_MIB MiB of random data"
head -c "$BYTES" /dev/urandom >"$SRC"
CRATES=()
cache_dirs=("${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/)
for pat in 'tokio-1.' 'libc-0.2.' 'linux-raw-sys-' 'ring-0.17.' 'regex-automata-' 'jiff-'; do
  # shellcheck disable=SC2010 # crate file names are plain
  c=$(ls -1 "${cache_dirs[@]}" 2>/dev/null | grep "^${pat//./\\.}[0-9.]*\.crate$" | sort -V | tail -1 || true)
  [ -n "$c" ] && for d in "${cache_dirs[@]}"; do [ -f "$d/$c" ] && { CRATES+=("$d/$c"); break; }; done
done
[ ${#CRATES[@]} -gt 0 ] || { echo "no .crate files in the cargo registry cache" >&2; exit 1; }
TAR_FILES=0; TAR_BYTES=0
for c in "${CRATES[@]}"; do
  TAR_FILES=$((TAR_FILES + $(tar tvzf "$c" | grep -c '^-')))
  TAR_BYTES=$((TAR_BYTES + $(tar xzf "$c" -O | wc -c)))
done
log "untar set: ${#CRATES[@]} crates ($(for c in "${CRATES[@]}"; do basename "$c" .crate; done | tr '\n' ' ')), $TAR_FILES files, $((TAR_BYTES / 1000000)) MB"
# 4 KiB of content per small file: an 8-digit index, a shared random tail, \n
BLK=$(head -c 4000 /dev/urandom | base64 -w0)
BLK=${BLK:0:4087} # no `| head`: its early exit could fail the pipe (pipefail)

# --- strata ------------------------------------------------------------------
S_DIR=$W/strata
S_ENV=(STRATA_PASSWORD=benchpw "STRATA_STATE_DIR=$S_DIR/state" "STRATA_RUNTIME_DIR=$S_DIR/run"
  "STRATA_STORE=file://$S_DIR/vault")
st() { env "${S_ENV[@]}" "$BIN" "$@"; }
setup_strata() { st init -q >/dev/null; }
cold_strata() { rm -rf "$S_DIR/cache"; }
mount_strata() {
  mkdir -p "$S_DIR/cache"
  # env execs strata: $! is the daemon's pid
  env "${S_ENV[@]}" "$BIN" mount "$S_DIR/mnt" --cache-dir "$S_DIR/cache" \
    ${STRATA_MOUNT_ARGS[@]+"${STRATA_MOUNT_ARGS[@]}"} </dev/null \
    >>"$OUT/strata-mount.log" 2>&1 &
  PID[strata]=$!
  wait_mounted "$S_DIR/mnt" "${PID[strata]}"
}
unmount_strata() {
  peak_note strata
  st status "$S_DIR/mnt" >>"$OUT/strata-status.log" 2>&1 || true
  st unmount "$S_DIR/mnt" >>"$OUT/strata-mount.log" 2>&1
  wait_exit "${PID[strata]}"
}
# wait_store_strata T_END: echo the time the store had everything
wait_store_strata() {
  local t_end=$1 sf m1 m2 j i
  for ((i = 0; i < 36000; i++)); do
    sf=$(ls "$S_DIR"/run/*.json 2>/dev/null | head -1)
    if [ -n "$sf" ]; then
      m1=$(stat -c %.9Y "$sf" 2>/dev/null || echo 0)
      j=$(st status "$S_DIR/mnt" --json 2>/dev/null || echo '{}')
      m2=$(stat -c %.9Y "$sf" 2>/dev/null || echo 0)
      if [ "$m1" = "$m2" ] && awk -v a="$m1" -v b="$t_end" 'BEGIN { exit !(a > b) }' &&
        jq -e '.dirty_bytes == 0 and .dirty_chunks == 0 and .uploads_in_flight == 0 and .uncommitted_records == 0' \
          <<<"$j" >/dev/null; then
        echo "$j" >>"$OUT/strata-status.log"
        echo "$m1"; return 0
      fi
    fi
    sleep 0.1
  done
  log "strata never became clean"; return 1
}

# --- gocryptfs ---------------------------------------------------------------
G_DIR=$W/gocryptfs
setup_gocryptfs() { mkdir -p "$G_DIR/cipher"; gocryptfs -init -q -extpass 'echo pw' "$G_DIR/cipher" >/dev/null; }
cold_gocryptfs() { :; }
mount_gocryptfs() {
  gocryptfs -fg -q -extpass 'echo pw' "$G_DIR/cipher" "$G_DIR/mnt" </dev/null >>"$OUT/gocryptfs.log" 2>&1 &
  PID[gocryptfs]=$!
  wait_mounted "$G_DIR/mnt" "${PID[gocryptfs]}"
}
unmount_gocryptfs() {
  peak_note gocryptfs
  fusermount3 -u "$G_DIR/mnt"
  wait_exit "${PID[gocryptfs]}"
}
wait_store_gocryptfs() { sync; now; }

# --- rclone --------------------------------------------------------------------
R_DIR=$W/rclone
setup_rclone() {
  mkdir -p "$R_DIR/remote"
  cat >"$R_DIR/rclone.conf" <<EOF
[benchcrypt]
type = crypt
remote = $R_DIR/remote
password = $(rclone obscure pw)
EOF
}
cold_rclone() { rm -rf "$R_DIR/cache"; }
mount_rclone() {
  rclone mount benchcrypt: "$R_DIR/mnt" --config "$R_DIR/rclone.conf" --cache-dir "$R_DIR/cache" \
    --vfs-cache-mode full --vfs-write-back "$RCLONE_WRITE_BACK" \
    --log-level INFO --log-file "$OUT/rclone.log" </dev/null >>"$OUT/rclone.log" 2>&1 &
  PID[rclone]=$!
  wait_mounted "$R_DIR/mnt" "${PID[rclone]}"
}
# Uploads rclone has finished: it logs "<name>: Copied (new)" (INFO) once a
# file is in the remote. (rclone 1.60's rc vfs/stats is no use here: it shows
# uploadsInProgress 0 while a 1 GiB upload runs, and the local backend writes
# the remote file in place, so its presence is no sign either: checked.)
uploads_done() { grep -c ': Copied (' "$OUT/rclone.log" || true; }
# wait_store_rclone T_END EXPECTED_UPLOADS_DONE
wait_store_rclone() {
  local i
  for ((i = 0; i < 72000; i++)); do
    if [ "$(uploads_done)" -ge "$2" ]; then now; return 0; fi
    sleep 0.05
  done
  log "rclone never finished uploading"; return 1
}
unmount_rclone() {
  peak_note rclone
  fusermount3 -u "$R_DIR/mnt"
  wait_exit "${PID[rclone]}"
}

wait_store() { # system t_end expected_rclone_uploads
  case $1 in
    strata) wait_store_strata "$2" ;;
    gocryptfs) wait_store_gocryptfs ;;
    rclone) wait_store_rclone "$2" "$3" ;;
  esac
}
MOUNT_S=0
fresh_mount() { # system: cold start, mount; MOUNT_S = seconds to mount
  local t0              # (not in a subshell: PID[] must survive)
  "cold_$1"
  drop_caches
  t0=$(now)
  "mount_$1"
  MOUNT_S=$(fsub "$(now)" "$t0")
}

for s in $SYSTEMS; do "setup_$s"; done
# context: the disk's synchronous 4 KiB write latency (what every fsync costs)
t0=$(now); dd if=/dev/zero of="$W/dsync.probe" bs=4k count=500 oflag=dsync status=none; t1=$(now)
rm -f "$W/dsync.probe"
log "disk: 4 KiB O_DSYNC write $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) * 1000 / 500 }') ms each"
log "strata: $("$BIN" --version) from commit $(git rev-parse --short HEAD 2>/dev/null || echo ?), $(git status --short -- crates Cargo.toml Cargo.lock 2>/dev/null | wc -l) changed paths in the worktree; mount options: ${STRATA_MOUNT_ARGS[*]:-(defaults)}"
log "peers: $(gocryptfs -version | head -1 | cut -d';' -f1); $(rclone version | head -1); $(fio --version)"
log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
log "systems: $SYSTEMS; work dir $W ($(df -h "$W" | awk 'NR==2 {print $1}')); logs in $OUT"

# Systems run one after the other (all phases of one, then its data is
# deleted): the disk is shared with builds, and keeping three 1 GiB vaults,
# rclone's cache and remote and the sources at once needed ~9 GiB.
ROT=$(((1 << 20) + 4096)) # the no-fsync write sends SRC rotated by this:
# other chunk contents than f (strata deduplicates chunks by content)
rotated() { tail -c +$((ROT + 1)) "$SRC"; head -c "$ROT" "$SRC"; }

phase_write() {
  local s=$1 m=$W/$1/mnt base t0 t1 t2
  log "[$s] sequential write"
  fresh_mount "$s"
  # without fsync first (diagnostic): until close, then until in store; then
  # deleted again (rclone holds it twice: VFS cache and remote)
  base=$([ "$s" = rclone ] && uploads_done || echo 0)
  drop_caches; cat "$SRC" >/dev/null
  t0=$(now)
  rotated | dd of="$m/g" bs=1M iflag=fullblock status=none
  t1=$(now)
  t2=$(wait_store "$s" "$t1" $((base + 1)))
  rec write_close "$s" "$(fdiv "$BYTES" "$(fsub "$t1" "$t0")e6")"
  rec write_nofsync_store "$s" "$(fdiv "$BYTES" "$(fsub "$t2" "$t0")e6")"
  rm -f "$m/g"
  wait_store "$s" "$(now)" 0 >/dev/null
  # the figure: dd with fsync from the prepared file
  base=$([ "$s" = rclone ] && uploads_done || echo 0)
  drop_caches; cat "$SRC" >/dev/null
  t0=$(now)
  dd if="$SRC" of="$m/f" bs=1M conv=fsync status=none
  # strata (--fsync cloud): fsync returned = data and metadata in the store.
  # gocryptfs: fsync = on disk. rclone: fsync only syncs the VFS cache file;
  # the upload starts after close (--vfs-write-back), so "until in store"
  # waits for it.
  t1=$(now)
  t2=$(wait_store "$s" "$t1" $((base + 1)))
  [ "$s" = rclone ] || t2=$t1
  rec write_fsync "$s" "$(fdiv "$BYTES" "$(fsub "$t1" "$t0")e6")"
  rec write_store "$s" "$(fdiv "$BYTES" "$(fsub "$t2" "$t0")e6")"
  "unmount_$s"
}

phase_read() {
  local s=$1 m=$W/$1/mnt t0 t1
  log "[$s] cold sequential read"
  fresh_mount "$s"
  rec mount_s "$s" "$MOUNT_S"
  drop_caches
  t0=$(now)
  dd if="$m/f" of=/dev/null bs=1M status=none
  t1=$(now)
  rec read_seq "$s" "$(fdiv "$BYTES" "$(fsub "$t1" "$t0")e6")"
  cmp -s "$m/f" "$SRC" || { log "[$s] read back differs!"; exit 1; }
  "unmount_$s"
}

phase_randread() {
  local s=$1 m=$W/$1/mnt
  log "[$s] cold 4 KiB random read"
  fresh_mount "$s"
  drop_caches
  fio --name=rr --filename="$m/f" --rw=randread --bs=4k --size="${SIZE_MIB}M" --runtime="$FIO_RUNTIME" \
    --time_based --ioengine=psync --numjobs=1 --output-format=json >"$OUT/fio-$s.json"
  rec randread_iops "$s" "$(jq '.jobs[0].read.iops | floor' "$OUT/fio-$s.json")"
  rec randread_lat_us "$s" "$(jq '.jobs[0].read.clat_ns.mean / 1000 | floor' "$OUT/fio-$s.json")"
  "unmount_$s"
}

make_files() { # dir n
  local d=$1 n=$2 i
  for ((i = 0; i < n; i++)); do
    ((i % 100 == 0)) && mkdir "$d/d$((i / 100))"
    printf '%08d%s\n' "$i" "$BLK" >"$d/d$((i / 100))/f$i"
  done
}
phase_small() {
  local s=$1 m=$W/$1/mnt base t0 t1 t2
  log "[$s] create $NFILES x 4 KiB files"
  fresh_mount "$s"
  base=$([ "$s" = rclone ] && uploads_done || echo 0)
  mkdir "$m/small"
  t0=$(now)
  make_files "$m/small" "$NFILES"
  t1=$(now)
  t2=$(wait_store "$s" "$t1" $((base + NFILES)))
  rec small_close "$s" "$(fdiv "$NFILES" "$(fsub "$t1" "$t0")")"
  rec small_store "$s" "$(fdiv "$NFILES" "$(fsub "$t2" "$t0")")"
  "unmount_$s"
}

phase_ls() { # LS_REPEAT cold remounts, the median time
  local s=$1 m=$W/$1/mnt n t0 t1 r times=()
  log "[$s] ls -lR after a cold remount (median of $LS_REPEAT)"
  for ((r = 0; r < LS_REPEAT; r++)); do
    fresh_mount "$s"
    drop_caches
    t0=$(now)
    # shellcheck disable=SC2010 # ls -lR is what is measured
    n=$(ls -lR "$m/small" | grep -c '^-')
    t1=$(now)
    [ "$n" = "$NFILES" ] || { log "[$s] ls -lR saw $n files, expected $NFILES"; exit 1; }
    times+=("$(fsub "$t1" "$t0")")
    "unmount_$s"
  done
  log "  ls -lR times [$s]: ${times[*]}"
  rec ls_lR_s "$s" "$(printf '%s\n' "${times[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
}

phase_untar() {
  local s=$1 m=$W/$1/mnt base t0 t1 t2 c
  log "[$s] untar ${#CRATES[@]} crates"
  fresh_mount "$s"
  base=$([ "$s" = rclone ] && uploads_done || echo 0)
  mkdir "$m/src"
  t0=$(now)
  for c in "${CRATES[@]}"; do tar xzf "$c" -C "$m/src"; done
  t1=$(now)
  t2=$(wait_store "$s" "$t1" $((base + TAR_FILES)))
  rec untar_close_s "$s" "$(fsub "$t1" "$t0")"
  rec untar_store_s "$s" "$(fsub "$t2" "$t0")"
  "unmount_$s"
}

avail_mib() { df -Pm "$W" | awk 'NR==2 { print $4 }'; }
check_space() { # never fill the shared disk: stop while there is room left
  local a
  a=$(avail_mib)
  if [ "$a" -lt $((SIZE_MIB + 1024)) ]; then
    log "only $a MiB free on the disk: stopping"; exit 1
  fi
}

for s in $SYSTEMS; do
  for p in $PHASES; do
    check_space
    "phase_$p" "$s"
  done
  rec peak_rss_mb "$s" "$(fdiv "${PEAK[$s]:-0}" 1024)"
  rec daemon_cpu_s "$s" "$(fdiv "${CPU[$s]:-0}" "$(getconf CLK_TCK)")"
  log "[$s] work dir (store, caches) at the end: $(du -sh "$W/$s" | cut -f1)"
  rm -rf "${W:?}/$s"
done
log "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- table --------------------------------------------------------------------------
python3 - "$RES" "$SIZE_MIB" "$NFILES" "$TAR_FILES" "$((TAR_BYTES / 1000000))" "$SYSTEMS" <<'EOF' | tee "$OUT/table.txt"
import sys
res, size, nfiles, tfiles, tmb, systems = sys.argv[1:]
systems = systems.split()
v = {}
for line in open(res):
    k, s, x = line.rstrip("\n").split("\t")
    v[(k, s)] = float(x)
# key, label, higher_is_better
rows = [
    ("write_fsync", f"seq write {size} MiB + fsync, MB/s", True),
    ("write_store", f"seq write {size} MiB until in store, MB/s", True),
    ("write_close", f"seq write {size} MiB no fsync, until close, MB/s", True),
    ("write_nofsync_store", f"seq write {size} MiB no fsync, until in store, MB/s", True),
    ("read_seq", f"cold seq read {size} MiB, MB/s", True),
    ("randread_iops", "cold 4 KiB random read (fio psync), IOPS", True),
    ("randread_lat_us", "  mean latency of those reads, us", False),
    ("small_close", f"create {nfiles} x 4 KiB, until close, files/s", True),
    ("small_store", f"create {nfiles} x 4 KiB, until in store, files/s", True),
    ("ls_lR_s", f"ls -lR {nfiles} files, cold remount (median), s", False),
    ("untar_close_s", f"untar {tfiles} files/{tmb} MB, until tar exits, s", False),
    ("untar_store_s", f"untar {tfiles} files/{tmb} MB, until in store, s", False),
    ("mount_s", f"cold mount (vault holds the {size} MiB file), s", False),
    ("peak_rss_mb", "daemon peak RSS over the run, MB", False),
    ("daemon_cpu_s", "daemon CPU (user + system) over the run, s", False),
]
w = max(len(r[1]) for r in rows)
def fmt(x):
    return "-" if x is None else (f"{x:.0f}" if abs(x) >= 100 else f"{x:.2f}")
print()
print(f"{'':{w}}  " + "".join(f"{s:>11}" for s in systems))
for k, label, _ in rows:
    print(f"{label:{w}}  " + "".join(f"{fmt(v.get((k, s))):>11}" for s in systems))
print()
print("Strata relative to the others (speed-up: >1 means strata is better;")
print("for times and RSS it is other/strata)")
others = [s for s in systems if s != "strata"]
if "strata" in systems and others:
    print(f"{'':{w}}  " + "".join(f"{'vs ' + s:>13}" for s in others))
    for k, label, hib in rows:
        cells = []
        for o in others:
            a, b = v.get((k, "strata")), v.get((k, o))
            if a is None or b is None or a == 0 or b == 0:
                cells.append(f"{'-':>13}")
            else:
                cells.append(f"{(a / b if hib else b / a):>12.2f}x")
        print(f"{label:{w}}  " + "".join(cells))
print()
print("Targets:")
sys.path.insert(0, "bench")
from mount_bench_summary import print_targets
print_targets(v, rows)
EOF
log "done; table in $OUT/table.txt"
