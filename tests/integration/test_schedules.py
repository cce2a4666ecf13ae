"""Periodic schedules: one job per tick across workers, catch-up policies, DST, declarations."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from skiplock import InvalidJob, Job, JobRegistry, Queue
from skiplock.schedules import make_schedule
from tests.helpers import eventually, running_worker, sql


def test_cron_ticks_follow_the_timezone_across_dst() -> None:
    spec = make_schedule(name="n", type="t", cron="30 1 * * *", timezone="Europe/Berlin")
    before = datetime(2026, 3, 28, 12, tzinfo=UTC)
    first = spec.next_after(before)
    second = spec.next_after(first)
    assert first.astimezone(ZoneInfo("Europe/Berlin")).hour == 1
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=23)  # spring forward: 23 h
    six = make_schedule(name="n", type="t", cron="*/10 * * * * *")
    assert six.next_after(datetime(2026, 1, 1, tzinfo=UTC)).second == 10


@pytest.mark.parametrize("fields, message", [
    ({"cron": "61 * * * *"}, "invalid cron"), ({"cron": "* * *"}, "invalid cron"),
    ({"every": 0}, "greater than 0"), ({}, "exactly one"), ({"cron": "* * * * *", "every": 5}, "exactly one"),
    ({"cron": "* * * * *", "timezone": "Mars/Base"}, "unknown timezone"),
])
def test_invalid_schedules_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidJob, match=message):
        make_schedule(name="n", type="t", **fields)


def test_catch_up_policies_after_downtime() -> None:
    now = datetime(2026, 1, 1, 12, 0, 45, tzinfo=UTC)  # the last tick (12:00) is 45 s late: missed
    missed_since = datetime(2026, 1, 1, 11, 50, tzinfo=UTC)
    for policy, expected in (("latest", 1), ("skip", 0), ("all", 11)):
        spec = make_schedule(name="n", type="t", every=60, catch_up=policy)
        ticks, following = spec.due(missed_since, now)
        assert len(ticks) == expected and following > now


async def test_one_job_per_tick_however_many_workers(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()
    ran: list[int] = []

    @jobs.periodic(every=1, name="heartbeat-job")
    async def tick(job: Job) -> None:
        ran.append(job.id)

    async with running_worker(jobs, dsn), running_worker(jobs, dsn), running_worker(jobs, dsn):
        await eventually(lambda: asyncio.sleep(0, len(ran) >= 4), timeout=30)
    keys = [r[0] for r in sql(dsn, "SELECT dedup_key FROM skiplock.jobs WHERE type = 'heartbeat-job'")]
    assert len(keys) == len(set(keys)) >= 4
    (schedule,) = await queue.schedules()
    assert schedule["source"] == "code" and schedule["every_seconds"] == 1


async def test_cli_style_schedules_pause_resume_remove_and_sync(queue: Queue, dsn: str) -> None:
    spec = make_schedule(name="nightly", type="report", cron="0 3 * * *", timezone="America/New_York",
                         payload={"k": 1}, priority=5)
    next_run = await queue.set_schedule(spec)
    assert next_run.astimezone(ZoneInfo("America/New_York")).hour == 3
    await queue.pause_schedule("nightly")
    sql(dsn, "UPDATE skiplock.schedules SET next_run_at = now() - interval '1 minute'")
    assert await queue.fire_schedules() == 0  # paused
    await queue.pause_schedule("nightly", paused=False)
    assert await queue.fire_schedules() == 1
    (job,) = await queue.list_jobs(type="report")
    assert (job.payload, job.priority, job.labels) == ({"k": 1}, 5, {"schedule": "nightly"})
    assert await queue.fire_schedules() == 0  # advanced to the next tick
    crd = "crd:ns/jq"
    keep = make_schedule(name="a", type="t", every=60)
    await queue.sync_schedules(crd, [keep, make_schedule(name="b", type="t", every=60)])
    assert await queue.sync_schedules(crd, [keep]) == ["b"]
    assert sorted(s["name"] for s in await queue.schedules()) == ["a", "nightly"]
    await queue.remove_schedule("nightly")
    with pytest.raises(Exception, match="no schedule"):
        await queue.remove_schedule("nightly")
