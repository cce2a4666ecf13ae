"""The executions a worker process holds a lease on, shared by the services that serve them.

An execution is a job's id and attempt: a worker can hold two of the same job at once - a stale
one whose lease was rescued while it ran, and the re-claim - so executions, not jobs, are the key.
Whoever runs them (the executor's handler tasks; later, a caller's own loop through a pull API),
the lease keeper renews exactly these and the completer drops each once its outcome is recorded.
"""

from __future__ import annotations

import asyncio

from .registry import Job

Execution = tuple[int, int]


class Held:
    """One held execution: its job, and the task running its handler (None: run elsewhere)."""

    __slots__ = ("job", "task")

    def __init__(self, job: Job, task: asyncio.Task[None] | None = None) -> None:
        self.job = job
        self.task = task


class Executions:
    """The held executions by (id, attempt); ``executing`` counts handlers running now (an outcome
    waiting for its flush is held but no longer executing); ``freed`` is set when a slot frees."""

    def __init__(self) -> None:
        self.held: dict[Execution, Held] = {}
        self.executing = 0
        self.freed = asyncio.Event()

    def __len__(self) -> int:
        return len(self.held)

    def add(self, job: Job, task: asyncio.Task[None] | None = None) -> None:
        self.held[job.id, job.attempt] = Held(job, task)
