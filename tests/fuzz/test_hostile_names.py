"""Malformed and hostile names (queue, type, tenant, dedup key, labels, payload keys) go through the
whole life of a job - enqueue (library and CLI), claim by a worker serving that queue, result,
listing and stats - unchanged, and never inside SQL text: the server logs every statement, and
the hostile values appear only among the bind parameters. Invalid ones get a clear error."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from skiplock import InvalidJob, JobRegistry, PayloadTooLarge, Queue, State
from skiplock import sync as skiplock_sync
from skiplock.models import MAX_NAME
from tests.fuzz.conftest import LoggingServer
from tests.helpers import cli, eventually, running_worker, sql

MARK = "zqx"  # in every hostile value, and in no statement skiplock sends
HOSTILE = [
    f"{MARK}'; DROP TABLE skiplock.jobs; --",
    f'{MARK}" OR 1=1 --',
    f"{MARK} %s %(queue)s $1 {{}} \\ \\\\ '' E'\\x41'",
    f"{MARK} Ω≈ç√ 🚀 مرحبا עברית ‮reversed",
    f"{MARK} line\nbreak\ttab\r",
    f"{MARK}," + "x" * (MAX_NAME - len(MARK) - 1),  # exactly the longest name allowed
    f"{MARK}$$; SELECT pg_sleep(10); $$",
    f"{MARK}/* comment */ -- LISTEN x; NOTIFY y",
]


@pytest.mark.timeout(180)
async def test_hostile_names_round_trip_unchanged_and_stay_out_of_sql(logging_server: LoggingServer) -> None:
    dsn = logging_server.dsn
    registry = JobRegistry()
    for name in HOSTILE:
        registry.register(name, lambda job: {"seen": [job.queue, job.type, job.tenant, job.payload, job.labels]})
    async with Queue(dsn) as queue:
        ids = {}
        for name in HOSTILE:
            ids[name] = await queue.enqueue(name, {name: name, "k": [name]}, queue=name, tenant=name,
                                            dedup_key=name, labels={name: name})
        # The dedup key holds: the same hostile key answers with the same job.
        assert await queue.enqueue(HOSTILE[0], {}, queue=HOSTILE[0], dedup_key=HOSTILE[0]) == ids[HOSTILE[0]]
        async with running_worker(registry, dsn, queues=HOSTILE, concurrency=4):
            async def done() -> bool:
                states = [(await queue.get(i)).state for i in ids.values()]
                return all(s == State.COMPLETED for s in states)
            await eventually(done, timeout=60)
        for name, job_id in ids.items():
            job = await queue.get(job_id)
            assert (job.queue, job.type, job.tenant, job.dedup_key) == (name, name, name, name)
            assert job.payload == {name: name, "k": [name]} and job.labels == {name: name}
            assert job.result == {"seen": [name, name, name, {name: name, "k": [name]}, {name: name}]}
            listed = await queue.list_jobs(queue=name, type=name, tenant=name)
            assert [j.id for j in listed] == [job_id]
        stats = {r["queue"] for r in await queue.stats()}
        assert set(HOSTILE) <= stats
    # Through the CLI too: enqueue, list, show, stats.
    name = HOSTILE[0]
    out = cli("enqueue", name, "--queue", name, "--tenant", name, "--payload", json.dumps({name: name}), dsn=dsn)
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout)
    by_cli = cli("jobs", "list", "--queue", name, "--tenant", name, "--json", dsn=dsn)
    assert by_cli.returncode == 0, by_cli.stderr
    assert job_id in [j["id"] for j in json.loads(by_cli.stdout)]
    shown = json.loads(cli("jobs", "show", str(job_id), "--json", dsn=dsn).stdout)
    assert (shown["queue"], shown["type"], shown["tenant"], shown["payload"]) == (name, name, name, {name: name})
    assert name in {q["queue"] for q in json.loads(cli("stats", "--json", dsn=dsn).stdout)}
    # Not one statement the server ran carried a hostile value in its text.
    statements = logging_server.statements()
    assert len(statements) > 50
    leaked = [s for s in statements if MARK in s]
    assert leaked == [], f"hostile values inside SQL text: {leaked[:3]}"
    params = [e for e in logging_server.log_entries() if re.search("DETAIL:  [Pp]arameters:", e) and MARK in e]
    assert params, "the log shows no parameters at all: the check above proves nothing"


def _surrogate(s: str) -> str:
    return s + "\ud800"


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


BAD: list[Any] = [
    pytest.param({"type": ""}, "type", id="empty-type"),
    pytest.param({"type": "x" * (MAX_NAME + 1)}, "type", id="type-too-long"),
    pytest.param({"type": "t", "queue": "q\x00"}, "queue", id="NUL-in-queue"),
    pytest.param({"type": "t", "tenant": "x" * 10_000}, "tenant", id="huge-tenant"),
    pytest.param({"type": "t", "dedup_key": "\x00"}, "dedup_key", id="NUL-in-dedup-key"),
    pytest.param({"type": "t", "payload": {"a": "\x00"}}, "NUL", id="NUL-in-payload"),
    pytest.param({"type": "t", "payload": {"a": float("nan")}}, "JSON", id="NaN-in-payload"),
    pytest.param({"type": "t", "payload": {1, 2}}, "JSON", id="set-payload"),
    pytest.param({"type": "t", "payload": b"bytes"}, "JSON", id="bytes-payload"),
    pytest.param({"type": "t", "priority": 2**31}, "priority", id="priority-over-int32"),
    pytest.param({"type": "t", "max_attempts": 0}, "max_attempts", id="zero-attempts"),
    pytest.param({"type": "t", "delay": -1}, "delay", id="negative-delay"),
    pytest.param({"type": "t", "delay": float("nan")}, "delay", id="NaN-delay"),
    pytest.param({"type": "t", "timeout": 0}, "timeout", id="zero-timeout"),
    pytest.param({"type": "t", "depends_on": (0,)}, "depends_on", id="dependency-id-zero"),
    pytest.param({"type": "t", "unknown_option": 1}, "unknown_option", id="unknown-option"),
    pytest.param({"type": "t", "labels": {"a": 1}}, "labels", id="non-string-label"),
    # Found by this tier as raw driver errors, unreadable rows or unbounded sizes; now refused up front:
    pytest.param({"type": "t", "timeout": float("inf")}, "timeout", id="infinite-timeout"),
    pytest.param({"type": "t", "labels": {"a": "x\x00"}}, "labels", id="NUL-in-label"),
    pytest.param({"type": _surrogate("t")}, "type", id="lone-surrogate-in-type"),
    pytest.param({"type": "t", "queue": _surrogate("q")}, "queue", id="lone-surrogate-in-queue"),
    pytest.param({"type": "t", "payload": {"a": _surrogate("")}}, "payload", id="lone-surrogate-in-payload"),
    pytest.param({"type": "t", "depends_on": (2**63,)}, "depends_on", id="dependency-id-over-bigint"),
    pytest.param({"type": "t", "payload": _nested(5000)}, "payload", id="payload-nested-5000-deep"),
    pytest.param({"type": "t", "payload": None}, "payload", id="top-level-JSON-null-payload"),
    pytest.param({"type": "t", "run_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))}, "run_at",
                 id="run_at-before-year-1-in-UTC"),
    pytest.param({"type": "t", "run_at": datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))},
                 "run_at", id="run_at-after-year-9999-in-UTC"),
    pytest.param({"type": "t", "labels": {"a": "x" * 2_000_000}}, "labels", id="2MB-label"),
    pytest.param({"type": "t", "labels": {_surrogate("k"): "v"}}, "labels", id="lone-surrogate-in-label-key"),
    pytest.param({"type": "t", "tenant": _surrogate("t")}, "tenant", id="lone-surrogate-in-tenant"),
]


@pytest.mark.parametrize("spec, field", BAD)
def test_invalid_jobs_get_a_clear_error_and_store_nothing(dsn: str, spec: dict[str, Any], field: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(InvalidJob) as err:
        skiplock_sync.enqueue_many(conn, [spec])
    message = str(err.value)
    assert field in message and "\n" not in message.strip(), message
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs")[0][0] == 0


@pytest.mark.parametrize("limit", [100, 4096])
async def test_oversized_payloads_are_refused_with_the_limit(dsn: str, limit: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIPLOCK_MAX_PAYLOAD_BYTES", str(limit))
    fits = {"s": "x" * (limit - len('{"s":""}'))}
    over = {"s": "x" * (limit - len('{"s":""}') + 1)}
    async with Queue(dsn) as queue:
        job_id = await queue.enqueue("t", fits)
        assert (await queue.get(job_id)).payload == fits
        with pytest.raises(PayloadTooLarge, match=f"over the {limit}-byte limit"):
            await queue.enqueue("t", over)
        with pytest.raises(PayloadTooLarge):  # one bad job refuses the whole batch
            await queue.enqueue_many([{"type": "t", "payload": fits}, {"type": "t", "payload": over}])
    out = cli("enqueue", "t", "--payload", json.dumps(over), dsn=dsn, env={"SKIPLOCK_MAX_PAYLOAD_BYTES": str(limit)})
    assert out.returncode == 1 and f"over the {limit}-byte limit" in out.stderr and "Traceback" not in out.stderr
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs")[0][0] == 1


def test_oversized_jsonl_line_refuses_the_whole_file(dsn: str, tmp_path: Any) -> None:
    path = tmp_path / "jobs.jsonl"
    lines = [{"type": "t", "payload": {"i": i}} for i in range(10)]
    lines[7]["payload"] = {"s": "x" * 300}
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = cli("enqueue", "--from-file", str(path), dsn=dsn, env={"SKIPLOCK_MAX_PAYLOAD_BYTES": "200"})
    assert out.returncode == 1 and "200-byte limit" in out.stderr, out.stderr
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs")[0][0] == 0

