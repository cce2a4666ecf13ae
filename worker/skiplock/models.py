"""Job options, validated at the boundary, and the job records read back from the database."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidJob, PayloadTooLarge
from .retry import RetryPolicy, validated
from .states import FINISHED as FINISHED  # re-exported: the job model's states
from .states import State as State

INT32 = 2**31 - 1
INT64 = 2**63 - 1
MAX_NAME = 200
MAX_LABELS_BYTES = 64 * 1024
DEFAULT_MAX_PAYLOAD = 1024 * 1024
MAX_JSON_DEPTH = 100
"""Payloads, results and schedule payloads nest at most this deep: every reader (a handler, ``jobs
show``, the UI, another language's client) can decode and print what skiplock stores."""
_encode = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # JSON's escape of NUL, not an escaped backslash


def max_payload_bytes() -> int:
    """The payload size limit: ``SKIPLOCK_MAX_PAYLOAD_BYTES``, 1 MiB by default."""
    return int(os.environ.get("SKIPLOCK_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD))


def storable(value: str) -> bool:
    """Whether PostgreSQL text (and jsonb) can hold ``value``: no NUL, valid UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels deep (a loop, not a
    recursion: any depth is measured safely)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))
    return False


TOO_DEEP = f"<not shown: nested more than {MAX_JSON_DEPTH} levels deep>"


def printable_json(value: Any) -> Any:
    """``value``, or the TOO_DEEP note in its place if no reader could print it."""
    return TOO_DEEP if isinstance(value, (dict, list)) and too_deep(value) else value


def json_text(value: Any, what: str) -> str:
    """``value`` as compact JSON text that PostgreSQL's jsonb accepts and every reader can decode,
    else ``InvalidJob``: no NaN or infinity, no NUL characters, no lone surrogates, no nesting
    deeper than MAX_JSON_DEPTH levels."""
    try:
        text = _encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"{what} is not JSON-serializable: {exc}") from None
    except RecursionError:
        text = ""
    if not text or (text.count("[") + text.count("{") > MAX_JSON_DEPTH
                    and isinstance(value, (dict, list, tuple)) and too_deep(value)):
        raise InvalidJob(f"{what} nests objects and arrays more than {MAX_JSON_DEPTH} levels deep") from None
    if _NUL_ESCAPE.search(text):
        raise InvalidJob(f"{what} strings may not contain NUL characters (PostgreSQL jsonb)")
    if not storable(text):
        raise InvalidJob(f"{what} holds a string that is not valid Unicode (a lone surrogate)")
    return text


def _name(value: str, what: str) -> str:
    if not value or len(value) > MAX_NAME or not storable(value):
        raise ValueError(f"{what} must be 1-{MAX_NAME} characters of valid Unicode without NUL bytes")
    return value


class JobSpec(BaseModel):
    """Everything a producer can say about a new job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    payload: Any = Field(default_factory=dict)
    queue: str = "default"
    priority: int = Field(default=0, ge=-INT32, le=INT32)
    run_at: datetime | None = None
    delay: float | None = Field(default=None, ge=0, le=10 * 365 * 86400)
    max_attempts: int | None = Field(default=None, ge=1, le=1000)  # None: the queue's, else 5
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tenant: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    dedup_key: str | None = None
    depends_on: tuple[int, ...] = ()
    # Lifetimes (seconds; None: the queue's, else none) and retry policy (None: the queue's, else the worker's).
    ttl: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    result_ttl: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    failure_ttl: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    retry: Any = None

    @field_validator("retry")
    @classmethod
    def _check_retry(cls, value: Any) -> RetryPolicy | None:
        return validated(value)

    @field_validator("type", "queue")
    @classmethod
    def _check_name(cls, value: str, info: Any) -> str:
        return _name(value, info.field_name)

    @field_validator("tenant", "dedup_key")
    @classmethod
    def _check_optional(cls, value: str | None, info: Any) -> str | None:
        return None if value is None else _name(value, info.field_name)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if not all(storable(k) and storable(v) for k, v in value.items()):
            raise ValueError("labels must be valid Unicode without NUL bytes")
        size = len(json.dumps(value, ensure_ascii=False).encode())
        if size > MAX_LABELS_BYTES:
            raise ValueError(f"labels are {size} bytes as JSON, over the {MAX_LABELS_BYTES}-byte limit")
        return value

    @field_validator("depends_on")
    @classmethod
    def _check_deps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 < d <= INT64 for d in value):
            raise ValueError("depends_on holds job ids (positive 64-bit integers)")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_when(self) -> JobSpec:
        if self.run_at is not None and self.delay is not None:
            raise ValueError("give run_at or delay, not both")
        if self.run_at is not None:
            if self.run_at.tzinfo is None:
                raise ValueError("run_at must carry a timezone")
            try:
                self.run_at.astimezone(UTC)
            except OverflowError:
                raise ValueError("run_at is outside years 1-9999 in UTC") from None
        return self

    def encoded_payload(self, limit: int | None = None) -> str:
        """The payload as JSON text, refusing values jsonb cannot hold and payloads over ``limit``
        bytes (default: ``max_payload_bytes()``)."""
        if self.payload is None:
            raise InvalidJob("payload: a JSON null cannot be a payload (use {} for none)")
        text = json_text(self.payload, "payload")
        size = len(text.encode())
        limit = max_payload_bytes() if limit is None else limit
        if size > limit:
            raise PayloadTooLarge(f"payload is {size} bytes, over the {limit}-byte limit "
                                  "(SKIPLOCK_MAX_PAYLOAD_BYTES)")
        return text

    def effective_run_at(self) -> datetime | None:
        """When the job may first run; None means now (the database's clock)."""
        if self.delay:
            return datetime.now(UTC) + timedelta(seconds=self.delay)
        return self.run_at


def make_spec(type: str, **options: Any) -> JobSpec:
    """Build a ``JobSpec`` or raise ``InvalidJob`` with a one-line reason."""
    try:
        return JobSpec(type=type, **options)
    except ValidationError as exc:
        raise InvalidJob(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line per problem: ``field: message``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'job'}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    )


class JobRecord(BaseModel):
    """A job as stored (hot table or history)."""

    model_config = ConfigDict(extra="ignore")

    id: int
    queue: str
    type: str
    payload: Any
    priority: int
    state: State
    run_at: datetime
    attempts: int
    max_attempts: int
    timeout_seconds: float | None = None
    tenant: str | None = None
    labels: dict[str, Any] = Field(default_factory=dict)
    dedup_key: str | None = None
    depends_on: list[int] = Field(default_factory=list)
    pending_deps: int = 0
    cancel_requested: bool = False
    result: Any = None
    last_error: str | None = None
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    archived: bool = False
    retry_policy: dict[str, Any] | None = None
    ttl_seconds: float | None = None
    expires_at: datetime | None = None
    result_ttl_seconds: float | None = None
    failure_ttl_seconds: float | None = None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601). A payload or result nested deeper than
        MAX_JSON_DEPTH (stored by some other way than skiplock's, or before it checked) is shown as
        a note, so that one such job cannot break every listing that includes it."""
        data = self.model_dump(mode="json", exclude={"payload", "result"})
        for name in ("payload", "result"):
            data[name] = printable_json(getattr(self, name))
        return data
