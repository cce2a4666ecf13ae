"""The lease keeper: one statement per interval renews the lease of every held execution, records
the worker as seen, delivers cancel requests, and holds (or takes over) the leadership of
cluster-wide work (``leader``); an execution whose lease was lost is told to stop."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Callable
from typing import Any

from .completer import Completer
from .database import Database
from .errors import DatabaseUnavailable
from .executions import Executions
from .metrics import WorkerMetrics
from .service import Service, note_db_error


class LeaseKeeper(Service):
    """Heartbeats every ``every`` seconds (jittered, a little early) for ``worker_id``."""

    name = "lease-keeper"

    def __init__(self, db: Database, executions: Executions, completer: Completer, metrics: WorkerMetrics, *,
                 worker_id: str, queues: list[str], types: list[str] | None, concurrency: int,
                 lease_seconds: float, every: float) -> None:
        super().__init__()
        self.db, self.executions, self.completer, self.metrics = db, executions, completer, metrics
        self.every = every
        self.leader = False
        self.peers = 1
        self.on_leader: Callable[[], None] = lambda: None
        """Called when this worker becomes the leader."""
        """Live workers sharing one of this worker's queues, itself included (last heartbeat)."""
        """Whether this worker does the cluster-wide work (maintenance, schedules, queue metrics)."""
        self._params: dict[str, Any] = {
            "worker_id": worker_id, "queues": queues, "types": types, "hostname": socket.gethostname(),
            "pid": os.getpid(), "concurrency": concurrency, "lease_seconds": lease_seconds,
            "leader_seconds": max(lease_seconds, 2 * every)}

    async def run(self) -> None:
        while True:
            await self.heartbeat()  # at once at start: a fleet has a leader within a heartbeat
            # jittered within [0.8, 1.0) of the interval: apart across a fleet, never later than it
            await asyncio.sleep(self.every * (0.8 + 0.2 * random.random()))

    async def heartbeat(self) -> None:
        """Renew every held lease in one statement; deliver cancel requests; note lost leases."""
        held_before = dict(self.executions.held)  # executions claimed meanwhile are not this statement's business
        ids = sorted({job_id for job_id, _ in held_before})
        try:
            rows = await self.db.execute("worker_heartbeat", {**self._params, "ids": ids})
        except DatabaseUnavailable as exc:
            note_db_error(self.metrics, "heartbeat", exc)
            self.leader = False  # until a heartbeat says so again (another worker may take over)
            return
        was, self.leader = self.leader, bool(rows and rows[0]["leader"])
        if self.leader and not was:
            self.on_leader()
        self.peers = max(1, int(rows[0]["peers"])) if rows else 1
        held = {(r["id"], r["attempts"]): r["cancel_requested"] for r in rows if r["id"] is not None}
        finishing = self.completer.buffered()
        still = self.executions.held
        for key, entry in held_before.items():
            if key not in still:
                continue  # finished meanwhile
            if held.get(key) or (key not in held and key not in finishing):
                entry.job._cancel.set()  # cancel requested, or this execution's lease was lost
