"""Job lifetimes and queue settings against the real PostgreSQL: a waiting job past its ttl ends
cancelled with the reason (its dependents with it), finished jobs go when their result_ttl or
failure_ttl has passed (from the hot table and from the history), queue defaults are copied into
new jobs, and the bulk actions of ``Queue``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from skiplock import InvalidJob, JobFailed, JobRegistry, Queue, State, Worker, WorkerConfig
from skiplock.filters import JobFilter
from skiplock.queues import make_settings
from skiplock.retry import Exponential, Fixed, Intervals
from skiplock.sql import QUERIES
from tests.helpers import sql


async def _maintain(dsn: str) -> Worker:
    """One maintenance round of a worker; returns the worker (its metrics)."""
    registry = JobRegistry()
    registry.register("t", lambda job: None)
    worker = Worker(registry, dsn, WorkerConfig())
    await worker.pool.open()
    try:
        await worker.maintain()
    finally:
        await worker.pool.close()
    return worker


def _age(dsn: str, seconds: float, where: str = "true") -> None:
    """Move the job's clock back: as if ``seconds`` had passed since it was due (or finished)."""
    sql(dsn, f"UPDATE skiplock.jobs SET expires_at = expires_at - make_interval(secs => %(s)s), "
             f"finished_at = finished_at - make_interval(secs => %(s)s) WHERE {where}", {"s": seconds})


async def test_a_job_not_started_within_its_ttl_expires_with_its_dependents(queue: Queue, dsn: str) -> None:
    short = await queue.enqueue("t", ttl=60)
    child = await queue.enqueue("t", depends_on=[short])
    later = await queue.enqueue("t", ttl=60, delay=3600)  # the ttl runs from when it is due
    plain = await queue.enqueue("t")
    waiter = asyncio.create_task(queue.wait(short, timeout=30, poll_interval=0.2))
    _age(dsn, 61)
    assert (await queue.claim()) and (await queue.get(plain)).state == State.RUNNING  # not the expired one
    worker = await _maintain(dsn)
    job = await queue.get(short)
    assert job.state == State.CANCELLED and job.last_error == "expired: not started within its ttl of 60s"
    assert worker.metrics.registry.get_sample_value("skiplock_jobs_expired_total", {"queue": "default"}) == 1
    assert (await queue.get(child)).state == State.CANCELLED
    assert (await queue.get(later)).state == State.SCHEDULED
    with pytest.raises(JobFailed, match="expired"):
        await waiter
    await queue.retry(short)  # a fresh ttl
    fresh = await queue.get(short)
    assert fresh.state == State.PENDING and fresh.expires_at is not None
    assert fresh.expires_at > datetime.now(UTC) + timedelta(seconds=50)


async def test_finished_jobs_go_when_their_lifetime_ends(queue: Queue, dsn: str) -> None:
    kept_result = await queue.enqueue("t", result_ttl=3600)
    short_result = await queue.enqueue("t", result_ttl=60)
    dead = await queue.enqueue("t", failure_ttl=60, max_attempts=1)
    forever = await queue.enqueue("t")
    jobs = {j.id: j for j in await queue.claim(max_jobs=4)}
    for job_id in (kept_result, short_result, forever):
        assert await queue.complete(jobs[job_id], "ok")
    assert await queue.fail(jobs[dead], "boom") == "dead"
    _age(dsn, 120)
    sql(dsn, QUERIES["archive"].replace("%(finished_after)s", "0").replace("%(dead_after)s", "0")
        .replace("%(limit)s", "1"))  # one of them is in the history by now
    await _maintain(dsn)
    left = {r[0] for r in sql(dsn, "SELECT id FROM skiplock.jobs UNION ALL SELECT id FROM skiplock.jobs_history")}
    assert left == {kept_result, forever}


async def test_queue_settings_are_copied_into_new_jobs(queue: Queue, dsn: str) -> None:
    await queue.set_queue(make_settings("q", max_attempts=2, ttl=30, result_ttl=10, failure_ttl=20,
                                        retry=Fixed(every=15)))
    job = await queue.get(await queue.enqueue("t", queue="q"))
    assert (job.max_attempts, job.ttl_seconds, job.result_ttl_seconds, job.failure_ttl_seconds) == (2, 30, 10, 20)
    own = await queue.get(await queue.enqueue("t", queue="q", max_attempts=7, ttl=99, retry=Intervals((1, 2))))
    assert (own.max_attempts, own.ttl_seconds, own.retry_policy) == (7, 99, {"kind": "intervals", "intervals": [1, 2],
                                                                           "jitter": 0.0})
    other = await queue.get(await queue.enqueue("t"))
    assert (other.max_attempts, other.ttl_seconds) == (5, None)
    after = await queue.set_queue(make_settings("q", ttl=45), clear=["max_attempts", "retry"])
    assert (after.max_attempts, after.ttl, after.result_ttl, after.retry) == (None, 45, 10, None)
    assert [s.name for s in await queue.queues()] == ["default", "q"]
    replaced = await queue.replace_queue(make_settings("q", retry=Exponential(base=2)), source="crd:ns/jq")
    assert (replaced.ttl, replaced.retry, replaced.source) == (None, Exponential(base=2), "crd:ns/jq")
    assert await queue.remove_queue("q") and not await queue.remove_queue("q")


@pytest.mark.parametrize("options, message", [
    ({"max_attempts": 0}, "greater than or equal to 1"),
    ({"ttl": 0}, "greater than 0"),
    ({"result_ttl": float("nan")}, "finite number"),
    ({"retry": {"kind": "fixed"}}, "every"),
    ({"retry": {"kind": "intervals", "intervals": []}}, "non-empty list"),
    ({"retry": {"kind": "exponential", "jitter": 2}}, "jitter must be between 0 and 1"),
    ({"retry": "often"}, "a retry policy is a JSON object"),
])
async def test_bad_lifetimes_and_policies_are_refused(queue: Queue, options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidJob, match=message):
        await queue.enqueue("t", **options)
    with pytest.raises(InvalidJob, match=message):
        make_settings("q", **options)


async def test_bulk_actions_by_filter(queue: Queue, dsn: str) -> None:
    a = await queue.enqueue_many([{"type": "t", "queue": "a", "labels": {"env": "prod"}} for _ in range(3)])
    b = await queue.enqueue_many([{"type": "u", "queue": "b", "tenant": "acme"} for _ in range(2)])
    parent = await queue.enqueue("t", queue="c")
    child = await queue.enqueue("t", queue="c", depends_on=[parent])
    running = (await queue.claim("a"))[0]
    assert await queue.count_jobs(JobFilter(labels={"env": "prod"})) == 3
    assert await queue.cancel_jobs(JobFilter(queue="a")) == 3  # two waiting, one asked to stop
    assert (await queue.get(running.id)).cancel_requested
    assert await queue.retry_jobs(JobFilter(queue="a", states=("cancelled",))) == 2
    assert await queue.count_jobs(JobFilter(tenant="acme", type="u")) == 2
    assert await queue.purge_jobs(JobFilter(queue="c", states=("pending",))) == 1  # the parent...
    assert (await queue.get(child)).state == State.CANCELLED  # ...whose child can never run now
    assert await queue.purge_jobs(JobFilter(queue="b", older_than=3600)) == 0  # too young
    assert await queue.purge_jobs(JobFilter(queue="b")) == 2
    assert await queue.purge_jobs(JobFilter(queue="a", states=("running",))) == 0  # never a running job
    assert sorted(j.id for j in await queue.list_jobs(labels={"env": "prod"})) == a
    assert b and await queue.count_jobs(JobFilter(queue="b")) == 0


async def test_update_moves_a_waiting_job(queue: Queue) -> None:
    job_id = await queue.enqueue("t")
    assert await queue.update(job_id, delay=3600, priority=4) == "scheduled"
    assert await queue.update(job_id, delay=0) == "pending"
    assert (await queue.get(job_id)).priority == 4
    (job,) = await queue.claim()
    with pytest.raises(InvalidJob, match="is running: only a job that has not started"):
        await queue.update(job_id, priority=1)
    with pytest.raises(InvalidJob, match="give a priority"):
        await queue.update(job.id)
