"""Real worker processes on thousands of jobs: nothing lost, nothing completed twice, even when
workers are killed with SIGKILL or stopped with SIGTERM mid-job."""

from __future__ import annotations

import os
import signal
import time

import psycopg

from skiplock import sync as skiplock_sync
from tests.fixtures.jobs_fixture import ensure_table
from tests.helpers import spawn_worker, sql


def _wait_for(dsn: str, query: str, expected: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while (got := sql(dsn, query)[0][0]) != expected:
        assert time.monotonic() < deadline, f"{query} -> {got}, expected {expected}"
        time.sleep(0.2)


def _enqueue(dsn: str, jobs: list[dict[str, object]]) -> list[int]:
    ensure_table(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return skiplock_sync.enqueue_many(conn, jobs)


def test_many_worker_processes_lose_nothing_and_duplicate_nothing(dsn: str) -> None:
    ids = _enqueue(dsn, [{"type": "record", "payload": {"i": i}} for i in range(3000)])
    workers = [spawn_worker(dsn, "--concurrency", "8") for _ in range(4)]
    try:
        _wait_for(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'", 3000)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        outputs = [w.communicate(timeout=30)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    executions = sql(dsn, "SELECT job_id, count(*) FROM test_executions GROUP BY job_id HAVING count(*) > 1")
    assert executions == []
    assert sql(dsn, "SELECT count(DISTINCT job_id) FROM test_executions")[0][0] == len(ids)
    assert len({r[0] for r in sql(dsn, "SELECT DISTINCT pid FROM test_executions")}) > 1


def test_kill_9_mid_job_is_rescued_after_the_lease(dsn: str) -> None:
    (job_id,) = _enqueue(dsn, [{"type": "sleep", "payload": {"seconds": 30}}])
    victim = spawn_worker(dsn, "--lease", "2", "--worker-id", "victim")
    _wait_for(dsn, "SELECT count(*) FROM test_executions WHERE note = 'start'", 1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert sql(dsn, "SELECT state::text, worker_id FROM skiplock.jobs")[0] == ("running", "victim")
    sql(dsn, "UPDATE skiplock.jobs SET payload = '{\"seconds\": 0.1}' WHERE id = %s", (job_id,))
    rescuer = spawn_worker(dsn, "--lease", "2", "--worker-id", "rescuer")
    try:
        _wait_for(dsn, "SELECT state::text FROM skiplock.jobs", "completed", timeout=30)
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(timeout=30)
    row = sql(dsn, "SELECT attempts, worker_id, last_error FROM skiplock.jobs")[0]
    assert row[0] == 2 and row[1] == "rescuer" and "lease expired on worker victim" in row[2]


def test_sigterm_drains_then_releases_without_spending_an_attempt(dsn: str) -> None:
    short, long = _enqueue(dsn, [{"type": "sleep", "payload": {"seconds": 1}},
                                 {"type": "sleep", "payload": {"seconds": 120}}])
    worker = spawn_worker(dsn, "--concurrency", "2", "--shutdown-grace", "3")
    _wait_for(dsn, "SELECT count(*) FROM test_executions WHERE note = 'start'", 2)
    worker.send_signal(signal.SIGTERM)
    out = worker.communicate(timeout=30)[0]
    assert worker.returncode == 0, out
    states = dict(sql(dsn, "SELECT id, state::text FROM skiplock.jobs"))
    assert states == {short: "completed", long: "pending"}
    assert sql(dsn, "SELECT attempts FROM skiplock.jobs WHERE id = %s", (long,))[0][0] == 0
    assert "released 1 unfinished jobs" in out
