"""A JobQueue's ``spec.schedules`` kept in the core's schedules table, under the source
``jobqueue/<namespace>/<name>``, through the core's own API (``Queue.sync_schedules``; no SQL here).

- A schedule the core refuses (a cron expression or time zone the CRD's patterns let through, a zero
  interval, a payload jsonb cannot hold) is an ``InvalidSchedule`` problem; its last good definition,
  if the database has one, stays as it was, and the other schedules sync as usual.
- Schedule names are shared with the CLI's and the code's schedules (and other JobQueues'): a name
  another source owns is a ``ScheduleConflict``, and is never taken over.
- The database is read when the declared schedules change, the JobQueue moves to another database,
  or every ``RESYNC`` seconds (so a schedule removed by hand comes back; a JobQueue that declares
  none and has none is not read again), and written only when it differs from the spec. A paused
  schedule stays paused: the sync does not touch ``paused``.
- A deleted JobQueue's schedules are removed by ``remove_all`` (a kopf deletion handler), which
  also runs when the JobQueue was deleted while the operator was down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from skiplock.durations import parse_duration
from skiplock.errors import InvalidJob, SchemaMissing
from skiplock.models import make_spec, storable
from skiplock.schedules import ScheduleSpec, from_row, make_schedule

from .db import InvalidDsn, redact
from .kube import KubeError
from .spec import JobQueueSpec, Schedule
from .status import Problem

if TYPE_CHECKING:
    from .runtime import JobQueueState, Runtime

log = logging.getLogger("skiplock.operator.schedules")
RESYNC = 60.0  # seconds between checks of an unchanged spec against the database
DELETE_ATTEMPTS = 12  # a deleted JobQueue waits this many tries (DELETE_DELAY apart) for its database
DELETE_DELAY = 5.0


def source(namespace: str, name: str) -> str:
    """The schedules table's ``source`` of a JobQueue's schedules."""
    return f"jobqueue/{namespace}/{name}"


_FIELDS = {"job: ": "", "catch_up: ": "catchUp: ", "max_attempts: ": "maxAttempts: "}  # core -> CR names


def _reason(exc: Exception) -> str:
    """The core's one-line reason, in the CR's words."""
    parts = []
    for part in str(exc).replace("Value error, ", "").split("; "):
        for core, ours in _FIELDS.items():
            if part.startswith(core):
                part = ours + part[len(core):]
        parts.append(part)
    return "; ".join(parts)


def core_spec(spec: JobQueueSpec, entry: Schedule) -> ScheduleSpec:
    """The core's ``ScheduleSpec`` for one entry of ``spec.schedules``; ``InvalidJob`` with the
    reason when the core would refuse it (or the jobs its ticks enqueue)."""
    if not storable(entry.name):
        raise InvalidJob("name: must be valid Unicode without NUL bytes")
    every: float | None = None
    if entry.every is not None:
        try:
            every = float(entry.every) if isinstance(entry.every, int) else parse_duration(entry.every)
        except ValueError as exc:
            raise InvalidJob(f"every: {exc}") from None
    core = make_schedule(name=entry.name, type=entry.type, cron=entry.cron, every=every, payload=entry.payload,
                         queue=entry.queue or spec.queues[0], priority=entry.priority,
                         max_attempts=entry.max_attempts, timezone=entry.timezone, catch_up=entry.catch_up)
    # Each tick enqueues a job of these options: refuse now what the enqueue would refuse then.
    make_spec(core.type, payload=core.payload, queue=core.queue, priority=core.priority,
              max_attempts=core.max_attempts).encoded_payload()
    return core


def declared(spec: JobQueueSpec) -> tuple[list[ScheduleSpec], list[Problem]]:
    """The valid schedules of the spec, and an ``InvalidSchedule`` problem for each other one."""
    valid: list[ScheduleSpec] = []
    problems: list[Problem] = []
    for i, entry in enumerate(spec.schedules):
        try:
            valid.append(core_spec(spec, entry))
        except InvalidJob as exc:
            problems.append(Problem("InvalidSchedule", f"spec.schedules[{i}] ({entry.name}): {_reason(exc)}",
                                    blocking=False, key=entry.name))
    return valid, problems


@dataclass
class SyncState:
    """What the operator remembers of a JobQueue's schedules between polls."""

    database: object | None = None  # the Queue last checked against
    declared: list[dict[str, Any]] | None = None  # the valid schedules as last synced
    checked_at: float = -math.inf  # time.monotonic() of that check
    conflicts: tuple[Problem, ...] = ()
    count: int | None = None  # schedules of the JobQueue in the database after that check


@dataclass(frozen=True)
class Plan:
    """What one sync writes: the schedules to keep (``Queue.sync_schedules`` removes the rest of the
    source's), and what that changes."""

    keep: list[ScheduleSpec]
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    conflicts: list[Problem] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.created or self.updated or self.stale)


def _stored(row: Mapping[str, Any]) -> ScheduleSpec | None:
    try:
        return from_row(dict(row))
    except ValidationError:  # written by a newer or older core: rewrite it
        return None


def plan(src: str, valid: Sequence[ScheduleSpec], invalid: Sequence[str],
         rows: Sequence[Mapping[str, Any]]) -> Plan:
    """Compare the declared schedules with the database's ``rows`` (the core's ``list_schedules``)."""
    by_name = {str(r["name"]): r for r in rows}
    ours = {n: r for n, r in by_name.items() if r["source"] == src}
    conflicts = [Problem("ScheduleConflict",
                         f'schedule "{s.name}" belongs to source "{by_name[s.name]["source"]}", not to this '
                         f"JobQueue: left alone (`skiplock schedule remove {s.name}` lets the JobQueue own it)",
                         blocking=False, key=s.name)
                 for s in valid if s.name in by_name and s.name not in ours]
    taken = {p.key for p in conflicts}
    managed = [s for s in valid if s.name not in taken]
    kept = [stored for n in invalid if n in ours and (stored := _stored(ours[n])) is not None]
    keep_names = {s.name for s in managed} | {s.name for s in kept}
    return Plan(keep=managed + kept,
                created=[s.name for s in managed if s.name not in ours],
                updated=[s.name for s in managed if s.name in ours and _stored(ours[s.name]) != s],
                stale=sorted(n for n in ours if n not in keep_names),
                conflicts=conflicts)


async def sync(rt: Runtime, jq: JobQueueState, spec: JobQueueSpec, now: float) -> list[Problem]:
    """Make the JobQueue's schedules in the database those of ``spec`` (``now``: time.monotonic());
    returns the problems found (invalid schedules, names owned elsewhere)."""
    valid, problems = declared(spec)
    state, queue = jq.schedules, jq.queue
    assert queue is not None
    wanted = [s.model_dump() for s in valid]
    if state.database is queue and state.declared == wanted and (
            now - state.checked_at < RESYNC or (not spec.schedules and state.count == 0)):
        return problems + list(state.conflicts)  # (a JobQueue without schedules is checked once)
    src = source(jq.namespace, jq.name)
    rows = await rt.databases.call(queue.schedules())
    todo = plan(src, valid, [p.key for p in problems], rows)
    if todo.changes:
        removed = await rt.databases.call(queue.sync_schedules(src, todo.keep))
        parts = [f"{what} {', '.join(names)}" for what, names in
                 (("created", todo.created), ("updated", todo.updated), ("removed", removed)) if names]
        if parts:
            rt.event(jq.ref, "Normal", "SchedulesSynced", "schedules " + "; ".join(parts))
            log.info("%s/%s: schedules %s", jq.namespace, jq.name, "; ".join(parts))
    jq.schedules = SyncState(queue, wanted, now, tuple(todo.conflicts), len(todo.keep))
    return problems + todo.conflicts


def declares_schedules(body: Mapping[str, Any]) -> bool:
    """Whether the JobQueue keeps anything in its database: schedules, or queue settings (removed with them)."""
    spec = body.get("spec") or {}
    return bool(spec.get("schedules") or spec.get("queueSettings"))


class NotRemoved(Exception):
    """The schedules of a deleted JobQueue could not be removed (the text is free of the DSN);
    ``retry``: whether trying again may help."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


async def remove_all(rt: Runtime, namespace: str, name: str, body: Mapping[str, Any]) -> list[str] | None:
    """Remove every schedule of a JobQueue that is being deleted; returns the names removed, or None
    when its database is unknown (its Secret is gone and this process never read it). The DSN comes
    from the Secret, else from memory (a namespace's deletion may remove the Secret first). Raises
    ``NotRemoved``."""
    ref = ((body.get("spec") or {}).get("database") or {}).get("secretRef") or {}
    dsn: str | None = None
    if ref.get("name"):
        try:
            dsn = await rt.kube.secret_value(namespace, str(ref["name"]), str(ref.get("key") or "DATABASE_URL"))
        except KubeError as exc:
            if not exc.not_found:
                raise NotRemoved(f"Kubernetes API: {exc}") from None
    dsn = dsn or rt.dsns.get((namespace, name))
    if not dsn:
        return None
    user = ("deleting", namespace, name)
    try:
        queue = await rt.databases.acquire(user, dsn)
        removed: list[str] = await rt.databases.call(queue.sync_schedules(source(namespace, name), []))
        settings = await rt.databases.call(queue.sync_queue_settings(source(namespace, name), []))
        if settings:
            log.info("%s/%s: removed the settings of queues %s", namespace, name, ", ".join(settings))
        return removed
    except SchemaMissing:
        return []
    except InvalidDsn:
        raise NotRemoved("the database Secret does not hold a PostgreSQL connection string", retry=False) from None
    except Exception as exc:
        raise NotRemoved(redact(f"{type(exc).__name__}: {exc}", dsn)) from None
    finally:
        await rt.databases.release(user)
