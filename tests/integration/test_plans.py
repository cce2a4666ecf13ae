"""Guards on the SQL itself: the claim plan, and every named statement is used or documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg

from skiplock.sql import QUERIES, migrations

ROOT = Path(__file__).resolve().parents[2]


def _claim_plan(dsn: str, types: list[str] | None) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO skiplock.jobs (queue, type, priority, state) SELECT 'q' || (i % 3), "
                     "'t' || (i % 5), i % 10, 'pending' FROM generate_series(1, 60000) i")
        conn.execute("INSERT INTO skiplock.jobs (queue, type, state, finished_at) "
                     "SELECT 'q0', 't1', 'completed', now() FROM generate_series(1, 30000)")
        conn.execute("ANALYZE skiplock.jobs")
        with conn.transaction(force_rollback=True):
            cur = conn.execute("EXPLAIN (FORMAT JSON) " + QUERIES["claim"],
                               {"queue": "q0", "types": types, "limit": 10, "worker_id": "w",
                                "lease_seconds": 30})
            return json.dumps(cur.fetchone()[0])  # type: ignore[index]


def test_claim_walks_the_partial_index_without_sorting(dsn: str) -> None:
    for types in (None, ["t1", "t2"]):
        plan = _claim_plan(dsn, types)
        assert '"Index Name": "jobs_claim_idx"' in plan
        assert '"Node Type": "Sort"' not in plan and '"Seq Scan"' not in plan


def test_every_query_is_used_by_the_code() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "worker").rglob("*.py"))
    code += "\n".join(p.read_text() for p in (ROOT / "operator").rglob("*.py"))
    unused = [name for name in QUERIES if not re.search(rf"[\"']{name}[\"']", code)]
    assert unused == []


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in migrations()]
    assert versions == list(range(1, len(versions) + 1))
