"""A worker's guards: results have a size and depth limit (a larger one is a clear job failure), and
a handler that blocks the event loop is reported while it blocks."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from skiplock import Job, JobRegistry, Queue, State
from tests.helpers import eventually, running_worker


async def _ended(queue: Queue, ids: list[int]) -> bool:
    return all([(await queue.get(i)).state in (State.COMPLETED, State.DEAD) for i in ids])


async def test_results_over_the_limit_fail_the_job_clearly(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()

    @jobs.handler("sized")
    async def sized(job: Job) -> object:
        return "x" * job.payload["n"]

    @jobs.handler("deep")
    async def deep(job: Job) -> object:
        value: object = {}
        for _ in range(200):
            value = [value]
        return value

    fits, over, too_deep = await queue.enqueue_many([
        {"type": "sized", "payload": {"n": 998}}, {"type": "sized", "payload": {"n": 999}},
        {"type": "deep", "max_attempts": 3}])
    async with running_worker(jobs, dsn, max_result_bytes=1000):
        await eventually(lambda: _ended(queue, [fits, over, too_deep]))
    assert (await queue.get(fits)).result == "x" * 998  # 1000 bytes as JSON, with its quotes
    big = await queue.get(over)
    assert big.state == State.DEAD and big.attempts == 1 and big.result is None
    assert "handler returned a result of 1001 bytes, over the 1000-byte limit" in (big.last_error or "")
    nested = await queue.get(too_deep)
    assert nested.state == State.DEAD and nested.attempts == 1
    assert "result nests objects and arrays more than 100 levels deep" in (nested.last_error or "")


async def test_a_handler_blocking_the_loop_is_reported_while_it_blocks(queue: Queue, dsn: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    jobs = JobRegistry()
    @jobs.handler("blocker")
    async def blocker(job: Job) -> None:
        time.sleep(1.5)  # blocks the event loop: the mistake the watchdog names

    job_id = await queue.enqueue("blocker")
    with caplog.at_level(logging.WARNING, logger="skiplock.worker"):
        async with running_worker(jobs, dsn, loop_lag_warning=0.4):
            await eventually(lambda: _ended(queue, [job_id]))
    during = [r.getMessage() for r in caplog.records if "event loop is blocked" in r.getMessage()]
    assert during, [r.getMessage() for r in caplog.records]
    assert "test_worker_guards.py" in during[0] and "in blocker" in during[0] and "running: blocker" in during[0]
    assert "make it a plain def" in during[0]
    after = [r.getMessage() for r in caplog.records if "event loop was blocked for" in r.getMessage()]
    assert after and float(after[0].split("for ")[1].split("s")[0]) >= 1.0


async def test_no_warning_without_a_blocking_handler(queue: Queue, dsn: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    jobs = JobRegistry()

    @jobs.handler("polite")
    async def polite(job: Job) -> None:
        await asyncio.sleep(0.5)

    @jobs.handler("threaded")
    def threaded(job: Job) -> None:
        time.sleep(0.5)  # a sync handler runs in a thread: the loop stays free

    ids = await queue.enqueue_many([{"type": "polite"}, {"type": "threaded"}])
    with caplog.at_level(logging.WARNING, logger="skiplock.worker"):
        async with running_worker(jobs, dsn, loop_lag_warning=0.4):
            await eventually(lambda: _ended(queue, ids))
    assert not [r for r in caplog.records if "event loop" in r.getMessage()]
