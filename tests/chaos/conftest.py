"""The chaos tier: real worker processes, a real PostgreSQL, faults injected while thousands of jobs
run. Every test here gets the ``chaos`` marker (``-m chaos`` runs the tier, ``-m 'not chaos'``
skips it); ``SKIPLOCK_SKIP_CHAOS=1`` skips it too. The terminal summary lists, per scenario, the
jobs run, the faults injected and the lost / duplicated counts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import harness

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: fault-injection scenarios on real processes (tests/chaos)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.chaos)
            if os.environ.get("SKIPLOCK_SKIP_CHAOS") == "1":
                item.add_marker(pytest.mark.skip(reason="SKIPLOCK_SKIP_CHAOS=1"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if harness.REPORTS:
        terminalreporter.section("chaos: jobs, faults, lost, duplicated")
        for report in harness.REPORTS:
            terminalreporter.write_line(report.line())


@pytest.fixture
def audited_dsn(dsn: str) -> str:
    """A fresh migrated database with the transition audit installed."""
    harness.install_audit(dsn)
    return dsn


@pytest.fixture
def logdir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "logs"
    path.mkdir()
    yield path
