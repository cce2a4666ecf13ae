#!/usr/bin/env bash
# Build the skiplock images with buildah, without a Docker engine and without a container registry:
#
#   1. a local stand-in for python:3.11-slim: Debian bookworm (python3 3.11, venv, CA certificates)
#      made with debootstrap, cached as a tarball under $SKIPLOCK_IMAGE_CACHE, imported into buildah
#      and tagged docker.io/library/python:3.11-slim -- the name the Dockerfiles use, which stay
#      standard. Skipped when that image is already in buildah's storage.
#   2. a wheelhouse in build/wheels (the dependencies of skiplock and of the extras the images install,
#      and the build backend pyproject.toml requires), because pip cannot reach an index inside the build;
#   3. the images: skiplock-worker, skiplock-worker:gpu (target gpu) and skiplock-operator, tagged
#      localhost/skiplock-*:$VERSION.
#
# Usage: tools/build-images.sh [worker|worker-gpu|operator ...]   (default: all three)
#        tools/build-images.sh buildah ARGS...   runs buildah on the same storage (e.g. `run`, `inspect`)
# Env:   SKIPLOCK_IMAGE_CACHE (default ~/.cache/skiplock/images): the rootfs tarball and buildah's
#        storage (its own, not /var/lib/containers); BUILDAH_STORAGE_DRIVER: overlay when the kernel
#        has it (a worker image in ~1 min), else vfs (each layer a full copy: ~3 min an image);
#        SKIPLOCK_IMAGE_TAG (default: the package version).
# Needs: root, buildah, debootstrap, pip. Cold (no cached rootfs): ~1 min debootstrap + the builds.
# Progress goes to stderr; stdout gets one line per image: NAME SIZE.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SKIPLOCK_IMAGE_CACHE:-$HOME/.cache/skiplock/images}
if [[ -n ${BUILDAH_STORAGE_DRIVER:-} ]]; then
  DRIVER=$BUILDAH_STORAGE_DRIVER
elif grep -qw overlay /proc/filesystems 2>/dev/null; then
  DRIVER=overlay
else
  DRIVER=vfs
fi
STORAGE=$CACHE/storage-$DRIVER
SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates
BASE_NAME=docker.io/library/python:3.11-slim
ROOTFS_TAR=$CACHE/rootfs-$SUITE-minbase-${INCLUDE//,/-}.tar
PYTHON=${PYTHON:-python3}
EXTRAS=binary,operator,ui # the union of the extras the Dockerfiles install
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(worker worker-gpu operator)

step() { printf '[build-images %4ds] %s\n' "$SECONDS" "$*" >&2; }
bah() { buildah --storage-driver "$DRIVER" --root "$STORAGE" --runroot "/run/skiplock-buildah-$DRIVER" "$@"; }

if [[ ${1:-} == buildah ]]; then
  shift
  bah "$@"
  exit
fi

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "build-images.sh: $tool is required (apt-get install $tool)" >&2; exit 1; }
done
pyproject() { (cd "$REPO" && $PYTHON -c "import tomllib;p=tomllib.load(open('pyproject.toml','rb'));print($1)"); }
VERSION=${SKIPLOCK_IMAGE_TAG:-$(pyproject 'p["project"]["version"]')}
mapfile -t BUILD_REQUIRES < <(pyproject '"\\n".join(p["build-system"]["requires"])')
REVISION=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

make_rootfs() {
  [[ -s $ROOTFS_TAR ]] && return
  mkdir -p "$CACHE"
  local work
  work=$(mktemp -d "$CACHE/.rootfs.XXXXXX")
  step "debootstrap $SUITE (minbase + $INCLUDE) into $work (~1 min)"
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; rm -rf "$work"; exit 1; }
  # apt's lists and caches only make the base bigger.
  rm -rf "$work"/root/var/lib/apt/lists/* "$work"/root/var/cache/apt/*.bin "$work"/root/var/cache/apt/archives/*.deb
  tar -C "$work/root" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$ROOTFS_TAR" # one rename: an interrupted run leaves no half tarball
  rm -rf "$work"
}

ensure_base() {
  if bah inspect --type image "$BASE_NAME" >/dev/null 2>&1; then
    step "base $BASE_NAME already in buildah storage"
    return
  fi
  make_rootfs
  local ctx
  ctx=$(mktemp -d)
  ln "$ROOTFS_TAR" "$ctx/rootfs.tar" 2>/dev/null || cp "$ROOTFS_TAR" "$ctx/rootfs.tar"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\n' >"$ctx/Containerfile"
  step "importing the rootfs as $BASE_NAME"
  bah bud --quiet --isolation chroot -t localhost/skiplock-base:$SUITE "$ctx" >/dev/null
  bah tag localhost/skiplock-base:$SUITE "$BASE_NAME"
  rm -rf "$ctx"
}

wheelhouse() {
  step "wheelhouse build/wheels (skiplock + the dependencies of every extra an image installs + build backend)"
  rm -rf "$REPO/build/wheels"
  mkdir -p "$REPO/build/wheels"
  $PYTHON -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$REPO/build/wheels" "$REPO[$EXTRAS]" \
    >"$REPO/build/wheels.log" 2>&1 || { tail -n 30 "$REPO/build/wheels.log" >&2; exit 1; }
  $PYTHON -m pip download --quiet --disable-pip-version-check --dest "$REPO/build/wheels" \
    "${BUILD_REQUIRES[@]}" >&2
  rm -f "$REPO"/build/wheels/skiplock-*.whl # the build installs skiplock from the sources in the context
}

build() { # $1: image name, then buildah bud arguments
  local name=$1
  shift
  step "building $name"
  bah bud --quiet --pull=false --isolation chroot --layers="${SKIPLOCK_BUILD_LAYERS:-false}" \
    --build-arg PIP_FIND_LINKS=/src/build/wheels --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED" -t "$name" "$@" "$REPO" >/dev/null
  printf '%s %s\n' "$name" "$(bah images --noheading --format '{{.Size}}' "$name" | head -n 1)"
}

ensure_base
wheelhouse
for target in "${TARGETS[@]}"; do
  case $target in
  worker) build "localhost/skiplock-worker:$VERSION" -f "$REPO/Dockerfile.worker" ;;
  worker-gpu) build "localhost/skiplock-worker:$VERSION-gpu" -f "$REPO/Dockerfile.worker" --target gpu ;;
  operator) build "localhost/skiplock-operator:$VERSION" -f "$REPO/Dockerfile.operator" ;;
  *) echo "build-images.sh: unknown image $target (worker, worker-gpu, operator)" >&2 && exit 2 ;;
  esac
done
bah rmi --prune >/dev/null 2>&1 || true # the build stages' images, untagged
step "done"
