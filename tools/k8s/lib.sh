# shellcheck shell=bash
# Shared by tools/k8s/build.sh (control plane) and tools/k8s/build-node.sh (a real node): the
# Kubernetes version, the cache and its lock, and the throwaway Go module that builds k8s.io/kubernetes
# commands from the Go module proxy. Source it; set SCRIPT (the name in progress lines) first.

K8S_VERSION=v1.37.2
STAGING_VERSION=v0.${K8S_VERSION#v1.} # staging modules (k8s.io/api, ...) are tagged v0.<minor>.<patch>
CACHE=${SKIPLOCK_K8S_CACHE:-$HOME/.cache/skiplock/k8s}

step() { printf '[%s %4ds] %s\n' "${SCRIPT:-k8s}" "$SECONDS" "$*" >&2; }

version_ldflags() {
  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.%s ' "$pkg" "gitVersion=$K8S_VERSION" "$pkg" gitMajor=1 "$pkg" "gitMinor=$minor" \
      "$pkg" gitTreeState=clean
  done
}

# build_k8s_commands OUT_DIR CMD... : build k8s.io/kubernetes/cmd/CMD... (kube-apiserver, kubelet, ...)
# into OUT_DIR, in a throwaway module under $WORK whose staging modules are pinned to their tags.
build_k8s_commands() {
  local out=$1 mod gomod m
  shift
  mod=$(mktemp -d "$WORK/kubernetes.XXXXXX")
  cd "$mod" && go mod init cp >/dev/null 2>&1
  step "resolving k8s.io/kubernetes@$K8S_VERSION and its staging modules"
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  # k8s.io/kubernetes replaces its staging modules with ./staging/...: pin them to the published tags.
  while read -r m; do
    go mod edit -replace "$m=$m@$STAGING_VERSION"
  done < <(grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u)
  local pkgs=("${@/#/k8s.io/kubernetes/cmd/}")
  go get "${pkgs[@]/%/@$K8S_VERSION}" 2>&1 | tail -n 3 >&2
  step "compiling $*"
  go build -trimpath -ldflags "-s -w $(version_ldflags)" -o "$out/" "${pkgs[@]}"
}

# cached_build DEST IS_COMPLETE BUILD : unless IS_COMPLETE (a function) succeeds, take the cache lock
# (a second caller waits), run BUILD (a function) with $WORK a fresh temporary directory and
# $STAGE_DIR the directory to fill, then move $STAGE_DIR to DEST in one rename. Prints DEST/bin.
cached_build() {
  local dest=$1 is_complete=$2 build=$3
  if "$is_complete"; then echo "$dest/bin" && return 0; fi
  command -v go >/dev/null || { echo "$SCRIPT: go is required" >&2 && return 1; }
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.build.lock"
  flock -n 9 || { step "another build holds $CACHE/.build.lock: waiting" && flock 9; }
  if "$is_complete"; then echo "$dest/bin" && return 0; fi # another caller built it meanwhile

  rm -rf "$CACHE"/.tmp.* # leftovers of killed builds (we hold the lock, so nobody else is building)
  WORK=$(mktemp -d "$CACHE/.tmp.XXXXXX") # same filesystem as DEST: the final mv is one rename
  trap 'rm -rf "$WORK"' EXIT
  export GOFLAGS=-buildvcs=false
  STAGE_DIR=$WORK/out
  mkdir -p "$STAGE_DIR/bin"
  "$build"
  rm -rf "$dest" # only ever an incomplete leftover here: a complete one returned above
  mv -T "$STAGE_DIR" "$dest"
  step "installed into $dest"
  echo "$dest/bin"
}
