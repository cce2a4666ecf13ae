"""The read-only pages: overview, job list, job detail."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .. import states
from ..errors import InvalidJob, JobNotFound
from ..filters import JobFilter, parse_label
from ..models import JobRecord, State
from .pages import BadRequest, int_param, queue_of, render

STATES = [s.value for s in State]
PAGE_SIZES = (20, 50, 100, 200)
RETRYABLE = {s.value for s in states.RETRYABLE}
CANCELLABLE = {s.value for s in states.CANCELLABLE}
LIVE = {State.PENDING.value, State.RUNNING.value}  # the detail page refreshes itself in these states
WORKER_SEEN_SECONDS = 120
MAX_PARENTS = 50


async def healthz(request: Request) -> Response:
    """Liveness for probes (no auth, no database)."""
    return PlainTextResponse("ok\n")


def _queue_rows(stats: list[dict[str, Any]], overview: list[dict[str, Any]],
                workers: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """One row per queue: counts by state, throughput, oldest pending age, live workers."""
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        return rows.setdefault(name, {"queue": name, "counts": {}, "total": 0, "oldest_pending": 0.0,
                                      "throughput": 0.0, "workers": 0})

    for s in stats:
        r = row(s["queue"])
        r["counts"][s["state"]] = int(s["jobs"])
        r["total"] += int(s["jobs"])
        if s["state"] == "pending":
            r["oldest_pending"] = float(s["oldest_pending_seconds"])
    for w in workers:
        if (now - w["last_seen_at"]).total_seconds() <= WORKER_SEEN_SECONDS:
            for name in w["queues"]:
                row(name)["workers"] += 1
    for o in overview:
        r = row(o["queue"])
        r["throughput"] = float(o["completed_per_second"])
        r["workers"] = int(o["workers"])
    return [rows[k] for k in sorted(rows)]


async def overview(request: Request) -> Response:
    q = queue_of(request)
    stats, per_queue, workers, schedules, limits = await asyncio.gather(
        q.stats(), q.overview(), q.workers(), q.schedules(), q.limits())
    now = datetime.now(UTC)
    queues = _queue_rows(stats, per_queue, workers, now)
    totals = {state: sum(r["counts"].get(state, 0) for r in queues) for state in STATES}
    return render(request, "overview.html", {
        "queues": queues, "states": STATES, "totals": totals, "now": now,
        "throughput": sum(r["throughput"] for r in queues),
        "live_workers": sum(1 for w in workers if (now - w["last_seen_at"]).total_seconds() <= WORKER_SEEN_SECONDS),
        "workers": workers, "schedules": schedules, "limits": limits,
    })


def _text_param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


FILTER_FIELDS = ("state", "queue", "type", "tenant", "label")


def job_filter(values: dict[str, str | None]) -> JobFilter:
    """The filter of a job list (query parameters, or a bulk action's form fields): one state, queue,
    type, tenant and label (``k=v``), each optional."""
    state, label = values.get("state"), values.get("label")
    if state is not None and state not in STATES:
        raise BadRequest(f"unknown state {state!r}: one of {', '.join(STATES)}")
    try:
        labels = dict([parse_label(label)]) if label else {}
    except InvalidJob as exc:
        raise BadRequest(str(exc)) from None
    return JobFilter(queue=values.get("queue"), type=values.get("type"), tenant=values.get("tenant"),
                     states=(state,) if state else (), labels=labels)


async def jobs(request: Request) -> Response:
    """Newest first, filtered by state, queue, type, tenant and label, a page at a time."""
    filters = {k: _text_param(request, k) for k in FILTER_FIELDS}
    where = job_filter(filters)
    size = int_param(request, "size", 50, 1, 1000)
    if size not in PAGE_SIZES:
        raise BadRequest(f"size must be one of {', '.join(map(str, PAGE_SIZES))}")
    page = int_param(request, "page", 1, 1, 1_000_000)
    q = queue_of(request)
    found, stats = await asyncio.gather(
        q.list_jobs(state=filters["state"], queue=filters["queue"], type=filters["type"], tenant=filters["tenant"],
                    labels=dict(where.labels), limit=size + 1, offset=(page - 1) * size, brief=True), q.stats())
    active = {k: v for k, v in filters.items() if v is not None}
    if size != 50:
        active["size"] = str(size)

    def link(**changes: Any) -> str:
        """This list's URL with some parameters changed (None or page 1: left out)."""
        params = dict(active)
        for k, v in changes.items():
            if v is None or (k == "page" and v == 1):
                params.pop(k, None)
            else:
                params[k] = str(v)
        return "/jobs" + (f"?{urlencode(params)}" if params else "")

    dead = sum(int(s["jobs"]) for s in stats if s["state"] == "dead"
               and (filters["queue"] is None or s["queue"] == filters["queue"]))
    return render(request, "jobs.html", {
        "jobs": found[:size], "filters": filters, "states": STATES, "page": page, "size": size,
        "sizes": PAGE_SIZES, "first": (page - 1) * size + 1, "has_next": len(found) > size,
        "link": link, "known_queues": sorted({s["queue"] for s in stats}), "dead": dead,
        "now": datetime.now(UTC), "filtered": where != JobFilter(),
    })


async def _parents(request: Request, job: JobRecord) -> list[dict[str, Any]]:
    q = queue_of(request)
    ids = job.depends_on[:MAX_PARENTS]
    found = await asyncio.gather(*(q.get(i) for i in ids), return_exceptions=True)
    parents = []
    for job_id, got in zip(ids, found, strict=True):
        if isinstance(got, JobRecord):
            parents.append({"id": job_id, "type": got.type, "queue": got.queue, "state": got.state.value})
        elif isinstance(got, JobNotFound):
            parents.append({"id": job_id, "type": None, "queue": None, "state": "purged"})
        else:
            raise got
    return parents


def _timeline(job: JobRecord) -> list[tuple[str, datetime]]:
    events = [("created", job.created_at), ("run at", job.run_at), ("started", job.started_at),
              ("finished", job.finished_at), ("updated", job.updated_at)]
    return sorted(((label, at) for label, at in events if at is not None), key=lambda e: e[1])


async def job_detail(request: Request) -> Response:
    job_id: int = request.path_params["job_id"]
    q = queue_of(request)
    job = await q.get(job_id)
    parents, children = await asyncio.gather(_parents(request, job), q.dependents(job_id))
    state = job.state.value
    ran = (job.finished_at - job.started_at).total_seconds() \
        if job.finished_at and job.started_at and job.finished_at >= job.started_at else None
    return render(request, "job.html", {
        "job": job, "state": state, "parents": parents, "more_parents": len(job.depends_on) - len(parents),
        "children": children, "timeline": _timeline(job), "ran": ran, "now": datetime.now(UTC),
        "can_retry": state in RETRYABLE, "can_cancel": state in CANCELLABLE and not job.cancel_requested,
        "live": state in LIVE,
    })
