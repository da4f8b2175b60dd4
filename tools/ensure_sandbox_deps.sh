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

# DOCKER_DISK_QUOTA=1: a dockerd we start ourselves keeps its images and containers on a btrfs
# filesystem with quotas (a sparse image file, loop-mounted), so each sandbox container gets a
# disk quota (--storage-opt size); overlay2 on ext4 cannot size a container. Off by default:
# on btrfs with quotas a container's start, commands and removal were about 2.5x slower here
# (16 expert episodes: 51-57 s against 22 s), which the test suite cannot afford; a fleet of
# sandbox hosts for long SWE episodes can. Where it cannot be made (no loop device, no btrfs),
# dockerd runs as it would, and the docker backend warns that its sandboxes have no disk quota.
DOCKER_DISK_QUOTA=${DOCKER_DISK_QUOTA:-0}
DOCKER_BTRFS_ROOT=${DOCKER_BTRFS_ROOT:-/var/lib/dagger_jax/docker}
DOCKER_BTRFS_IMAGE=${DOCKER_BTRFS_IMAGE:-/var/lib/dagger_jax/docker.btrfs}
btrfs_data_root() {
  mountpoint -q "$DOCKER_BTRFS_ROOT" && { echo "$DOCKER_BTRFS_ROOT"; return; }
  command -v mkfs.btrfs >/dev/null || {
    apt-get install -y -qq --no-install-recommends btrfs-progs >/dev/null 2>&1 || return 1; }
  mkdir -p "$DOCKER_BTRFS_ROOT"
  if [ ! -f "$DOCKER_BTRFS_IMAGE" ]; then
    # Sparse: it takes host disk only as images and containers fill it, up to the space free now.
    local free_kb; free_kb=$(df -Pk "$(dirname "$DOCKER_BTRFS_IMAGE")" | awk 'NR==2 {print $4}')
    truncate -s "$((free_kb * 9 / 10))K" "$DOCKER_BTRFS_IMAGE" || return 1
    mkfs.btrfs -q "$DOCKER_BTRFS_IMAGE" >/dev/null 2>&1 || { rm -f "$DOCKER_BTRFS_IMAGE"; return 1; }
  fi
  # nobarrier: the containers are throwaway; cache flushes on every commit only cost time.
  mount -o loop,noatime,nobarrier "$DOCKER_BTRFS_IMAGE" "$DOCKER_BTRFS_ROOT" 2>/dev/null || return 1
  btrfs quota enable "$DOCKER_BTRFS_ROOT" || { umount "$DOCKER_BTRFS_ROOT"; return 1; }
  echo "$DOCKER_BTRFS_ROOT"
}

docker_ok=1
if ! docker info >/dev/null 2>&1; then
  log "dockerd is not running; starting it (log: $DOCKERD_LOG)"
  if [ -d /run/systemd/system ]; then
    systemctl start docker || true
  else
    dockerd_args=()
    if [ "$DOCKER_DISK_QUOTA" = 1 ]; then
      if root=$(btrfs_data_root); then
        log "dockerd data on btrfs with quotas at $root (sandbox containers get a disk quota)"
        dockerd_args=(--data-root "$root" --storage-driver btrfs)
      else
        log "no btrfs data root could be made: docker sandboxes will have no disk quota"
      fi
    fi
    # Its own session, so it outlives the test run or CI step that started it.
    setsid nohup dockerd "${dockerd_args[@]}" >>"$DOCKERD_LOG" 2>&1 </dev/null &
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
