"""The SQL floor: pgbench running skiplock's own ``claim`` and ``finish`` statements (and the
``propagate`` that the worker sends in the same transaction) with no Python in the loop.

The statements come from ``skiplock.sql.QUERIES`` and are translated here, never copied: psycopg
placeholders ``%(name)s`` become pgbench variables ``:name``. One pgbench transaction is what a
worker does per batch: the claim (its own commit), then finish + propagate in one transaction.
The claimed rows are folded into the finish batch by wrapping the claim in a CTE whose single
output row ``\\gset`` stores, since pgbench variables hold one value each.

The floor is the best any client count (``profile.floor_clients``: 1, 2, 4, 8) reaches at each
batch, all in the same run; the *batched floor* is the best over the batches the worker uses
(every measured batch above 1), so "x % of the floor" never flatters.

The *latency floor* (``latency``): an idle listener process (its own connection, LISTEN) and a
producer connection. The producer commits skiplock's ``enqueue`` of one job (INSERT + NOTIFY, one
statement, one commit); the listener wakes on the notification and commits skiplock's ``claim``
of one row (SKIP LOCKED). Measured from the producer's start to the claim's commit, on one clock:
what PostgreSQL allows for enqueue -> claimed, with a Python client that does nothing else.
"""

from __future__ import annotations

import math
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from skiplock import plans
from skiplock.models import make_spec
from skiplock.retry import DEFAULT
from skiplock.sql import QUERIES

from .handler import JOB_TYPE
from .profiles import Profile
from .server import Server

_PARAM = re.compile(r"%\((\w+)\)s")
WORKER_ID = "pgbench-floor"
_COMMENT = re.compile(r"--[^'\n]*$", re.MULTILINE)  # a trailing comment (none inside a string literal)


def to_pgbench(sql: str) -> str:
    """One line of pgbench SQL: comments dropped (joined, one would swallow the rest), placeholders
    become ``:variables``."""
    return " ".join(_PARAM.sub(r":\1", _COMMENT.sub("", sql)).split())


def cycle_script(replenish: bool = False) -> str:
    """One worker cycle: claim up to :limit jobs, then finish them as completed. With
    ``replenish``, the cycle also enqueues :limit new jobs (the ``enqueue`` statement), so a
    backlog keeps its size while it is measured."""
    claim = to_pgbench(QUERIES["claim"])
    batch = ("coalesce(jsonb_agg(jsonb_build_object('id', id, 'attempt', attempts, 'outcome', 'completed', "
             "'result', NULL, 'error', NULL)), '[]'::jsonb) AS batch, coalesce(array_agg(id), '{}') AS ids")
    lines = [f"WITH claimed AS ({claim}) SELECT {batch} FROM claimed \\gset",
             "BEGIN;",
             to_pgbench(QUERIES["finish"]) + ";",
             to_pgbench(QUERIES["propagate"]) + ";",
             "COMMIT;"]
    if replenish:
        lines.append(to_pgbench(QUERIES["enqueue"]) + ";")
    return "\n".join(lines) + "\n"


def defines(batch: int, replenish: bool = False) -> dict[str, str]:
    """Values of the script's variables, as the worker would pass them."""
    values = {"queue": "default", "types": "{" + JOB_TYPE + "}", "limit": str(batch), "worker_id": WORKER_ID,
              "lease_seconds": "30", "retry_policy": DEFAULT.as_json()}
    if replenish:
        plan = plans.enqueue([make_spec(JOB_TYPE, payload={}) for _ in range(batch)])
        ((name, params),) = next(plan)
        assert name == "enqueue"
        values["jobs"] = str(params["jobs"])
    return values


def pgbench(server: Server, dsn: str, script: str, values: dict[str, str], clients: int,
            transactions: int | None = None, seconds: float | None = None) -> dict[str, Any]:
    """Run pgbench (prepared statements); returns its tps, mean latency and the wall time."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = Path(f.name)
    args = [server.bin("pgbench"), "-n", "-M", "prepared", "-f", str(path), "-c", str(clients), "-j", str(clients)]
    args += ["-t", str(transactions)] if transactions else ["-T", str(max(1, round(seconds or 10)))]
    for key, value in values.items():
        args += ["-D", f"{key}={value}"]
    args.append(dsn)
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    path.unlink(missing_ok=True)
    if proc.returncode:
        raise RuntimeError(f"pgbench failed: {proc.stderr.strip()[-2000:]}")
    tps = re.search(r"tps = ([\d.]+)", proc.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", proc.stdout)
    return {"tps": float(tps.group(1)) if tps else math.nan, "latency_ms": float(lat.group(1)) if lat else math.nan,
            "wall_s": wall}


def fill(dsn: str, jobs: int) -> None:
    """Insert ``jobs`` pending jobs through skiplock's own enqueue (batches of 5000)."""
    import asyncio

    from .peers import get

    async def go() -> None:
        async with get("skiplock").producer(dsn) as enqueue:
            for start in range(0, jobs, 5000):
                await enqueue([None] * min(5000, jobs - start))

    asyncio.run(go())


def drain(server: Server, dsn: str, jobs: int, batch: int, clients: int) -> dict[str, Any]:
    """Empty a queue of ``jobs`` with pgbench; jobs/s over pgbench's run."""
    fill(dsn, jobs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE skiplock.jobs")
        conn.execute("CHECKPOINT")
    per_client = math.ceil(jobs / batch / clients) + 1
    out = pgbench(server, dsn, cycle_script(), defines(batch), clients, transactions=per_client)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'").fetchone()
    done = int(row[0]) if row else 0
    if done != jobs:
        raise RuntimeError(f"pgbench floor finished {done} of {jobs} jobs")
    return {"batch": batch, "clients": clients, "jobs": jobs, "jobs_per_s": jobs / out["wall_s"],
            "cycle_latency_ms": out["latency_ms"], "commits_per_job": 2 / batch}


def batches(profile: Profile) -> list[int]:
    """The batches measured: the profile's, the worker's claim batch and its concurrency."""
    return sorted({*profile.floor_batches, profile.batch, profile.concurrency})


def run(server: Server, profile: Profile) -> dict[str, Any]:
    from .peers.skiplock_peer import SkiplockPeer

    results = []
    for batch in batches(profile):
        jobs = profile.drain_jobs if batch > 1 else max(1000, profile.drain_jobs // 20)  # ~2 commits/job: slow
        for clients in profile.floor_clients:
            with server.database("floor") as dsn:
                SkiplockPeer().setup(dsn)
                results.append(drain(server, dsn, jobs, batch, clients))
    best: dict[int, dict[str, Any]] = {}
    for r in results:
        if r["batch"] not in best or r["jobs_per_s"] > best[r["batch"]]["jobs_per_s"]:
            best[r["batch"]] = r
    for r in results:
        r["best_for_batch"] = r is best[r["batch"]]
    batched = [r for r in best.values() if r["batch"] > 1] or list(best.values())
    top = max(batched, key=lambda r: r["jobs_per_s"])
    with server.database("floor_latency") as dsn:
        SkiplockPeer().setup(dsn)
        lat = latency(dsn, profile.singles)
    return {"runs": results, "script": cycle_script(), "clients": list(profile.floor_clients),
            "batched": {"jobs_per_s": top["jobs_per_s"], "batch": top["batch"], "clients": top["clients"]},
            "latency": lat}


# -- latency floor --------------------------------------------------------------------------------

def _claim_params() -> dict[str, Any]:
    return {"queue": "default", "types": [JOB_TYPE], "limit": 1, "worker_id": WORKER_ID, "lease_seconds": 30}


def _listen(dsn: str, ready: Any, out: Any, count: int) -> None:
    """The idle listener (its own process): wait for a notification, claim one job, commit; send
    (woken at, claimed at) as epoch seconds for each job."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        conn.execute("LISTEN skiplock_jobs")
        claim = QUERIES["claim"]
        conn.execute(claim, _claim_params())  # warm: plan and caches, claims nothing
        ready.set()
        done = 0
        while done < count:
            if not list(conn.notifies(timeout=60, stop_after=1)):
                return
            woken = time.time()
            while True:
                rows = conn.execute(claim, _claim_params()).fetchall()
                if not rows:
                    break
                out.send((woken, time.time()))
                done += 1


def latency(dsn: str, count: int) -> dict[str, Any]:
    """Producer start -> claim commit for ``count`` single jobs with short random gaps; p50/p95,
    with the parts: producer's commit returned, listener woken, claim committed."""
    import multiprocessing
    import random

    from .stats import summary

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_listen, args=(dsn, ready, send, count + 1), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("latency floor: the listener did not start")
        ((_, params),) = next(plans.enqueue([make_spec(JOB_TYPE, payload={})]))
        total, commit, wake, claim = [], [], [], []
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
            for n in range(count + 1):  # the first is a warm-up
                time.sleep(random.uniform(0.02, 0.06))
                started = time.time()
                conn.execute(QUERIES["enqueue"], params)
                committed = time.time()
                if not recv.poll(30):
                    raise RuntimeError("latency floor: no claim within 30 s")
                woken, claimed = recv.recv()
                if n:
                    total.append((claimed - started) * 1000)
                    commit.append((committed - started) * 1000)
                    wake.append((woken - started) * 1000)
                    claim.append((claimed - woken) * 1000)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return {"total_ms": summary(total), "enqueue_commit_ms": summary(commit), "wake_ms": summary(wake),
            "claim_ms": summary(claim), "jobs": count}
