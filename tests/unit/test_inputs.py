"""Input validation that needs no database: job options, durations, the CLI parser."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock.cli import build_parser
from skiplock.durations import parse_duration
from skiplock.errors import InvalidJob
from skiplock.models import JobSpec, make_spec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text().filter(lambda s: "\x00" not in s),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8).filter(
        lambda s: "\x00" not in s), children, max_size=4),
    max_leaves=12,
)


@given(json_values.filter(lambda v: v is not None))  # a top-level null is refused (test_hostile_names)
def test_valid_payloads_round_trip_through_json(payload: object) -> None:
    spec = make_spec("t", payload=payload)
    assert json.loads(spec.encoded_payload()) == payload


@given(st.integers())
def test_priority_accepts_exactly_int32(value: int) -> None:
    if -(2**31 - 1) <= value <= 2**31 - 1:
        assert make_spec("t", priority=value).priority == value
    else:
        with pytest.raises(InvalidJob, match="priority"):
            make_spec("t", priority=value)


@given(st.text(min_size=1, max_size=200).filter(lambda s: "\x00" not in s))
def test_any_reasonable_name_is_accepted_verbatim(name: str) -> None:
    spec = make_spec(name, queue=name, tenant=name, dedup_key=name)
    assert (spec.type, spec.queue, spec.tenant, spec.dedup_key) == (name, name, name, name)


def test_dependencies_are_deduplicated() -> None:
    assert JobSpec(type="t", depends_on=(3, 1, 3)).depends_on == (3, 1)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("45s", 45), ("5m", 300), ("12h", 43200), ("7d", 604800),
                                           ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7x", "-5", "5m3", "nan", "inf", "d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("argv", [
    ["enqueue", "t", "--payload", "{bad"], ["enqueue", "t", "--priority", "high"], ["enqueue", "t", "--delay", "soon"],
    ["worker", "--concurrency", "0"], ["jobs", "purge", "--state", "running", "--older-than", "7d"],
    ["jobs", "show", "abc"], ["nope"],
])
def test_parser_rejects_bad_arguments_with_usage_exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
