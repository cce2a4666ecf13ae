"""The fleet benchmark (``python -m bench fleet``): N worker processes of small concurrency on one
PostgreSQL, directly and through PgBouncer (transaction mode, a pool of ``fleet_pool`` server
connections; LISTEN on the direct URL), at each fleet size of the profile. For each:

- connections: server connections (pg_stat_activity) of the idle fleet, and the most seen while it
  drains;
- idle cost: statements per second the whole idle fleet sends (pg_stat_statements calls, BEGIN and
  COMMIT included) over ``fleet_idle_s``;
- latency: enqueue-to-start of single jobs enqueued one at a time into the idle fleet (the job's
  ``started_at - created_at``, both on the server's clock), p50 and p95;
- drain: ``fleet_drain_per_worker`` jobs per worker enqueued at once, jobs/s from the first
  insert to the last finish (server clock);
- empty claims per finished job: the workers' own counts (claims that found nothing), over the
  whole run of the size (idle polls, wake-ups, the drain's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from skiplock import Queue
from skiplock.migrate import migrate

from .fleet_worker import JOB_TYPE
from .profiles import Profile
from .server import Server

ROOT = Path(__file__).resolve().parent.parent
MODES = ("direct", "pgbouncer")


def run(server: Server, profile: Profile) -> dict[str, Any]:
    results: dict[str, Any] = {"settings": {
        "sizes": list(profile.fleet_sizes), "concurrency": profile.fleet_concurrency, "pool": profile.fleet_pool,
        "idle_s": profile.fleet_idle_s, "singles": profile.fleet_singles,
        "drain_per_worker": profile.fleet_drain_per_worker}}
    for mode in MODES:
        for n in profile.fleet_sizes:
            _log(f"fleet: {n} workers, {mode}")
            results.setdefault(mode, {})[str(n)] = one(server, profile, mode, n)
    return results


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one(server: Server, profile: Profile, mode: str, n: int) -> dict[str, Any]:
    with server.database("fleet") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
        with _pooler(dsn, mode, profile.fleet_pool) as worker_dsn, \
                _workers(worker_dsn, dsn, n, profile.fleet_concurrency) as procs, \
                psycopg.connect(dsn, autocommit=True) as conn:
            _until(lambda: _ready(conn, n), 60 + n, "workers up")
            time.sleep(2.0)  # the first heartbeats, claims and maintenance round are over
            idle_connections = _connections(conn)
            before, t0 = _statements(conn), time.monotonic()
            time.sleep(profile.fleet_idle_s)
            idle_rate = (_statements(conn) - before) / (time.monotonic() - t0)
            latency = asyncio.run(_singles(dsn, conn, profile.fleet_singles))
            drain, busy_connections = _drain(dsn, conn, n * profile.fleet_drain_per_worker)
            counts = _stop(procs)
    finished = drain["jobs"] + latency["n"]  # every job enqueued finished (the drain waits for it)
    empty = sum(c["empty_claims"] for c in counts)
    return {"workers": n, "connections_idle": idle_connections, "connections_busy_max": busy_connections,
            "connections_per_worker_idle": idle_connections / n, "idle_statements_per_s": idle_rate,
            "start_ms": latency, "drain": drain, "finished": finished, "empty_claims": empty,
            "empty_claims_per_job": empty / finished if finished else None,
            "stop_timeouts": sum(c.get("stop_timeout", 0) for c in counts)}


@contextlib.contextmanager
def _pooler(dsn: str, mode: str, pool: int) -> Iterator[str]:
    if mode == "direct":
        yield dsn
        return
    from tests.pgbouncer import PgBouncer

    with PgBouncer(dsn, pool_size=pool) as bouncer:
        yield bouncer.url(dsn)


@contextlib.contextmanager
def _workers(dsn: str, listen: str, n: int, concurrency: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.fleet_worker", dsn, "-" if listen == dsn else listen, str(concurrency)],
                cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL))
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"a fleet worker failed to start (exit {proc.poll()})")
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _stop(procs: list[subprocess.Popen[bytes]]) -> list[dict[str, int]]:
    """SIGTERM every worker; their own counts (a worker still running after the deadline, on a
    machine this loaded, is killed and counted as nothing: ``stop_timeouts``)."""
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + 120 + len(procs)
    counts = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            counts.append({"claimed": 0, "empty_claims": 0, "finished": 0, "stop_timeout": 1})
            continue
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        counts.append(json.loads(lines[-1]) if lines else {"claimed": 0, "empty_claims": 0, "finished": 0})
    return counts


def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet benchmark: {what} not within {timeout:g}s")
        time.sleep(0.2)


def _ready(conn: psycopg.Connection[Any], n: int) -> bool:
    (workers,) = conn.execute("/* bench */ SELECT count(*) FROM skiplock.workers").fetchone() or (0,)
    (listening,) = conn.execute("/* bench */ SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND application_name = 'skiplock-listener'").fetchone() or (0,)
    return int(workers) >= n and int(listening) >= n


def _connections(conn: psycopg.Connection[Any]) -> int:
    (count,) = conn.execute("/* bench */ SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()").fetchone() or (0,)
    return int(count)


def _statements(conn: psycopg.Connection[Any]) -> int:
    """Statements run in this database so far, but the benchmark's own (which read pg_stat_*)."""
    (calls,) = conn.execute(
        "/* bench */ SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname = current_database() AND s.query NOT LIKE '%/* bench */%'").fetchone() or (0,)
    return int(calls)


async def _singles(dsn: str, conn: psycopg.Connection[Any], count: int) -> dict[str, float]:
    ids = []
    async with Queue(dsn, pool_size=1) as queue:
        for _ in range(count):
            ids.append(await queue.enqueue(JOB_TYPE))
            await asyncio.sleep(0.25)  # each job alone: the fleet idle again
    _until(lambda: _unfinished(conn) == 0, 60, "single jobs started")
    rows = conn.execute("/* bench */ SELECT extract(epoch FROM started_at - created_at) * 1000 FROM skiplock.jobs "
                        "WHERE id = ANY(%s)", (ids,)).fetchall()
    waits = sorted(float(r[0]) for r in rows)
    return {"n": len(waits), "p50": statistics.median(waits), "p95": waits[min(len(waits) - 1, int(0.95 * len(waits)))]}


def _unfinished(conn: psycopg.Connection[Any]) -> int:
    query = "/* bench */ SELECT count(*) FROM skiplock.jobs WHERE state <> 'completed'"
    (count,) = conn.execute(query).fetchone() or (0,)
    return int(count)


def _drain(dsn: str, conn: psycopg.Connection[Any], jobs: int) -> tuple[dict[str, float], int]:
    (mark,) = conn.execute("/* bench */ SELECT coalesce(max(id), 0) FROM skiplock.jobs").fetchone() or (0,)

    async def enqueue() -> None:
        async with Queue(dsn, pool_size=1) as queue:
            for start in range(0, jobs, 1000):
                await queue.enqueue_many([{"type": JOB_TYPE} for _ in range(min(1000, jobs - start))])

    asyncio.run(enqueue())
    busy = 0
    deadline = time.monotonic() + 600
    while _unfinished(conn):
        busy = max(busy, _connections(conn))
        if time.monotonic() > deadline:
            raise RuntimeError("fleet benchmark: the drain did not finish within 600s")
        time.sleep(0.2)
    (first, last) = conn.execute("/* bench */ SELECT extract(epoch FROM min(created_at)), "
                                 "extract(epoch FROM max(finished_at)) FROM skiplock.jobs WHERE id > %s",
                                 (mark,)).fetchone() or (0, 0)
    seconds = float(last) - float(first)
    return {"jobs": jobs, "seconds": seconds, "jobs_per_s": jobs / seconds if seconds > 0 else 0.0}, busy


