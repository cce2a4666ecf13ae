"""Test helpers: run workers in-process or as real processes, wait for conditions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg

from skiplock import JobRegistry, Worker, WorkerConfig

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def running_worker(registry: JobRegistry, dsn: str, **config: Any) -> AsyncIterator[Worker]:
    """An in-process worker for the duration of the block (stopped gracefully after)."""
    config.setdefault("poll_interval", 0.2)
    config.setdefault("recovery_interval", 0.5)
    worker = Worker(registry, dsn, WorkerConfig(**config))
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30, every: float = 0.1) -> None:
    """Wait until ``check()`` is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


def sql(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh connection; returns its rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def test_pythonpath() -> str:
    """tests/fixtures (for jobs_fixture) plus any inherited entries."""
    parts = [str(ROOT / "tests" / "fixtures"), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return os.pathsep.join(p for p in parts if p)


def cli(*args: str, dsn: str | None = None, env: dict[str, str] | None = None, input: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``skiplock`` command in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SKIPLOCK_DATABASE_URL")}
    full_env["PYTHONPATH"] = test_pythonpath()
    if dsn:
        full_env["DATABASE_URL"] = dsn
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "skiplock", *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout, cwd=ROOT)


def spawn_worker(dsn: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``skiplock worker`` as a real process (handlers from tests/fixtures/jobs_fixture.py by default)."""
    full_env = {**os.environ, "DATABASE_URL": dsn,
                "PYTHONPATH": test_pythonpath(),
                "SKIPLOCK_POLL_INTERVAL": "0.2", "SKIPLOCK_RECOVERY_INTERVAL": "0.5", **(env or {})}
    if "--handlers" not in args:
        args = ("--handlers", "jobs_fixture:jobs", *args)
    return subprocess.Popen([sys.executable, "-m", "skiplock", "worker", *args], env=full_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
