"""What the operator sees of a pool: its share of the queue depth (within the job types'
concurrency limits) and the state of its pods."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .resources import DELETION_COST, JOBQUEUE_LABEL, POOL_LABEL
from .spec import JobQueueSpec, Pool

Caps = Mapping[str, int]  # job type -> the most of its jobs that may run at once


@dataclass(frozen=True)
class Demand:
    """Jobs a pool can run: runnable now, running, and the oldest runnable one's wait.
    ``within_limits``: of the pending + running jobs, how many the concurrency limits let run at
    once; None when none of the types with jobs has a limit."""

    pending: int = 0
    running: int = 0
    oldest_pending_seconds: float = 0.0
    within_limits: int | None = None

    @property
    def limited_to(self) -> int | None:
        """``within_limits`` when the limits hold jobs back (fewer than pending + running), else None."""
        w = self.within_limits
        return w if w is not None and w < self.pending + self.running else None


def concurrency_caps(limit_rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """The type-wide concurrency limits (tenant ``''``) among the core's ``limits`` rows (type, tenant,
    concurrency, rate, ...). A limit of one tenant, or of each tenant (``'*'``), leaves the type's
    total open, and a rate says nothing about how many run at once: neither caps a pool."""
    caps: dict[str, int] = {}
    for row in limit_rows:
        if row["tenant"] == "" and row["concurrency"] is not None:
            caps[str(row["type"])] = int(row["concurrency"])
    return caps


def capped(pending: int, running: int, limit: int | None) -> int:
    """The jobs of one type that can run at once: pending + running, at most its limit; running jobs
    above the limit (it was lowered while they ran) still occupy their pods."""
    if limit is None:
        return pending + running
    return min(pending + running, max(limit, running))


def serves(spec: JobQueueSpec, pool: Pool, queue: str, job_type: str) -> bool:
    """Whether ``pool`` runs jobs of ``job_type`` in ``queue``: a pool runs the types it lists; the
    catch-all pool (no jobTypes) runs every type that no other pool of the JobQueue lists."""
    if queue not in spec.queues:
        return False
    if pool.job_types:
        return job_type in pool.job_types
    return job_type not in spec.served_elsewhere(pool)


def demand(spec: JobQueueSpec, pool: Pool, depth_rows: Iterable[Mapping[str, Any]],
           caps: Caps | None = None) -> Demand:
    """Sum the core's ``depth`` rows (queue, type, pending, running, oldest_pending_seconds) over
    what ``pool`` serves; each type's pending + running counts up to its concurrency limit in
    ``caps`` (a limit holds across queues, so a type's rows are added up before the cap)."""
    by_type: dict[str, tuple[int, int]] = {}
    oldest = 0.0
    for row in depth_rows:
        if serves(spec, pool, row["queue"], row["type"]):
            pending, running = by_type.get(row["type"], (0, 0))
            by_type[row["type"]] = (pending + int(row["pending"]), running + int(row["running"]))
            if int(row["pending"]):
                oldest = max(oldest, float(row["oldest_pending_seconds"]))
    pending = sum(p for p, _ in by_type.values())
    running = sum(r for _, r in by_type.values())
    caps = caps or {}
    limited = any(t in caps for t, (p, r) in by_type.items() if p + r)
    allowed = sum(capped(p, r, caps.get(t)) for t, (p, r) in by_type.items())
    return Demand(pending, running, oldest, allowed if limited else None)


@dataclass(frozen=True)
class PodInfo:
    """The parts of a worker pod the operator acts on (kept in a kopf index)."""

    name: str
    jobqueue: str
    pool: str
    phase: str = "Pending"
    ready: bool = False
    scheduled: bool = False
    unschedulable: bool = False
    unschedulable_message: str = ""
    terminating: bool = False
    deletion_cost: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodInfo:
        meta, status = body.get("metadata", {}), body.get("status") or {}
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        sched = conditions.get("PodScheduled", {})
        unschedulable = sched.get("status") == "False" and sched.get("reason") == "Unschedulable"
        return cls(
            name=meta.get("name", ""),
            jobqueue=labels.get(JOBQUEUE_LABEL, ""),
            pool=labels.get(POOL_LABEL, ""),
            phase=status.get("phase") or "Pending",
            ready=conditions.get("Ready", {}).get("status") == "True",
            scheduled=sched.get("status") == "True",
            unschedulable=unschedulable,
            unschedulable_message=str(sched.get("message") or "") if unschedulable else "",
            terminating=meta.get("deletionTimestamp") is not None,
            deletion_cost=annotations.get(DELETION_COST),
        )


@dataclass(frozen=True)
class PodCounts:
    current: int = 0  # pods not being deleted
    ready: int = 0
    unschedulable: int = 0
    scheduled: int = 0
    message: str = ""  # the scheduler's reason for one unschedulable pod


PodIndex = Mapping[tuple[str, str, str], Iterable[PodInfo]]  # (namespace, jobqueue, pool) -> its pods


def pods_of(index: PodIndex, namespace: str, jobqueue: str, pool: str) -> list[PodInfo]:
    return list(index.get((namespace, jobqueue, pool), ()))


def count(pods: Iterable[PodInfo]) -> PodCounts:
    live = [p for p in pods if not p.terminating and p.phase not in ("Succeeded", "Failed")]
    stuck = [p for p in live if p.unschedulable]
    return PodCounts(
        current=len(live),
        ready=sum(p.ready for p in live),
        unschedulable=len(stuck),
        scheduled=sum(p.scheduled for p in live),
        message=stuck[0].unschedulable_message if stuck else "",
    )
