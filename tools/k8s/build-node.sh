#!/usr/bin/env bash
# Build a real Kubernetes node for the end-to-end tests (tests/e2e): kubelet (k8s.io/kubernetes, like
# the control plane of build.sh), containerd with its runc shim and ctr, runc, and the sandbox
# ("pause") image as an OCI archive, built locally because no registry is reachable. Everything
# lands in a cache outside the repo, keyed by the versions:
#   ${SKIPLOCK_K8S_CACHE:-$HOME/.cache/skiplock/k8s}/node-k8s-<v>_containerd-<v>_runc-<v>_pause-<v>/
#     bin/{kubelet,containerd,containerd-shim-runc-v2,ctr,runc}  pause.tar  node.env (PAUSE_IMAGE=...)
# Idempotent, one rename into place, and the same lock as build.sh (see lib.sh). Progress goes to
# stderr, the bin dir to stdout.
# Needs: go, gcc with static glibc (libc6-dev), libseccomp-dev (runc's seccomp), buildah, flock; and,
# to run the node, containernetworking-plugins (CNI plugins in /usr/lib/cni) and iptables.
# Why these: Debian's containerd 1.6 is too old for kubelet 1.37; Debian's runc 1.1.5 and crun 1.8.1
# both fail under containerd 2.4.
# Timings on 2 cores shared with other work (load ~5; Debian bookworm, Go 1.26.8): cold (empty Go
# module and build caches) 13m41s (runc 31 s, containerd 3 min, kubelet 9.7 min); after build.sh, whose
# Kubernetes packages warm the Go build cache (CI's order), 4m37s (runc 40 s, containerd 2.4 min,
# kubelet 1.5 min); already cached 0.005 s.
set -euo pipefail
SCRIPT=build-node.sh
# shellcheck source=tools/k8s/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.3
PAUSE_VERSION=3.10.2 # the tag containerd 2.4.2 pins; our image is a local stand-in with that name
PAUSE_IMAGE=registry.k8s.io/pause:$PAUSE_VERSION
DEST=$CACHE/node-k8s-${K8S_VERSION}_containerd-${CONTAINERD_VERSION}_runc-${RUNC_VERSION}_pause-${PAUSE_VERSION}
BINARIES=(kubelet containerd containerd-shim-runc-v2 ctr runc)

is_complete() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x $DEST/bin/$b ]] || return 1; done
  [[ -s $DEST/pause.tar && -s $DEST/node.env ]]
}

build_containerd() { # $1: output bin dir
  local mod=$WORK/containerd pkg=github.com/containerd/containerd/v2
  mkdir -p "$mod" && cd "$mod" && go mod init c >/dev/null 2>&1
  step "building containerd $CONTAINERD_VERSION (containerd, containerd-shim-runc-v2, ctr)"
  go get "$pkg/cmd/containerd@$CONTAINERD_VERSION" "$pkg/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "$pkg/cmd/ctr@$CONTAINERD_VERSION" 2>&1 | tail -n 3 >&2
  go build -trimpath -tags no_btrfs,no_zfs \
    -ldflags "-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Revision=$CONTAINERD_VERSION" \
    -o "$1/" "$pkg/cmd/containerd" "$pkg/cmd/containerd-shim-runc-v2" "$pkg/cmd/ctr"
}

build_runc() { # $1: output bin dir
  local mod=$WORK/runc
  mkdir -p "$mod" && cd "$mod" && go mod init r >/dev/null 2>&1
  step "building runc $RUNC_VERSION (seccomp)"
  go get "github.com/opencontainers/runc@$RUNC_VERSION" 2>&1 | tail -n 3 >&2
  go build -trimpath -tags seccomp -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" -o "$1/runc" \
    github.com/opencontainers/runc
}

# The sandbox image: a static program that sleeps until SIGTERM/SIGINT and reaps orphans (what
# registry.k8s.io/pause does), alone in an image committed from scratch with buildah (storage of its
# own under $WORK, so nothing outside the cache is touched).
build_pause() { # $1: the OCI archive to write
  step "building the sandbox image $PAUSE_IMAGE (static C, buildah from scratch)"
  local dir=$WORK/pause
  mkdir -p "$dir"
  cat >"$dir/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
EOF
  gcc -static -Os -s -o "$dir/pause" "$dir/pause.c"
  local bah=(buildah --root "$dir/storage" --runroot "$dir/run" --storage-driver vfs) ctr
  ctr=$("${bah[@]}" from scratch)
  "${bah[@]}" copy "$ctr" "$dir/pause" /pause >/dev/null
  "${bah[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  "${bah[@]}" commit --quiet "$ctr" localhost/skiplock-pause >/dev/null
  "${bah[@]}" push --quiet localhost/skiplock-pause "oci-archive:$1:$PAUSE_IMAGE"
  "${bah[@]}" rm "$ctr" >/dev/null
  rm -rf "$dir/storage" "$dir/run" 2>/dev/null || true
}

build_all() {
  build_runc "$STAGE_DIR/bin"
  build_containerd "$STAGE_DIR/bin"
  build_k8s_commands "$STAGE_DIR/bin" kubelet
  build_pause "$STAGE_DIR/pause.tar"
  printf 'PAUSE_IMAGE=%s\n' "$PAUSE_IMAGE" >"$STAGE_DIR/node.env"
}

cached_build "$DEST" is_complete build_all
