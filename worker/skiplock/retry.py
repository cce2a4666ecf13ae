"""Retry policies: how long a job waits after a failed attempt before it may run again.

A policy here is a description; the formula has one home, the database function
``skiplock.retry_delay(policy, attempt)`` (migration 0004), which every path that retries a job
calls with ``as_json()``: a worker's finish (the handler failed) and the rescue of an expired lease
or a gone worker (a worker's maintenance or the operator) alike.

More kinds (a fixed interval, a list of intervals) and per-job or per-queue policies slot in
without rework: a kind is a subclass here plus one branch of that function, and a statement that
knows a job's or its queue's policy passes ``coalesce(job's, queue's, %(retry_policy)s)`` instead
of the worker's. ``from_json`` reads a stored policy back.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .errors import InvalidJob


@dataclass(frozen=True)
class RetryPolicy:
    """Base of the policies; ``kind`` names the branch of ``skiplock.retry_delay``."""

    kind: ClassVar[str] = ""

    def as_json(self) -> str:
        """The policy as the JSON object ``skiplock.retry_delay`` reads."""
        return json.dumps({"kind": self.kind, **asdict(self)}, separators=(",", ":"))


def _seconds(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise InvalidJob(f"retry policy: {name} must be a finite, non-negative number of seconds")


@dataclass(frozen=True)
class Exponential(RetryPolicy):
    """``min(max, base * 2**(attempt-1))`` seconds, less up to ``jitter`` of it at random (so
    jobs that failed together do not all come back together)."""

    kind: ClassVar[str] = "exponential"
    base: float = 1.0
    max: float = 3600.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        _seconds("base", self.base)
        _seconds("max", self.max)
        if not (isinstance(self.jitter, (int, float)) and 0 <= self.jitter <= 1):
            raise InvalidJob("retry policy: jitter must be between 0 and 1")


DEFAULT = Exponential()
KINDS: dict[str, type[RetryPolicy]] = {Exponential.kind: Exponential}


def from_json(data: dict[str, Any]) -> RetryPolicy:
    """A policy from its JSON form (``as_json``), or ``InvalidJob``."""
    fields = dict(data)
    kind = KINDS.get(str(fields.pop("kind", "")))
    if kind is None:
        raise InvalidJob(f"unknown retry policy kind {data.get('kind')!r} (one of {', '.join(KINDS)})")
    try:
        return kind(**fields)
    except TypeError as exc:
        raise InvalidJob(f"retry policy: {exc}") from None
