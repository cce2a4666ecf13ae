"""One poll of a JobQueue: keep its worker Deployments in place, observe each pool, apply the scaling
policy, and report it (status, conditions, events, metrics). Level-triggered: every poll starts
from what the API server and the database say now, so a missed event or a restart costs nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from skiplock.errors import DatabaseUnavailable, SchemaMissing

from . import podpolicy, policy, queuesettings, resources, schedules
from .db import InvalidDsn, redact
from .kube import KubeError
from .observe import Caps, PodCounts, PodIndex, PodInfo, concurrency_caps, count, demand, pods_of
from .runtime import JobQueueState, Runtime
from .spec import InvalidSpec, JobQueueSpec, Pool, parse
from .status import RESOLVED, Problem, conditions, parse_timestamp, summary, timestamp

log = logging.getLogger("skiplock.operator")


class _Declared(Protocol):
    """A part of the spec synced into the database (the ``schedules`` and ``queuesettings`` modules)."""

    def declared(self, spec: JobQueueSpec) -> tuple[Sequence[object], list[Problem]]: ...

    async def sync(self, rt: Runtime, jq: JobQueueState, spec: JobQueueSpec, now: float) -> list[Problem]: ...
SECRET_MAX_AGE = 30.0  # seconds between reads of the database Secret (and of the namespace's labels)


async def poll(rt: Runtime, jq: JobQueueState, body: Mapping[str, Any], pods: PodIndex) -> None:
    """Reconcile the JobQueue once; every failure ends up in its conditions, none escapes."""
    now = time.time()
    jq.remember(body)
    if jq.written is None:
        jq.written = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    jq.generation = generation
    problems: list[Problem] = []
    pools: list[dict[str, Any]] = []
    spec: JobQueueSpec | None = None
    try:
        spec = parse(body.get("spec"))
        jq.spec = spec
        observed = await _observe(rt, jq, spec, problems)
        existing = {d["metadata"]["name"]: d for d in await rt.kube.deployments(
            jq.namespace, resources.label_selector(resources.selector(jq.name)))}
        for pool in spec.pools:
            name = resources.deployment_name(jq.name, pool.name)
            pools.append(await _pool(rt, jq, body, spec, pool, existing.get(name), observed, pods, now, problems))
        await _remove_stale(rt, jq, spec, existing.values())
        problems.extend(await _sync(rt, jq, spec, observed is not None, schedules, "ScheduleSyncFailed", "schedules"))
        problems.extend(await _sync(rt, jq, spec, observed is not None, queuesettings, "QueueSettingsSyncFailed",
                                    "queue settings"))
    except InvalidSpec as exc:
        problems.append(Problem("InvalidSpec", f"spec: {exc}"))
    except KubeError as exc:
        rt.metrics.reconcile_errors.inc()
        problems.append(Problem("ReconcileError", f"Kubernetes API: {exc}"))
    except Exception as exc:
        rt.metrics.reconcile_errors.inc()
        if "ReconcileError" not in jq.problems.values():  # the traceback once, not every poll
            log.exception("%s/%s: reconcile failed", jq.namespace, jq.name)
        problems.append(Problem("ReconcileError", redact(f"{type(exc).__name__}: {exc}", jq.dsn)))
    await _report(rt, jq, spec, pools, problems, generation if spec is not None else None, now)


# -- the database ---------------------------------------------------------------------------------

Observed = tuple[list[dict[str, Any]], Caps]  # the core's depth rows; type-wide concurrency limits


async def _observe(rt: Runtime, jq: JobQueueState, spec: JobQueueSpec, problems: list[Problem]) -> Observed | None:
    """The core's depth rows for the JobQueue's queues and the concurrency limits by job type, or
    None (and a problem) when unknown."""
    ref = spec.database.secret_ref
    try:
        if jq.dsn_is_stale(SECRET_MAX_AGE):
            dsn = await rt.kube.secret_value(jq.namespace, ref.name, ref.key)
            jq.queue = await rt.databases.acquire(jq.key, dsn)
            jq.dsn, jq.dsn_read_at = dsn, time.monotonic()
            rt.dsns[jq.key] = dsn
        assert jq.queue is not None
        if applied := await rt.schemas.ensure(jq.dsn):
            rt.event(jq.ref, "Normal", "SchemaMigrated", f"database schema migrated: {', '.join(applied)}")
        rows = await rt.databases.call(jq.queue.depth(spec.queues))
        caps = concurrency_caps(await rt.databases.call(jq.queue.limits()))
    except KubeError as exc:
        if not exc.not_found:
            raise
        problems.append(Problem("SecretNotFound", f"database secret: {exc}"))
        return None
    except InvalidDsn:
        problems.append(Problem("InvalidDsn", f'Secret "{ref.name}" key "{ref.key}" does not hold a '
                                              "PostgreSQL connection string"))
        return None
    except SchemaMissing as exc:
        rt.schemas.forget(jq.dsn)  # found current once, gone since: check (and migrate) again
        problems.append(Problem("DatabaseSchemaMissing", str(exc)))
        rt.metrics.database_up.labels(jq.namespace, jq.name).set(0)
        return None
    except DatabaseUnavailable as exc:
        why = await rt.databases.diagnose(jq.dsn) if jq.dsn else ""
        problems.append(Problem("DatabaseUnreachable", "database: " + (why or redact(str(exc), jq.dsn))))
        rt.metrics.database_up.labels(jq.namespace, jq.name).set(0)
        return None
    rt.metrics.database_up.labels(jq.namespace, jq.name).set(1)
    return rows, caps


async def _sync(rt: Runtime, jq: JobQueueState, spec: JobQueueSpec, reachable: bool, part: _Declared,
                reason: str, what: str) -> list[Problem]:
    """Sync one declared part of the spec (``spec.schedules``, ``spec.queueSettings``) into the
    database, after the pools: a failure here never holds up scaling. An unreachable database only
    leaves the check of each entry."""
    if not reachable:
        return part.declared(spec)[1]
    try:
        return await part.sync(rt, jq, spec, time.monotonic())
    except (DatabaseUnavailable, SchemaMissing) as exc:
        message = redact(str(exc), jq.dsn)
    except Exception as exc:
        if reason not in jq.problems.values():  # the traceback once, not every poll
            log.exception("%s/%s: %s sync failed", jq.namespace, jq.name, what)
        message = redact(f"{type(exc).__name__}: {exc}", jq.dsn)
    return [*part.declared(spec)[1], Problem(reason, f"{what} not synced: {message}", blocking=False)]


# -- one pool -------------------------------------------------------------------------------------

def _owned(deployment: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    uid = body["metadata"]["uid"]
    return any(o.get("uid") == uid for o in deployment["metadata"].get("ownerReferences") or [])


def _previous(jq: JobQueueState, pool: str) -> dict[str, Any]:
    for entry in (jq.written or {}).get("pools") or []:
        if entry.get("name") == pool:
            return dict(entry)
    return {}


async def _pool(rt: Runtime, jq: JobQueueState, body: Mapping[str, Any], spec: JobQueueSpec, pool: Pool,
                existing: dict[str, Any] | None, observed: Observed | None, index: PodIndex,
                now: float, problems: list[Problem]) -> dict[str, Any]:
    """Reconcile one pool; returns its status entry."""
    name = resources.deployment_name(jq.name, pool.name)
    before = _previous(jq, pool.name)
    entry = {k: v for k, v in before.items() if k in ("pending", "running", "oldestPendingSeconds",
                                                      "lastScaleTime", "idleSince")}
    entry.update(name=pool.name, deployment=name)
    if existing is not None and not _owned(existing, body):
        problems.append(_conflict(name, pool))
        return entry
    refused = await _refused(rt, jq, pool)
    if refused is not None:
        problems.append(refused)
        return entry
    pods = pods_of(index, jq.namespace, jq.name, pool.name)
    counts = count(pods)
    current = int(existing["spec"].get("replicas", 1)) if existing is not None else 0
    decision = _decide(jq, spec, pool, observed, current, counts, before, now, entry) if observed else None
    wanted = decision.replicas if decision else (current if existing is not None else pool.min_replicas)

    try:
        replicas = await _apply(rt, jq, body, spec, pool, existing, wanted, pods)
    except KubeError as exc:
        if not exc.invalid:
            raise
        problems.append(Problem("PoolRefused", f"pool {pool.name} not deployed: the API server refused its "
                                               f"Deployment: {exc}", key=pool.name))
        return entry
    if replicas is None:
        problems.append(_conflict(name, pool))
        return entry
    if decision is not None and replicas != current:
        _scaled(rt, jq, pool, current, replicas, decision.reason)
        entry["lastScaleTime"] = timestamp(now)
    if counts.unschedulable:
        problems.append(_unschedulable(pool, counts))
    entry.update(desiredReplicas=replicas, currentReplicas=counts.current, readyReplicas=counts.ready,
                 unschedulableReplicas=counts.unschedulable,
                 gpuPods=counts.scheduled if pool.gpu is not None else 0,
                 held=bool(decision and decision.held))
    _export(rt, jq, pool, entry)
    return {k: v for k, v in entry.items() if v is not None}


async def _refused(rt: Runtime, jq: JobQueueState, pool: Pool) -> Problem | None:
    """Why the pool's pods are not written, if they are not: its template sets what the operator
    owns, or (``rt.pod_policy``) its pods break ``podpolicy``'s rules in a namespace that does not
    allow it. Its Deployment, if any, is then left as it is: not updated, not scaled."""
    found = resources.conflicts(jq.name, pool)
    broken = podpolicy.violations([pool.model_dump(by_alias=True, exclude_none=True, mode="json")]) \
        if rt.pod_policy else []
    note = ""
    if broken:
        exempt, note = await _exempt(rt, jq)
        if exempt:
            broken = []
        else:
            note = f" (the namespace label {podpolicy.EXEMPT_LABEL}=true allows the pod security ones{note})"
    if not found and not broken:
        return None
    return Problem("PoolRefused", f"pool {pool.name} not deployed: " + "; ".join(found + broken) + note,
                   key=pool.name)


async def _exempt(rt: Runtime, jq: JobQueueState) -> tuple[bool, str]:
    """Whether the JobQueue's namespace allows unrestricted pools (its labels, read at most every
    ``SECRET_MAX_AGE`` seconds), and why not known when the API server would not say."""
    now = time.monotonic()
    if jq.exempt_read_at is None or now - jq.exempt_read_at > SECRET_MAX_AGE:
        try:
            labels = await rt.kube.namespace_labels(jq.namespace)
        except KubeError as exc:
            return False, f"; its labels could not be read: {exc}"
        jq.exempt, jq.exempt_read_at = labels.get(podpolicy.EXEMPT_LABEL) == "true", now
    return jq.exempt, ""


def _decide(jq: JobQueueState, spec: JobQueueSpec, pool: Pool, observed: Observed, current: int,
            counts: PodCounts, before: Mapping[str, Any], now: float, entry: dict[str, Any]) -> policy.Decision:
    """Run the policy for the pool (its state survives restarts through ``idleSince``)."""
    depth, caps = observed
    wanted = demand(spec, pool, depth, caps)
    state = jq.policies.get(pool.name) or policy.PolicyState.resumed(
        current, now, parse_timestamp(before.get("idleSince")))
    obs = policy.Observation(wanted.pending, wanted.running, wanted.oldest_pending_seconds, current,
                             counts.ready, counts.unschedulable, wanted.within_limits, counts.scheduled)
    decision = policy.decide(spec.pool_settings(pool), state, obs, now)
    jq.policies[pool.name] = decision.state
    idle = decision.state.idle_since
    entry.update(pending=wanted.pending, running=wanted.running,
                 oldestPendingSeconds=round(wanted.oldest_pending_seconds, 1), limitedTo=wanted.limited_to,
                 idleSince=timestamp(idle) if idle is not None else None)
    return decision


async def _apply(rt: Runtime, jq: JobQueueState, body: Mapping[str, Any], spec: JobQueueSpec, pool: Pool,
                 existing: dict[str, Any] | None, replicas: int, pods: list[PodInfo]) -> int | None:
    """Make the Deployment carry the pool's template and ``replicas``; returns the replicas it has
    now (a scale-down waits when deletion costs could not be set), None on a name conflict."""
    desired = resources.deployment(body, spec, pool, replicas)
    if existing is None:
        return replicas if await _create(rt, jq, desired) else None
    name, current = desired["metadata"]["name"], int(existing["spec"].get("replicas", 1))
    if (existing["metadata"].get("annotations") or {}).get(resources.TEMPLATE_HASH) != \
            desired["metadata"]["annotations"][resources.TEMPLATE_HASH]:
        await rt.kube.patch_deployment(jq.namespace, name, resources.update_patch(desired))
        rt.event(jq.ref, "Normal", "DeploymentUpdated", f"pool {pool.name}: rolling out the changed spec")
    if replicas < current and not await _mark_deletion_costs(rt, jq, pods):
        return current  # costs not in place yet: a busy pod could go, so scale down next poll
    if replicas != current:
        await rt.kube.patch_deployment(jq.namespace, name, resources.replicas_patch(replicas))
    return replicas


def _scaled(rt: Runtime, jq: JobQueueState, pool: Pool, before: int, after: int, reason: str) -> None:
    up = after > before
    rt.metrics.scaling.labels(jq.namespace, jq.name, pool.name, "up" if up else "down").inc()
    rt.event(jq.ref, "Normal", "ScaledUp" if up else "ScaledDown",
             f"pool {pool.name}: {before} -> {after} replicas: {reason}")
    log.info("%s/%s pool %s: %d -> %d replicas (%s)", jq.namespace, jq.name, pool.name, before, after, reason)


def _unschedulable(pool: Pool, counts: PodCounts) -> Problem:
    gpu = pool.gpu is not None and pool.gpu.resource_name in counts.message
    return Problem("GPUCapacityExhausted" if gpu else "PodsUnschedulable",
                   f"pool {pool.name}: {counts.unschedulable} pod(s) cannot be scheduled, not adding more: "
                   f"{counts.message}", blocking=False, key=pool.name)


def _conflict(name: str, pool: Pool) -> Problem:
    return Problem("DeploymentConflict", f'Deployment "{name}" exists and is not owned by this JobQueue: '
                                         f"pool {pool.name} is not managed", key=pool.name)


async def _create(rt: Runtime, jq: JobQueueState, desired: dict[str, Any]) -> bool:
    """Create the Deployment; False if one of that name exists that the JobQueue's list missed (it
    does not carry our labels: someone else's)."""
    name = desired["metadata"]["name"]
    try:
        await rt.kube.create_deployment(jq.namespace, desired)
    except KubeError as exc:
        if exc.conflict:
            return False
        raise
    rt.event(jq.ref, "Normal", "DeploymentCreated",
             f"created Deployment {name} with {desired['spec']['replicas']} replicas")
    return True


async def _mark_deletion_costs(rt: Runtime, jq: JobQueueState, pods: list[PodInfo]) -> bool:
    """Before a scale-down: each pod's in-flight job count becomes its deletion cost, so the
    ReplicaSet removes idle pods first. True when, as this operator's watch saw the pods, every
    idle pod already cost 0 and every busy one more: the ReplicaSet controller, watching the same
    pods, has had a poll interval to see that too. False if a pod turned idle or busy since (a
    busy pod's count moving, e.g. 2 -> 3, keeps it last in line and holds nothing back) or the
    database could not say."""
    live = [p for p in pods if not p.terminating]
    if not live:
        return True
    if jq.queue is None:
        return False
    try:
        in_flight = await rt.databases.call(jq.queue.in_flight_by_worker([p.name for p in live]))
    except DatabaseUnavailable as exc:
        log.warning("%s/%s: no scale-down this poll: %s", jq.namespace, jq.name, redact(str(exc), jq.dsn))
        return False
    settled = True
    for pod in live:
        cost = str(in_flight.get(pod.name, 0))
        if pod.deletion_cost != cost:
            settled = settled and _busy(pod.deletion_cost) == (cost != "0")
            try:
                await rt.kube.annotate_pod(jq.namespace, pod.name, {resources.DELETION_COST: cost})
            except KubeError as exc:
                if not exc.not_found:
                    raise
    return settled


def _busy(cost: str | None) -> bool:
    """Whether a pod-deletion-cost as seen on a pod ranks it after idle pods (unset means 0)."""
    return cost not in (None, "0")


async def _remove_stale(rt: Runtime, jq: JobQueueState, spec: JobQueueSpec,
                        existing: Iterable[dict[str, Any]]) -> None:
    """Delete the Deployments of pools that left the spec."""
    keep = {p.name for p in spec.pools}
    for deployment in existing:
        pool = (deployment["metadata"].get("labels") or {}).get(resources.POOL_LABEL)
        if pool in keep or not _owned(deployment, {"metadata": jq.ref["metadata"]}):
            continue
        name = deployment["metadata"]["name"]
        try:
            await rt.kube.delete_deployment(jq.namespace, name)
        except KubeError as exc:
            if not exc.not_found:
                raise
        jq.policies.pop(str(pool), None)
        rt.event(jq.ref, "Normal", "DeploymentDeleted", f"pool {pool} left the spec: deleted Deployment {name}")
    rt.metrics.forget(jq.namespace, jq.name, keep_pools=frozenset(keep))


# -- reporting ------------------------------------------------------------------------------------

def _export(rt: Runtime, jq: JobQueueState, pool: Pool, entry: Mapping[str, Any]) -> None:
    m, labels = rt.metrics, (jq.namespace, jq.name, pool.name)
    m.desired.labels(*labels).set(entry["desiredReplicas"])
    m.ready.labels(*labels).set(entry["readyReplicas"])
    m.unschedulable.labels(*labels).set(entry["unschedulableReplicas"])
    m.gpu_pods.labels(*labels).set(entry["gpuPods"])
    m.gpus_per_pod.labels(*labels).set(pool.gpu.count if pool.gpu is not None else 0)
    m.depth.labels(*labels, "pending").set(entry.get("pending", 0))
    m.depth.labels(*labels, "running").set(entry.get("running", 0))
    m.oldest.labels(*labels).set(entry.get("oldestPendingSeconds", 0.0))


async def _report(rt: Runtime, jq: JobQueueState, spec: JobQueueSpec | None, pools: list[dict[str, Any]],
                  problems: list[Problem], generation: int | None, now: float) -> None:
    """Write the status if it changed; post an event for each problem that appeared or cleared."""
    written = jq.written or {}
    status: dict[str, Any] = {"conditions": conditions(written.get("conditions") or [], problems,
                                                       jq.generation, now)}
    if spec is not None:
        status.update(queues=",".join(spec.queues), pools=pools, **summary(pools))
        if jq.schedules.count is not None:
            status["schedules"] = jq.schedules.count
    if generation is not None:
        status["observedGeneration"] = generation
    _announce(rt, jq, problems)
    if any(written.get(k) != v for k, v in status.items()):
        try:
            await rt.kube.patch_status(jq.namespace, jq.name, status)
        except KubeError as exc:
            log.warning("%s/%s: could not write the status: %s", jq.namespace, jq.name, exc)
            return
        jq.written = {**written, **status}


def _announce(rt: Runtime, jq: JobQueueState, problems: list[Problem]) -> None:
    now = {p.id: p for p in problems}
    for pid, problem in now.items():
        if pid not in jq.problems:
            rt.event(jq.ref, "Warning", problem.reason, problem.message)
            log.warning("%s/%s: %s: %s", jq.namespace, jq.name, problem.reason, problem.message)
    for pid, reason in jq.problems.items():
        if pid not in now:
            rt.event(jq.ref, "Normal", RESOLVED.get(reason, "Recovered"), f"{reason} cleared")
            log.info("%s/%s: %s cleared", jq.namespace, jq.name, reason)
    jq.problems = {pid: p.reason for pid, p in now.items()}
