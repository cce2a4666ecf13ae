"""Fixtures for the bad-input tier: a PostgreSQL that logs every statement it runs, so a test can
prove that hostile values only ever travel as bind parameters, never inside SQL text."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from skiplock.embedded import LocalPostgres
from skiplock.migrate import migrate

# A log entry starts with the default log_line_prefix ("%m [%p] "): a timestamp.
_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)


@dataclass
class LoggingServer:
    server: LocalPostgres
    dsn: str

    def log_entries(self) -> list[str]:
        path = Path(self.server.datadir) / "server.log"
        text = path.read_text(errors="replace")
        starts = [m.start() for m in _ENTRY.finditer(text)] + [len(text)]
        return [text[a:b] for a, b in itertools.pairwise(starts)]

    def statements(self) -> list[str]:
        """Every logged statement text (``statement:`` and ``execute ...:`` entries), without
        the ``DETAIL: parameters`` that follow them."""
        out = []
        for entry in self.log_entries():
            m = re.search(r"LOG:  (?:statement: |execute [^:]*: )(.*)", entry, re.DOTALL)
            if m:
                out.append(re.split(r"\nDETAIL:  [Pp]arameters:", m.group(1))[0])
        return out


@pytest.fixture(scope="module")
def logging_server() -> Iterator[LoggingServer]:
    """A private server with ``log_statement = all`` (statements and their parameters logged apart)."""
    with LocalPostgres(settings={"log_statement": "all", "log_min_error_statement": "panic"}) as server:
        with psycopg.connect(server.uri, autocommit=True) as conn:
            migrate(conn)
        yield LoggingServer(server, server.uri)
