"""Retry policies: how long a job waits after a failed attempt before it may run again.

A policy here is a description; the formula has one home, the database function
``skiplock.retry_delay(policy, attempt)`` (migrations 0004 and 0005), which every path that retries
a job calls: a finish (the handler failed) and the rescue of an expired lease or a gone worker alike,
with ``coalesce(the job's policy, its queue's, the worker's)``. Three kinds: ``Exponential``,
``Fixed`` (every N seconds) and ``Intervals`` (a list, the last one repeated). A kind is a subclass
here plus one branch of that function (and of ``skiplock.retry_policy_problem``). ``from_json``
reads a stored policy back; ``from_options`` builds one from the command line's flags.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .errors import InvalidJob


@dataclass(frozen=True)
class RetryPolicy:
    """Base of the policies; ``kind`` names the branch of ``skiplock.retry_delay``."""

    kind: ClassVar[str] = ""

    def as_json(self) -> str:
        """The policy as the JSON object ``skiplock.retry_delay`` reads."""
        return json.dumps(self.as_dict(), separators=(",", ":"))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}}

    def describe(self) -> str:
        """One line for people (``queues list``, ``jobs show``)."""
        raise NotImplementedError


def _seconds(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
        raise InvalidJob(f"retry policy: {name} must be a finite, non-negative number of seconds")


def _jitter(value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
        raise InvalidJob("retry policy: jitter must be between 0 and 1")


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
        _jitter(self.jitter)

    def describe(self) -> str:
        return f"exponential {self.base:g}s..{self.max:g}s, jitter {self.jitter:g}"


@dataclass(frozen=True)
class Fixed(RetryPolicy):
    """``every`` seconds after each failed attempt (less up to ``jitter`` of it at random)."""

    kind: ClassVar[str] = "fixed"
    every: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        _seconds("every", self.every)
        _jitter(self.jitter)

    def describe(self) -> str:
        return f"every {self.every:g}s" + (f", jitter {self.jitter:g}" if self.jitter else "")


@dataclass(frozen=True)
class Intervals(RetryPolicy):
    """``intervals[n-1]`` seconds after the n-th failed attempt; the last one for every attempt
    past the list (RQ's ``Retry(interval=[...])``)."""

    kind: ClassVar[str] = "intervals"
    intervals: tuple[float, ...]
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.intervals, (str, bytes)) or not isinstance(self.intervals, Sequence) or not self.intervals:
            raise InvalidJob("retry policy: intervals must be a non-empty list of seconds")
        object.__setattr__(self, "intervals", tuple(self.intervals))
        for value in self.intervals:
            _seconds("each interval", value)
        _jitter(self.jitter)

    def describe(self) -> str:
        return "intervals " + ",".join(f"{i:g}" for i in self.intervals) + "s" + (
            f", jitter {self.jitter:g}" if self.jitter else "")


DEFAULT = Exponential()
KINDS: dict[str, type[RetryPolicy]] = {k.kind: k for k in (Exponential, Fixed, Intervals)}


def from_json(data: dict[str, Any]) -> RetryPolicy:
    """A policy from its JSON form (``as_json``), or ``InvalidJob``."""
    if not isinstance(data, dict):
        raise InvalidJob("a retry policy is a JSON object with a \"kind\"")
    fields = dict(data)
    kind = KINDS.get(str(fields.pop("kind", "")))
    if kind is None:
        raise InvalidJob(f"unknown retry policy kind {data.get('kind')!r} (one of {', '.join(KINDS)})")
    try:
        return kind(**fields)
    except TypeError as exc:
        raise InvalidJob(f"retry policy: {exc}") from None


def as_policy(value: RetryPolicy | dict[str, Any] | None) -> RetryPolicy | None:
    """A policy from itself, its JSON form, or None."""
    if value is None or isinstance(value, RetryPolicy):
        return value
    return from_json(value)


def validated(value: Any) -> RetryPolicy | None:
    """``as_policy`` for a pydantic field validator: a bad policy is a ``ValueError``."""
    try:
        return as_policy(value)
    except InvalidJob as exc:
        raise ValueError(str(exc)) from None


def from_options(*, every: float | None = None, intervals: Sequence[float] | None = None,
                 backoff_base: float | None = None, backoff_max: float | None = None) -> RetryPolicy | None:
    """The policy the command-line flags describe (``--retry-every``, ``--retry-intervals``,
    ``--backoff-base``/``--backoff-max``), None if none was given; more than one kind is refused."""
    kinds = (("--retry-every", every is not None), ("--retry-intervals", intervals is not None),
             ("--backoff-base/--backoff-max", backoff_base is not None or backoff_max is not None))
    given = [name for name, on in kinds if on]
    if len(given) > 1:
        raise InvalidJob(f"give one retry schedule, not {' and '.join(given)}")
    if every is not None:
        return Fixed(every=every)
    if intervals is not None:
        return Intervals(intervals=tuple(intervals))
    if backoff_base is not None or backoff_max is not None:
        return Exponential(base=DEFAULT.base if backoff_base is None else backoff_base,
                           max=DEFAULT.max if backoff_max is None else backoff_max)
    return None
