"""Periodic schedules: their definition, validation, and when they tick (croniter handles cron
expressions and DST; fixed intervals are plain arithmetic)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidJob
from .models import INT32, describe, json_text

CatchUp = Literal["skip", "latest", "all"]
MAX_CATCH_UP = 1000
MAX_EVERY = 10 * 366 * 86400.0  # an interval longer than ten years is a mistake, not a schedule


class ScheduleSpec(BaseModel):
    """A periodic job: ``cron`` (5 fields, or 6 with seconds first) or ``every`` seconds.

    ``catch_up`` says what happens to ticks missed while nothing ran: ``latest`` (default) runs
    one job for them, ``skip`` runs none, ``all`` runs one per missed tick (at most 1000)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=200)
    cron: str | None = None
    every: float | None = Field(default=None, gt=0, le=MAX_EVERY, allow_inf_nan=False)
    payload: Any = Field(default_factory=dict)
    queue: str = Field(default="default", min_length=1, max_length=200)
    priority: int = Field(default=0, ge=-INT32, le=INT32)
    max_attempts: int = Field(default=5, ge=1, le=1000)
    timezone: str = "UTC"
    catch_up: CatchUp = "latest"

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        fields = value.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(value, second_at_beginning=len(fields) == 6):
            raise ValueError(f"invalid cron expression {value!r}: use 5 fields, or 6 with seconds first")
        try:  # valid fields can still name a date that never comes (February 31st)
            croniter(value, second_at_beginning=len(fields) == 6).get_next(datetime)
        except (CroniterError, OverflowError, ValueError):
            raise ValueError(f"cron expression {value!r} never fires (no such date)") from None
        return " ".join(fields)

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (use an IANA name like Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSpec:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron or every")
        json_text(self.payload, "payload")
        return self

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        if self.every is not None:
            return moment + timedelta(seconds=self.every)
        assert self.cron is not None
        local = moment.astimezone(ZoneInfo(self.timezone))
        it = croniter(self.cron, local, second_at_beginning=len(self.cron.split()) == 6)
        nxt: datetime = it.get_next(datetime)
        return nxt

    def first_run(self, now: datetime) -> datetime:
        return self.next_after(now)

    def due(self, next_run_at: datetime, now: datetime) -> tuple[list[datetime], datetime]:
        """The ticks to enqueue now (by ``catch_up``) and the next tick after ``now``."""
        ticks = [next_run_at]
        following = self.next_after(next_run_at)
        while following <= now and len(ticks) <= MAX_CATCH_UP:
            ticks.append(following)
            following = self.next_after(following)
        if following <= now:  # more than MAX_CATCH_UP missed: jump ahead
            following = self.next_after(now)
        if self.catch_up == "skip":
            ticks = ticks[-1:] if ticks[-1] > now - self._tolerance() else []
        elif self.catch_up == "latest":
            ticks = ticks[-1:]
        return ticks[:MAX_CATCH_UP], following

    def _tolerance(self) -> timedelta:
        """A tick counts as on time (not missed) within this much of now."""
        return timedelta(seconds=30)

    def row(self, source: str, now: datetime) -> dict[str, Any]:
        """Parameters of the ``upsert_schedule`` statement."""
        return {"name": self.name, "cron": self.cron, "every_seconds": self.every, "type": self.type,
                "payload": json.dumps(self.payload), "queue": self.queue, "priority": self.priority,
                "max_attempts": self.max_attempts, "timezone": self.timezone, "catch_up": self.catch_up,
                "source": source, "next_run_at": self.first_run(now)}


def make_schedule(**fields: Any) -> ScheduleSpec:
    """Build a ``ScheduleSpec`` or raise ``InvalidJob`` with a one-line reason."""
    try:
        return ScheduleSpec(**fields)
    except ValidationError as exc:
        raise InvalidJob(describe(exc)) from None


def from_row(row: dict[str, Any]) -> ScheduleSpec:
    return ScheduleSpec(name=row["name"], type=row["type"], cron=row["cron"], every=row["every_seconds"],
                        payload=row["payload"], queue=row["queue"], priority=row["priority"],
                        max_attempts=row["max_attempts"], timezone=row["timezone"], catch_up=row["catch_up"])


def parse_rate(text: str) -> float:
    """``10/s``, ``600/m`` or ``3600/h`` as starts per second."""
    number, _, unit = text.strip().partition("/")
    per = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower())
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if per is None or not value > 0 or value == float("inf"):
        raise ValueError(f"invalid rate {text!r}: use N/s, N/m or N/h with N > 0")
    return value / per
