"""The producer/admin API against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest

from skiplock import (
    InvalidJob,
    JobFailed,
    JobNotFound,
    JobRegistry,
    PayloadTooLarge,
    Queue,
    State,
    Worker,
    WorkerConfig,
)
from skiplock import sync as skiplock_sync
from skiplock.sql import QUERIES
from tests.helpers import sql


async def test_enqueue_single_and_read_back(queue: Queue) -> None:
    job_id = await queue.enqueue("resize", {"w": 10}, priority=3, tenant="acme", labels={"team": "a"})
    job = await queue.get(job_id)
    assert (job.type, job.payload, job.priority) == ("resize", {"w": 10}, 3)
    assert (job.tenant, job.labels) == ("acme", {"team": "a"})
    assert job.state == State.PENDING and job.attempts == 0 and job.max_attempts == 5


async def test_batch_enqueue_thousands_in_order(queue: Queue) -> None:
    ids = await queue.enqueue_many([{"type": "t", "payload": {"i": i}} for i in range(5000)])
    assert len(ids) == 5000 and ids == sorted(ids)
    assert (await queue.get(ids[1234])).payload == {"i": 1234}


async def test_delay_and_run_at_make_scheduled_jobs(queue: Queue) -> None:
    job_id = await queue.enqueue("t", delay=3600)
    assert (await queue.get(job_id)).state == State.SCHEDULED
    with pytest.raises(InvalidJob, match="run_at or delay"):
        await queue.enqueue("t", delay=1, run_at="2030-01-01T00:00:00+00:00")


async def test_dedup_key_returns_the_unfinished_holder(queue: Queue, dsn: str) -> None:
    first = await queue.enqueue("t", dedup_key="k1")
    again = await queue.enqueue_many([{"type": "t", "dedup_key": "k1"}, {"type": "t", "dedup_key": "k2"},
                                      {"type": "t"}])
    assert again[0] == first and len(set(again)) == 3
    sql(dsn, "UPDATE skiplock.jobs SET state = 'completed', finished_at = now() WHERE id = %s", (first,))
    assert await queue.enqueue("t", dedup_key="k1") != first  # unique only while unfinished


async def test_enqueue_inside_callers_transaction_rolls_back_with_it(queue: Queue, dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as aconn, aconn.transaction(force_rollback=True):
        await queue.enqueue("t", conn=aconn)
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            skiplock_sync.enqueue(conn, "kept", {"a": 1})
        with pytest.raises(ZeroDivisionError), conn.transaction():
            skiplock_sync.enqueue_many(conn, [{"type": "lost"}])
            1 / 0  # noqa: B018
    assert [j.type for j in await queue.list_jobs()] == ["kept"]


async def test_notify_is_sent_at_commit(queue: Queue, dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
        await listener.execute("LISTEN skiplock_jobs")
        await queue.enqueue("t", queue="emails")
        notes = [n async for n in listener.notifies(timeout=2, stop_after=1)]
    assert [n.payload for n in notes] == ["emails"]


@pytest.mark.parametrize("payload, error", [
    ({"x": float("nan")}, "JSON"), ({"x": object()}, "JSON"), ("a\x00b", "NUL"),
])
async def test_invalid_payloads_are_refused(queue: Queue, payload: object, error: str) -> None:
    with pytest.raises(InvalidJob, match=error):
        await queue.enqueue("t", payload)
    assert await queue.list_jobs() == []


async def test_oversized_payload_is_refused_with_the_limit(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIPLOCK_MAX_PAYLOAD_BYTES", "100")
    with pytest.raises(PayloadTooLarge, match="100-byte limit"):
        await queue.enqueue("t", {"blob": "x" * 200})


@pytest.mark.parametrize("options, error", [
    ({"priority": 2**31}, "priority"), ({"max_attempts": 0}, "max_attempts"), ({"queue": ""}, "queue"),
    ({"queue": "q" * 201}, "queue"), ({"depends_on": (0,)}, "depends_on"), ({"unknown": 1}, "unknown"),
])
async def test_invalid_options_get_clear_errors(queue: Queue, options: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidJob, match=error):
        await queue.enqueue("t", **options)


async def test_hostile_names_are_stored_verbatim(queue: Queue) -> None:
    name = "q'; DROP TABLE skiplock.jobs; --\u2603\"$$"
    job_id = await queue.enqueue(name, {"k": name}, queue=name, tenant=name, dedup_key=name)
    job = await queue.get(job_id)
    assert (job.type, job.queue, job.tenant, job.payload["k"]) == (name, name, name, name)


async def test_dependencies_block_then_release_and_cancel_cascades(queue: Queue, dsn: str) -> None:
    parent = await queue.enqueue("p")
    child = await queue.enqueue("c", depends_on=(parent,))
    grandchild = await queue.enqueue("g", depends_on=(child,))
    assert (await queue.get(child)).state == State.BLOCKED
    assert await queue.cancel(parent) == "cancelled"
    for job_id in (child, grandchild):
        job = await queue.get(job_id)
        assert job.state == State.CANCELLED and "did not complete" in (job.last_error or "")
    late = await queue.enqueue("late", depends_on=(parent,))
    assert (await queue.get(late)).state == State.CANCELLED


async def test_unknown_dependency_is_refused(queue: Queue) -> None:
    with pytest.raises(JobNotFound, match="unknown job ids"):
        await queue.enqueue("c", depends_on=(999999,))
    assert await queue.list_jobs() == []


async def test_cancel_retry_and_not_found(queue: Queue) -> None:
    job_id = await queue.enqueue("t")
    assert await queue.cancel(job_id) == "cancelled"
    assert await queue.cancel(job_id) == "cancelled"  # idempotent
    await queue.retry(job_id)
    assert (await queue.get(job_id)).state == State.PENDING
    with pytest.raises(InvalidJob, match="only finished or waiting"):
        await queue.retry(job_id)
    with pytest.raises(JobNotFound):
        await queue.get(424242)
    with pytest.raises(JobNotFound):
        await queue.cancel(424242)


async def test_wait_returns_result_or_raises(queue: Queue, dsn: str) -> None:
    done, doomed = await queue.enqueue_many([{"type": "t"}, {"type": "t"}])

    async def finish_later() -> None:
        await asyncio.sleep(0.3)
        sql(dsn, "UPDATE skiplock.jobs SET state='completed', result='{\"ok\": 1}', finished_at=now() WHERE id=%s",
            (done,))
        sql(dsn, "SELECT pg_notify('skiplock_finished', %s)", (str(done),))

    task = asyncio.create_task(finish_later())
    assert await queue.wait(done, timeout=10, poll_interval=5) == {"ok": 1}
    await task
    with pytest.raises(TimeoutError):
        await queue.wait(doomed, timeout=0.3)
    await queue.cancel(doomed)
    with pytest.raises(JobFailed, match="cancelled"):
        await queue.wait(doomed, timeout=5)


async def test_archive_and_purge(queue: Queue, dsn: str) -> None:
    ids = await queue.enqueue_many([{"type": "t"} for _ in range(6)])
    sql(dsn, "UPDATE skiplock.jobs SET state='completed', finished_at=now() - interval '2 days' WHERE id = ANY(%s)",
        (ids[:4],))
    sql(dsn, "UPDATE skiplock.jobs SET state='dead', finished_at=now() - interval '2 days' WHERE id = %s", (ids[4],))
    sql(dsn, QUERIES["archive"].replace("%(finished_after)s", "3600").replace("%(dead_after)s", "604800")
        .replace("%(limit)s", "2"))
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs_history")[0][0] == 2  # bounded batch
    assert (await queue.get(ids[0])).archived
    await queue.retry(ids[0])  # back from the history
    assert (await queue.get(ids[0])).state == State.PENDING
    assert await queue.purge(["completed"], older_than=86400) == 3
    assert await queue.purge(["dead"], older_than=3 * 86400) == 0
    with pytest.raises(InvalidJob, match="finished states"):
        await queue.purge(["pending"], older_than=0)


async def test_stats_counts_effective_states(queue: Queue, dsn: str) -> None:
    await queue.enqueue_many([{"type": "t"}, {"type": "t", "delay": 3600}, {"type": "t", "queue": "b"}])
    sql(dsn, "UPDATE skiplock.jobs SET run_at = now() - interval '10 seconds'")
    rows = {(r["queue"], r["state"]): r for r in await queue.stats()}
    assert rows[("default", "pending")]["jobs"] == 2  # the due scheduled job counts as pending
    assert rows[("default", "pending")]["oldest_pending_seconds"] >= 10
    assert json.dumps(await queue.depth(["default", "b"]), default=str)


async def test_one_maintenance_round_archives_more_than_a_batch(dsn: str) -> None:
    from skiplock.maintenance import ARCHIVE_BATCH

    sql(dsn, "INSERT INTO skiplock.jobs (type, state, finished_at) SELECT 't', 'completed', "
             "now() - interval '2 hours' FROM generate_series(1, %s)", (2 * ARCHIVE_BATCH + 10,))
    jobs = JobRegistry()
    jobs.register("t", lambda job: None)
    worker = Worker(jobs, dsn, WorkerConfig(metrics_port=None))
    await worker.pool.open()
    try:
        await worker.maintain()
    finally:
        await worker.pool.close()
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs_history")[0][0] == 2 * ARCHIVE_BATCH + 10
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs")[0][0] == 0
