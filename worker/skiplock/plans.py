"""Multi-statement operations as plans: generators that yield steps of named statements and
receive their rows, so one definition serves the async and the sync runner (``runner.py``).

A step is a list of ``(query name, params)`` sent together (pipelined); the plan receives one
list of rows per statement. Every plan that changes more than one row set runs in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from typing import Any

from .errors import InvalidJob, JobNotFound, UnknownDependency
from .filters import JobFilter
from .models import JobSpec, State, max_payload_bytes
from .retry import DEFAULT, RetryPolicy
from .states import EXPIRABLE, FAILED, FINISHED, RETRYABLE, ordered

Row = dict[str, Any]
Step = list[tuple[str, dict[str, Any]]]
Plan = Generator[Step, list[list[Row]], Any]

FAILED_STATES = {s.value for s in FAILED}


_encode = json.JSONEncoder(separators=(",", ":")).encode


def _job_row(ordinal: int, spec: JobSpec, deps: dict[int, str], limit: int) -> str:
    """One element of the enqueue statement's JSON array, as text: the payload's JSON (validated
    and size-checked once) is spliced in as is, not decoded and encoded again."""
    run_at = spec.effective_run_at()
    waiting = [d for d in spec.depends_on if deps.get(d) != State.COMPLETED.value] if spec.depends_on else []
    failed = [d for d in spec.depends_on if deps.get(d) in FAILED_STATES] if spec.depends_on else []
    fields = {
        "ord": ordinal,
        "queue": spec.queue,
        "type": spec.type,
        "priority": spec.priority,
        "run_at": run_at.isoformat() if run_at else None,
        "max_attempts": spec.max_attempts,
        "timeout_seconds": spec.timeout,
        "tenant": spec.tenant,
        "labels": spec.labels,
        "dedup_key": spec.dedup_key,
        "depends_on": list(spec.depends_on),
        "pending_deps": len(waiting),
        "dep_error": f"dependency {failed[0]} ended {deps[failed[0]]}" if failed else None,
    }
    for key, value in (("ttl_seconds", spec.ttl), ("result_ttl_seconds", spec.result_ttl),
                       ("failure_ttl_seconds", spec.failure_ttl)):
        if value is not None:
            fields[key] = value
    if spec.retry is not None:
        fields["retry_policy"] = spec.retry.as_dict()
    return f'{_encode(fields)[:-1]},"payload":{spec.encoded_payload(limit)}}}'


def enqueue(specs: Sequence[JobSpec]) -> Plan:
    """Insert the jobs; returns their ids in input order (an unfinished job holding the same
    dedup_key answers for a duplicate)."""
    if not specs:
        return []
    dep_ids = sorted({d for s in specs for d in s.depends_on})
    deps: dict[int, str] = {}
    if dep_ids:
        (found,) = yield [("lock_parents", {"ids": dep_ids})]
        deps = {r["id"]: r["state"] for r in found}
        missing = [d for d in dep_ids if d not in deps]
        if missing:
            raise UnknownDependency(missing)
    limit = max_payload_bytes()
    rows = "[" + ",".join(_job_row(i, s, deps, limit) for i, s in enumerate(specs)) + "]"
    (inserted,) = yield [("enqueue", {"jobs": rows})]
    by_key = {(r["queue"], r["dedup_key"]): r["id"] for r in inserted if r["dedup_key"] is not None}
    plain = iter(r["id"] for r in inserted if r["dedup_key"] is None)
    ids: list[int | None] = [
        by_key.get((s.queue, s.dedup_key)) if s.dedup_key is not None else next(plain) for s in specs
    ]
    lost = [(s.queue, s.dedup_key) for s, i in zip(specs, ids, strict=True) if i is None]
    if lost:
        (existing,) = yield [("find_dedup", {"queues": [q for q, _ in lost], "keys": [k for _, k in lost]})]
        by_key.update({(r["queue"], r["dedup_key"]): r["id"] for r in existing})
        ids = [i if i is not None else by_key.get((s.queue, s.dedup_key)) for s, i in zip(specs, ids, strict=True)]
    if any(i is None for i in ids):  # the holder finished between the two statements
        raise InvalidJob("a job with the same dedup_key finished while enqueueing: enqueue again")
    return ids


def cascade(first: list[Row]) -> Plan:
    """Settle dependents after ``propagate``: repeat for children that ended cancelled and have
    dependents of their own, each round a new statement (a new snapshot)."""
    changed = list(first)
    todo = [r["id"] for r in first if r["state"] == State.CANCELLED.value and r["has_dependents"]]
    while todo:
        (rows,) = yield [("propagate", {"ids": todo})]
        changed.extend(rows)
        todo = [r["id"] for r in rows if r["state"] == State.CANCELLED.value and r["has_dependents"]]
    return changed


def finish(worker_id: str, batch: list[dict[str, Any]], policy: RetryPolicy | None = DEFAULT) -> Plan:
    """Record outcomes (``{id, attempt, outcome, result, error}``, optionally ``retry_in`` seconds
    instead of the policy's delay) and settle dependents, in one transaction; returns the rows
    finished (a stale execution's outcome is not among them). ``policy`` is the caller's, used for
    jobs that have none of their own or of their queue (None: the default)."""
    ids = [b["id"] for b in batch]
    params = {"worker_id": worker_id, "batch": json.dumps(batch), "ids": ids,
              "retry_policy": None if policy is None else policy.as_json()}
    done, first = yield [("finish", params), ("propagate", {"ids": ids})]
    yield from cascade(first)
    return done


def _settle_failed(rows: list[Row]) -> Plan:
    """Propagate to the dependents of the rows that ended dead or cancelled."""
    ended = [r["id"] for r in rows if r["state"] in FAILED_STATES]
    if ended:
        (first,) = yield [("propagate", {"ids": ended})]
        yield from cascade(first)


def rescue(gone_workers: Sequence[str] = (), policy: RetryPolicy = DEFAULT) -> Plan:
    """Recover expired leases and the jobs of workers known to be gone (a failed attempt: retried
    after ``policy``'s delay); returns the rows."""
    rescued, = yield [("rescue", {"gone_workers": list(gone_workers), "retry_policy": policy.as_json()})]
    yield from _settle_failed(rescued)
    return rescued


def release(worker_id: str, executions: Sequence[tuple[int, int]]) -> Plan:
    """Hand back unfinished executions ``(id, attempt)`` without spending the attempt (a job whose
    cancel was requested ends cancelled instead); returns the rows released."""
    released, = yield [("release", {"ids": [i for i, _ in executions], "attempts": [a for _, a in executions],
                                    "worker_id": worker_id})]
    yield from _settle_failed(released)
    return released


def cancel(job_id: int, reason: str = "cancelled by request") -> Plan:
    """Cancel a job; returns its state afterwards (``running`` means the request was delivered)."""
    rows, first = yield [("cancel", {"id": job_id, "reason": reason, "filter": "{}"}),
                         ("propagate", {"ids": [job_id]})]
    if not rows:
        (found,) = yield [("get_job", {"id": job_id})]
        if not found:
            raise JobNotFound(f"no job {job_id}")
        return str(found[0]["state"])
    yield from cascade(first)
    return str(rows[0]["state"])


def cancel_matching(where: JobFilter, reason: str = "cancelled by request") -> Plan:
    """Cancel every job ``where`` matches (a running one is asked to stop); returns the rows."""
    (rows,) = yield [("cancel", {"id": None, "reason": reason, "filter": where.as_json()})]
    yield from _settle_failed(rows)
    return rows


def purge_matching(where: JobFilter) -> Plan:
    """Delete the jobs ``where`` matches that are finished or waiting (never a running one): the
    waiting ones end cancelled first, so that their dependents are cancelled too, then go with the
    finished ones (``older_than`` counts from when a job finished, or was enqueued). Returns how many."""
    waiting = where.narrowed(ordered(EXPIRABLE))
    cancelled: list[Row] = []
    if waiting.states:
        cancelled = yield from cancel_matching(waiting, "purged")
    finished = where.narrowed(ordered(FINISHED))
    steps: Step = [("purge", {"ids": [r["id"] for r in cancelled], "filter": "{}"})] if cancelled else []
    if finished.states:
        steps.append(("purge", {"ids": None, "filter": finished.as_json()}))
    if not steps:
        return 0
    counts = yield steps
    return sum(int(rows[0]["purged"]) for rows in counts)


def retry(job_id: int) -> Plan:
    """Run a finished (even archived) or waiting job again now."""
    yield [("unarchive", {"id": job_id})]
    (rows,) = yield [("retry", {"id": job_id, "filter": "{}"})]
    if not rows:
        (found,) = yield [("get_job", {"id": job_id})]
        if not found:
            raise JobNotFound(f"no job {job_id}")
        *others, last = [s.value for s in ordered(RETRYABLE)]
        raise InvalidJob(f"job {job_id} is {found[0]['state']}: only finished or waiting jobs can be retried "
                         f"(those {', '.join(others)} or {last})")
    return job_id


def expire(limit: int) -> Plan:
    """End a batch of waiting jobs past their ttl (cancelled, ``expired``) and settle their
    dependents; returns the rows."""
    (rows,) = yield [("expire", {"limit": limit})]
    yield from _settle_failed(rows)
    return rows


def fire_schedules() -> Plan:
    """Enqueue one job per due tick of every due schedule (locked: each tick fires once however
    many workers run this; the tick is also the job's dedup key) and advance the schedules;
    returns the (queue, type) of each job enqueued."""
    from .schedules import from_row

    (due,) = yield [("due_schedules", {})]
    fired: list[tuple[str, str]] = []
    for row in due:
        spec = from_row(row)
        ticks, following = spec.due(row["next_run_at"], row["db_now"])
        jobs = [JobSpec(type=spec.type, payload=spec.payload, queue=spec.queue, priority=spec.priority,
                        max_attempts=spec.max_attempts, dedup_key=f"schedule:{spec.name}:{t.isoformat()}",
                        labels={"schedule": spec.name})
                for t in ticks]
        ids: list[int] = (yield from enqueue(jobs)) if jobs else []
        yield [("advance_schedule", {"name": spec.name, "next_run_at": following,
                                     "last_run_at": ticks[-1] if ticks else None,
                                     "last_job_id": ids[-1] if ids else None})]
        fired += [(spec.queue, spec.type)] * len(ids)
    return fired


RATE_BURST_SECONDS = 0.1  # a rate limit's bucket holds this many seconds of tokens (at least one)


def claim_limited(params: dict[str, Any]) -> Plan:
    """Lock the limits of the worker's types, then claim within them (one transaction); returns
    the claimed rows and the seconds until a rate limit this claim emptied has a token again
    (None if it emptied none)."""
    types = {"types": params["types"]}
    _, claimed, refill = yield [("lock_limits", types),
                                ("claim_limited", {**params, "burst_seconds": RATE_BURST_SECONDS}),
                                ("limit_refill", types)]
    return claimed, refill[0]["seconds"]
