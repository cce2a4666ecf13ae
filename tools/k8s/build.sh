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

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
STAGING_VERSION=v0.${K8S_VERSION#v1.} # staging modules (k8s.io/api, ...) are tagged v0.<minor>.<patch>
CACHE=${SKIPLOCK_K8S_CACHE:-$HOME/.cache/skiplock/k8s}
DEST=$CACHE/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

step() { printf '[build.sh %4ds] %s\n' "$SECONDS" "$*" >&2; }

is_complete() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x $DEST/bin/$b ]] || return 1; done
  [[ -s $DEST/stages.yaml ]]
}

version_ldflags() {
  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.%s ' "$pkg" "gitVersion=$K8S_VERSION" "$pkg" gitMajor=1 "$pkg" "gitMinor=$minor" \
      "$pkg" gitTreeState=clean
  done
}

build_kubernetes() { # $1: output bin dir
  local mod=$WORK/kubernetes gomod m
  mkdir -p "$mod" && cd "$mod" && go mod init cp >/dev/null 2>&1
  step "resolving k8s.io/kubernetes@$K8S_VERSION and its staging modules"
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  # k8s.io/kubernetes replaces its staging modules with ./staging/...: pin them to the published tags.
  while read -r m; do
    go mod edit -replace "$m=$m@$STAGING_VERSION"
  done < <(grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u)
  local pkgs=("${K8S_CMDS[@]/#/k8s.io/kubernetes/cmd/}")
  go get "${pkgs[@]/%/@$K8S_VERSION}" 2>&1 | tail -n 3 >&2
  step "compiling ${K8S_CMDS[*]} (the long part, ~8-10 min cold on 2 cores)"
  go build -trimpath -ldflags "-s -w $(version_ldflags)" -o "$1/" "${pkgs[@]}"
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

if is_complete; then echo "$DEST/bin" && exit 0; fi
command -v go >/dev/null || { echo "build.sh: go is required" >&2 && exit 1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock -n 9 || { step "another build holds $CACHE/.build.lock: waiting" && flock 9; }
if is_complete; then echo "$DEST/bin" && exit 0; fi # another caller built it meanwhile

rm -rf "$CACHE"/.tmp.* # leftovers of killed builds (we hold the lock, so nobody else is building)
WORK=$(mktemp -d "$CACHE/.tmp.XXXXXX") # same filesystem as $DEST: the final mv is one rename
trap 'rm -rf "$WORK"' EXIT
export GOFLAGS=-buildvcs=false
STAGE_DIR=$WORK/out
mkdir -p "$STAGE_DIR/bin"
build_kubernetes "$STAGE_DIR/bin"
build_etcd "$STAGE_DIR/bin"
build_kwok "$STAGE_DIR/bin" "$STAGE_DIR/stages.yaml"
rm -rf "$DEST" # only ever an incomplete leftover here: a complete one returned above
mv -T "$STAGE_DIR" "$DEST"
step "installed into $DEST"
echo "$DEST/bin"
