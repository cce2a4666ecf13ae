"""A JobQueue's ``spec.queueSettings`` kept in the core's queue settings (``skiplock.queues``) under
the source ``jobqueue/<namespace>/<name>``, through the core's own API (``Queue.replace_queue``,
``Queue.sync_queue_settings``; no SQL here), the way ``schedules`` keeps ``spec.schedules``.

- An entry the core refuses (a duration the CRD's pattern lets through but that is zero or too long,
  a retry schedule of the wrong shape) is an ``InvalidQueueSettings`` problem; the queue's stored
  settings stay as they were, and the other entries sync as usual.
- A queue whose settings another JobQueue declares is a ``QueueSettingsConflict``, never taken over;
  settings made with ``skiplock queues set`` (source ``cli``) are replaced by the declaration.
- The database is read when the declared settings change, the JobQueue moves to another database,
  or every ``RESYNC`` seconds, and written only when it differs. A deleted JobQueue's settings are
  removed with its schedules (``schedules.remove_all``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skiplock.durations import parse_duration
from skiplock.errors import InvalidJob
from skiplock.queues import QueueSettings, make_settings
from skiplock.retry import from_options

from .schedules import source
from .spec import Duration, JobQueueSpec, QueueSettingsEntry
from .status import Problem

if TYPE_CHECKING:
    from .runtime import JobQueueState, Runtime

log = logging.getLogger("skiplock.operator.queuesettings")
RESYNC = 60.0
JOBQUEUE_SOURCE = "jobqueue/"


def _seconds(name: str, value: Duration | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value) if isinstance(value, int) else parse_duration(value)
    except ValueError as exc:
        raise InvalidJob(f"{name}: {exc}") from None


def core_settings(entry: QueueSettingsEntry) -> QueueSettings:
    """The core's ``QueueSettings`` for one entry; ``InvalidJob`` with the reason when it refuses it."""
    retry = None
    if entry.retry is not None:
        r = entry.retry
        intervals = None if r.intervals is None else [
            _seconds(f"retry.intervals[{i}]", v) or 0.0 for i, v in enumerate(r.intervals)]
        retry = from_options(every=_seconds("retry.every", r.every), intervals=intervals,
                             backoff_base=_seconds("retry.backoffBase", r.backoff_base),
                             backoff_max=_seconds("retry.backoffMax", r.backoff_max))
    options: dict[str, Any] = {"max_attempts": entry.max_attempts, "ttl": _seconds("ttl", entry.ttl),
                               "result_ttl": _seconds("resultTtl", entry.result_ttl),
                               "failure_ttl": _seconds("failureTtl", entry.failure_ttl), "retry": retry}
    return make_settings(entry.queue, **{k: v for k, v in options.items() if v is not None})


def declared(spec: JobQueueSpec) -> tuple[list[QueueSettings], list[Problem]]:
    """The valid entries of the spec, and an ``InvalidQueueSettings`` problem for each other one."""
    valid: list[QueueSettings] = []
    problems: list[Problem] = []
    for i, entry in enumerate(spec.queue_settings):
        try:
            valid.append(core_settings(entry))
        except InvalidJob as exc:
            reason = str(exc).replace("max_attempts: ", "maxAttempts: ").replace("result_ttl: ", "resultTtl: ") \
                .replace("failure_ttl: ", "failureTtl: ")
            problems.append(Problem("InvalidQueueSettings", f"spec.queueSettings[{i}] ({entry.queue}): {reason}",
                                    blocking=False, key=entry.queue))
    return valid, problems


@dataclass
class SyncState:
    """What the operator remembers of a JobQueue's queue settings between polls."""

    database: object | None = None
    declared: list[dict[str, Any]] | None = None
    checked_at: float = -math.inf
    conflicts: tuple[Problem, ...] = ()


def _same(stored: QueueSettings, wanted: QueueSettings) -> bool:
    keys = ("max_attempts", "ttl", "result_ttl", "failure_ttl", "retry")
    return all(getattr(stored, k) == getattr(wanted, k) for k in keys)


async def sync(rt: Runtime, jq: JobQueueState, spec: JobQueueSpec, now: float) -> list[Problem]:
    """Make the JobQueue's queue settings in the database those of ``spec`` (``now``: time.monotonic());
    returns the problems found (invalid entries, queues another JobQueue declares)."""
    valid, problems = declared(spec)
    state, queue = jq.queue_settings, jq.queue
    assert queue is not None
    wanted = [s.as_json() for s in valid]
    if state.database is queue and state.declared == wanted and (
            now - state.checked_at < RESYNC or not spec.queue_settings):
        return problems + list(state.conflicts)
    src = source(jq.namespace, jq.name)
    stored = {s.name: s for s in await rt.databases.call(queue.queues())}
    conflicts = [Problem("QueueSettingsConflict",
                         f'queue "{s.name}": its settings belong to "{stored[s.name].source}", not to this '
                         "JobQueue: left alone", blocking=False, key=s.name)
                 for s in valid if s.name in stored and (stored[s.name].source or "").startswith(JOBQUEUE_SOURCE)
                 and stored[s.name].source != src]
    taken = {p.key for p in conflicts}
    invalid = {p.key for p in problems}
    keep = [s for s in valid if s.name not in taken]
    changed = [s.name for s in keep if s.name not in stored or stored[s.name].source != src
               or not _same(stored[s.name], s)]
    kept_as_is = [n for n in invalid if n in stored and stored[n].source == src]  # the last good settings stay
    ours = [n for n, s in stored.items() if s.source == src]
    if changed or any(n not in {s.name for s in keep} | set(kept_as_is) for n in ours):
        removed = await rt.databases.call(queue.sync_queue_settings(src, keep, keep_also=kept_as_is))
        parts = [f"{what} {', '.join(names)}" for what, names in (("set", changed), ("removed", removed)) if names]
        if parts:
            rt.event(jq.ref, "Normal", "QueueSettingsSynced", "queue settings " + "; ".join(parts))
            log.info("%s/%s: queue settings %s", jq.namespace, jq.name, "; ".join(parts))
    jq.queue_settings = SyncState(queue, wanted, now, tuple(conflicts))
    return problems + conflicts


def declares_queue_settings(spec: dict[str, Any] | None) -> bool:
    return bool((spec or {}).get("queueSettings"))
