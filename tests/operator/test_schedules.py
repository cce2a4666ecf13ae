"""``spec.schedules`` synced into the core's schedules table (``skiplock.operator.schedules``), and
removed with the JobQueue (the deletion handler), against a real database and a fake Kubernetes API."""

from __future__ import annotations

import math
from typing import Any, cast

import kopf
import psycopg
import pytest
from psycopg.rows import dict_row

from skiplock import Queue
from skiplock.operator import handlers as _handlers
from skiplock.operator import reconcile, schedules
from skiplock.operator.runtime import Runtime
from skiplock.operator.spec import parse
from skiplock.schedules import make_schedule

from .fakes import FakeKube
from .support import NS, Events, jobqueue, runtime, spec

# kopf types its handlers for kopf's own calls (every kwarg); the tests pass the few each reads.
handlers: Any = _handlers

SOURCE = f"jobqueue/{NS}/jq"
NIGHTLY = {"name": "nightly", "cron": "0 3 * * *", "type": "report", "timezone": "Europe/Berlin",
           "payload": {"full": True}}
OFTEN = {"name": "often", "every": "1h30m", "type": "sync", "queue": "emails", "priority": 5, "catchUp": "skip",
         "maxAttempts": 2}


def body(*entries: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return jobqueue(spec(queues=["default", "emails"], schedules=list(entries)), generation=generation)


async def poll(rt: Runtime, kube: FakeKube, jq_body: dict[str, Any]) -> dict[str, Any]:
    await reconcile.poll(rt, rt.jobqueue(NS, "jq"), jq_body, {})
    return kube.statuses.get((NS, "jq"), {})


def rows(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return {r["name"]: r for r in conn.execute("SELECT * FROM skiplock.schedules").fetchall()}


def degraded(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Degraded")


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


# -- reading the entries ----------------------------------------------------------------------------

def test_an_entry_becomes_the_cores_schedule_spec() -> None:
    parsed = parse(spec(queues=["default", "emails"], schedules=[NIGHTLY, OFTEN, {"name": "n", "every": 45,
                                                                                     "type": "t"}]))
    valid, problems = schedules.declared(parsed)
    assert problems == []
    nightly, often, plain = valid
    assert nightly == make_schedule(name="nightly", cron="0 3 * * *", type="report", payload={"full": True},
                                    queue="default", timezone="Europe/Berlin")  # the first queue by default
    assert (often.every, often.queue, often.priority, often.catch_up, often.max_attempts) == (5400.0, "emails", 5,
                                                                                              "skip", 2)
    assert (plain.every, plain.cron, plain.timezone, plain.catch_up) == (45.0, None, "UTC", "latest")


@pytest.mark.parametrize(("entry", "reason"), [
    ({"cron": "61 * * * *"}, "invalid cron expression '61 * * * *'"),
    ({"cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}, "unknown timezone 'Mars/Olympus_Mons'"),
    ({"every": "0s"}, "every: Input should be greater than 0"),
    ({"every": "5 minutes"}, "every: invalid duration '5 minutes'"),
    ({"cron": "* * * * *", "every": 60}, "give exactly one of cron or every"),
    ({}, "give exactly one of cron or every"),
    ({"every": 60, "catchUp": "some"}, "catchUp: Input should be 'skip', 'latest' or 'all'"),
    ({"every": 60, "maxAttempts": 0}, "maxAttempts: Input should be greater than or equal to 1"),
    ({"every": 60, "payload": {"text": "a\x00b"}}, "NUL"),
])
def test_an_entry_the_core_refuses_is_one_problem_with_its_reason(entry: dict[str, Any], reason: str) -> None:
    parsed = parse(spec(schedules=[{"name": "ok", "every": 60, "type": "t"}, {"name": "bad", "type": "t", **entry}]))
    valid, problems = schedules.declared(parsed)
    assert [s.name for s in valid] == ["ok"]
    (problem,) = problems
    assert (problem.reason, problem.key, problem.blocking) == ("InvalidSchedule", "bad", False)
    assert problem.message.startswith("spec.schedules[1] (bad): ") and reason in problem.message, problem.message
    assert "Value error" not in problem.message


# -- syncing ----------------------------------------------------------------------------------------

async def test_schedules_appear_change_and_go_with_the_spec(rt: Runtime, kube: FakeKube, events: Events,
                                                           dsn: str) -> None:
    status = await poll(rt, kube, body(NIGHTLY, OFTEN))
    found = rows(dsn)
    assert set(found) == {"nightly", "often"}
    assert {r["source"] for r in found.values()} == {SOURCE}
    assert (found["nightly"]["cron"], found["nightly"]["timezone"], found["nightly"]["payload"]) == (
        "0 3 * * *", "Europe/Berlin", {"full": True})
    assert (found["often"]["every_seconds"], found["often"]["queue"], found["often"]["catch_up"]) == (
        5400.0, "emails", "skip")
    assert status["schedules"] == 2 and degraded(status)["status"] == "False"
    assert ("Normal", "SchedulesSynced", "schedules created nightly, often") in events

    # Unchanged: nothing is written, the next tick stays where it was.
    jq = rt.jobqueues[(NS, "jq")]
    jq.schedules.checked_at = -math.inf  # as if the resync interval had passed
    await poll(rt, kube, body(NIGHTLY, OFTEN))
    assert rows(dsn) == found and events.reasons().count("SchedulesSynced") == 1

    # A changed payload is updated in place (same timing: same next run); a dropped entry is removed.
    status = await poll(rt, kube, body({**NIGHTLY, "payload": {"full": False}}, generation=2))
    after = rows(dsn)
    assert set(after) == {"nightly"} and after["nightly"]["payload"] == {"full": False}
    assert after["nightly"]["next_run_at"] == found["nightly"]["next_run_at"]
    assert status["schedules"] == 1
    assert events[-1] == ("Normal", "SchedulesSynced", "schedules updated nightly; removed often")

    status = await poll(rt, kube, body(generation=3))
    assert rows(dsn) == {} and status["schedules"] == 0
    jq.schedules.checked_at = -math.inf  # none declared, none left: not read again
    async with Queue(dsn) as q:
        await q.sync_schedules(SOURCE, [make_schedule(name="stray", every=60, type="x")])
    await poll(rt, kube, body(generation=3))
    assert set(rows(dsn)) == {"stray"}


async def test_other_sources_are_left_alone_and_a_taken_name_is_a_conflict(rt: Runtime, kube: FakeKube,
                                                                          events: Events, dsn: str) -> None:
    async with Queue(dsn) as q:
        await q.set_schedule(make_schedule(name="nightly", cron="0 1 * * *", type="cli-job"), source="cli")
        await q.set_schedule(make_schedule(name="other", every=60, type="x"), source="jobqueue/elsewhere/jq")
    status = await poll(rt, kube, body(NIGHTLY, OFTEN))
    found = rows(dsn)
    assert (found["nightly"]["source"], found["nightly"]["type"]) == ("cli", "cli-job")  # not taken over
    assert found["other"]["source"] == "jobqueue/elsewhere/jq"
    assert found["often"]["source"] == SOURCE
    cond = degraded(status)
    assert (cond["status"], cond["reason"]) == ("True", "ScheduleConflict")
    assert 'schedule "nightly" belongs to source "cli"' in cond["message"]
    assert ready(status)["status"] == "True"
    assert "ScheduleConflict" in events.reasons() and status["schedules"] == 1

    # The CLI's schedule is removed: the JobQueue takes the name at its next check.
    async with Queue(dsn) as q:
        await q.remove_schedule("nightly")
    rt.jobqueues[(NS, "jq")].schedules.checked_at = -math.inf
    status = await poll(rt, kube, body(NIGHTLY, OFTEN))
    assert rows(dsn)["nightly"]["source"] == SOURCE and degraded(status)["status"] == "False"
    assert events[-1] == ("Normal", "ScheduleConflictResolved", "ScheduleConflict cleared")


async def test_a_schedule_removed_by_hand_comes_back_at_the_next_check(rt: Runtime, kube: FakeKube,
                                                                      dsn: str) -> None:
    await poll(rt, kube, body(NIGHTLY))
    async with Queue(dsn) as q:
        await q.remove_schedule("nightly")
        await q.set_schedule(make_schedule(name="mine", every=60, type="x"))
    await poll(rt, kube, body(NIGHTLY))
    assert set(rows(dsn)) == {"mine"}  # within the resync interval: not read again
    rt.jobqueues[(NS, "jq")].schedules.checked_at -= schedules.RESYNC
    await poll(rt, kube, body(NIGHTLY))
    assert set(rows(dsn)) == {"mine", "nightly"}


async def test_a_paused_schedule_stays_paused(rt: Runtime, kube: FakeKube, dsn: str) -> None:
    await poll(rt, kube, body(NIGHTLY))
    async with Queue(dsn) as q:
        await q.pause_schedule("nightly")
    await poll(rt, kube, body({**NIGHTLY, "type": "report2"}, generation=2))
    assert (rows(dsn)["nightly"]["type"], rows(dsn)["nightly"]["paused"]) == ("report2", True)


async def test_an_invalid_edit_keeps_the_last_good_schedule_and_is_reported(rt: Runtime, kube: FakeKube,
                                                                           events: Events, dsn: str) -> None:
    await poll(rt, kube, body(NIGHTLY, OFTEN))
    good = rows(dsn)["nightly"]
    status = await poll(rt, kube, body({**NIGHTLY, "timezone": "Europe/Atlantis"}, OFTEN, generation=2))
    cond = degraded(status)
    assert (cond["status"], cond["reason"]) == ("True", "InvalidSchedule")
    assert "spec.schedules[0] (nightly): timezone: unknown timezone 'Europe/Atlantis'" in cond["message"]
    assert ready(status)["status"] == "True"  # scaling goes on
    warnings = [m for t, r, m in events if (t, r) == ("Warning", "InvalidSchedule")]
    assert len(warnings) == 1 and "Europe/Atlantis" in warnings[0]
    assert rows(dsn)["nightly"] == good and status["schedules"] == 2

    await poll(rt, kube, body({**NIGHTLY, "timezone": "Europe/Atlantis"}, OFTEN, generation=2))
    assert [r for t, r, _ in events if t == "Warning"] == ["InvalidSchedule"]  # once, not every poll
    status = await poll(rt, kube, body({**NIGHTLY, "timezone": "Asia/Tokyo"}, OFTEN, generation=3))
    assert degraded(status)["status"] == "False" and rows(dsn)["nightly"]["timezone"] == "Asia/Tokyo"
    assert "ScheduleValid" in events.reasons()


async def test_an_unreachable_database_still_reports_invalid_entries(kube: FakeKube, events: Events) -> None:
    kube.add_secret(NS, "db", "DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    rt = runtime(kube, events, query_timeout=0.5)
    try:
        status = await poll(rt, kube, body({**NIGHTLY, "cron": "99 * * * *"}))
    finally:
        await rt.close()
    reasons = {c["type"]: c["reason"] for c in status["conditions"]}
    assert reasons == {"Ready": "DatabaseUnreachable", "Degraded": "DatabaseUnreachable"}
    assert "spec.schedules[0] (nightly): cron: invalid cron expression '99 * * * *'" in degraded(status)["message"]
    assert "schedules" not in status


async def test_a_failed_sync_does_not_hold_up_scaling(rt: Runtime, kube: FakeKube, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:  # a schedules table the core cannot write
        conn.execute("ALTER TABLE skiplock.schedules ADD CONSTRAINT no_reports CHECK (type <> 'report')")
    async with Queue(dsn) as q:
        await q.enqueue_many([{"type": "t"} for _ in range(4)])
    status = await poll(rt, kube, body(NIGHTLY))
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 2
    cond = degraded(status)
    assert (cond["reason"], ready(status)["status"]) == (
        "ScheduleSyncFailed", "True")
    assert "no_reports" in cond["message"]


# -- deletion -----------------------------------------------------------------------------------------

async def delete(rt: Runtime, jq_body: dict[str, Any], retry: int = 0) -> None:
    await handlers.jobqueue_deleted(namespace=NS, name="jq", body=kopf.Body(cast(Any, jq_body)),
                                    memo=kopf.Memo(runtime=rt), retry=retry)


async def test_deleting_the_jobqueue_removes_its_schedules_only(rt: Runtime, kube: FakeKube, events: Events,
                                                               dsn: str) -> None:
    await poll(rt, kube, body(NIGHTLY, OFTEN))
    async with Queue(dsn) as q:
        await q.set_schedule(make_schedule(name="mine", every=60, type="x"))
    await rt.forget(NS, "jq")  # kopf stops the daemons first
    await delete(rt, body(NIGHTLY, OFTEN))
    assert set(rows(dsn)) == {"mine"}
    assert events[-1] == ("Normal", "SchedulesRemoved", "removed schedules nightly, often")
    assert rt.dsns == {}


async def test_deletion_uses_the_remembered_dsn_when_the_secret_went_first(rt: Runtime, kube: FakeKube,
                                                                         events: Events, dsn: str) -> None:
    await poll(rt, kube, body(NIGHTLY))
    await rt.forget(NS, "jq")
    del kube.secrets[(NS, "db")]  # a namespace's deletion removes its Secrets too
    await delete(rt, body(NIGHTLY))
    assert rows(dsn) == {} and "SchedulesRemoved" in events.reasons()


async def test_deletion_while_the_operator_was_down_reads_the_secret(kube: FakeKube, events: Events,
                                                                      dsn: str) -> None:
    async with Queue(dsn) as q:
        await q.sync_schedules(SOURCE, [make_schedule(name="nightly", cron="0 3 * * *", type="report")])
    rt = runtime(kube, events)
    try:
        await delete(rt, body(NIGHTLY))
    finally:
        await rt.close()
    assert rows(dsn) == {}


async def test_an_unreachable_database_is_retried_then_the_deletion_goes_on(kube: FakeKube, events: Events) -> None:
    kube.add_secret(NS, "db", "DATABASE_URL", "postgresql://nobody:pw-x9@127.0.0.1:1/none")
    rt = runtime(kube, events, query_timeout=0.5)
    try:
        with pytest.raises(kopf.TemporaryError, match="schedules not removed yet"):
            await delete(rt, body(NIGHTLY))
        await delete(rt, body(NIGHTLY), retry=schedules.DELETE_ATTEMPTS - 1)  # the last try gives up
        (warning,) = [m for t, r, m in events if (t, r) == ("Warning", "SchedulesNotRemoved")]
        assert SOURCE in warning and "pw-x9" not in warning
        before = len(events)
        await delete(rt, body())  # no schedules declared: one try, no retry, no alarm
        assert len(events) == before
    finally:
        await rt.close()


async def test_a_jobqueue_without_schedules_and_without_its_secret_is_released(rt: Runtime, events: Events) -> None:
    jq_body = body()
    jq_body["spec"]["database"]["secretRef"]["name"] = "gone"
    await delete(rt, jq_body)
    assert list(events) == []

