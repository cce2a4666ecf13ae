"""One set of behaviour tests for every way a job is run: the SQL API (the functions any language
calls, here through psycopg as psql would), the Python pull API (``Queue.claim`` ...) and the Python
worker (handlers). The same job options, outcomes and expectations: leases, attempts, retry delays,
dead letters, dependencies and finish notifications."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
import pytest
from psycopg.rows import dict_row

from skiplock import Job, JobCancelled, JobRegistry, PermanentFailure, Queue, State
from skiplock.pull import PulledJob
from skiplock.retry import Fixed, Intervals
from tests.helpers import eventually, running_worker, sql


@dataclass
class Act:
    """What the run does with a job: ``complete`` (with result), ``fail`` (with error, retry_in) or
    ``dead`` (a permanent failure)."""

    do: str
    result: Any = None
    error: str = "boom"
    retry_in: float | None = None


class Runner(Protocol):
    name: str

    async def run(self, queue: str, acts: dict[int, Act]) -> None:
        """Claim every job of ``queue`` named in ``acts`` once and do what it says."""


class SqlRunner:
    """The SQL API, as any language calls it."""

    name = "sql"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def run(self, queue: str, acts: dict[int, Act]) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            claimed = await (await conn.execute("SELECT id, attempts FROM skiplock.claim(%s, 'sql-worker', %s, 30)",
                                                (queue, len(acts)))).fetchall()
            assert {r["id"] for r in claimed} == set(acts)
            for row in claimed:
                act = acts[row["id"]]
                if act.do == "complete":
                    cur = await conn.execute("SELECT skiplock.complete(%s, 'sql-worker', %s::jsonb) AS ok",
                                             (row["id"], json.dumps(act.result)))
                    assert (await cur.fetchone() or {})["ok"] is True
                else:
                    cur = await conn.execute("SELECT skiplock.fail(%s, 'sql-worker', %s, %s, %s) AS state",
                                             (row["id"], act.error, act.retry_in, act.do == "dead"))
                    assert (await cur.fetchone() or {})["state"] in ("retry", "dead")


class PullRunner:
    """``Queue.claim`` / ``complete`` / ``fail`` from the caller's own loop."""

    name = "pull"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def run(self, queue: str, acts: dict[int, Act]) -> None:
        async with Queue(self.dsn, worker_id="pull-worker") as q:
            jobs = await q.claim(queue, max_jobs=len(acts))
            assert {j.id for j in jobs} == set(acts)
            for job in jobs:
                act = acts[job.id]
                if act.do == "complete":
                    assert await q.complete(job, act.result)
                elif act.do == "dead":
                    assert await q.fail(job, act.error, permanent=True) == "dead"
                else:
                    assert await q.fail(job, act.error, retry_in=act.retry_in) in ("retry", "dead")


class WorkerRunner:
    """The worker, running handlers."""

    name = "worker"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def run(self, queue: str, acts: dict[int, Act]) -> None:
        registry = JobRegistry()

        @registry.handler("t")
        async def handler(job: Job) -> Any:
            act = acts[job.id]
            if act.do == "complete":
                return act.result
            if act.do == "dead":
                raise PermanentFailure(act.error)
            raise RuntimeError(act.error)

        async with running_worker(registry, self.dsn, queues=[queue], max_jobs=len(acts)) as worker:
            await eventually(lambda: _true(worker.finished >= len(acts)))


async def _true(value: bool) -> bool:
    return value


RUNNERS: dict[str, Callable[[str], Runner]] = {"sql": SqlRunner, "pull": PullRunner, "worker": WorkerRunner}


@pytest.fixture(params=sorted(RUNNERS))
def runner(request: pytest.FixtureRequest, dsn: str) -> Runner:
    return RUNNERS[request.param](dsn)


def _row(dsn: str, job_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute("SELECT *, extract(epoch FROM run_at - now())::float8 AS wait FROM skiplock.jobs "
                           "WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


async def test_a_completed_job_keeps_its_result(runner: Runner, queue: Queue, dsn: str) -> None:
    job_id = await queue.enqueue("t", {"n": 1})
    await runner.run("default", {job_id: Act("complete", {"ok": runner.name})})
    row = _row(dsn, job_id)
    assert (row["state"], row["attempts"], row["result"]) == ("completed", 1, {"ok": runner.name})
    assert row["worker_id"] and row["finished_at"] and row["lease_expires_at"] is None


async def test_a_failure_retries_on_the_jobs_schedule_then_dead_letters(runner: Runner, queue: Queue,
                                                                       dsn: str) -> None:
    fixed = await queue.enqueue("t", retry=Fixed(every=30), max_attempts=2)
    listed = await queue.enqueue("t", retry=Intervals(intervals=(60, 180, 600)), max_attempts=3)
    spent = await queue.enqueue("t", max_attempts=1)
    await runner.run("default", {i: Act("fail", error=f"failed {i}") for i in (fixed, listed, spent)})
    for job_id, wait in ((fixed, 30), (listed, 60)):
        row = _row(dsn, job_id)
        assert row["state"] == "retry" and wait - 2 < row["wait"] <= wait, row
        assert f"failed {job_id}" in row["last_error"] and row["attempts"] == 1
    assert _row(dsn, spent)["state"] == "dead"


async def test_the_queues_schedule_applies_to_jobs_without_their_own(runner: Runner, queue: Queue, dsn: str) -> None:
    from skiplock.queues import make_settings

    await queue.set_queue(make_settings("q", retry=Intervals(intervals=(45, 90)), max_attempts=4))
    job_id = await queue.enqueue("t", queue="q")
    await runner.run("q", {job_id: Act("fail")})
    row = _row(dsn, job_id)
    assert row["max_attempts"] == 4 and row["state"] == "retry" and 43 < row["wait"] <= 45


async def test_a_per_failure_delay_wins_over_the_schedule(queue: Queue, dsn: str) -> None:
    sql_job = await queue.enqueue("t", queue="a", retry=Fixed(every=600))
    pull_job = await queue.enqueue("t", queue="b", retry=Fixed(600))
    await SqlRunner(dsn).run("a", {sql_job: Act("fail", retry_in=5)})
    await PullRunner(dsn).run("b", {pull_job: Act("fail", retry_in=7)})
    assert 3 < _row(dsn, sql_job)["wait"] <= 5 and 5 < _row(dsn, pull_job)["wait"] <= 7


async def test_dependents_follow_the_parent(runner: Runner, queue: Queue, dsn: str) -> None:
    good, bad = await queue.enqueue("t"), await queue.enqueue("t")  # bad: a permanent failure
    child_of_good = await queue.enqueue("t", queue="later", depends_on=[good])
    child_of_bad = await queue.enqueue("t", queue="later", depends_on=[bad])
    grandchild = await queue.enqueue("t", queue="later", depends_on=[child_of_bad])
    await runner.run("default", {good: Act("complete"), bad: Act("dead")})
    assert _row(dsn, child_of_good)["state"] == "pending"
    assert [_row(dsn, i)["state"] for i in (child_of_bad, grandchild)] == ["cancelled", "cancelled"]


async def test_a_waiting_producer_is_notified(runner: Runner, queue: Queue, dsn: str) -> None:
    job_id = await queue.enqueue("t")
    waiter = asyncio.create_task(queue.wait(job_id, timeout=60, poll_interval=30))
    await asyncio.sleep(0.5)  # the waiter listens (its poll alone would take 30 s)
    await runner.run("default", {job_id: Act("complete", [1, 2])})
    assert await asyncio.wait_for(waiter, 20) == [1, 2]


# -- the lease: only its holder acts ---------------------------------------------------------------

class Lease(Protocol):
    async def claim(self, worker: str) -> list[int]: ...
    async def complete(self, job_id: int, worker: str) -> bool: ...
    async def fail(self, job_id: int, worker: str) -> str | None: ...
    async def release(self, job_id: int, worker: str) -> bool: ...
    async def heartbeat(self, worker: str, lease: float) -> int: ...
    async def renew(self, worker: str, lease: float) -> dict[int, tuple[int, bool]]: ...


class SqlLease:
    def __init__(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        self.conn = conn

    async def _one(self, query: str, *params: Any) -> Any:
        row = await (await self.conn.execute(query, params)).fetchone()
        assert row is not None
        return next(iter(row.values()))

    async def claim(self, worker: str) -> list[int]:
        rows = await (await self.conn.execute("SELECT id FROM skiplock.claim('default', %s, 10, 5)",
                                              (worker,))).fetchall()
        return [r["id"] for r in rows]

    async def complete(self, job_id: int, worker: str) -> bool:
        return bool(await self._one("SELECT skiplock.complete(%s, %s)", job_id, worker))

    async def fail(self, job_id: int, worker: str) -> str | None:
        state: str | None = await self._one("SELECT skiplock.fail(%s, %s, 'x')", job_id, worker)
        return state

    async def release(self, job_id: int, worker: str) -> bool:
        return bool(await self._one("SELECT skiplock.release(%s, %s)", job_id, worker))

    async def heartbeat(self, worker: str, lease: float) -> int:
        return int(await self._one("SELECT skiplock.heartbeat(%s, %s)", worker, lease))

    async def renew(self, worker: str, lease: float) -> dict[int, tuple[int, bool]]:
        rows = await (await self.conn.execute("SELECT * FROM skiplock.renew(%s, %s)", (worker, lease))).fetchall()
        return {r["job_id"]: (r["attempt"], r["cancel_requested"]) for r in rows}


class PullLease:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.held: dict[tuple[int, str], PulledJob] = {}

    def _queue(self, worker: str) -> Queue:
        return Queue(self.dsn, worker_id=worker)

    async def claim(self, worker: str) -> list[int]:
        async with self._queue(worker) as q:
            jobs = await q.claim(max_jobs=10, lease_seconds=5)
        self.held.update({(j.id, worker): j for j in jobs})
        return [j.id for j in jobs]

    def _job(self, job_id: int, worker: str) -> PulledJob:
        found = next((j for (i, _), j in self.held.items() if i == job_id), None)
        assert found is not None
        copy = PulledJob(**{**found.__dict__, "worker_id": worker, "done": False})
        return copy

    async def complete(self, job_id: int, worker: str) -> bool:
        async with self._queue(worker) as q:
            return await q.complete(self._job(job_id, worker))

    async def fail(self, job_id: int, worker: str) -> str | None:
        async with self._queue(worker) as q:
            return await q.fail(self._job(job_id, worker), "x")

    async def release(self, job_id: int, worker: str) -> bool:
        async with self._queue(worker) as q:
            return await q.release(self._job(job_id, worker))

    async def heartbeat(self, worker: str, lease: float) -> int:
        async with self._queue(worker) as q:
            return await q.heartbeat(lease)

    async def renew(self, worker: str, lease: float) -> dict[int, tuple[int, bool]]:
        async with self._queue(worker) as q:
            return await q.renew(lease)


@pytest.fixture(params=["sql", "pull"])
async def lease(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[Lease]:
    if request.param == "pull":
        yield PullLease(dsn)
        return
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        yield SqlLease(conn)


def _snapshot(dsn: str) -> list[tuple[Any, ...]]:
    return sql(dsn, "SELECT id, state::text, attempts, worker_id, run_at, result, last_error FROM skiplock.jobs "
                    "ORDER BY id")


async def test_only_the_lease_holder_completes_fails_or_releases(lease: Lease, queue: Queue, dsn: str) -> None:
    job_id = await queue.enqueue("t")
    assert await lease.claim("a") == [job_id]
    before = _snapshot(dsn)
    assert await lease.complete(job_id, "b") is False
    assert await lease.fail(job_id, "b") is None
    assert await lease.release(job_id, "b") is False
    assert _snapshot(dsn) == before  # nothing changed
    assert await lease.complete(job_id, "a") is True
    assert await lease.complete(job_id, "a") is False  # once


async def test_release_refunds_the_attempt_and_heartbeat_renews_every_lease(lease: Lease, queue: Queue,
                                                                          dsn: str) -> None:
    ids = [await queue.enqueue("t") for _ in range(3)]
    assert sorted(await lease.claim("a")) == ids
    (expires,) = sql(dsn, "SELECT max(lease_expires_at) FROM skiplock.jobs")[0]
    assert await lease.heartbeat("a", 300) == 3
    assert sql(dsn, "SELECT min(lease_expires_at) FROM skiplock.jobs")[0][0] > expires
    assert await lease.heartbeat("nobody", 300) == 0
    assert await lease.release(ids[0], "a") is True
    assert sql(dsn, "SELECT state::text, attempts, worker_id FROM skiplock.jobs WHERE id = %s",
               (ids[0],)) == [("pending", 0, None)]
    assert await lease.fail(ids[1], "a") == "retry"


async def test_renew_tells_the_holder_of_cancel_requests_and_lost_leases(lease: Lease, queue: Queue,
                                                                         dsn: str) -> None:
    kept, cancelled, lost = [await queue.enqueue("t") for _ in range(3)]
    assert sorted(await lease.claim("a")) == [kept, cancelled, lost]
    assert await queue.cancel(cancelled) == "running"  # asked to stop
    sql(dsn, "UPDATE skiplock.jobs SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (lost,))
    await queue.rescue()
    assert await lease.renew("a", 300) == {kept: (1, False), cancelled: (1, True)}  # lost: not renewed
    assert await lease.renew("nobody", 300) == {}
    assert await lease.heartbeat("a", 300) == 2


async def test_an_expired_lease_is_rescued_as_a_failed_attempt(lease: Lease, queue: Queue, dsn: str) -> None:
    job_id = await queue.enqueue("t", retry=Fixed(every=40))
    await lease.claim("a")
    sql(dsn, "UPDATE skiplock.jobs SET lease_expires_at = now() - interval '1 second'")
    rescued = await queue.rescue()
    assert [r["id"] for r in rescued] == [job_id]
    row = _row(dsn, job_id)
    assert row["state"] == "retry" and 38 < row["wait"] <= 40 and "lease expired" in row["last_error"]
    assert await lease.complete(job_id, "a") is False  # the late outcome changes nothing


async def test_claims_respect_limits(queue: Queue, dsn: str) -> None:
    await queue.set_limit("t", concurrency=2)
    for _ in range(5):
        await queue.enqueue("t")
    async with Queue(dsn, worker_id="p") as q:
        assert len(await q.claim(max_jobs=5)) == 2
    rows = sql(dsn, "SELECT count(*) FROM skiplock.claim('default', 's', 5)")
    assert rows == [(0,)]


async def test_the_context_manager_completes_fails_and_keeps_the_lease(queue: Queue, dsn: str) -> None:
    ok, bad = await queue.enqueue("t", {"n": 2}), await queue.enqueue("t")
    async with Queue(dsn, worker_id="cm") as q:
        async with q.claimed(lease_seconds=1.5) as job:
            assert job is not None and job.id == ok
            await asyncio.sleep(3)  # twice the lease: only the keepalive keeps it
            assert sql(dsn, "SELECT state::text FROM skiplock.jobs WHERE id = %s", (ok,)) == [("running",)]
            assert await queue.rescue() == []
            job.result = job.payload["n"] * 2
        with pytest.raises(RuntimeError):
            async with q.claimed() as job:
                raise RuntimeError("handler broke")
        async with q.claimed() as job:
            assert job is None
        third = await queue.enqueue("t")
        with pytest.raises(JobCancelled):
            async with q.claimed(lease_seconds=1.5) as job:
                assert job is not None and job.id == third and not job.cancelled
                await queue.cancel(third)
                await eventually(lambda: _now(job.cancelled), timeout=5)  # the next renewal says so
                job.raise_if_cancelled()
        assert _row(dsn, third)["state"] == "cancelled"
    assert _row(dsn, ok)["result"] == 4 and _row(dsn, ok)["state"] == "completed"
    row = _row(dsn, bad)
    assert row["state"] == "retry" and "RuntimeError: handler broke" in row["last_error"]


def test_the_sync_facade_pulls_too(dsn: str) -> None:
    from skiplock import sync

    with psycopg.connect(dsn, autocommit=True) as conn:
        first, second = sync.enqueue(conn, "t", {"a": 1}), sync.enqueue(conn, "t", ttl=60)
        jobs = sync.claim(conn, worker_id="s", max_jobs=2)
        assert [j.id for j in jobs] == [first, second]
        assert sync.heartbeat(conn, "s") == 2
        assert sync.complete(conn, jobs[0], {"done": True}) is True
        assert sync.fail(conn, jobs[1], "nope", retry_in=0) == "retry"
        with sync.claimed(conn, worker_id="s", lease_seconds=1.5) as job:
            assert job is not None and job.id == second
            time.sleep(3)
            job.result = "kept"
        third = sync.enqueue(conn, "t")
        with pytest.raises(JobCancelled), sync.claimed(conn, worker_id="s", lease_seconds=1.5) as job:
            assert job is not None and job.id == third
            sql(dsn, "UPDATE skiplock.jobs SET cancel_requested = true WHERE id = %s", (third,))
            deadline = time.monotonic() + 5
            while not job.cancelled and time.monotonic() < deadline:
                time.sleep(0.1)
            job.raise_if_cancelled()
        assert _row(dsn, third)["state"] == "cancelled"
        assert sql(dsn, "SELECT state::text, result FROM skiplock.jobs WHERE id = %s", (second,)) == [
            ("completed", "kept")]


# -- bad input: one clear line, nothing changed -------------------------------------------------------

BAD_SQL = [
    ("SELECT skiplock.enqueue(NULL)", "type must not be NULL"),
    ("SELECT skiplock.enqueue('')", "type must be 1-200 characters"),
    ("SELECT skiplock.enqueue('t', 'null')", "payload must be a JSON value other than null"),
    ("SELECT skiplock.enqueue('t', max_attempts => 0)", "max_attempts must be between 1 and 1000"),
    ("SELECT skiplock.enqueue('t', labels => '{\"a\": 1}')", "labels must be a JSON object of strings"),
    ("SELECT skiplock.enqueue('t', ttl_seconds => -1)", "ttl_seconds must be a finite number of seconds above 0"),
    ("SELECT skiplock.enqueue('t', retry_policy => '{\"kind\": \"sometimes\"}')", "unknown retry policy kind"),
    ("SELECT skiplock.enqueue('t', retry_policy => '{\"kind\": \"intervals\", \"intervals\": []}')",
     "intervals must be a non-empty list"),
    ("SELECT * FROM skiplock.claim('default', 'w', 0)", "max_jobs must be at least 1"),
    ("SELECT * FROM skiplock.claim('default', NULL)", "worker_id must not be NULL"),
    ("SELECT * FROM skiplock.claim('default', 'w', 1, 'NaN')", "lease_seconds must be a finite number"),
    ("SELECT skiplock.fail(1, 'w', 'e', -5)", "retry_in_seconds must be a finite number of seconds, 0 or more"),
    ("SELECT skiplock.heartbeat('w', 0)", "lease_seconds must be a finite number of seconds above 0"),
]


@pytest.mark.parametrize(("query", "message"), BAD_SQL)
def test_the_sql_api_refuses_bad_input_with_one_line(dsn: str, query: str, message: str) -> None:
    sql(dsn, "SELECT skiplock.enqueue('t')")
    before = _snapshot(dsn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        sql(dsn, query)
    first = str(caught.value).splitlines()[0]
    assert first.startswith("skiplock.") and message in first, first
    assert _snapshot(dsn) == before


async def test_the_python_pull_api_refuses_bad_input(queue: Queue) -> None:
    from skiplock import InvalidJob

    with pytest.raises(InvalidJob, match="max_jobs must be at least 1"):
        await queue.claim(max_jobs=0)
    with pytest.raises(InvalidJob, match="lease_seconds"):
        await queue.claim(lease_seconds=float("inf"))
    await queue.enqueue("t")
    (job,) = await queue.claim()
    with pytest.raises(InvalidJob, match="retry_in"):
        await queue.fail(job, "x", retry_in=-1)
    with pytest.raises(InvalidJob, match="not JSON-serializable"):
        await queue.complete(job, object())
    assert await queue.complete(job, "fine")
    with pytest.raises(InvalidJob, match="already recorded"):
        await queue.complete(job)


async def test_the_sql_api_enqueues_with_the_same_rules(queue: Queue, dsn: str) -> None:
    first = sql(dsn, "SELECT skiplock.enqueue('t', '{\"a\": 1}', 'q', 5, dedup_key => 'k', tenant => 'acme', "
                     "labels => '{\"env\": \"prod\"}', ttl_seconds => 60)")[0][0]
    again = sql(dsn, "SELECT skiplock.enqueue('t', '{}', 'q', dedup_key => 'k')")[0][0]
    assert first == again  # the unfinished holder of the dedup_key answers
    job = await queue.get(first)
    assert (job.queue, job.priority, job.tenant, job.labels, job.max_attempts) == ("q", 5, "acme", {"env": "prod"}, 5)
    assert job.expires_at is not None and 58 < (job.expires_at - datetime.now(UTC)).total_seconds() <= 60
    later = sql(dsn, "SELECT skiplock.enqueue('t', run_at => now() + interval '1 hour')")[0][0]
    assert (await queue.get(later)).state == State.SCHEDULED
    assert sql(dsn, "SELECT skiplock.api_version()") == [(1,)]


def test_migrate_rewrites_statements_that_are_out_of_date(dsn: str) -> None:
    from skiplock import SchemaMissing
    from skiplock.db import connect_sync
    from skiplock.migrate import migrate, require_current

    sql(dsn, "UPDATE skiplock.statements SET body = body || ' ' WHERE name = 'finish'")  # an older version's
    with connect_sync(dsn) as conn:
        with pytest.raises(SchemaMissing, match="skiplock migrate"):
            require_current(conn)
        assert migrate(conn) == []  # no migration to apply, the statements rewritten
        require_current(conn)
    sql(dsn, "DELETE FROM skiplock.statements WHERE name = 'claim'")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="run `skiplock migrate`"):
        sql(dsn, "SELECT * FROM skiplock.claim('default', 'w')")


async def _now(value: bool) -> bool:
    return value
