"""Jinja filters: durations, timestamps and JSON for display (escaping is left to autoescape)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..models import printable_json

MAX_JSON_CHARS = 100_000


def duration(seconds: float | None) -> str:
    """``140ms``, ``42s``, ``3m 12s``, ``5h 2m``, ``2d 4h``; ``-`` for nothing."""
    if seconds is None:
        return "-"
    if 0 < seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    s = max(0, round(float(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def timestamp(value: datetime | None) -> str:
    """UTC, to the second."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def relative(value: datetime | None, now: datetime | None = None) -> str:
    """``3m 12s ago`` or ``in 5m 0s``."""
    if value is None:
        return ""
    delta = ((now or datetime.now(UTC)) - value).total_seconds()
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def pretty_json(value: Any) -> str:
    """Indented JSON, cut at ``MAX_JSON_CHARS`` characters (a note for one nested too deeply)."""
    text = json.dumps(printable_json(value), indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_JSON_CHARS:
        return text[:MAX_JSON_CHARS] + f"\n... ({len(text) - MAX_JSON_CHARS} more characters)"
    return text


def error_summary(text: str | None) -> str:
    """One line of an error: a Python traceback's last line (the exception), else the first line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def rate(per_second: float | None) -> str:
    """Throughput per minute, or per second when it is high."""
    value = float(per_second or 0)
    if value >= 10:
        return f"{value:.1f}/s"
    return f"{value * 60:.1f}/min"


FILTERS = {"duration": duration, "timestamp": timestamp, "relative": relative, "pretty_json": pretty_json,
           "rate": rate, "error_summary": error_summary}
