#!/usr/bin/env bash
# Install skiplock into .venv (Python 3.11+). With --test, also everything the test tiers use:
# test Python packages, Debian packages (as root), helm, hadolint, the Kubernetes control plane
# and the real node of the end-to-end tier (kubelet, containerd, runc: built once from Go modules into
# a cache outside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s (%ss)\n' "$1" "$SECONDS" >&2; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11+ is required" >&2; exit 1; }

step "Python environment (.venv, $($PY --version))"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# binary: psycopg's self-contained driver (the application's choice; the demo and the tests take it).
extras=binary,embedded
[ "${1:-}" = "--test" ] && extras=binary,operator,ui,test,bench
.venv/bin/python -m pip install -q -e ".[$extras]"

[ "${1:-}" = "--test" ] || { step "done: run .venv/bin/skiplock demo"; exit 0; }

# pgbouncer: the transaction-pooler tests (tests/pgbouncer.py). The real node (tools/k8s/build-node.sh, tests/e2e): gcc + libc6-dev (cgo, the static sandbox program),
# libseccomp-dev (runc), containernetworking-plugins (CNI bridge), iptables, iproute2.
APT_PACKAGES=(prometheus pgbouncer chromium buildah debootstrap unzip gcc libc6-dev libseccomp-dev
  containernetworking-plugins
  iptables iproute2)
command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)  # the TypeScript client's tests (clients/typescript)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    step "Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
if command -v npm >/dev/null; then
  step "TypeScript client: npm ci (clients/typescript)"
  (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error)
fi
for script in tools/install-helm.sh tools/k8s/build.sh tools/k8s/build-node.sh; do
  if [ -f "$script" ]; then step "$script"; bash "$script"; fi
done
step "setup complete"
