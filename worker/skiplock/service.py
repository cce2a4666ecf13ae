"""The start/stop contract every part of a worker follows (as River's maintenance services do).

- ``start()`` begins the service on the running event loop and returns at once; starting a
  service that runs does nothing.
- ``await stop()`` asks it to end and returns once it has: its loop is cancelled at an await (again
  if a cancel was lost), then ``stopped()`` does its last work (the completer records what it holds,
  the executor drains).
  Stopping a service that is not running does nothing.
- A service whose loop fails with anything but a database outage (each loop rides those out
  itself) logs the error and starts its loop over after a pause: a support service never dies
  silently while the worker runs.

A service owns no connection: it is handed a ``Database`` (and the worker decides how many
connections that holds), so the same service runs in a worker, in the operator, or beside a loop
that claims jobs itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .metrics import WorkerMetrics

log = logging.getLogger("skiplock.worker")
RESTART_PAUSE = 1.0
CANCEL_AGAIN = 1.0
"""Seconds after which ``stop()`` cancels a loop again that is still running: a cancel can be lost
(Python 3.11's ``asyncio.wait_for``, which psycopg_pool uses to wait for a connection, returns the
result instead of raising when the cancel and the result arrive together), and a loop that missed it
would keep the worker from ever stopping."""


class Service:
    """Base of the services; subclasses implement ``run`` (the loop) and may extend ``stopped``."""

    name: ClassVar[str] = "service"
    restart_on_error: ClassVar[bool] = True

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Begin the loop on the running event loop (no-op if running)."""
        if not self.running:
            self._task = asyncio.create_task(self._guarded(), name=f"skiplock-{self.name}")

    async def stop(self) -> None:
        """End the loop, then run ``stopped()`` (no-op if never started)."""
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)
        await self.stopped()

    async def wait(self) -> None:
        """Until the loop ends by itself (or raises, for a service that does not restart)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def run(self) -> None:
        raise NotImplementedError

    async def stopped(self) -> None:
        """Last work after the loop ended (nothing by default)."""

    async def _guarded(self) -> None:
        while True:
            try:
                await self.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if not self.restart_on_error:
                    raise
                log.exception("%s: unexpected error; starting over in %gs", self.name, RESTART_PAUSE)
                await asyncio.sleep(RESTART_PAUSE)


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and return once each has ended; one still running ``CANCEL_AGAIN`` seconds
    after a cancel is cancelled again (its cancel was lost)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN)
    await asyncio.gather(*tasks, return_exceptions=True)


def note_db_error(metrics: WorkerMetrics, operation: str, exc: BaseException) -> None:
    """Count and log a database outage met by ``operation`` (the loop retries on its own)."""
    metrics.db_errors.labels(operation).inc()
    log.warning("%s: database unavailable (%s); retrying", operation, exc)
