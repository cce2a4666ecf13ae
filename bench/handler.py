"""The job every peer runs: a no-op that counts itself, and optionally reports when it started
(latency) or sleeps (long-running jobs for the lease benchmark). The same code runs under every
peer's worker, so it costs them all the same."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

PROBE_PORT_ENV = "BENCH_PROBE_PORT"
JOB_TYPE = "noop"
COUNT_EVERY = 50  # a worker process reports its running total every this many jobs


class Probe:
    """Reports to the coordinator over UDP (loopback): ``L enqueued_at started_at`` for a job that
    asked for it, ``C pid total`` every COUNT_EVERY jobs. Silent without BENCH_PROBE_PORT."""

    def __init__(self) -> None:
        port = os.environ.get(PROBE_PORT_ENV)
        self.addr = ("127.0.0.1", int(port)) if port else None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if self.addr else None
        self.pid = os.getpid()

    def _send(self, text: str) -> None:
        if self.sock and self.addr:
            self.sock.sendto(text.encode(), self.addr)

    def started(self, enqueued_at: float) -> None:
        self._send(f"L {enqueued_at!r} {time.time()!r}")

    def total(self, count: int) -> None:
        self._send(f"C {self.pid} {count}")


_probe: Probe | None = None
_handled = 0


async def handle(payload: Any) -> None:
    """The handler body: count; report the start if the payload carries ``t``; sleep ``sleep``."""
    global _probe, _handled
    if _probe is None:
        _probe = Probe()
    _handled += 1
    if _handled % COUNT_EVERY == 0:
        _probe.total(_handled)
    if not payload:
        return
    if "t" in payload:
        _probe.started(float(payload["t"]))
    if "sleep" in payload:
        await asyncio.sleep(float(payload["sleep"]))
