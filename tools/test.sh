#!/usr/bin/env bash
# Every check and test tier, on a fresh machine too: installs what it needs, then lint, types,
# and pytest (unit, integration, acceptance, operator, packaging, Kubernetes, end-to-end on a real node,
# chaos, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIPLOCK_SKIP_SETUP:-}" = 1 ] || bash tools/setup.sh --test
. .venv/bin/activate
step() { printf '\n==> %s (%ss)\n' "$1" "$SECONDS" >&2; }

step "ruff"
ruff check .
step "mypy (the installed package, where operator/ is skiplock.operator, with the tests and benchmarks beside it)"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
pip install -q --no-deps --no-compile --target "$site" .
cp -r tests bench pyproject.toml "$site/"
(cd "$site" && mypy -p skiplock -p tests -p bench)
step "pytest"
# Every tier, the image builds with buildah included (SKIPLOCK_IMAGES=0 skips those).
export SKIPLOCK_IMAGES=${SKIPLOCK_IMAGES:-1}
# A tool a tier needs (helm, hadolint, promtool, prometheus, buildah, debootstrap, chromium and
# playwright, the bench extra) that is missing fails its tests instead of skipping them, so that a
# fresh machine cannot go green with tiers skipped (SKIPLOCK_REQUIRE_TOOLS=0 skips them again).
export SKIPLOCK_REQUIRE_TOOLS=${SKIPLOCK_REQUIRE_TOOLS:-1}
python -m pytest -q -p no:randomly --durations=15 "$@"
