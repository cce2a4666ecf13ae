"""Helpers for the operator's unit tests: JobQueue bodies, a runtime on the fake API, busy workers."""

from __future__ import annotations

from typing import Any, cast

import psycopg

from skiplock.operator.db import Databases
from skiplock.operator.metrics import OperatorMetrics
from skiplock.operator.observe import PodInfo
from skiplock.operator.runtime import Runtime
from skiplock.sql import QUERIES

from .fakes import FakeKube

NS = "apps"


def jobqueue(spec: dict[str, Any], name: str = "jq", generation: int = 1, status: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    return {"apiVersion": "skiplock.dev/v1alpha1", "kind": "JobQueue",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation},
            "spec": spec, "status": status or {}}


def spec(*pools: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"database": {"secretRef": {"name": "db"}}, "queues": ["default"],
            "pools": list(pools) or [{"name": "cpu", "image": "w:1", "concurrency": 2}],
            # headroom 0: replicas are counted exactly here (test_policy / test_spec test the spare slots)
            "scaling": {"pollIntervalSeconds": 1, "scaleDownStabilizationSeconds": 0,
                        "scaleToZeroAfterSeconds": 3600, "headroom": 0},
            **extra}


class Events(list[tuple[str, str, str]]):
    """Collects (type, reason, message) of the events the operator posts."""

    def __call__(self, ref: dict[str, Any], type: str, reason: str, message: str) -> None:
        self.append((type, reason, message))

    def reasons(self) -> list[str]:
        return [r for _, r, _ in self]


def runtime(kube: FakeKube, events: Events, query_timeout: float = 2.0) -> Runtime:
    return Runtime(cast(Any, kube), Databases(query_timeout), OperatorMetrics(), event=events)


def index(kube: FakeKube) -> dict[tuple[str, str, str], list[PodInfo]]:
    """What kopf's pod index holds for the fake's pods."""
    found: dict[tuple[str, str, str], list[PodInfo]] = {}
    for (ns, _), pod in kube.pods.items():
        info = PodInfo.from_body(pod)
        found.setdefault((ns, info.jobqueue, info.pool), []).append(info)
    return found


def claim(dsn: str, worker_id: str, limit: int, queue: str = "default", lease_seconds: float = 60.0) -> list[int]:
    """Claim jobs as worker ``worker_id`` would, through the core's claim statement."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(QUERIES["claim"], {"queue": queue, "types": None, "limit": limit,
                                               "worker_id": worker_id, "lease_seconds": lease_seconds}).fetchall()
    return [r[0] for r in rows]
