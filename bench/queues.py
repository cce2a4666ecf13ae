"""Queue throughput and latency, every peer on the same server with the same worker processes:

- continuous: a producer keeps a backlog while the workers consume; finished jobs/s over a window;
- drain: jobs inserted up front, then the workers empty the queue; jobs/s and time to empty;
- latency: idle workers, enqueue -> handler start, one job at a time and in bursts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg

from . import peers, procs
from .probe import Listener
from .profiles import Profile
from .server import CpuMeter, Server
from .stats import summary

AsyncConn = psycopg.AsyncConnection[Any]


def marked(sql: str) -> str:
    """The coordinator's own statements carry a comment after their first word (pg_stat_statements
    drops leading comments), so the peers' statement counts can leave them out."""
    first, rest = sql.lstrip().split(None, 1)
    return f"{first} /* bench */ {rest}"


async def _count(conn: AsyncConn, sql: str) -> int:
    cur = await conn.execute(marked(sql))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def counters(dsn: str) -> dict[str, int]:
    """This database's committed transactions and the statements its clients ran (not ours)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(marked(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), "
            "(SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            " WHERE d.datname = current_database() AND s.query NOT LIKE %s)"), ("%/* bench */%",)).fetchone()
    assert row is not None
    return {"commits": int(row[0] or 0), "statements": int(row[1] or 0)}


def per_job(result: dict[str, Any], before: dict[str, int], after: dict[str, int], jobs: int,
            cpu: dict[str, float], ours: int = 0) -> None:
    """Add commits, statements and CPU milliseconds per finished job to ``result``."""
    if jobs <= 0:
        return
    result["commits_per_job"] = max(0, after["commits"] - before["commits"] - ours) / jobs
    result["statements_per_job"] = (after["statements"] - before["statements"]) / jobs
    result["worker_cpu_ms_per_job"] = 1000 * cpu["workers_cpu_s"] / jobs
    result["server_cpu_ms_per_job"] = 1000 * cpu["server_cpu_s"] / jobs


def _workers(peer: peers.Peer, dsn: str, profile: Profile, probe_port: int | None = None) -> Any:
    return procs.workers(peer.name, dsn, profile.processes, profile.concurrency, profile.batch, probe_port)


# -- continuous ---------------------------------------------------------------------------------

def _with_probed_workers(server: Server, profile: Profile, peer_name: str,
                         body: Callable[[peers.Peer, str, list[Any], Listener], Coroutine[Any, Any, dict[str, Any]]],
                         ) -> dict[str, Any]:
    """Run ``body`` with the peer's worker processes up on a fresh database, probes reporting
    handler starts to a listener; fail if a worker died meanwhile."""
    peer = peers.get(peer_name)
    listener = Listener()
    try:
        with server.database(peer.name) as dsn:
            peer.setup(dsn)
            with _workers(peer, dsn, profile, listener.port) as workers:
                result = asyncio.run(body(peer, dsn, workers, listener))
                procs.alive(workers)
    finally:
        listener.close()
    return result


def continuous(server: Server, profile: Profile, peer_name: str) -> dict[str, Any]:
    return _with_probed_workers(server, profile, peer_name, lambda peer, dsn, workers, listener: _continuous(
        peer, dsn, profile, CpuMeter(server, [p.pid for p in workers]), listener))


async def _continuous(peer: peers.Peer, dsn: str, profile: Profile, meter: CpuMeter,
                      listener: Listener) -> dict[str, Any]:
    """Producers (each its own client) keep about ``profile.backlog`` jobs waiting: they know what
    they enqueued and what the handlers report as handled, so they never query the database. The
    finished count is read from the database at the two ends of the window."""
    stop = asyncio.Event()
    enqueued = 0
    low_water: list[int] = []

    async def produce(enqueue: peers.Enqueue) -> None:
        nonlocal enqueued
        batch: list[dict[str, Any] | None] = [None] * profile.producer_batch
        while not stop.is_set():
            backlog = enqueued - listener.handled
            low_water.append(backlog)
            if backlog >= profile.backlog:
                await asyncio.sleep(0.005)
                continue
            await enqueue(batch)
            enqueued += len(batch)

    listener.attach()
    try:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(peer.producer(dsn)) for _ in range(profile.producers)]
            count = await stack.enter_async_context(await psycopg.AsyncConnection.connect(dsn, autocommit=True))
            producers = [asyncio.create_task(produce(enqueue)) for enqueue in clients]
            await asyncio.sleep(profile.warmup_s)
            before = counters(dsn)
            done0, t0 = await _count(count, peer.done_sql), time.perf_counter()
            meter.start()
            low_water.clear()
            await asyncio.sleep(profile.window_s)
            done1, t1 = await _count(count, peer.done_sql), time.perf_counter()
            cpu = meter.stop()
            after = counters(dsn)
            stop.set()
            await asyncio.gather(*producers)
    finally:
        listener.detach()
    result = {"jobs_per_s": (done1 - done0) / (t1 - t0), "jobs": done1 - done0, "window_s": t1 - t0,
              "min_backlog": min(low_water) if low_water else 0, "enqueued": enqueued}
    per_job(result, before, after, done1 - done0, cpu)
    result.pop("commits_per_job")  # pg_stat_database lags by up to a second: counted in drain only
    return result


# -- drain --------------------------------------------------------------------------------------

def drain(server: Server, profile: Profile, peer_name: str, jobs: int | None = None) -> dict[str, Any]:
    peer = peers.get(peer_name)
    total = jobs or profile.drain_jobs
    with server.database(peer.name) as dsn:
        peer.setup(dsn)
        started = time.perf_counter()
        asyncio.run(_fill(peer, dsn, total))
        enqueue_s = time.perf_counter() - started
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        before = counters(dsn)
        with _workers(peer, dsn, profile) as workers:
            meter = CpuMeter(server, [p.pid for p in workers])
            meter.start()
            result = asyncio.run(_drain(peer, dsn, total, profile.drain_cap_s))
            cpu = meter.stop()
            procs.alive(workers)
        time.sleep(0.5)  # exiting backends flush their statistics
        after = counters(dsn)
    per_job(result, before, after, result["finished"], cpu, ours=result.pop("probes") + 1)
    result["enqueue_jobs_per_s"] = total / enqueue_s
    return result


async def _fill(peer: peers.Peer, dsn: str, total: int, batch: int = 1000) -> None:
    async with peer.producer(dsn) as enqueue:
        for start in range(0, total, batch):
            await enqueue([None] * min(batch, total - start))


async def _drain(peer: peers.Peer, dsn: str, total: int, cap_s: float) -> dict[str, Any]:
    """Time from the first finished job to an empty queue. Between the two counts, only a cheap
    EXISTS probe runs (a count every 100 ms would itself load the server)."""
    any_left = _exists(peer.remaining_sql)
    probes = 0

    async def probe(sql: str) -> int:
        nonlocal probes
        probes += 1
        return await _count(mon, sql)

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as mon:
        launched = time.perf_counter()
        while await probe(_exists(peer.done_sql)) == 0:
            if time.perf_counter() - launched > 60:
                raise RuntimeError(f"{peer.name}: no job finished within 60s")
            await asyncio.sleep(0.02)
        first_at, first_left = time.perf_counter(), await probe(peer.remaining_sql)
        complete = True
        while await probe(any_left):
            if time.perf_counter() - first_at > cap_s:
                complete = False
                break
            await asyncio.sleep(0.1)
        end_at = time.perf_counter()
        remaining = 0 if complete else await probe(peer.remaining_sql)
    elapsed = end_at - first_at
    rate = (first_left - remaining) / elapsed
    return {"jobs": total, "jobs_per_s": rate, "complete": complete, "finished": total - remaining,
            "seconds": elapsed if complete else None, "seconds_estimated": first_left / rate if rate else None,
            "probes": probes}


def _exists(count_sql: str) -> str:
    """``SELECT count(*) FROM t WHERE c`` as ``SELECT EXISTS (SELECT 1 FROM t WHERE c)::int``."""
    assert count_sql.startswith("SELECT count(*) FROM ")
    return "SELECT EXISTS (SELECT 1 FROM " + count_sql.removeprefix("SELECT count(*) FROM ") + ")::int"


# -- latency ------------------------------------------------------------------------------------

def latency(server: Server, profile: Profile, peer_name: str) -> dict[str, Any]:
    return _with_probed_workers(server, profile, peer_name,
                                lambda peer, dsn, _workers, listener: _latency(peer, dsn, profile, listener))


async def _latency(peer: peers.Peer, dsn: str, profile: Profile, listener: Listener) -> dict[str, Any]:
    """Enqueue -> handler start, measured by the handler against the producer's clock (one
    machine): single jobs with short random gaps, then bursts of ``burst_size`` in one call."""
    seen = listener.latencies_ms
    listener.attach()
    try:
        async with peer.producer(dsn) as enqueue:
            await asyncio.sleep(1.0)  # let every worker reach its idle wait
            await enqueue([{"t": time.time()}])  # warm-up job, not counted
            await listener.wait_latencies(1, 30, peer.name)
            seen.clear()
            for _ in range(profile.singles):
                await asyncio.sleep(random.uniform(0.02, 0.06))
                expected = len(seen) + 1  # counted first: the job may start before enqueue returns
                await enqueue([{"t": time.time()}])
                await listener.wait_latencies(expected, 30, peer.name)
            singles = list(seen)
            seen.clear()
            for _ in range(profile.bursts):
                await asyncio.sleep(0.3)
                expected = len(seen) + profile.burst_size
                await enqueue([{"t": time.time()}] * profile.burst_size)
                await listener.wait_latencies(expected, 60, peer.name)
            bursts = list(seen)
    finally:
        listener.detach()
    return {"single_ms": summary(singles), "burst_ms": summary(bursts), "burst_size": profile.burst_size}
