"""A cancel request never outlives the execution it was meant for (docs/state-machine.md, Cancel),
and one retry policy decides every retry delay, the finish's and the rescue's alike."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import psycopg
import pytest

from skiplock import InvalidJob, Job, JobRegistry, Queue, State, WorkerConfig, plans
from skiplock.maintenance import Rescuer
from skiplock.retry import DEFAULT, Exponential, from_json
from skiplock.runner import run_sync
from skiplock.sql import QUERIES
from tests.helpers import eventually, running_worker, sql

CLAIM = {"queue": "default", "types": None, "limit": 10, "lease_seconds": 60}


def claim_as(dsn: str, worker: str, **overrides: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(QUERIES["claim"], {**CLAIM, "worker_id": worker, **overrides}).fetchall()


def flag(dsn: str, job_id: int) -> bool:
    return bool(sql(dsn, "SELECT cancel_requested FROM skiplock.jobs WHERE id = %s", (job_id,))[0][0])


async def state_of(queue: Queue, job_id: int) -> State:
    return (await queue.get(job_id)).state


# -- cancel ------------------------------------------------------------------------------------------


async def test_a_cancelled_job_that_then_fails_ends_cancelled_and_never_runs_again(queue: Queue, dsn: str) -> None:
    """The reported bug: it went to retry with the request still set, and its next run was cancelled."""
    jobs = JobRegistry()
    runs: list[int] = []
    gate = asyncio.Event()

    @jobs.handler("deaf")
    async def deaf(job: Job) -> None:  # ignores the request, then fails
        runs.append(job.attempt)
        await gate.wait()
        raise ValueError("failed after the cancel request")

    job_id = await queue.enqueue("deaf", max_attempts=5)
    async with running_worker(jobs, dsn, heartbeat_interval=0.2, backoff_base=0.1):
        await eventually(lambda: _is(queue, job_id, State.RUNNING))
        assert await queue.cancel(job_id) == "running"
        gate.set()
        await eventually(lambda: _is(queue, job_id, State.CANCELLED))
        await asyncio.sleep(0.5)
    job = await queue.get(job_id)
    assert job.state == State.CANCELLED and not job.cancel_requested and runs == [1]
    assert "failed after the cancel request" in (job.last_error or "")


async def test_a_dead_lettered_job_keeps_no_request_and_retry_dead_runs_it_to_completion(queue: Queue,
                                                                                          dsn: str) -> None:
    jobs = JobRegistry()
    gate = asyncio.Event()
    heartbeats_seen: list[bool] = []
    runs: list[int] = []

    @jobs.handler("once")
    async def once(job: Job) -> str:
        runs.append(job.attempt)
        if len(runs) == 1:
            await gate.wait()
            raise ValueError("the last attempt failed")
        for _ in range(10):  # the second run outlives several heartbeats: none may cancel it
            heartbeats_seen.append(job.cancelled)
            await asyncio.sleep(0.1)
        job.raise_if_cancelled()
        return "done"

    job_id = await queue.enqueue("once", max_attempts=1)
    async with running_worker(jobs, dsn, heartbeat_interval=0.2):
        await eventually(lambda: _is(queue, job_id, State.RUNNING))
        assert await queue.cancel(job_id) == "running"
        gate.set()
        await eventually(lambda: _is(queue, job_id, State.DEAD))  # attempts spent: dead-lettered as any other
        assert not flag(dsn, job_id)
        assert await queue.retry_dead() == 1
        await eventually(lambda: _is(queue, job_id, State.COMPLETED))
    assert (await queue.get(job_id)).result == "done" and not any(heartbeats_seen)


async def test_a_job_that_completes_anyway_stays_completed(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    gate = asyncio.Event()

    @jobs.handler("deaf")
    async def deaf(job: Job) -> str:
        await gate.wait()
        return "finished regardless"

    job_id = await queue.enqueue("deaf")
    async with running_worker(jobs, dsn, heartbeat_interval=0.2):
        await eventually(lambda: _is(queue, job_id, State.RUNNING))
        await queue.cancel(job_id)
        gate.set()
        await eventually(lambda: _is(queue, job_id, State.COMPLETED))
    job = await queue.get(job_id)
    assert job.result == "finished regardless" and not job.cancel_requested


async def test_a_rescued_job_whose_cancel_was_requested_ends_cancelled_with_its_dependents(queue: Queue,
                                                                                            dsn: str) -> None:
    parent = await queue.enqueue("t")
    child = await queue.enqueue("t", depends_on=(parent,))
    other = await queue.enqueue("t", priority=-1)
    assert [r["id"] for r in claim_as(dsn, "ghost", lease_seconds=0.05)] == [parent, other]
    assert await queue.cancel(parent) == "running"
    await asyncio.sleep(0.1)
    rescued = {r["id"]: r["state"] for r in await queue.rescue()}
    assert rescued == {parent: "cancelled", other: "retry"}  # the other one: a failed attempt, retried
    assert [await state_of(queue, i) for i in (parent, child)] == [State.CANCELLED, State.CANCELLED]
    assert not flag(dsn, parent)


async def test_a_job_released_at_shutdown_after_a_cancel_request_ends_cancelled(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()

    @jobs.handler("stubborn")
    def stubborn(job: Job) -> None:  # a sync handler stuck in a call: it never looks at the request
        import time

        time.sleep(5)

    job_id = await queue.enqueue("stubborn")
    waiting = await queue.enqueue("stubborn", depends_on=(job_id,))
    async with running_worker(jobs, dsn, shutdown_grace=0.2, heartbeat_interval=3600):
        await eventually(lambda: _is(queue, job_id, State.RUNNING))
        assert await queue.cancel(job_id) == "running"
    job = await queue.get(job_id)
    assert job.state == State.CANCELLED and job.attempts == 0 and not job.cancel_requested
    assert await state_of(queue, waiting) == State.CANCELLED


async def test_a_retried_job_can_be_cancelled_again(queue: Queue, dsn: str) -> None:
    job_id = await queue.enqueue("t")
    claim_as(dsn, "w")
    assert await queue.cancel(job_id) == "running"
    with psycopg.connect(dsn, autocommit=True) as conn:
        batch = [{"id": job_id, "attempt": 1, "outcome": "cancelled", "result": None, "error": "stopped"}]
        run_sync(conn, plans.finish("w", batch))
    await queue.retry(job_id)
    assert not flag(dsn, job_id)
    claim_as(dsn, "w")
    assert await queue.cancel(job_id) == "running" and flag(dsn, job_id)


async def _is(queue: Queue, job_id: int, state: State) -> bool:
    found: State = await state_of(queue, job_id)
    return found == state


# -- retry policy ------------------------------------------------------------------------------------


def delay(dsn: str, policy: str, attempt: int) -> float:
    return float(sql(dsn, "SELECT skiplock.retry_delay(%s::jsonb, %s)", (policy, attempt))[0][0])


def test_the_formula_lives_in_the_database(dsn: str) -> None:
    exact = Exponential(base=2, max=100, jitter=0).as_json()
    assert [delay(dsn, exact, a) for a in (1, 2, 3, 6, 7, 1000, 2**31 - 1)] == [2, 4, 8, 64, 100, 100, 100]
    jittered = [delay(dsn, Exponential(base=10, max=100, jitter=0.5).as_json(), 1) for _ in range(50)]
    assert all(5 <= d <= 10 for d in jittered) and len(set(jittered)) > 1
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown retry policy"):
        delay(dsn, '{"kind": "never"}', 1)


def seconds_until(dsn: str, job_id: int) -> float:
    (when,) = sql(dsn, "SELECT extract(epoch FROM run_at - now()) FROM skiplock.jobs WHERE id = %s", (job_id,))[0]
    return float(when)


async def test_finish_and_rescue_apply_the_same_policy(queue: Queue, dsn: str) -> None:
    policy = Exponential(base=100, max=10_000, jitter=0)
    failed, rescued = await queue.enqueue_many([{"type": "t"}, {"type": "t"}])
    claim_as(dsn, "w", lease_seconds=0.05)
    sql(dsn, "UPDATE skiplock.jobs SET attempts = 3")  # the third attempt of each is running
    with psycopg.connect(dsn, autocommit=True) as conn:
        batch = [{"id": failed, "attempt": 3, "outcome": "failed", "result": None, "error": "boom"}]
        assert [r["state"] for r in run_sync(conn, plans.finish("w", batch, policy))] == ["retry"]
    await asyncio.sleep(0.1)
    assert [r["state"] for r in await Rescuer(policy).rescue(queue.db)] == ["retry"]
    for job_id in (failed, rescued):
        assert 399 < seconds_until(dsn, job_id) <= 400  # 100 * 2^(3-1), from finish and rescue alike


async def test_a_handler_can_set_its_own_retry_delay(queue: Queue, dsn: str) -> None:
    job_id = await queue.enqueue("t")
    claim_as(dsn, "w")
    with psycopg.connect(dsn, autocommit=True) as conn:
        batch = [{"id": job_id, "attempt": 1, "outcome": "failed", "result": None, "error": "x", "retry_in": 30}]
        run_sync(conn, plans.finish("w", batch))
    assert 29 < seconds_until(dsn, job_id) <= 30


def test_policies_are_validated_and_round_trip() -> None:
    assert from_json(json.loads(DEFAULT.as_json())) == DEFAULT
    assert WorkerConfig(backoff_base=0.5, backoff_max=9).retry_policy == Exponential(base=0.5, max=9)
    for bad in ({"base": -1}, {"max": float("inf")}, {"jitter": 1.5}):
        with pytest.raises(InvalidJob, match="retry policy"):
            Exponential(**bad)
    with pytest.raises(InvalidJob, match="unknown retry policy kind"):
        from_json({"kind": "fibonacci"})


async def test_the_worker_applies_its_policy_to_rescued_jobs(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    jobs.register("t", lambda job: job.attempt)
    job_id = await queue.enqueue("t")
    sql(dsn, "UPDATE skiplock.jobs SET state = 'running', attempts = 1, worker_id = 'ghost', "
             "lease_expires_at = now() - interval '1 second' WHERE id = %s", (job_id,))
    started = datetime.now().astimezone()
    async with running_worker(jobs, dsn, recovery_interval=0.2, backoff_base=1.5, backoff_max=1.5) as worker:
        await eventually(lambda: _is(queue, job_id, State.COMPLETED))
        assert worker.metrics.registry.get_sample_value("skiplock_jobs_rescued_total", {"queue": "default"}) == 1
    job = await queue.get(job_id)
    assert job.result == 2 and job.started_at is not None
    assert (job.started_at - started).total_seconds() >= 0.75  # waited the policy's delay (1.5 s, jitter 0.5)
