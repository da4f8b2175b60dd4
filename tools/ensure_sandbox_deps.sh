#!/usr/bin/env bash
# Makes this machine able to run the project's sandboxes, idempotently (needs root):
# installs docker.io, bubblewrap and debootstrap when absent, starts dockerd when it is not
# running, and builds the base image dagger-jax/base:bookworm (cached: a rerun costs seconds).
# Usage: tools/ensure_sandbox_deps.sh [python]   (any Python >= 3.11; default python3)
set -euo pipefail
python=${1:-python3}
cd "$(dirname "$0")/.."
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKERD_WAIT_S=${DOCKERD_WAIT_S:-60}
log() { echo "ensure_sandbox_deps: $*" >&2; }
die() { log "$*"; exit 1; }

need=()
command -v docker >/dev/null && command -v dockerd >/dev/null || need+=(docker.io)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  [ "$(id -u)" = 0 ] || die "missing ${need[*]}; install as root: apt-get install ${need[*]}"
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || die "apt-get install ${need[*]} failed"
fi

docker_ok=1
if ! docker info >/dev/null 2>&1; then
  log "dockerd is not running; starting it (log: $DOCKERD_LOG)"
  if [ -d /run/systemd/system ]; then
    systemctl start docker || true
  else
    # Its own session, so it outlives the test run or CI step that started it.
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq "$DOCKERD_WAIT_S"); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    docker_ok=0
    log "dockerd did not come up within $DOCKERD_WAIT_S s; last lines of $DOCKERD_LOG:"
    tail -n 20 "$DOCKERD_LOG" >&2 || true
  fi
fi

if ((docker_ok)); then
  "$python" tools/build_base_image.py >/dev/null || die "building the base image failed"
else
  # bubblewrap still gets its read-only root; the docker backend stays unavailable.
  "$python" tools/build_base_image.py --rootfs-only >/dev/null || die "building the base rootfs failed"
  die "docker is unavailable: dockerd could not be started (see $DOCKERD_LOG)"
fi
log "ok: docker, bubblewrap and the base image are ready"
