"""Display helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from skiplock.ui.format import MAX_JSON_CHARS, duration, error_summary, pretty_json, rate, relative


def test_duration() -> None:
    assert [duration(s) for s in (None, 0, 0.142, 42, 192, 18120, 187200)] == \
        ["-", "0s", "142ms", "42s", "3m 12s", "5h 2m", "2d 4h"]


def test_relative() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert relative(now - timedelta(seconds=90), now) == "1m 30s ago"
    assert relative(now + timedelta(hours=2), now) == "in 2h 0m"
    assert relative(None, now) == ""


def test_error_summary_picks_the_exception_of_a_traceback() -> None:
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    g()\nKeyError: \'id\'\n'
    assert error_summary(tb) == "KeyError: 'id'"
    assert error_summary("lease expired on worker w1\ndetails") == "lease expired on worker w1"
    assert error_summary(None) == "" and error_summary("\n \n") == ""


def test_pretty_json_is_cut_when_huge() -> None:
    assert pretty_json({"a": [1]}) == '{\n  "a": [\n    1\n  ]\n}'
    big = pretty_json({"blob": "x" * (MAX_JSON_CHARS * 2)})
    assert len(big) < MAX_JSON_CHARS + 100 and big.endswith("more characters)")


def test_rate() -> None:
    assert rate(0.5) == "30.0/min" and rate(25) == "25.0/s" and rate(None) == "0.0/min"
