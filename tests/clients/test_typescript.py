"""The TypeScript client (clients/typescript) against the same embedded PostgreSQL as the rest of the
suite: its own tests (node's test runner, on a fresh migrated database), then jobs crossing the
language boundary both ways: enqueued from Python, run by the TypeScript worker; enqueued from
TypeScript, run by the Python worker. tools/setup.sh --test installs its npm packages (``npm ci``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from skiplock import Job, JobRegistry, Queue, State
from tests.helpers import ROOT, eventually, running_worker
from tests.ship.tools import missing

CLIENT = ROOT / "clients" / "typescript"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        missing("node", "the Debian packages nodejs and npm, by tools/setup.sh --test as root")
    if not (CLIENT / "node_modules" / "typescript").is_dir():
        missing("clients/typescript/node_modules", "npm ci in clients/typescript, by tools/setup.sh --test")
    return node


@pytest.fixture(scope="session")
def built() -> Path:
    """The client compiled with tsc (its declarations too), once per session."""
    node = _node()
    started = time.monotonic()
    proc = subprocess.run([node, str(CLIENT / "node_modules" / "typescript" / "bin" / "tsc"), "-p", "tsconfig.json"],
                          cwd=CLIENT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"tsc failed:\n{proc.stdout}\n{proc.stderr}"
    print(f"tsc: {time.monotonic() - started:.1f}s")
    assert (CLIENT / "dist" / "src" / "index.d.ts").is_file()
    return CLIENT / "dist"


def _env(dsn: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": dsn, "SKIPLOCK_TEST_DATABASE_URL": dsn}


def test_the_typescript_client_passes_its_tests(built: Path, dsn: str) -> None:
    tests = sorted(str(p) for p in (built / "test").glob("*.test.js"))
    assert tests
    started = time.monotonic()
    proc = subprocess.run([_node(), "--test", "--test-concurrency=1", *tests], cwd=CLIENT, env=_env(dsn),
                          capture_output=True, text=True, timeout=240, check=False)
    print(proc.stdout[-3000:], f"\nnode --test: {time.monotonic() - started:.1f}s")
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert "# fail 0" in proc.stdout and "# pass 0" not in proc.stdout


async def test_python_enqueues_and_the_typescript_worker_runs(built: Path, queue: Queue, dsn: str) -> None:
    ids = await queue.enqueue_many([{"type": "ts.describe", "queue": "cross", "payload": {"n": n, "from": "python"}}
                                    for n in range(5)])
    proc = subprocess.run([_node(), str(built / "test" / "fixtures" / "worker.js"), "cross", "5"], cwd=CLIENT,
                          env=_env(dsn), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["processed"] == 5
    for n, job_id in enumerate(ids):
        job = await queue.get(job_id)
        assert job.state == State.COMPLETED and job.worker_id == summary["workerId"]
        assert job.result == {"n": n, "squared": n * n, "from": "python", "ranOn": "typescript"}


async def test_typescript_enqueues_and_the_python_worker_runs(built: Path, queue: Queue, dsn: str) -> None:
    proc = subprocess.run([_node(), str(built / "test" / "fixtures" / "enqueue.js"), "cross", "5"], cwd=CLIENT,
                          env=_env(dsn), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout)
    registry = JobRegistry()

    @registry.handler("py.describe")
    async def describe(job: Job) -> dict[str, object]:
        return {"n": job.payload["n"], "from": job.payload["from"], "labels": job.labels, "ranOn": "python"}

    async with running_worker(registry, dsn, queues=["cross"]):
        async def done() -> bool:
            return all([(await queue.get(i)).state == State.COMPLETED for i in ids])
        await eventually(done)
    for n, job_id in enumerate(ids):
        assert (await queue.get(job_id)).result == {"n": n, "from": "typescript", "labels": {"lang": "ts"},
                                                    "ranOn": "python"}
