"""Sync handlers run in daemon threads: a handler that never returns cannot keep the process alive.

A worker gives up on a handler after its timeout or the shutdown grace and releases its job; the
thread may run on (Python cannot kill a thread), but it must not hold the process open after the
worker has stopped, as a pool executor's threads do (they are joined at interpreter exit). Idle
threads are reused; a new one starts only when none is idle, so a handler stuck in a C call
never makes the next job wait behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Work = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class DaemonThreads:
    """Runs callables in reusable daemon threads and hands their outcome to an asyncio future."""

    def __init__(self, name: str = "job") -> None:
        self.name = name
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` in a daemon thread; the running loop's future gets its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._started += 1
            else:
                self._idle -= 1  # that thread is taken
        self._work.put((loop, future, fn, args))
        if spawn:
            threading.Thread(target=self._serve, name=f"{self.name}-{self._started}", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            loop, future, fn, args = self._work.get()
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except BaseException as exc:  # delivered to the awaiting task, as an executor would
                outcome = (False, exc)
            with self._lock:  # idle before the outcome is seen: the awaiting task's next job reuses us
                self._idle += 1
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, future, *outcome)
            del loop, future, fn, args, outcome


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not future.done():
        (future.set_result if ok else future.set_exception)(value)


_threads = DaemonThreads()


def in_daemon_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Run ``fn(*args)`` in one of this process's daemon threads (see ``DaemonThreads``)."""
    return _threads.run(fn, *args)
