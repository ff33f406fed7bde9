#!/usr/bin/env bash
# Build tbmirror's container image with podman, from Debian packages only.
#
#   deploy/container/build.sh [IMAGE]          (default IMAGE: localhost/tbmirror:dev)
#   deploy/container/build.sh --print-requirements   the pinned list, from .venv
#   deploy/container/build.sh --print-conf           the CONTAINERS_CONF path (see below)
#
# It keeps its CONTAINERS_CONF and the last debootstrap's log in $TBMIRROR_BUILD_STATE
# (default /var/tmp/tbmirror-container).
#
# 1. The base images are made once per host and kept: debootstrap (from the Debian mirror apt
#    already uses) into a temporary directory, imported as localhost/tbmirror-base-build:<key>;
#    the compiler and headers are then purged in the same tree, imported as
#    localhost/tbmirror-base:<key>. <key> is a digest of the suite, the mirror and the package
#    list, so a change makes new ones; `podman rmi` them to pay for debootstrap again.
# 2. The image is built from deploy/container/Containerfile (--format docker: the OCI format
#    drops HEALTHCHECK), with the host's CA bundle lent to pip's steps as a build secret.
#
# Podman runs with deploy/container/containers.conf (runc, ulimits this host can grant): export
# CONTAINERS_CONF=$(deploy/container/build.sh --print-conf) to run the image the same way.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SUITE=bookworm
RUNTIME_PACKAGES=python3,python3-venv,tini,ca-certificates
BUILD_PACKAGES=gcc,libc6-dev,python3-dev
# purged from the runtime base: BUILD_PACKAGES and what they alone brought in
BUILD_ONLY="gcc libc6-dev python3-dev cpp cpp-12 gcc-12 libgcc-12-dev libc-dev-bin linux-libc-dev
    libcrypt-dev libnsl-dev libtirpc-dev rpcsvc-proto libpython3-dev libpython3.11-dev
    python3.11-dev libexpat1-dev zlib1g-dev binutils binutils-common binutils-x86-64-linux-gnu
    libbinutils libctf0 libctf-nobfd0 libgprofng0 libjansson4 libasan8 libtsan2 liblsan0
    libubsan1 libitm1 libquadmath0 libgomp1 libatomic1 libcc1-0 libisl23 libmpc3 libmpfr6
    libjs-jquery libjs-sphinxdoc libjs-underscore libpython3.11"
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
STATE_DIR=${TBMIRROR_BUILD_STATE:-/var/tmp/tbmirror-container}

log() { printf '%s build.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# The mirror apt uses for Debian (deb822 .sources or one-line .list), else Debian's CDN.
debian_mirror() {
    local found
    found=$(grep -hsE '^(URIs:|deb) ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources \
        | grep -oE 'https?://[^ ]*/debian/?' | grep -v security | head -n 1 || true)
    echo "${found:-http://deb.debian.org/debian}"
}

# This host's CONTAINERS_CONF (written from containers.conf); prints its path.
containers_conf() {
    mkdir -p "$STATE_DIR"
    local conf="$STATE_DIR/containers.conf"
    sed "s/@NOFILE@/$(ulimit -Hn)/g" "$HERE/containers.conf" > "$conf"
    echo "$conf"
}

print_requirements() {
    "$REPO/.venv/bin/python" - <<'PY'
import importlib.metadata as metadata
import re

from packaging.requirements import Requirement

pinned, todo = {}, ["tbmirror"]
while todo:
    dist = metadata.distribution(todo.pop())
    key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    if key in pinned:
        continue
    pinned[key] = dist.version
    for line in dist.requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            todo.append(requirement.name)
del pinned["tbmirror"]
print("\n".join(f"{name}=={version}" for name, version in sorted(pinned.items())))
PY
}

# Make the two base images unless this host has them.
base_images() {
    local mirror key
    mirror=$(debian_mirror)
    key=$(printf '%s\n' "$SUITE" "$mirror" "$RUNTIME_PACKAGES" "$BUILD_PACKAGES" "$BUILD_ONLY" \
        | sha256sum | cut -c1-12)
    BUILD_BASE=localhost/tbmirror-base-build:$key
    RUNTIME_BASE=localhost/tbmirror-base:$key
    if podman image exists "$BUILD_BASE" && podman image exists "$RUNTIME_BASE"; then
        log "base images $key cached"
        return
    fi
    rootfs=$(mktemp -d /var/tmp/tbmirror-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap $SUITE from $mirror"
    debootstrap --variant=minbase --include="$RUNTIME_PACKAGES,$BUILD_PACKAGES" \
        "$SUITE" "$rootfs" "$mirror" > "$STATE_DIR/debootstrap.log" 2>&1 \
        || { tail -n 20 "$STATE_DIR/debootstrap.log" >&2; exit 1; }
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/debconf/*-old
    tar -C "$rootfs" -c . | podman import --quiet - "$BUILD_BASE" > /dev/null
    # shellcheck disable=SC2086  # one word per package
    chroot "$rootfs" dpkg --purge $BUILD_ONLY > /dev/null
    tar -C "$rootfs" -c . | podman import --quiet - "$RUNTIME_BASE" > /dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "base images $key made"
}

main() {
    case "${1:-}" in
        --print-requirements) print_requirements; return ;;
        --print-conf) containers_conf; return ;;
    esac
    local image=${1:-localhost/tbmirror:dev}
    CONTAINERS_CONF=$(containers_conf)
    export CONTAINERS_CONF
    base_images
    context=$(mktemp -d /var/tmp/tbmirror-context.XXXXXX)
    trap 'rm -rf "$context"' EXIT
    (cd "$REPO" && tar --exclude=__pycache__ --exclude='*.so' -c pyproject.toml setup.py \
        README.md daemon deploy/container/requirements.txt) | tar -x -C "$context"
    log "building $image"
    # --layers=false: no intermediate image is kept (the base images are the cache)
    podman build --quiet --layers=false --format docker --network host --secret "id=ca,src=$CA_BUNDLE" \
        --build-arg "BUILD_BASE=$BUILD_BASE" --build-arg "RUNTIME_BASE=$RUNTIME_BASE" \
        --file "$HERE/Containerfile" --tag "$image" "$context" > /dev/null
    log "built $image"
}

main "$@"
