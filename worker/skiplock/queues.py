"""Queue settings, stored in ``skiplock.queues``: defaults for the jobs of one queue (max_attempts,
ttl, result_ttl, failure_ttl, copied into a job when it is enqueued) and its retry policy (read
when an attempt fails). Set by ``skiplock queues set``, ``Queue.set_queue`` or a JobQueue's
``spec.queueSettings``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidJob
from .models import MAX_NAME, describe, storable
from .retry import RetryPolicy, from_json, validated

CLEARABLE = ("max_attempts", "ttl", "result_ttl", "failure_ttl", "retry")
"""The settings ``queues set --clear`` removes, by name."""


class QueueSettings(BaseModel):
    """One queue's defaults; None: not set (a job's own value, else the built-in default, applies)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    ttl: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    result_ttl: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    failure_ttl: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    retry: RetryPolicy | None = None
    source: str | None = None
    updated_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value or len(value) > MAX_NAME or not storable(value):
            raise ValueError(f"queue must be 1-{MAX_NAME} characters of valid Unicode without NUL bytes")
        return value

    @field_validator("retry", mode="before")
    @classmethod
    def _check_retry(cls, value: Any) -> RetryPolicy | None:
        return validated(value)

    def row(self, source: str) -> dict[str, Any]:
        """The parameters of ``set_queue`` and ``replace_queue``."""
        return {"name": self.name, "max_attempts": self.max_attempts, "ttl_seconds": self.ttl,
                "result_ttl_seconds": self.result_ttl, "failure_ttl_seconds": self.failure_ttl,
                "retry_policy": None if self.retry is None else self.retry.as_json(), "source": source}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueueSettings:
        policy = row.get("retry_policy")
        return cls(name=row["name"], max_attempts=row["max_attempts"], ttl=row["ttl_seconds"],
                   result_ttl=row["result_ttl_seconds"], failure_ttl=row["failure_ttl_seconds"],
                   retry=None if policy is None else from_json(policy), source=row.get("source"),
                   updated_at=row.get("updated_at"))

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "max_attempts": self.max_attempts, "ttl": self.ttl, "result_ttl": self.result_ttl,
                "failure_ttl": self.failure_ttl, "retry": None if self.retry is None else self.retry.as_dict(),
                "source": self.source, "updated_at": self.updated_at.isoformat() if self.updated_at else None}


def make_settings(name: str, **options: Any) -> QueueSettings:
    """``QueueSettings`` or ``InvalidJob`` with a one-line reason."""
    try:
        return QueueSettings(name=name, **options)
    except ValidationError as exc:
        raise InvalidJob(describe(exc)) from None
