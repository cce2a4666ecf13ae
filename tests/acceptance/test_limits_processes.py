"""Limits hold across real worker processes: measured overlap and start rate from the executions
each handler recorded in the database."""

from __future__ import annotations

import signal
import time

from tests.acceptance.test_processes import _enqueue, _wait_for
from tests.helpers import cli, spawn_worker, sql


def _max_overlap(dsn: str) -> int:
    rows = sql(dsn, "SELECT at, CASE note WHEN 'start' THEN 1 ELSE -1 END FROM test_executions "
                    "WHERE note IN ('start', 'end') ORDER BY at, 2")
    best = current = 0
    for _, delta in rows:
        current += delta
        best = max(best, current)
    return best


def test_concurrency_and_rate_limits_hold_across_processes(dsn: str) -> None:
    assert cli("limits", "set", "sleep", "--concurrency", "3", dsn=dsn).returncode == 0
    _enqueue(dsn, [{"type": "sleep", "payload": {"seconds": 0.3}} for _ in range(24)])
    workers = [spawn_worker(dsn, "--concurrency", "4") for _ in range(3)]
    try:
        _wait_for(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'", 24, timeout=120)
        overlap = _max_overlap(dsn)
        assert cli("limits", "set", "record", "--rate", "20/s", dsn=dsn).returncode == 0
        time.sleep(2.5)  # the workers notice the new limit
        _enqueue(dsn, [{"type": "record"} for _ in range(60)])
        _wait_for(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'", 84, timeout=120)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.communicate(timeout=30)
    assert overlap == 3, overlap  # the limit was reached and never exceeded
    first, last = sql(dsn, "SELECT min(at), max(at) FROM test_executions WHERE note = ''")[0]
    rate = 59 / (last - first).total_seconds()
    # At most the limit (plus the bucket's 0.1 s burst), and the limit binds: workers keep up with it.
    assert 20 * 0.7 <= rate <= 20 * 1.1, f"{rate:.1f} starts/s against a 20/s limit"
    listed = cli("limits", "list", dsn=dsn).stdout
    assert "sleep" in listed and "20/s" in listed
