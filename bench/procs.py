"""Worker processes: every peer runs as the same number of OS processes, each one worker of that
peer. ``python -m bench.procs PEER DSN CONCURRENCY BATCH`` is one such process: it prints
``ready`` once started and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from . import peers
from .handler import PROBE_PORT_ENV

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def workers(peer: str, dsn: str, processes: int, concurrency: int, batch: int, probe_port: int | None = None,
            hard_stop: bool = False) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``processes`` workers of ``peer``, wait until each is up, stop them all after
    (SIGTERM, or SIGKILL with ``hard_stop`` when their jobs would outlast any grace period)."""
    # ``-m`` from the repository root finds ``bench``.
    env = dict(os.environ)
    if probe_port is not None:
        env[PROBE_PORT_ENV] = str(probe_port)
    procs = [subprocess.Popen([sys.executable, "-m", "bench.procs", peer, dsn, str(concurrency), str(batch)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
             for _ in range(processes)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"{peer} worker failed to start (exit {proc.poll()})")
        yield procs
    finally:
        stop(procs, grace=0.0 if hard_stop else 15.0)


def stop(procs: list[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if grace else signal.SIGKILL)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def alive(procs: list[subprocess.Popen[bytes]]) -> None:
    dead = [p.returncode for p in procs if p.poll() is not None]
    if dead:
        raise RuntimeError(f"a worker process exited early (exit codes {dead})")


async def _main(peer_name: str, dsn: str, concurrency: int, batch: int) -> None:
    peer = peers.get(peer_name)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print("ready", flush=True)
    await peer.work(dsn, peers.WorkerSettings(concurrency, batch), stopping)


if __name__ == "__main__":
    name, url, conc, size = sys.argv[1:5]
    asyncio.run(_main(name, url, int(conc), int(size)))
