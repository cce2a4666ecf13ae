"""A thin sync facade for producers on a sync psycopg connection (web apps, scripts)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from . import plans
from .models import JobSpec, make_spec
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
