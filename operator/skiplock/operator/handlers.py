"""The kopf handlers, registered on ``registry`` (not kopf's global one). They stay thin: each
JobQueue gets two daemons, one polling and scaling (``reconcile.poll``), one sweeping stuck jobs
(``recovery.sweep``); an index keeps every worker pod's state without polling; a deleted pod
releases its jobs at once; a spec change wakes the scaler instead of waiting for the next poll.

Daemons make kopf put its finalizer (``skiplock.dev/operator``) on each JobQueue, so a deletion
waits until they stopped and the deletion handler removed the JobQueue's schedules from the
database; the worker Deployments go with the JobQueue by garbage collection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Mapping
from typing import Any

import kopf

from skiplock.service import cancel_and_wait

from . import reconcile, recovery, schedules
from .observe import PodIndex, PodInfo
from .resources import JOBQUEUE_LABEL, POOL_LABEL
from .runtime import JobQueueState, Runtime, reference
from .spec import GROUP, PLURAL, VERSION

log = logging.getLogger("skiplock.operator")
registry = kopf.OperatorRegistry()
WORKER_LABELS = {JOBQUEUE_LABEL: kopf.PRESENT, POOL_LABEL: kopf.PRESENT}


def _index(kwargs: Mapping[str, Any]) -> PodIndex:
    """The ``worker_pods`` index, which kopf passes to every handler by its name."""
    index: PodIndex = kwargs["worker_pods"]
    return index


def runtime_of(memo: Any) -> Runtime:
    rt = memo.get("runtime") if isinstance(memo, dict) else None
    if not isinstance(rt, Runtime):
        raise RuntimeError("the operator was started without memo.runtime (use skiplock operator)")
    return rt


async def _first(stopped: kopf.DaemonStopped, *work: Awaitable[Any], timeout: float | None = None) -> None:
    """Wait for the first of: the daemon being stopped, any of ``work``, ``timeout``; cancel the rest
    (a deletion need not wait for a poll stuck on an unreachable database)."""
    async def until_stopped() -> None:
        await stopped.wait()

    tasks = [asyncio.ensure_future(until_stopped()), *(asyncio.ensure_future(w) for w in work)]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*tasks)


@kopf.on.cleanup(registry=registry)
def stopping(memo: Any, **_: Any) -> None:
    """kopf stops (on a signal, or on our stop flag): raise the flag too, or kopf waits 5 s for its
    own task that waits for it."""
    runtime_of(memo).stop.set()


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else the kubeconfig ($KUBECONFIG). In-cluster, the API server is
    where the kubelet says (KUBERNETES_SERVICE_HOST/PORT), as client-go finds it: kopf's own default,
    the name kubernetes.default.svc, would make the operator depend on the cluster's DNS."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    if info is None:
        found: kopf.ConnectionInfo | None = kopf.login_with_kubeconfig(**kwargs)
        return found
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if host and port:
        info = dataclasses.replace(info, server=f"https://{f'[{host}]' if ':' in host else host}:{port}")
    return info


@kopf.index("", "v1", "pods", registry=registry, labels=WORKER_LABELS)
def worker_pods(namespace: str | None, labels: Mapping[str, str], body: kopf.Body,
                **_: Any) -> dict[Any, PodInfo]:
    """Worker pods by (namespace, jobqueue, pool)."""
    return {(namespace, labels[JOBQUEUE_LABEL], labels[POOL_LABEL]): PodInfo.from_body(body)}


@kopf.daemon(GROUP, VERSION, PLURAL, id="scaler", registry=registry, cancellation_backoff=10, cancellation_timeout=20)
async def scaler(stopped: kopf.DaemonStopped, namespace: str | None, name: str, body: kopf.Body, memo: Any,
                 **kwargs: Any) -> None:
    """Poll and scale a JobQueue until it is deleted (or the operator stops)."""
    assert namespace is not None
    rt, worker_pods = runtime_of(memo), _index(kwargs)
    jq = rt.jobqueue(namespace, name)
    try:
        while not stopped:
            await _first(stopped, reconcile.poll(rt, jq, body, worker_pods))
            await _first(stopped, jq.wake.wait(), timeout=jq.spec.poll_interval() if jq.spec else 10.0)
            jq.wake.clear()
    finally:  # deleted, or the operator is exiting: a new daemon starts from the status again
        await rt.forget(namespace, name)


@kopf.daemon(GROUP, VERSION, PLURAL, id="recovery", registry=registry, cancellation_backoff=10, cancellation_timeout=20)
async def recoverer(stopped: kopf.DaemonStopped, namespace: str | None, name: str, memo: Any,
                    **kwargs: Any) -> None:
    """Rescue stuck jobs of a JobQueue every ``recovery.intervalSeconds``."""
    rt, worker_pods = runtime_of(memo), _index(kwargs)
    while not stopped:
        jq = rt.jobqueues.get((str(namespace), name))
        await _first(stopped, _sweep(rt, jq, worker_pods))
        interval = jq.spec.recovery.interval_seconds if jq is not None and jq.spec is not None else 5.0
        await _first(stopped, timeout=interval)


async def _sweep(rt: Runtime, jq: JobQueueState | None, pods: PodIndex) -> None:
    if jq is None:
        return
    try:
        await recovery.sweep(rt, jq, pods)
    except Exception:
        rt.metrics.reconcile_errors.inc()
        log.exception("%s/%s: recovery failed", jq.namespace, jq.name)


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
def jobqueue_changed(namespace: str | None, name: str, meta: kopf.Meta, memo: Any, **_: Any) -> None:
    """A new generation (the spec changed): poll now rather than at the next interval."""
    jq = runtime_of(memo).jobqueues.get((str(namespace), name))
    if jq is not None and jq.generation is not None and meta.get("generation") != jq.generation:
        jq.wake.set()


@kopf.on.event("", "v1", "pods", registry=registry, labels=WORKER_LABELS)
async def pod_event(type: str, namespace: str | None, name: str, labels: Mapping[str, str], memo: Any,
                    **_: Any) -> None:
    """A worker pod was deleted: release the jobs it held now, not when their leases expire."""
    if type == "DELETED" and namespace is not None:
        await recovery.pod_deleted(runtime_of(memo), namespace, labels[JOBQUEUE_LABEL], name)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="schedules", registry=registry, retries=schedules.DELETE_ATTEMPTS + 1,
                backoff=schedules.DELETE_DELAY)
async def jobqueue_deleted(namespace: str | None, name: str, body: kopf.Body, memo: Any, retry: int,
                           **_: Any) -> None:
    """A JobQueue is being deleted: remove its schedules from the database (also when it was deleted
    while the operator was down). An unreachable database is retried for about a minute, then the
    deletion goes on with a Warning event naming what is left."""
    assert namespace is not None
    rt = runtime_of(memo)
    key = (namespace, name)
    attempts = schedules.DELETE_ATTEMPTS if schedules.declares_schedules(body) else 1
    try:
        removed = await schedules.remove_all(rt, namespace, name, body)
    except schedules.NotRemoved as exc:
        if exc.retry and retry + 1 < attempts:
            raise kopf.TemporaryError(f"schedules not removed yet: {exc}", delay=schedules.DELETE_DELAY) from None
        rt.dsns.pop(key, None)
        if not schedules.declares_schedules(body):  # most likely none to remove: no alarm
            log.info("%s/%s: deleted without checking for leftover schedules: %s", namespace, name, exc)
            return
        rt.event(reference(body), "Warning", "SchedulesNotRemoved",
                 f"could not remove the schedules of source {schedules.source(namespace, name)}: {exc} "
                 "(see `skiplock schedule list`; `skiplock schedule remove NAME`)")
        log.warning("%s/%s: schedules not removed: %s", namespace, name, exc)
        return
    rt.dsns.pop(key, None)
    if removed is None:
        if schedules.declares_schedules(body):
            rt.event(reference(body), "Warning", "SchedulesNotRemoved",
                     f"the database Secret is gone: the schedules of source {schedules.source(namespace, name)} "
                     "stay (see `skiplock schedule list`; `skiplock schedule remove NAME`)")
        return
    if removed:
        rt.event(reference(body), "Normal", "SchedulesRemoved", f"removed schedules {', '.join(removed)}")
        log.info("%s/%s: removed schedules %s", namespace, name, ", ".join(removed))
