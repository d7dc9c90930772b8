#!/usr/bin/env bash
# System setup for the Docker tests (tests/test_docker.py) on Debian 12, as
# root, without systemd: Debian's docker.io, a dockerd started in the
# background, and a local base image `mlcluster-base:bookworm` made with
# debootstrap (Docker Hub is not reachable from our machines). Idempotent and
# quick when everything is already there.
#
# Environment: MLCLUSTER_BASE_IMAGE (default mlcluster-base:bookworm),
# MLCLUSTER_DEBIAN_MIRROR (default: the Debian mirror apt uses),
# MLCLUSTER_DOCKERD_LOG (default /var/log/mlcluster-dockerd.log).
set -euo pipefail

BASE_IMAGE=${MLCLUSTER_BASE_IMAGE:-mlcluster-base:bookworm}
DOCKERD_LOG=${MLCLUSTER_DOCKERD_LOG:-/var/log/mlcluster-dockerd.log}
# What the Dockerfiles need from the base, so builds run no apt inside.
BASE_PACKAGES=python3,python3-venv,ca-certificates,passwd

# One setup at a time (two CI steps or engineers could start it together).
mkdir -p /run/lock
exec 9>/run/lock/mlcluster-setup-docker.lock
flock 9

# --- packages -------------------------------------------------------------
need=()
[ -x /usr/bin/docker ] && [ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq -o DPkg::Lock::Timeout=300
    # The post-install's service start is refused without systemd, harmlessly.
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null
fi
# Debian's client (20.10) builds with BuildKit; a newer client elsewhere on
# PATH may lack buildx, so use this one.
DOCKER=/usr/bin/docker

# --- the engine -----------------------------------------------------------
if ! "$DOCKER" info >/dev/null 2>&1; then
    echo "starting dockerd (log: $DOCKERD_LOG)"
    # Its own session, so it outlives this script and ignores its hangup.
    # fd 9 (the lock) closed, or dockerd would hold it for ever.
    setsid /usr/sbin/dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &
    for _ in $(seq 1 120); do
        "$DOCKER" info >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! "$DOCKER" info >/dev/null 2>&1; then
        echo "dockerd did not answer within 60 s; the end of its log:" >&2
        tail -n 30 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
fi

# --- the base image -------------------------------------------------------
debian_mirror() {
    # The first Debian archive (not -security) that apt's sources name.
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v security | grep '/debian/\?$' | head -n 1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' \
              | grep -v security | grep '/debian/\?$' | head -n 1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    mirror=${MLCLUSTER_DEBIAN_MIRROR:-$(debian_mirror)}
    rootfs=$(mktemp -d /var/tmp/mlcluster-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "building $BASE_IMAGE with debootstrap from $mirror"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 30 "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    # What an image never needs: downloaded packages, package lists, docs.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
           "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
    tar -C "$rootfs" --numeric-owner -c . | "$DOCKER" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
fi
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$BASE_IMAGE"
