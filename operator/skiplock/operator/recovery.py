"""Stuck-job recovery: jobs whose lease expired, and jobs held by worker pods that no longer exist.

A worker's id is its pod's name (``SKIPLOCK_WORKER_ID`` from the downward API), so a deleted pod's
jobs are released as soon as the pod is gone (its DELETED event), instead of when their lease
runs out. A periodic sweep catches what an event missed (e.g. while the operator was down): running
jobs whose worker looks like one of the JobQueue's pods, which the API server confirms is gone.
Both run the workers' own maintenance task, ``skiplock.maintenance.Rescuer`` (a rescued job is a
failed attempt, retried after the default retry policy's delay); nothing here writes SQL.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from skiplock.errors import DatabaseUnavailable, SchemaMissing
from skiplock.maintenance import Rescuer

from .db import redact
from .kube import KubeError
from .observe import PodIndex, pods_of
from .resources import deployment_name
from .runtime import JobQueueState, Runtime
from .status import timestamp

log = logging.getLogger("skiplock.operator.recovery")
# A Deployment's pod is named <deployment>-<pod-template-hash>-<5 random characters>.
_POD_OF_DEPLOYMENT = re.compile(r"-[a-z0-9]{1,10}-[a-z0-9]{5}")
RESCUER = Rescuer()


@dataclass(frozen=True)
class Rescued:
    lease_expired: int = 0
    pod_gone: int = 0

    @property
    def total(self) -> int:
        return self.lease_expired + self.pod_gone


def suspects(running_workers: Iterable[str], deployments: Sequence[str], known_pods: set[str]) -> list[str]:
    """Worker ids that hold running jobs, are named like a pod of one of ``deployments``, and are
    not among the pods the operator knows."""
    found = []
    for worker in running_workers:
        if worker in known_pods:
            continue
        if any(worker.startswith(d) and _POD_OF_DEPLOYMENT.fullmatch(worker[len(d):]) for d in deployments):
            found.append(worker)
    return sorted(found)


async def recover(rt: Runtime, jq: JobQueueState, gone: Sequence[str]) -> Rescued:
    """Rescue expired leases, then the jobs of ``gone`` workers (two statements, so each rescued job
    is counted under the right reason)."""
    assert jq.queue is not None
    db = jq.queue.db
    expired = await rt.databases.call(RESCUER.rescue(db, []))
    lost = await rt.databases.call(RESCUER.rescue(db, gone)) if gone else []
    return Rescued(len(expired), len(lost))


async def report(rt: Runtime, jq: JobQueueState, rescued: Rescued, gone: Sequence[str]) -> None:
    m = rt.metrics.rescued
    if rescued.lease_expired:
        m.labels(jq.namespace, jq.name, "lease_expired").inc(rescued.lease_expired)
    if rescued.pod_gone:
        m.labels(jq.namespace, jq.name, "pod_gone").inc(rescued.pod_gone)
    if rescued.total:
        held = f" held by deleted pod(s) {', '.join(gone)}" if rescued.pod_gone else ""
        message = (f"rescued {rescued.total} job(s): {rescued.lease_expired} with an expired lease, "
                   f"{rescued.pod_gone}{held}")
        rt.event(jq.ref, "Normal", "JobsRescued", message)
        log.info("%s/%s: %s", jq.namespace, jq.name, message)
    status = {"lastRecovery": {"time": timestamp(time.time()), "rescued": rescued.total,
                               "leaseExpired": rescued.lease_expired, "podGone": rescued.pod_gone}}
    try:
        await rt.kube.patch_status(jq.namespace, jq.name, status)
    except KubeError as exc:
        log.warning("%s/%s: could not write lastRecovery: %s", jq.namespace, jq.name, exc)


async def sweep(rt: Runtime, jq: JobQueueState, index: PodIndex) -> Rescued | None:
    """One periodic recovery round for a JobQueue; None when its database is not known or answering."""
    spec, queue = jq.spec, jq.queue
    if spec is None or queue is None:
        return None
    try:
        running = await rt.databases.call(queue.running_workers(spec.queues))
        known = {p.name for pool in spec.pools for p in pods_of(index, jq.namespace, jq.name, pool.name)}
        deployments = [deployment_name(jq.name, p.name) for p in spec.pools]
        gone = [w for w in suspects(running, deployments, known) if not await rt.kube.pod_exists(jq.namespace, w)]
        rescued = await recover(rt, jq, gone)
    except (DatabaseUnavailable, SchemaMissing) as exc:
        log.warning("%s/%s: recovery skipped: %s", jq.namespace, jq.name, redact(str(exc), jq.dsn))
        return None
    await report(rt, jq, rescued, gone)
    return rescued


async def pod_deleted(rt: Runtime, namespace: str, jobqueue: str, pod: str) -> Rescued | None:
    """A worker pod is gone: release its jobs now."""
    jq = rt.jobqueues.get((namespace, jobqueue))
    if jq is None or jq.queue is None:
        return None
    try:
        rescued = await recover(rt, jq, [pod])
    except (DatabaseUnavailable, SchemaMissing) as exc:
        log.warning("%s/%s: jobs of pod %s wait for the next sweep: %s", namespace, jobqueue, pod,
                    redact(str(exc), jq.dsn))
        return None
    if rescued.total:
        await report(rt, jq, rescued, [pod])
    return rescued
