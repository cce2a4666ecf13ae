"""Which jobs a list or a bulk action means: one filter for ``jobs list/cancel/purge/retry``, the
``Queue`` methods behind them and the UI. Its JSON form is what ``skiplock.job_matches`` (the one
definition, in SQL) reads."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InvalidJob
from .states import State


@dataclass(frozen=True)
class JobFilter:
    """Every field narrows the match; an empty filter matches every job. ``older_than`` (seconds)
    counts from when a job finished, or else from when it was enqueued."""

    queue: str | None = None
    type: str | None = None
    tenant: str | None = None
    states: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    older_than: float | None = None

    def __post_init__(self) -> None:
        names = {s.value for s in State}
        bad = [s for s in self.states if s not in names]
        if bad:
            raise InvalidJob(f"unknown state {bad[0]!r} (one of {', '.join(names)})")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()):
            raise InvalidJob("labels are pairs of strings")
        if self.older_than is not None and not (math.isfinite(self.older_than) and self.older_than >= 0):
            raise InvalidJob("older_than must be a finite, non-negative number of seconds")

    def narrowed(self, states: Iterable[State | str]) -> JobFilter:
        """This filter, its states limited to ``states`` (all of them if it named none)."""
        allowed = [s.value if isinstance(s, State) else s for s in states]
        kept = [s for s in self.states if s in allowed] if self.states else allowed
        return replace(self, states=tuple(kept))

    def as_json(self) -> str:
        data: dict[str, Any] = {"queue": self.queue, "type": self.type, "tenant": self.tenant,
                                "older_than": self.older_than}
        if self.states:
            data["states"] = list(self.states)
        if self.labels:
            data["labels"] = dict(self.labels)
        return json.dumps({k: v for k, v in data.items() if v is not None}, separators=(",", ":"))

    def describe(self) -> str:
        """For a confirmation prompt: ``queue=a state=dead label env=prod``."""
        parts = [f"{k}={v}" for k, v in (("queue", self.queue), ("type", self.type), ("tenant", self.tenant))
                 if v is not None]
        parts += [f"state={','.join(self.states)}"] if self.states else []
        parts += [f"label {k}={v}" for k, v in self.labels.items()]
        parts += [f"older than {self.older_than:g}s"] if self.older_than is not None else []
        return " ".join(parts) or "every job"


def parse_label(text: str) -> tuple[str, str]:
    """``k=v`` as a pair, or ``InvalidJob``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidJob(f"a label filter is KEY=VALUE, not {text!r}")
    return key, value
