"""Issue 9 in the operator, on the real control plane and a real PostgreSQL: ``spec.schedules[]``
synced into skiplock.schedules (and out of it when an entry or the JobQueue goes), and scaling that
stops at the job types' concurrency limits. The harness is ``test_operator.py``'s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from skiplock import Queue
from tests.k8s import test_operator as harness
from tests.k8s.cluster import wait_for
from tests.k8s.test_operator import Api, Operator, cpu_pool, enqueue, jobqueue

# test_operator.py's fixtures, for this module too
cluster, namespace, start_operator, api = harness.cluster, harness.namespace, harness.start_operator, harness.api

NIGHTLY = {"name": "nightly-report", "cron": "0 3 * * *", "type": "report", "timezone": "Europe/Berlin",
           "payload": {"format": "pdf"}}
OFTEN = {"name": "sync-often", "every": "30s", "type": "sync", "catchUp": "skip"}


def schedules(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT name, source, cron, every_seconds, type, payload, queue, timezone, catch_up "
                            "FROM skiplock.schedules").fetchall()
    keys = ("source", "cron", "every_seconds", "type", "payload", "queue", "timezone", "catch_up")
    return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}


INVALID = [
    ({"name": "both", "type": "t", "cron": "* * * * *", "every": "1m"}, "give exactly one of cron or every"),
    ({"name": "none", "type": "t"}, "give exactly one of cron or every"),
    ({"name": "fields", "type": "t", "cron": "every day"}, "spec.schedules[0].cron"),
    ({"name": "unit", "type": "t", "every": "5 minutes"}, "spec.schedules[0].every"),
    ({"name": "catch", "type": "t", "every": 60, "catchUp": "never"}, "spec.schedules[0].catchUp"),
    ({"type": "t", "every": 60}, "spec.schedules[0].name: Required value"),
]


@pytest.mark.parametrize(("entry", "message"), INVALID, ids=[m[:40] for _, m in INVALID])
def test_schedules_the_schema_refuses(api: Api, entry: dict[str, Any], message: str) -> None:
    manifest = jobqueue("bad", cpu_pool(), schedules=[entry])
    result = api.cluster.kubectl("apply", "-n", api.ns, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_schedules_follow_the_jobqueue(api: Api, dsn: str, start_operator: Callable[..., Operator]) -> None:
    start_operator("--standalone")
    source = f"jobqueue/{api.ns}/cron"
    api.apply(jobqueue("cron", cpu_pool(), schedules=[NIGHTLY, OFTEN]))
    found = wait_for(lambda: len(rows := schedules(dsn)) == 2 and rows, 30, "two schedules in the database")
    assert found["nightly-report"] == {"source": source, "cron": "0 3 * * *", "every_seconds": None,
                                       "type": "report", "payload": {"format": "pdf"}, "queue": "default",
                                       "timezone": "Europe/Berlin", "catch_up": "latest"}
    assert (found["sync-often"]["every_seconds"], found["sync-often"]["catch_up"]) == (30.0, "skip")
    wait_for(lambda: api.jobqueue("cron").get("status", {}).get("schedules") == 2, 30, "status.schedules 2")
    stored = api.jobqueue("cron")["spec"]["schedules"][1]
    assert (stored["timezone"], stored["priority"], stored["maxAttempts"]) == ("UTC", 0, 5)  # the CRD's defaults

    # A time zone the pattern admits but no database knows: reported, and the last good one stays.
    api.apply(jobqueue("cron", cpu_pool(), schedules=[{**NIGHTLY, "timezone": "Europe/Atlantis"}, OFTEN]))
    wait_for(lambda: api.condition("cron", "Degraded").get("reason") == "InvalidSchedule", 30, "InvalidSchedule")
    assert "unknown timezone 'Europe/Atlantis'" in api.condition("cron", "Degraded")["message"]
    assert api.condition("cron", "Ready")["status"] == "True"
    api.event("InvalidSchedule", "nightly-report")
    assert schedules(dsn)["nightly-report"]["timezone"] == "Europe/Berlin"

    # Dropping an entry removes its schedule.
    api.apply(jobqueue("cron", cpu_pool(), schedules=[NIGHTLY]))
    wait_for(lambda: set(schedules(dsn)) == {"nightly-report"}, 30, "sync-often removed")
    wait_for(lambda: api.condition("cron", "Degraded").get("status") == "False", 30, "not Degraded")
    api.event("SchedulesSynced", "removed sync-often")

    # Deleting the JobQueue removes the rest, and only its own.
    asyncio.run(_add_cli_schedule(dsn))
    api.cluster.kubectl("delete", "jq", "cron", "-n", api.ns, "--timeout=30s")
    assert set(schedules(dsn)) == {"by-hand"}


async def _add_cli_schedule(dsn: str) -> None:
    from skiplock.schedules import make_schedule
    async with Queue(dsn) as q:
        await q.set_schedule(make_schedule(name="by-hand", every=60, type="x"), source="cli")


def test_a_concurrency_limit_caps_the_scale_up(api: Api, dsn: str, start_operator: Callable[..., Operator]) -> None:
    asyncio.run(_limit(dsn, "render", 2))
    asyncio.run(enqueue(dsn, 100, type="render"))
    start_operator("--standalone")
    api.apply(jobqueue("capped", cpu_pool(concurrency=1, maxReplicas=8)))
    wait_for(lambda: api.replicas("capped-cpu") == 2, 30, "2 replicas")
    pool = wait_for(lambda: (p := api.pool_status("capped", "cpu")).get("limitedTo") and p, 30, "limitedTo")
    assert (pool["pending"], pool["limitedTo"], pool["desiredReplicas"]) == (100, 2, 2)
    time.sleep(3)  # a few polls later: still within the limit
    assert api.replicas("capped-cpu") == 2
    api.event("ScaledUp", "2 within concurrency limits")

    asyncio.run(_limit(dsn, "render", None))  # limits change at runtime: the pool follows
    wait_for(lambda: api.replicas("capped-cpu") == 8, 30, "8 replicas without the limit")
    assert "limitedTo" not in api.pool_status("capped", "cpu")


async def _limit(dsn: str, type: str, concurrency: int | None) -> None:
    async with Queue(dsn) as q:
        if concurrency is None:
            await q.clear_limit(type)
        else:
            await q.set_limit(type, concurrency=concurrency)
