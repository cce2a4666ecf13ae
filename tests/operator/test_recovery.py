"""Stuck-job recovery against a real database: expired leases and jobs of deleted pods."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest

from skiplock import Queue
from skiplock.operator import reconcile, recovery
from skiplock.operator.runtime import Runtime

from .fakes import FakeKube
from .support import NS, Events, claim, index, jobqueue, runtime, spec

GONE, LIVE = "jq-cpu-7f9c4d8b6c-gone1", "jq-cpu-7f9c4d8b6c-live1"


def test_suspects_are_unknown_workers_named_like_our_pods() -> None:
    running = [GONE, LIVE, "jq-cpu-7f9c4d8b6c", "other-cpu-7f9c4d8b6c-abcde", "laptop-1234-ab12cd",
               "jq-cpu-x-7f9c4d8b6c-abcde"]
    assert recovery.suspects(running, ["jq-cpu", "jq-gpu"], {LIVE}) == [GONE]


@pytest.fixture
async def setup(dsn: str) -> Any:
    kube, events = FakeKube(), Events()
    kube.add_secret(NS, "db", "DATABASE_URL", dsn)
    rt = runtime(kube, events)
    body = jobqueue(spec())
    await reconcile.poll(rt, rt.jobqueue(NS, "jq"), body, index(kube))  # connects the database
    yield rt, kube, events
    await rt.close()


def states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT state::text, count(*) FROM skiplock.jobs GROUP BY 1").fetchall()
    return {state: n for state, n in rows}


async def test_a_sweep_rescues_expired_leases_and_jobs_of_gone_pods(setup: Any, dsn: str) -> None:
    rt, kube, events = setup
    async with Queue(dsn) as q:
        await q.enqueue_many([{"type": "t"} for _ in range(5)])
    kube.add_pod(NS, LIVE, "jq", "cpu")
    claim(dsn, LIVE, 2)
    claim(dsn, GONE, 2)
    claim(dsn, "laptop-worker", 1, lease_seconds=0.01)
    await asyncio.sleep(0.05)

    rescued = await recovery.sweep(rt, rt.jobqueues[(NS, "jq")], index(kube))
    assert rescued == recovery.Rescued(lease_expired=1, pod_gone=2)
    assert states(dsn) == {"retry": 3, "running": 2}  # rescued: a failed attempt; the live pod keeps its jobs
    assert events[-1][1] == "JobsRescued" and GONE in events[-1][2]
    assert kube.statuses[(NS, "jq")]["lastRecovery"]["podGone"] == 2
    text = generate_latest(rt.metrics.registry).decode()
    assert 'skiplock_operator_rescued_jobs_total{jobqueue="jq",namespace="apps",reason="pod_gone"} 2.0' in text
    assert 'reason="lease_expired"} 1.0' in text


async def test_a_worker_the_index_missed_is_confirmed_with_the_api(setup: Any, dsn: str) -> None:
    rt, kube, _ = setup
    async with Queue(dsn) as q:
        await q.enqueue_many([{"type": "t"}])
    claim(dsn, LIVE, 1)
    kube.add_pod(NS, LIVE, "jq", "cpu")  # exists, but not (yet) in the index the sweep is given
    rescued = await recovery.sweep(rt, rt.jobqueues[(NS, "jq")], {})
    assert rescued == recovery.Rescued()
    assert states(dsn) == {"running": 1}


async def test_a_deleted_pod_releases_its_jobs_at_once(setup: Any, dsn: str) -> None:
    rt: Runtime = setup[0]
    async with Queue(dsn) as q:
        await q.enqueue_many([{"type": "t"} for _ in range(3)])
    claim(dsn, GONE, 3)
    assert await recovery.pod_deleted(rt, NS, "jq", GONE) == recovery.Rescued(pod_gone=3)
    assert states(dsn) == {"retry": 3}
    assert await recovery.pod_deleted(rt, NS, "unknown", GONE) is None
