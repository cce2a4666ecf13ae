"""Concurrency and rate limits, enforced in the claim, across workers; tenant fairness."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from skiplock import InvalidJob, Job, JobRegistry, Queue, State, plans
from skiplock.runner import run_one_trip
from skiplock.sql import QUERIES
from tests.helpers import eventually, running_worker


async def _done(queue: Queue, n: int) -> bool:
    rows = await queue.stats()
    return sum(int(r["jobs"]) for r in rows if r["state"] == "completed") >= n


def _tracking_registry(log: list[tuple[str, str | None, float, float]], seconds: float) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.handler("api")
    async def api(job: Job) -> None:
        start = time.monotonic()
        await asyncio.sleep(seconds)
        log.append(("api", job.tenant, start, time.monotonic()))

    @jobs.handler("free")
    async def free(job: Job) -> None:
        log.append(("free", job.tenant, time.monotonic(), time.monotonic()))

    return jobs


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


async def test_concurrency_limit_holds_across_workers(queue: Queue, dsn: str) -> None:
    log: list[tuple[str, str | None, float, float]] = []
    await queue.set_limit("api", concurrency=3)
    await queue.enqueue_many([{"type": "api"} for _ in range(30)] + [{"type": "free"} for _ in range(30)])
    jobs = _tracking_registry(log, 0.15)
    async with running_worker(jobs, dsn, concurrency=8), running_worker(jobs, dsn, concurrency=8):
        await eventually(lambda: _done(queue, 60), timeout=60)
    api_spans = [(s, e) for t, _, s, e in log if t == "api"]
    assert len(api_spans) == 30
    assert _max_overlap(api_spans) <= 3


async def test_rate_limit_bounds_starts(queue: Queue, dsn: str) -> None:
    log: list[tuple[str, str | None, float, float]] = []
    await queue.set_limit("api", rate=10.0)
    await queue.enqueue_many([{"type": "api"} for _ in range(25)])
    jobs = _tracking_registry(log, 0.0)
    async with running_worker(jobs, dsn, concurrency=10, poll_interval=0.05), \
            running_worker(jobs, dsn, concurrency=10, poll_interval=0.05):
        await eventually(lambda: _done(queue, 25), timeout=60)
    starts = sorted(s for _, _, s, _ in log)
    elapsed = starts[-1] - starts[0]
    assert 10 * 0.7 <= 24 / elapsed <= 10 * 1.1, f"{24 / elapsed:.1f} starts/s"


async def test_a_high_rate_limit_is_reached_with_the_default_poll(queue: Queue, dsn: str) -> None:
    """200/s from two workers polling every 2 s (the default): the bucket holds a tenth of a
    second of tokens and a worker that emptied it claims again at its next token."""
    log: list[tuple[str, str | None, float, float]] = []
    await queue.set_limit("api", rate=200.0)
    await queue.enqueue_many([{"type": "api"} for _ in range(600)])
    jobs = _tracking_registry(log, 0.0)
    async with running_worker(jobs, dsn, concurrency=50, poll_interval=2.0), \
            running_worker(jobs, dsn, concurrency=50, poll_interval=2.0):
        await eventually(lambda: _done(queue, 600), timeout=60)
    starts = sorted(s for _, _, s, _ in log)
    rate = 599 / (starts[-1] - starts[0])
    assert 200 * 0.6 <= rate <= 200 * 1.15, f"{rate:.1f} starts/s against a 200/s limit"


async def test_a_tenants_backlog_does_not_starve_another(queue: Queue, dsn: str) -> None:
    """A per-tenant limit ('*') is what makes the claim fair: the big tenant's thousands, enqueued
    first at the same type and priority, hold at most its share of the slots, and the small
    tenant's few jobs start at once instead of after the whole backlog."""
    log: list[tuple[str, str | None, float, float]] = []
    await queue.set_limit("api", "*", concurrency=3)
    await queue.enqueue_many([{"type": "api", "tenant": "big"} for _ in range(3000)])
    await queue.enqueue_many([{"type": "api", "tenant": "small"} for _ in range(3)])
    jobs = _tracking_registry(log, 0.1)
    async with running_worker(jobs, dsn, concurrency=4), running_worker(jobs, dsn, concurrency=4):
        await eventually(lambda: asyncio.sleep(0, sum(t == "small" for _, t, _, _ in log) == 3), timeout=30)
        big_done = sum(t == "big" for _, t, _, _ in log)
    assert big_done < 30, f"small tenant waited for {big_done} of big's 3000 jobs"
    per_tenant = {t: _max_overlap([(s, e) for _, tt, s, e in log if tt == t]) for t in ("big", "small")}
    assert per_tenant["big"] <= 3 and per_tenant["small"] <= 3


async def test_limits_change_at_runtime_and_validate(queue: Queue) -> None:
    await queue.set_limit("api", concurrency=1)
    await queue.set_limit("api", concurrency=5, rate=2.5)
    await queue.set_limit("api", "acme", concurrency=1)
    assert [(r["type"], r["tenant"], r["concurrency"], r["rate"]) for r in await queue.limits()] == [
        ("api", "", 5, 2.5), ("api", "acme", 1, None)]
    assert await queue.clear_limit("api", "acme") and not await queue.clear_limit("api", "acme")
    for kwargs in ({}, {"concurrency": 0}, {"rate": -1.0}):
        with pytest.raises(InvalidJob):
            await queue.set_limit("api", **kwargs)
    with pytest.raises(InvalidJob, match="each tenant"):
        await queue.set_limit("api", "*", rate=1.0)


async def test_limited_claim_walks_the_index(dsn: str, queue: Queue) -> None:
    await queue.set_limit("t1", concurrency=5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO skiplock.jobs (queue, type, priority, state) SELECT 'q', 't' || (i % 5), i % 10, "
                     "'pending' FROM generate_series(1, 50000) i")
        conn.execute("ANALYZE skiplock.jobs")
        with conn.transaction(force_rollback=True):
            cur = conn.execute("EXPLAIN (FORMAT JSON) " + QUERIES["claim_limited"],
                               {"queue": "q", "types": None, "limit": 10, "worker_id": "w", "lease_seconds": 30,
                                "burst_seconds": 0.1})
            plan = json.dumps(cur.fetchone()[0])  # type: ignore[index]
    assert '"Index Name": "jobs_claim_idx"' in plan
    assert '"Seq Scan", "Parent Relationship": "Outer", "Parallel Aware": false, "Async Capable": false, ' \
           '"Relation Name": "jobs"' not in plan


async def test_unlimited_claim_never_takes_a_limited_type(dsn: str, queue: Queue) -> None:
    await queue.set_limit("api", concurrency=1)
    await queue.enqueue_many([{"type": "api"}, {"type": "free"}])
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(QUERIES["claim"], {"queue": "default", "types": None, "limit": 10, "worker_id": "w",
                                               "lease_seconds": 30}).fetchall()
    assert [r[2] for r in rows] == ["free"]
    assert [j.state for j in await queue.list_jobs(type="api")] == [State.PENDING]


def _subplan(plan: Any, name: str) -> Any:
    """The node of ``plan`` (EXPLAIN's JSON) whose subplan name is ``name``."""
    if plan.get("Subplan Name") == name:
        return plan
    for child in plan.get("Plans", []):
        found = _subplan(child, name)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize("stale", [False, True])
async def test_limited_claim_walks_the_index_in_order_even_with_stale_statistics(dsn: str, queue: Queue,
                                                                                stale: bool) -> None:
    """The candidates come from an ordered walk of jobs_claim_idx, never a join over every runnable
    job and a sort: not even when the statistics were taken on an empty table (a queue filled since
    its last analyze, as in every drain; the anti-join plan cost 114 ms per claim there)."""
    await queue.set_limit("t1", concurrency=1_000_000, rate=1e9)
    await queue.set_limit("t2", "*", concurrency=3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if stale:
            conn.execute("ANALYZE skiplock.jobs")
        conn.execute("INSERT INTO skiplock.jobs (queue, type, tenant, priority, state) SELECT 'q', 't' || (i % 3), "
                     "'x' || (i % 7), i % 10, 'pending' FROM generate_series(1, 20000) i")
        if not stale:
            conn.execute("ANALYZE skiplock.jobs")
        with conn.transaction(force_rollback=True):
            cur = conn.execute("EXPLAIN (FORMAT JSON) " + QUERIES["claim_limited"],
                               {"queue": "q", "types": ["t1", "t2"], "limit": 50, "worker_id": "w",
                                "lease_seconds": 30, "burst_seconds": 0.1})
            plan = cur.fetchone()[0][0]["Plan"]  # type: ignore[index]
    cand = json.dumps(_subplan(plan, "CTE cand"))
    assert '"Index Name": "jobs_claim_idx"' in cand
    assert '"Node Type": "Sort"' not in cand and '"Seq Scan"' not in cand and "Hash" not in cand


async def test_limited_claim_runs_as_one_transaction_in_one_trip(dsn: str, queue: Queue) -> None:
    """The worker's limited claim (runner.run_one_trip): BEGIN, lock, claim, refill and COMMIT in
    one pipeline; what it claims is committed when it returns, and an error anywhere in it leaves
    nothing claimed and the connection ready for the next statement."""
    await queue.set_limit("api", concurrency=2)
    await queue.enqueue_many([{"type": "api"} for _ in range(3)])
    params = {"queue": "default", "types": ["api"], "limit": 10, "worker_id": "w1", "lease_seconds": 30}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        rows, refill = await run_one_trip(conn, plans.claim_limited(dict(params)))
        assert len(rows) == 2 and refill is None and conn.info.transaction_status == TransactionStatus.IDLE
        with psycopg.connect(dsn, autocommit=True) as other:  # committed: another session sees it
            assert other.execute("SELECT count(*) FROM skiplock.jobs WHERE state = 'running' "
                                 "AND worker_id = 'w1'").fetchone() == (2,)
        with pytest.raises(psycopg.Error):
            await run_one_trip(conn, plans.claim_limited({**params, "lease_seconds": "not a number"}))
        assert conn.info.transaction_status == TransactionStatus.IDLE
        rows, _ = await run_one_trip(conn, plans.claim_limited(dict(params)))
        assert rows == []  # the limit holds: 2 running
