"""The loop-lag watchdog: a handler that blocks the event loop (an ``async def`` handler that calls
``time.sleep``, a blocking client, a long computation) stops everything else in the worker - the
heartbeats that keep its leases, the other jobs, and SIGTERM handling - until it returns. The loop
ticks every TICK seconds; a daemon thread watches the ticks and, once the loop has been stuck for
``threshold`` seconds, logs a warning naming the line it is stuck on and the job types running,
while it is stuck. When the loop turns again, how long it was blocked is logged too."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

from .service import Service

log = logging.getLogger("skiplock.worker")
TICK = 0.1
ADVICE = ("an async handler must not block: await instead, or make it a plain def (sync handlers run in "
          "threads); until it returns, heartbeats, other jobs and SIGTERM wait")


class LoopWatchdog(Service):
    """Ticks on the loop (``last_tick``, which liveness reads) and warns about a blocked loop.
    ``threshold`` 0: ticks only, no warnings. ``running`` describes the jobs running (for the warning)."""

    name = "watchdog"

    def __init__(self, threshold: float, running: Callable[[], str] = lambda: "") -> None:
        super().__init__()
        self.threshold, self.running_jobs = threshold, running
        self.last_tick = time.monotonic()
        self.warnings = 0
        self._loop_thread = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        self.last_tick = time.monotonic()
        self._loop_thread = threading.get_ident()
        if self.threshold > 0 and (self._thread is None or not self._thread.is_alive()):
            self._done.clear()
            self._thread = threading.Thread(target=self._watch, name="skiplock-watchdog", daemon=True)
            self._thread.start()

    async def stopped(self) -> None:
        self._done.set()

    async def run(self) -> None:
        while True:
            self.last_tick = time.monotonic()
            await asyncio.sleep(TICK)
            lag = time.monotonic() - self.last_tick - TICK
            if self.threshold > 0 and lag >= self.threshold:
                log.warning("the event loop was blocked for %.1fs: %s", lag, ADVICE)

    def _watch(self) -> None:
        warned_for = None
        while not self._done.wait(min(self.threshold / 2, 1.0)):
            tick = self.last_tick
            stuck = time.monotonic() - tick
            if stuck < self.threshold or warned_for == tick:
                continue
            warned_for = tick
            self.warnings += 1
            log.warning("the event loop is blocked (%.1fs so far) at %s; running: %s - %s", stuck,
                        self._where(), self._running() or "no job", ADVICE)

    def _where(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "an unknown place"
        last = traceback.extract_stack(frame, limit=None)[-1]
        return f"{last.filename}:{last.lineno} in {last.name}"

    def _running(self) -> str:
        try:
            return self.running_jobs()
        except RuntimeError:  # the job set changed under us: the loop is moving again
            return "?"
