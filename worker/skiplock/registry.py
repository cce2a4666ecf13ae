"""Handlers by job type, and the ``Job`` a handler receives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import JobCancelled
from .schedules import ScheduleSpec, make_schedule

Handler = Callable[["Job"], Any] | Callable[["Job"], Awaitable[Any]]


class _Flag:
    """A one-way flag, set from the event loop and read from a handler's thread: a plain attribute
    (reads and writes of one are atomic in CPython), at a fraction of a ``threading.Event``'s cost,
    which a worker would otherwise build for every job."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass
class Job:
    """What a handler sees: the job's identity, payload and attempt, plus its cancel request."""

    id: int
    type: str
    queue: str
    payload: Any
    attempt: int
    max_attempts: int
    priority: int = 0
    tenant: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    run_at: datetime | None = None
    created_at: datetime | None = None
    timeout: float | None = None
    _cancel: _Flag = field(default_factory=_Flag, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once a cancel was requested (or the worker is giving the job up)."""
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        """Stop here with ``JobCancelled`` if a cancel was requested."""
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.id} was cancelled")


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler and its per-type options."""

    fn: Handler
    is_async: bool
    timeout: float | None = None


class JobRegistry:
    """Maps job types to handlers::

        jobs = JobRegistry()

        @jobs.handler("resize")
        async def resize(job):
            return {"ok": True}   # stored as the job's result
    """

    def __init__(self) -> None:
        self.handlers: dict[str, HandlerSpec] = {}
        self.schedules: list[ScheduleSpec] = []

    def handler(self, type: str, *, timeout: float | None = None) -> Callable[[Handler], Handler]:
        """Register the decorated function (async, or sync: run in a thread) for ``type``."""

        def register(fn: Handler) -> Handler:
            self.register(type, fn, timeout=timeout)
            return fn

        return register

    def register(self, type: str, fn: Handler, *, timeout: float | None = None) -> None:
        if type in self.handlers:
            raise ValueError(f"a handler for {type!r} is already registered")
        self.handlers[type] = HandlerSpec(fn, asyncio.iscoroutinefunction(fn), timeout)

    def periodic(self, cron: str | None = None, *, name: str, every: float | None = None,
                 **options: Any) -> Callable[[Handler], Handler]:
        """Run the decorated handler on a schedule (stored in the database by every worker that
        loads this registry; one job per tick however many workers run)::

            @jobs.periodic("*/5 * * * *", name="cleanup")
            async def cleanup(job): ...

        Stacked on ``@jobs.handler(type)`` it schedules that type; alone it registers the handler
        with ``type = name``. Options: payload, queue, priority, max_attempts, timezone, catch_up."""

        def register(fn: Handler) -> Handler:
            type_ = next((t for t, h in self.handlers.items() if h.fn is fn), None)
            if type_ is None:
                self.register(name, fn)
                type_ = name
            self.schedules.append(make_schedule(name=name, type=type_, cron=cron, every=every, **options))
            return fn

        return register

    @property
    def types(self) -> list[str]:
        return sorted(self.handlers)

    def get(self, type: str) -> HandlerSpec | None:
        return self.handlers.get(type)
