"""The JobQueue's status: per-pool figures, the printer-column summaries, and the ``Ready`` and
``Degraded`` conditions (metav1.Condition shape) computed from the problems of the last poll."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

READY = "Ready"
DEGRADED = "Degraded"


@dataclass(frozen=True)
class Problem:
    """Something wrong with a JobQueue. ``blocking`` problems make it not Ready; every problem makes
    it Degraded. ``key`` tells problems apart (one per pool for unschedulable pods)."""

    reason: str
    message: str
    blocking: bool = True
    key: str = ""

    @property
    def id(self) -> str:
        return f"{self.reason}/{self.key}" if self.key else self.reason


# Problems in the order they explain a Degraded condition, and the event reason when one clears.
RESOLVED = {
    "InvalidSpec": "SpecValid",
    "SecretNotFound": "SecretFound",
    "InvalidDsn": "SecretFound",
    "DatabaseUnreachable": "DatabaseReachable",
    "DatabaseSchemaMissing": "DatabaseSchemaReady",
    "DeploymentConflict": "DeploymentConflictResolved",
    "PoolRefused": "PoolAccepted",
    "ReconcileError": "Reconciled",
    "GPUCapacityExhausted": "GPUCapacityAvailable",
    "PodsUnschedulable": "PodsScheduled",
    "InvalidSchedule": "ScheduleValid",
    "ScheduleConflict": "ScheduleConflictResolved",
    "ScheduleSyncFailed": "ScheduleSyncRecovered",
}


def timestamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _order(problem: Problem) -> int:
    reasons = list(RESOLVED)
    return reasons.index(problem.reason) if problem.reason in reasons else len(reasons)


def conditions(previous: Sequence[Mapping[str, Any]], problems: Iterable[Problem], generation: int | None,
               now: float) -> list[dict[str, Any]]:
    """``Ready`` and ``Degraded`` for these problems; a condition keeps its lastTransitionTime while
    its status stays the same."""
    found = sorted(problems, key=_order)
    blocking = [p for p in found if p.blocking]
    ready = ("False", blocking[0].reason, "; ".join(p.message for p in blocking)) if blocking else (
        "True", "Reconciled", "worker Deployments are in place and the database answers")
    degraded = ("True", found[0].reason, "; ".join(p.message for p in found)) if found else (
        "False", "AsExpected", "")
    old = {c.get("type"): c for c in previous}
    result = []
    for kind, (status, reason, message) in ((READY, ready), (DEGRADED, degraded)):
        before = old.get(kind, {})
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        condition = {"type": kind, "status": status, "reason": reason, "message": message[:1024],
                     "lastTransitionTime": since or timestamp(now)}
        if generation is not None:
            condition["observedGeneration"] = generation
        result.append(condition)
    return result


def summary(pools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The printer columns: totals and ``pool=desired/ready`` per pool."""
    return {
        "pending": sum(int(p.get("pending", 0)) for p in pools),
        "running": sum(int(p.get("running", 0)) for p in pools),
        "replicas": " ".join(f"{p['name']}={p.get('desiredReplicas', 0)}/{p.get('readyReplicas', 0)}"
                             for p in pools),
    }
