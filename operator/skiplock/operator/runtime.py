"""What the operator process shares between handlers: API access, database pools, metrics, and the
in-memory state of each JobQueue it serves (passed to kopf as ``memo.runtime``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from skiplock.queue import Queue

from . import policy
from .db import Databases
from .kube import Kube
from .metrics import OperatorMetrics
from .queuesettings import SyncState as QueueSettingsState
from .schedules import SyncState
from .schema import Schemas
from .spec import JobQueueSpec

Key = tuple[str, str]  # (namespace, name)


def reference(body: Any) -> dict[str, Any]:
    """What an event about the object ``body`` needs of it."""
    meta = body["metadata"]
    return {"apiVersion": body["apiVersion"], "kind": body["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}}


@dataclass
class JobQueueState:
    """One JobQueue as the operator knows it between polls."""

    namespace: str
    name: str
    ref: dict[str, Any] = field(default_factory=dict)  # apiVersion/kind/metadata, for events
    spec: JobQueueSpec | None = None
    generation: int | None = None
    queue: Queue | None = None
    dsn: str = field(default="", repr=False)
    dsn_read_at: float = 0.0
    exempt: bool = False  # the namespace allows unrestricted pools (podpolicy.EXEMPT_LABEL)
    exempt_read_at: float | None = None  # when that was read (monotonic); None: never
    policies: dict[str, policy.PolicyState] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # Problem.id -> reason, as last reported
    written: dict[str, Any] | None = None  # the status as last written (None: not read yet)
    schedules: SyncState = field(default_factory=SyncState)
    queue_settings: QueueSettingsState = field(default_factory=QueueSettingsState)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    def remember(self, body: Any) -> None:
        self.ref = reference(body)

    def dsn_is_stale(self, max_age: float) -> bool:
        return self.queue is None or time.monotonic() - self.dsn_read_at > max_age


EventSink = Callable[[dict[str, Any], str, str, str], None]  # (object ref, type, reason, message)


def kopf_event(ref: dict[str, Any], type: str, reason: str, message: str) -> None:
    """Post a Kubernetes event through kopf's poster (batched, retried, in the background)."""
    kopf.event(cast(Any, ref), type=type, reason=reason, message=message[:1024])


@dataclass
class Runtime:
    kube: Kube
    databases: Databases
    metrics: OperatorMetrics
    event: EventSink = kopf_event
    schemas: Schemas = field(default_factory=Schemas)  # each JobQueue's database migrated before use
    pod_policy: bool = True  # refuse pools whose pods break podpolicy's rules (--pod-policy)
    jobqueues: dict[Key, JobQueueState] = field(default_factory=dict)
    # The DSN each JobQueue last read, kept past ``forget`` for the deletion handler (a namespace's
    # deletion may remove the Secret before the JobQueue's schedules are removed).
    dsns: dict[Key, str] = field(default_factory=dict, repr=False)
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # kopf's stop flag

    def jobqueue(self, namespace: str, name: str) -> JobQueueState:
        """The state of a JobQueue (created on first use)."""
        key = (namespace, name)
        if key not in self.jobqueues:
            self.jobqueues[key] = JobQueueState(namespace, name)
        return self.jobqueues[key]

    async def forget(self, namespace: str, name: str) -> None:
        """The JobQueue is gone (or no longer served): drop its state, series and database share."""
        self.jobqueues.pop((namespace, name), None)
        self.metrics.forget(namespace, name)
        await self.databases.release((namespace, name))

    async def close(self) -> None:
        await self.databases.close()
        self.kube.close()
