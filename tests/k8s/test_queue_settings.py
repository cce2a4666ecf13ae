"""``spec.queueSettings`` on the real control plane and a real PostgreSQL: what the CRD's schema
refuses (one retry schedule, durations, attempts), and the operator keeping the queue settings in
skiplock.queues, new jobs taking them, and their removal. The harness is ``test_operator.py``'s."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.k8s import test_operator as harness
from tests.k8s.cluster import wait_for
from tests.k8s.test_operator import Api, Operator, cpu_pool, jobqueue

cluster, namespace, start_operator, api = harness.cluster, harness.namespace, harness.start_operator, harness.api

EMAILS = {"queue": "emails", "maxAttempts": 4, "ttl": "1h", "resultTtl": 86400, "retry": {"intervals": [60, "3m"]}}

INVALID = [
    ({"queue": "q", "retry": {"every": "30s", "intervals": [1]}}, "give exactly one of intervals, every"),
    ({"queue": "q", "retry": {}}, "give exactly one of intervals, every"),
    ({"queue": "q", "ttl": "an hour"}, "spec.queueSettings[0].ttl"),
    ({"queue": "q", "maxAttempts": 0}, "spec.queueSettings[0].maxAttempts"),
    ({"maxAttempts": 3}, "spec.queueSettings[0].queue: Required value"),
    ({"queue": "q", "retry": {"intervals": []}}, "spec.queueSettings[0].retry.intervals"),
]


def settings(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT name, source, max_attempts, ttl_seconds, result_ttl_seconds, retry_policy "
                            "FROM skiplock.queues").fetchall()
    keys = ("source", "max_attempts", "ttl", "result_ttl", "retry")
    return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}


@pytest.mark.parametrize(("entry", "message"), INVALID, ids=[m[:40] for _, m in INVALID])
def test_queue_settings_the_schema_refuses(api: Api, entry: dict[str, Any], message: str) -> None:
    manifest = jobqueue("bad", cpu_pool(), queueSettings=[entry])
    result = api.cluster.kubectl("apply", "-n", api.ns, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_queue_settings_follow_the_jobqueue(api: Api, dsn: str, start_operator: Callable[..., Operator]) -> None:
    start_operator("--standalone")
    api.apply(jobqueue("mail", cpu_pool(), queueSettings=[EMAILS, {"queue": "slow", "retry": {"every": "30s"}}]))
    found = wait_for(lambda: len(rows := settings(dsn)) == 2 and rows, 30, "two queues' settings")
    assert found["emails"] == {"source": f"jobqueue/{api.ns}/mail", "max_attempts": 4, "ttl": 3600.0,
                               "result_ttl": 86400.0, "retry": {"kind": "intervals", "intervals": [60, 180],
                                                                "jitter": 0}}
    api.event("QueueSettingsSynced", "emails")
    api.apply(jobqueue("mail", cpu_pool(), queueSettings=[EMAILS]))
    wait_for(lambda: set(settings(dsn)) == {"emails"}, 30, "slow's settings removed")
    api.cluster.kubectl("delete", "jobqueue", "mail", "-n", api.ns, "--wait=false")
    wait_for(lambda: settings(dsn) == {}, 60, "the JobQueue's settings removed with it")
