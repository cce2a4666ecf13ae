"""``spec.queueSettings`` synced into the core's queue settings (``skiplock.operator.queuesettings``)
and removed with the JobQueue, against a real database and a fake Kubernetes API."""

from __future__ import annotations

import math
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from skiplock import Queue
from skiplock.operator import queuesettings, reconcile
from skiplock.operator.runtime import Runtime
from skiplock.operator.spec import parse
from skiplock.queues import make_settings
from skiplock.retry import Exponential, Fixed, Intervals

from .fakes import FakeKube
from .support import NS, Events, jobqueue, spec
from .test_schedules import degraded, delete

SOURCE = f"jobqueue/{NS}/jq"
MAIL = {"queue": "mail", "maxAttempts": 3, "ttl": "1h", "resultTtl": 3600, "failureTtl": "7d",
        "retry": {"intervals": [60, "3m", "10m"]}}
REPORTS = {"queue": "reports", "retry": {"every": "30s"}}


def body(*entries: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return jobqueue(spec(queues=["mail", "reports"], queueSettings=list(entries)), generation=generation)


async def poll(rt: Runtime, kube: FakeKube, jq_body: dict[str, Any]) -> dict[str, Any]:
    await reconcile.poll(rt, rt.jobqueue(NS, "jq"), jq_body, {})
    return kube.statuses.get((NS, "jq"), {})


def rows(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return {r["name"]: r for r in conn.execute("SELECT * FROM skiplock.queues").fetchall()}


def test_an_entry_becomes_the_cores_queue_settings() -> None:
    valid, problems = queuesettings.declared(parse(spec(queueSettings=[MAIL, REPORTS, {
        "queue": "x", "retry": {"backoffBase": "2s", "backoffMax": 60}}])))
    assert problems == []
    mail, reports, x = valid
    assert (mail.max_attempts, mail.ttl, mail.result_ttl, mail.failure_ttl) == (3, 3600, 3600, 7 * 86400)
    assert mail.retry == Intervals((60, 180, 600)) and reports.retry == Fixed(30) and x.retry == Exponential(2, 60)


@pytest.mark.parametrize(("entry", "reason"), [
    ({"queue": "q", "ttl": 0}, "ttl: Input should be greater than 0"),
    ({"queue": "q", "maxAttempts": 0}, "maxAttempts: Input should be greater than or equal to 1"),
    ({"queue": "q", "resultTtl": "5x"}, "resultTtl: invalid duration '5x'"),
    ({"queue": "q", "retry": {"every": "1s", "intervals": [1]}}, "give one retry schedule"),
])
def test_an_entry_the_core_refuses_is_one_problem(entry: dict[str, Any], reason: str) -> None:
    valid, (problem,) = queuesettings.declared(parse(spec(queueSettings=[REPORTS, entry])))
    assert [s.name for s in valid] == ["reports"]
    assert problem.id.startswith("InvalidQueueSettings") and problem.message.startswith("spec.queueSettings[1] (q): ")
    assert reason in problem.message, problem.message


async def test_settings_appear_change_and_go_with_the_spec(rt: Runtime, kube: FakeKube, events: Events,
                                                          dsn: str) -> None:
    await poll(rt, kube, body(MAIL, REPORTS))
    found = rows(dsn)
    assert set(found) == {"mail", "reports"} and {r["source"] for r in found.values()} == {SOURCE}
    assert found["mail"]["retry_policy"] == {"kind": "intervals", "intervals": [60, 180, 600], "jitter": 0}
    assert ("Normal", "QueueSettingsSynced", "queue settings set mail, reports") in events
    async with Queue(dsn) as q:  # new jobs of the queue take them
        job = await q.get(await q.enqueue("send", queue="mail"))
    assert (job.max_attempts, job.ttl_seconds, job.failure_ttl_seconds) == (3, 3600, 7 * 86400)

    rt.jobqueues[(NS, "jq")].queue_settings.checked_at = -math.inf  # unchanged: nothing written
    await poll(rt, kube, body(MAIL, REPORTS))
    assert events.reasons().count("QueueSettingsSynced") == 1

    await poll(rt, kube, body({**MAIL, "maxAttempts": 4}, generation=2))
    after = rows(dsn)
    assert set(after) == {"mail"} and after["mail"]["max_attempts"] == 4
    assert events[-1] == ("Normal", "QueueSettingsSynced", "queue settings set mail; removed reports")


async def test_cli_settings_are_replaced_and_another_jobqueues_are_a_conflict(rt: Runtime, kube: FakeKube,
                                                                              dsn: str) -> None:
    async with Queue(dsn) as q:
        await q.set_queue(make_settings("mail", max_attempts=9))  # by hand
        await q.replace_queue(make_settings("reports", max_attempts=2), source=f"jobqueue/{NS}/other")
    status = await poll(rt, kube, body(MAIL, REPORTS))
    found = rows(dsn)
    assert (found["mail"]["source"], found["mail"]["max_attempts"]) == (SOURCE, 3)
    assert (found["reports"]["source"], found["reports"]["max_attempts"]) == (f"jobqueue/{NS}/other", 2)
    assert 'queue "reports": its settings belong to "jobqueue/' in degraded(status)["message"]


async def test_an_invalid_edit_keeps_the_last_good_settings(rt: Runtime, kube: FakeKube, dsn: str) -> None:
    await poll(rt, kube, body(MAIL))
    good = rows(dsn)["mail"]
    status = await poll(rt, kube, body({**MAIL, "ttl": "0s"}, generation=2))
    assert "spec.queueSettings[0] (mail): ttl" in degraded(status)["message"]
    assert rows(dsn)["mail"] == good


async def test_deleting_the_jobqueue_removes_its_settings_only(rt: Runtime, kube: FakeKube, dsn: str) -> None:
    await poll(rt, kube, body(MAIL, REPORTS))
    async with Queue(dsn) as q:
        await q.set_queue(make_settings("mine", ttl=60))
    await rt.forget(NS, "jq")
    await delete(rt, body(MAIL, REPORTS))
    assert set(rows(dsn)) == {"mine"}
