"""The migration guides (docs/migrate/) cannot rot: every block marked ``python test``, ``bash test``
or ``sql test`` runs, in the order of its guide, against a fresh database (``skiplock`` and ``psql``
on the PATH, DATABASE_URL set), and each guide keeps its mapping table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from skiplock.embedded import _bin
from tests.helpers import ROOT

GUIDES = sorted(p for p in (ROOT / "docs" / "migrate").glob("*.md") if p.name != "README.md")
BLOCK = re.compile(r"^```(python|bash|sql) test\n(.*?)^```", re.MULTILINE | re.DOTALL)
MAPPED = ("states", "fields", "priority", "attempts", "timeouts", "environment variables", "API calls")


def _run(language: str, code: str, dsn: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tools = os.pathsep.join([str(Path(sys.executable).parent), str(Path(_bin("psql")).parent)])
    env = {**os.environ, "DATABASE_URL": dsn, "PATH": tools + os.pathsep + os.environ.get("PATH", "")}
    env.pop("SKIPLOCK_DATABASE_URL", None)
    argv = {"python": [sys.executable, "-c", code],
            "bash": ["bash", "-euo", "pipefail", "-c", code],
            "sql": [str(_bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", code]}[language]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_there_is_a_guide_for_each_system() -> None:
    assert {p.stem for p in GUIDES} == {"from-pgqueuer", "from-rq", "from-celery", "from-skip-locked-table"}


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.stem)
def test_the_skiplock_side_of_the_guide_runs(guide: Path, dsn: str, tmp_path: Path) -> None:
    text = guide.read_text()
    table = text[text.index("## Mapping"):text.index("## Before")]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    missing = [m for m in MAPPED if not any(r.startswith(m) or m in r for r in rows)]
    assert not missing, f"{guide.name}: the mapping table lacks {missing}"
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 2, f"{guide.name}: no executed example"
    for number, (language, code) in enumerate(blocks, 1):
        proc = _run(language, code, dsn, tmp_path)
        assert proc.returncode == 0, (f"{guide.name}, block {number} ({language}) failed:\n{code}\n"
                                      f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
