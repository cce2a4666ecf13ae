"""Rate and concurrency limits: what the limit-aware claim costs, and how exactly limits hold.

- throughput: the drain (same jobs, same worker processes x concurrency as ``queues.drain``) with
  no limit, then with a limit on the job type that never binds (concurrency and rate far above
  what can run), so the workers claim through ``claim_limited`` instead of the plain ``claim``;
- concurrency: sleeping jobs under a binding concurrency limit, several worker processes; the
  most handler runs that overlapped, against the limit;
- rate: no-op jobs under a binding rate limit; starts per second over the run and the most starts
  in any one-second window, against the limit.

Limits are set through ``skiplock.Queue.set_limit`` before the workers start (a worker reads them
at its first claim). Overlap is measured on intervals that always contain the handler's run and
never exceed the job's committed ``running`` state: from the handler's own start report (after
the claim committed) to the job's ``finished_at`` (the finishing transaction, after the handler
returned). Start times for the rate are the jobs' ``started_at`` (the claiming transaction's
clock, the one the limit's token bucket runs on). Everything runs on one machine, one clock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from skiplock import Queue
from skiplock.plans import RATE_BURST_SECONDS

from . import peers, procs, queues
from .handler import JOB_TYPE
from .probe import Listener
from .profiles import Profile
from .server import CpuMeter, Server

PEER = "skiplock"
# A limit no run can reach: the claim takes the limit-aware path, the limit never holds a job back.
OPEN_CONCURRENCY = 1_000_000
OPEN_RATE = 1e9


def run(server: Server, profile: Profile) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(profile.rounds):  # interleaved, each side's best counts (as the drain does)
        runs["off"].append(drain(server, profile, limited=False))
        runs["on"].append(drain(server, profile, limited=True))
    best = {side: max(rs, key=lambda r: r["jobs_per_s"]) for side, rs in runs.items()}
    if profile.rounds > 1:
        best = {side: {**best[side], "rounds_jobs_per_s": [r["jobs_per_s"] for r in rs]} for side, rs in runs.items()}
    off, on = best["off"]["jobs_per_s"], best["on"]["jobs_per_s"]
    return {
        "settings": {"processes": profile.processes, "concurrency": profile.concurrency,
                     "accuracy_processes": _accuracy_processes(profile), "drain_jobs": profile.drain_jobs,
                     "rounds": profile.rounds, "open_concurrency": OPEN_CONCURRENCY, "open_rate": OPEN_RATE,
                     "burst_seconds": RATE_BURST_SECONDS},
        "throughput": {"off": best["off"], "on": best["on"], "ratio_on_off": on / off if off else None},
        "concurrency": concurrency(server, profile),
        "rate": rate(server, profile),
    }


def _accuracy_processes(profile: Profile) -> int:
    return max(2, profile.processes)  # a limit holds across workers: never measure it on one alone


async def _set_limit(dsn: str, *, concurrency: int | None = None, rate: float | None = None) -> None:
    async with Queue(dsn, pool_size=1) as queue:
        await queue.set_limit(JOB_TYPE, concurrency=concurrency, rate=rate)


async def _enqueue(peer: peers.Peer, dsn: str, payloads: list[dict[str, Any] | None], batch: int = 1000) -> None:
    async with peer.producer(dsn) as enqueue:
        for start in range(0, len(payloads), batch):
            await enqueue(payloads[start:start + batch])


# -- throughput ---------------------------------------------------------------------------------

def drain(server: Server, profile: Profile, limited: bool) -> dict[str, Any]:
    """``queues.drain`` for skiplock, with the open limit set first when ``limited``."""
    peer = peers.get(PEER)
    total = profile.drain_jobs
    with server.database(peer.name) as dsn:
        peer.setup(dsn)
        if limited:
            asyncio.run(_set_limit(dsn, concurrency=OPEN_CONCURRENCY, rate=OPEN_RATE))
        asyncio.run(_enqueue(peer, dsn, [None] * total))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        before = queues.counters(dsn)
        with procs.workers(peer.name, dsn, profile.processes, profile.concurrency, profile.batch) as workers:
            meter = CpuMeter(server, [p.pid for p in workers])
            meter.start()
            result = asyncio.run(queues._drain(peer, dsn, total, profile.drain_cap_s))
            cpu = meter.stop()
            procs.alive(workers)
        time.sleep(0.5)  # exiting backends flush their statistics
        after = queues.counters(dsn)
    queues.per_job(result, before, after, result["finished"], cpu, ours=result.pop("probes") + 1)
    return result


# -- accuracy -----------------------------------------------------------------------------------

def _run_limited(server: Server, profile: Profile, payloads: list[dict[str, Any] | None], timeout_s: float,
                 **limit: Any) -> tuple[dict[float, float], list[tuple[float, float, float]], float]:
    """Set ``limit``, enqueue ``payloads``, run the workers until every job completed. Returns the
    handlers' start reports, each job's (key, started_at, finished_at) as epoch seconds, and the
    wall time from the workers' start to the last completion."""
    peer = peers.get(PEER)
    listener = Listener()
    try:
        with server.database(peer.name) as dsn:
            peer.setup(dsn)
            asyncio.run(_set_limit(dsn, **limit))
            asyncio.run(_enqueue(peer, dsn, payloads))
            with procs.workers(peer.name, dsn, _accuracy_processes(profile), profile.concurrency, profile.batch,
                               listener.port) as workers:
                started = time.perf_counter()
                asyncio.run(_until_done(dsn, listener, len(payloads), timeout_s))
                elapsed = time.perf_counter() - started
                procs.alive(workers)
            with psycopg.connect(dsn, autocommit=True) as conn:
                rows = conn.execute(queues.marked(
                    "SELECT coalesce((payload->>'t')::float8, -1), extract(epoch FROM started_at)::float8, "
                    "extract(epoch FROM finished_at)::float8 FROM skiplock.jobs WHERE state = 'completed'"
                )).fetchall()
    finally:
        listener.close()
    return dict(listener.starts), [(float(k), float(s), float(f)) for k, s, f in rows], elapsed


async def _until_done(dsn: str, listener: Listener, total: int, timeout_s: float) -> None:
    listener.attach()  # read the handlers' reports while waiting
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            deadline = time.perf_counter() + timeout_s
            while True:
                cur = await conn.execute(queues.marked(
                    "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'"))
                row = await cur.fetchone()
                done = int(row[0]) if row else 0
                if done >= total:
                    return
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"limits: {done} of {total} jobs completed in {timeout_s:.0f}s")
                await asyncio.sleep(0.05)
    finally:
        listener.detach()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an interval ending when another starts: not both)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most of ``times`` inside any half-open window of ``window`` seconds."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def concurrency(server: Server, profile: Profile) -> dict[str, Any]:
    limit, sleep, jobs = profile.limit_concurrency, profile.limit_sleep_s, profile.limit_concurrency_jobs
    ideal_s = jobs / limit * sleep
    starts, rows, elapsed = _run_limited(
        server, profile, [{"t": float(i), "sleep": sleep} for i in range(jobs)], 60 + 5 * ideal_s,
        concurrency=limit)
    missing = [k for k, _, _ in rows if k not in starts]
    if missing:
        raise RuntimeError(f"limits: no start report from {len(missing)} of {len(rows)} jobs")
    intervals = [(starts[k], finished) for k, _, finished in rows]
    db = [(started, finished) for _, started, finished in rows]
    return {"configured": limit, "observed_max": max_overlap(intervals), "jobs": len(rows), "sleep_s": sleep,
            "seconds": elapsed, "jobs_per_s": len(rows) / elapsed, "ideal_jobs_per_s": limit / sleep,
            "mean_running": sum(f - s for s, f in intervals) / (max(f for _, f in db) - min(s for s, _ in db))}


def rate(server: Server, profile: Profile) -> dict[str, Any]:
    limit, jobs = profile.limit_rate, profile.limit_rate_jobs
    _, rows, elapsed = _run_limited(server, profile, [None] * jobs, 60 + 5 * jobs / limit, rate=limit)
    times = sorted(started for _, started, _ in rows)
    span = times[-1] - times[0]
    observed = (len(times) - 1) / span if span > 0 else float("inf")
    window = max_in_window(times)
    return {"configured_per_s": limit, "observed_per_s": observed, "ratio": observed / limit,
            "max_in_1s": window, "max_in_1s_ratio": window / limit,
            "bound_in_1s": limit + max(1.0, limit * RATE_BURST_SECONDS), "jobs": len(times), "span_s": span,
            "seconds": elapsed}
