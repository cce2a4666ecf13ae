"""A thin sync facade on a sync psycopg connection (web apps, scripts): enqueue inside your own
transaction, and the pull API (claim, complete, fail, release, heartbeat, ``claimed``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from . import plans, pull
from .models import JobSpec, make_spec
from .pull import DEFAULT_LEASE, PulledJob
from .queue import as_spec
from .runner import run_sync


def enqueue(conn: psycopg.Connection[Any], type: str, payload: Any = None, **options: Any) -> int:
    """Enqueue one job on ``conn`` (inside its open transaction, if any); returns the id."""
    spec = make_spec(type, payload={} if payload is None else payload, **options)
    (job_id,) = enqueue_many(conn, [spec])
    return job_id


def enqueue_many(conn: psycopg.Connection[Any], jobs: Iterable[JobSpec | dict[str, Any]]) -> list[int]:
    """Enqueue a batch on ``conn``; ids in input order."""
    specs = [as_spec(j) for j in jobs]
    ids: list[int] = run_sync(conn, plans.enqueue(specs), atomic=any(s.depends_on for s in specs))
    return ids


def claim(conn: psycopg.Connection[Any], queue: str = "default", *, worker_id: str, max_jobs: int = 1,
          lease_seconds: float = DEFAULT_LEASE, types: Sequence[str] | None = None) -> list[PulledJob]:
    """Claim up to ``max_jobs`` runnable jobs for ``worker_id`` (see ``Queue.claim``)."""
    params = pull.claim_params(queue, worker_id, max_jobs, lease_seconds, list(types) if types else None)
    jobs: list[PulledJob] = run_sync(conn, pull.claim(params), atomic=False)
    return jobs


def complete(conn: psycopg.Connection[Any], job: PulledJob, result: Any = None) -> bool:
    """Record success; False if the lease was lost meanwhile (nothing changed)."""
    return run_sync(conn, pull.finish(job, "completed", result)) is not None


def fail(conn: psycopg.Connection[Any], job: PulledJob, error: str, retry_in: float | None = None,
         permanent: bool = False) -> str | None:
    """Record a failed attempt; the job's new state, None if the lease was lost (see ``Queue.fail``)."""
    outcome = "dead" if permanent else "failed"
    state: str | None = run_sync(conn, pull.finish(job, outcome, error=error, retry_in=retry_in))
    return state


def release(conn: psycopg.Connection[Any], job: PulledJob) -> bool:
    """Hand the job back to pending without spending its attempt."""
    released: bool = run_sync(conn, pull.release(job))
    return released


def heartbeat(conn: psycopg.Connection[Any], worker_id: str, lease_seconds: float = DEFAULT_LEASE) -> int:
    """Renew every lease ``worker_id`` holds; returns how many."""
    renewed: int = run_sync(conn, pull.heartbeat(worker_id, lease_seconds), atomic=False)
    return renewed


def renew(conn: psycopg.Connection[Any], worker_id: str,
          lease_seconds: float = DEFAULT_LEASE) -> dict[int, tuple[int, bool]]:
    """Renew every lease ``worker_id`` holds; returns ``{job id: (attempt, cancel requested)}``."""
    renewed: dict[int, tuple[int, bool]] = run_sync(conn, pull.renew(worker_id, lease_seconds), atomic=False)
    return renewed


@contextlib.contextmanager
def claimed(conn: psycopg.Connection[Any], queue: str = "default", *, worker_id: str,
            lease_seconds: float = DEFAULT_LEASE, types: Sequence[str] | None = None) -> Iterator[PulledJob | None]:
    """Claim one job for the block (None if none is runnable), as ``Queue.claimed`` does: a thread
    renews its lease on a connection of its own while the block runs (``conn`` may be inside your
    transaction); the job completes with ``job.result``, or fails with the block's exception.
    ``job.cancelled`` turns true once a renewal finds a cancel requested or the lease lost."""
    jobs = claim(conn, queue, worker_id=worker_id, lease_seconds=lease_seconds, types=types)
    if not jobs:
        yield None
        return
    job = jobs[0]
    stop = threading.Event()
    keeper = threading.Thread(target=_keep_alive, name=f"lease-{job.id}", daemon=True,
                              args=(make_conninfo(conn.info.dsn, password=conn.info.password), worker_id,
                                    lease_seconds, stop, job))
    keeper.start()
    try:
        yield job
    except KeyboardInterrupt:
        _stop(stop, keeper)
        if not job.done:
            release(conn, job)
        raise
    except Exception as exc:
        _stop(stop, keeper)
        run_sync(conn, pull.run_ending(job, exc))
        raise
    else:
        _stop(stop, keeper)
        run_sync(conn, pull.run_ending(job, None))


def _stop(stop: threading.Event, keeper: threading.Thread) -> None:
    stop.set()
    keeper.join()


def _keep_alive(conninfo: str, worker_id: str, lease_seconds: float, stop: threading.Event, job: PulledJob) -> None:
    from .db import connect_sync

    with contextlib.closing(connect_sync(conninfo, "client")) as conn:
        while not stop.wait(lease_seconds / 3):
            with contextlib.suppress(Exception):  # missed: retried next time (the lease outlasts two)
                pull.note_renewal(job, renew(conn, worker_id, lease_seconds))
