#!/usr/bin/env bash
# Build a local Kubernetes control plane for tests/k8s: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl (k8s.io/kubernetes from the Go module proxy), etcd and kwok, plus kwok's
# "fast" Stage documents. Everything lands in a cache outside the repo, keyed by the versions:
#   ${SKIPLOCK_K8S_CACHE:-$HOME/.cache/skiplock/k8s}/k8s-<v>_etcd-<v>_kwok-<v>/{bin/,stages.yaml}
# Idempotent: when the cache is complete it only prints the bin dir. The build runs in a temporary
# directory beside the cache and is moved into place in one rename, so an interrupted build leaves
# nothing half-done; a lock serialises concurrent callers. Progress goes to stderr, the bin dir to stdout.
# Needs: go (1.26 tried), network access to the Go module proxy, flock.
# Timings on 2 cores (Debian bookworm, Go 1.26.8): cold (empty Go module and build caches) 11m53s
# (module resolution 30 s, kube-* + kubectl 8.6 min, etcd 1 min, kwok 1.8 min); warm Go caches but
# empty binary cache 61 s; already cached 0.005 s.
set -euo pipefail
SCRIPT=build.sh
# shellcheck source=tools/k8s/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
DEST=$CACHE/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)

is_complete() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x $DEST/bin/$b ]] || return 1; done
  [[ -s $DEST/stages.yaml ]]
}

build_etcd() { # $1: output bin dir
  local mod=$WORK/etcd
  mkdir -p "$mod" && cd "$mod" && go mod init e >/dev/null 2>&1
  step "building etcd $ETCD_VERSION"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" 2>&1 | tail -n 3 >&2
  go build -trimpath -ldflags "-s -w" -o "$1/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() { # $1: output bin dir, $2: stages.yaml path
  step "building kwok $KWOK_VERSION"
  GOBIN=$1 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  local stage f
  stage=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
  for f in "$stage"/node/fast/node-initialize.yaml "$stage"/node/heartbeat/node-heartbeat.yaml \
    "$stage"/pod/fast/pod-*.yaml; do
    printf -- '---\n' && cat "$f"
  done >"$2"
}

build_all() {
  # the long part: ~8-10 min cold on 2 cores
  build_k8s_commands "$STAGE_DIR/bin" kube-apiserver kube-controller-manager kube-scheduler kubectl
  build_etcd "$STAGE_DIR/bin"
  build_kwok "$STAGE_DIR/bin" "$STAGE_DIR/stages.yaml"
}

cached_build "$DEST" is_complete build_all
