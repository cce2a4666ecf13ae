"""The pull API's pieces shared by ``Queue`` (async) and ``skiplock.sync``: claim jobs in your own
loop, then complete, fail or release each one, and heartbeat the leases meanwhile.

A claim goes through the SQL API's ``skiplock.claim`` (limits included); an outcome goes through the
worker's own batch statements (``plans.finish``, ``plans.release``) with the execution's attempt, so
a late outcome from a lease that was rescued (and maybe re-claimed) changes nothing."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from . import plans
from .errors import InvalidJob, JobCancelled, PermanentFailure
from .models import DEFAULT_MAX_PAYLOAD, json_text
from .registry import Job

DEFAULT_LEASE = 30.0


def default_worker_id() -> str:
    """``SKIPLOCK_WORKER_ID`` (the pod name in Kubernetes), else ``hostname-pid-random``."""
    return os.environ.get("SKIPLOCK_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class PulledJob(Job):
    """A job claimed through the pull API. ``result`` is what ``claimed()`` records when its block
    ends without an exception; ``done`` is set once an outcome was recorded or the job released."""

    worker_id: str = ""
    result: Any = None
    done: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any], worker_id: str) -> PulledJob:
        return cls(id=row["id"], type=row["type"], queue=row["queue"], payload=row["payload"],
                   attempt=row["attempts"], max_attempts=row["max_attempts"], priority=row["priority"],
                   tenant=row["tenant"], labels=row["labels"] or {}, run_at=row["run_at"],
                   created_at=row["created_at"], timeout=row["timeout_seconds"], worker_id=worker_id)


def claim_params(queue: str, worker_id: str, max_jobs: int, lease_seconds: float,
                 types: list[str] | None) -> dict[str, Any]:
    if not isinstance(max_jobs, int) or max_jobs < 1:
        raise InvalidJob("max_jobs must be at least 1")
    if not (isinstance(lease_seconds, (int, float)) and 0 < lease_seconds < float("inf")):
        raise InvalidJob("lease_seconds must be a finite number of seconds above 0")
    return {"queue": queue, "worker_id": worker_id, "max_jobs": max_jobs, "lease_seconds": float(lease_seconds),
            "types": types}


def claim(params: dict[str, Any]) -> plans.Plan:
    """Claim up to ``max_jobs`` runnable jobs; returns them as ``PulledJob``."""
    (rows,) = yield [("api_claim", params)]
    return [PulledJob.from_row(r, params["worker_id"]) for r in rows]


def _outcome(job: PulledJob, outcome: str, result: Any = None, error: str | None = None,
             retry_in: float | None = None) -> dict[str, Any]:
    if job.done:
        raise InvalidJob(f"job {job.id}: its outcome was already recorded (or it was released)")
    item: dict[str, Any] = {"id": job.id, "attempt": job.attempt, "outcome": outcome, "result": None, "error": error}
    if outcome == "completed" and result is not None:
        size = len(json_text(result, "result").encode())
        if size > DEFAULT_MAX_PAYLOAD:
            raise InvalidJob(f"result is {size} bytes, over the {DEFAULT_MAX_PAYLOAD}-byte limit")
        item["result"] = result
    if retry_in is not None:
        if not (isinstance(retry_in, (int, float)) and 0 <= retry_in < float("inf")):
            raise InvalidJob("retry_in must be a finite, non-negative number of seconds")
        item["retry_in"] = float(retry_in)
    return item


def finish(job: PulledJob, outcome: str, result: Any = None, error: str | None = None,
           retry_in: float | None = None) -> plans.Plan:
    """Record ``outcome`` for ``job``; returns the job's new state, or None if this execution no
    longer holds the lease (nothing changed)."""
    item = _outcome(job, outcome, result, error, retry_in)
    done: list[plans.Row] = yield from plans.finish(job.worker_id, [item], None)
    job.done = True
    return str(done[0]["state"]) if done else None


def release(job: PulledJob) -> plans.Plan:
    """Hand the job back, attempt refunded; returns whether this execution held it."""
    if job.done:
        raise InvalidJob(f"job {job.id}: its outcome was already recorded (or it was released)")
    rows: list[plans.Row] = yield from plans.release(job.worker_id, [(job.id, job.attempt)])
    job.done = True
    return bool(rows)


def heartbeat(worker_id: str, lease_seconds: float) -> plans.Plan:
    """Renew every lease ``worker_id`` holds; returns how many."""
    (rows,) = yield [("api_heartbeat", {"worker_id": worker_id, "lease_seconds": float(lease_seconds)})]
    return int(rows[0]["renewed"])


def renew(worker_id: str, lease_seconds: float) -> plans.Plan:
    """Renew every lease ``worker_id`` holds; returns ``{job id: (attempt, cancel requested)}`` for
    each (an execution not in it lost its lease)."""
    (rows,) = yield [("api_renew", {"worker_id": worker_id, "lease_seconds": float(lease_seconds)})]
    return {r["job_id"]: (r["attempt"], r["cancel_requested"]) for r in rows}


def note_renewal(job: PulledJob, renewed: dict[int, tuple[int, bool]]) -> None:
    """Tell ``job`` (``job.cancelled``) when a renewal found a cancel requested or its lease lost."""
    attempt, cancel = renewed.get(job.id, (None, True))
    if cancel or attempt != job.attempt:
        job._cancel.set()


def ending(exc: BaseException | None) -> tuple[str, str | None]:
    """The outcome a ``claimed()`` block that raised ``exc`` (None: returned) records."""
    from .executor import describe

    if exc is None:
        return "completed", None
    if isinstance(exc, JobCancelled):
        return "cancelled", str(exc) or "cancelled"
    if isinstance(exc, PermanentFailure):
        return "dead", describe(exc)
    return "failed", describe(exc)


def run_ending(job: PulledJob, exc: BaseException | None) -> Generator[plans.Step, list[list[plans.Row]], None]:
    """Record the end of a ``claimed()`` block (nothing if the block recorded an outcome itself)."""
    if job.done:
        return
    outcome, error = ending(exc)
    yield from finish(job, outcome, job.result if outcome == "completed" else None, error)
