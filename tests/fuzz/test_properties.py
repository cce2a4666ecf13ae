"""Property-based tests (hypothesis) over payloads, job options, CLI arguments and durations: valid
input round-trips through a real PostgreSQL unchanged; invalid input gets a clear, one-line error
of skiplock's own (never a driver error or a traceback) and stores nothing."""

from __future__ import annotations

import contextlib
import io
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from skiplock import InvalidJob
from skiplock import sync as skiplock_sync
from skiplock.cli import _Usage, build_parser, main, worker_config
from skiplock.durations import parse_duration
from skiplock.models import INT32, MAX_NAME
from skiplock.sql import QUERIES

DB = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
TEN_YEARS = 10 * 365 * 86400

# Text PostgreSQL can store: no NUL, no lone surrogates (both are covered, as errors, in test_hostile_names).
safe_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | safe_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(safe_text, children, max_size=5),
    max_leaves=25,
)


def as_json_value(value: Any) -> Any:
    """A JSON value with every number as an exact Decimal: jsonb keeps numbers as PostgreSQL
    numerics, so 1e20 (a float) may come back as 100000000000000000000 (an int) - the same JSON."""
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


def _get(conn: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(QUERIES["get_job"], {"id": job_id}).fetchone()
    assert row is not None
    return row


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM skiplock.jobs").fetchone()
    assert row is not None
    return int(row[0])


@DB
@given(payload=json_values)
def test_payloads_round_trip_through_postgresql(dsn: str, payload: Any) -> None:
    assume(payload is not None)  # a top-level JSON null is refused (test_hostile_names)
    with psycopg.connect(dsn, autocommit=True) as conn:
        (job_id,) = skiplock_sync.enqueue_many(conn, [{"type": "t", "payload": payload}])
        stored = _get(conn, job_id)["payload"]
    assert as_json_value(stored) == as_json_value(payload)
    if not any(isinstance(v, float) for v in _leaves(payload)):
        assert stored == payload  # without floats, even the Python types are the same


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


names = st.text(st.characters(blacklist_categories=["Cs"]), max_size=MAX_NAME + 5)
some_floats = st.floats(allow_nan=True, allow_infinity=True)
aware = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1),
                     timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                timezone(timedelta(hours=-8))]))
naive = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1))
options = st.fixed_dictionaries({}, optional={
    "queue": names, "priority": st.integers(-(2**32), 2**32), "max_attempts": st.integers(-3, 1003),
    "delay": st.none() | some_floats, "timeout": st.none() | some_floats, "run_at": st.none() | aware | naive,
    "tenant": st.none() | names, "dedup_key": st.none() | names,
    "labels": st.dictionaries(safe_text, safe_text, max_size=4),
})


def _valid_name(value: Any, optional: bool = False) -> bool:
    if value is None:
        return optional
    return 1 <= len(value) <= MAX_NAME and "\x00" not in value


def expected_valid(type_: str, opts: dict[str, Any]) -> bool:
    """The documented rules for job options (docs/state-machine.md, models.JobSpec), restated."""
    delay, timeout, run_at = opts.get("delay"), opts.get("timeout"), opts.get("run_at")
    return all([
        _valid_name(type_), _valid_name(opts.get("queue", "default")),
        _valid_name(opts.get("tenant"), optional=True), _valid_name(opts.get("dedup_key"), optional=True),
        -INT32 <= opts.get("priority", 0) <= INT32, 1 <= opts.get("max_attempts", 5) <= 1000,
        delay is None or (not math.isnan(delay) and 0 <= delay <= TEN_YEARS),
        timeout is None or (math.isfinite(timeout) and timeout > 0),
        run_at is None or run_at.tzinfo is not None,
        run_at is None or delay is None,
    ])


@DB
@given(type_=names, opts=options)
def test_job_options_are_validated_or_round_trip(dsn: str, type_: str, opts: dict[str, Any]) -> None:
    valid = expected_valid(type_, opts)
    event("valid" if valid else "invalid")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM skiplock.jobs")
        if not valid:
            with pytest.raises(InvalidJob) as err:
                skiplock_sync.enqueue(conn, type_, {}, **opts)
            assert str(err.value).strip() and "\n" not in str(err.value)
            assert _count(conn) == 0
            return
        before = datetime.now(UTC)
        job = _get(conn, skiplock_sync.enqueue(conn, type_, {}, **opts))
    assert (job["type"], job["queue"]) == (type_, opts.get("queue", "default"))
    assert (job["priority"], job["max_attempts"]) == (opts.get("priority", 0), opts.get("max_attempts", 5))
    assert (job["tenant"], job["dedup_key"]) == (opts.get("tenant"), opts.get("dedup_key"))
    assert job["labels"] == opts.get("labels", {})
    assert job["timeout_seconds"] == opts.get("timeout")
    if opts.get("run_at") is not None:
        assert job["run_at"] == opts["run_at"]
    elif opts.get("delay"):
        lag = (job["run_at"] - before).total_seconds() - opts["delay"]
        assert -1 < lag < 60, lag
    runnable_now = job["run_at"] <= datetime.now(UTC)
    assert job["state"] in (("pending", "scheduled") if runnable_now else ("scheduled",))


# -- the command line --------------------------------------------------------------------------------

def run_cli(argv: list[str], dsn: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code: Any
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--database-url", dsn, *argv])
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), out.getvalue(), err.getvalue()


cli_text = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=MAX_NAME + 3)
durations = st.sampled_from(["0", "1.5", "30s", "5m", "1h30m", "250ms", "10y", "-5", "soon", "inf", "nan", "", "1e3"]) \
    | st.integers(-10, 4 * 10**8).map(str)
cli_options = st.fixed_dictionaries({}, optional={
    "--queue": cli_text, "--priority": st.integers(-(2**32), 2**32).map(str) | st.sampled_from(["high", "1.5", ""]),
    "--max-attempts": st.integers(-2, 1003).map(str) | st.just("many"), "--delay": durations, "--timeout": durations,
    "--tenant": cli_text, "--dedup-key": cli_text,
    "--payload": json_values.map(json.dumps) | st.sampled_from(["{bad", "", "NaN", "[1,]"]),
})


def _duration_or_none(text: str | None) -> float | None:
    return None if text is None else parse_duration(text)


def cli_expectation(type_: str, opts: dict[str, str]) -> int:
    """0 (enqueued), 2 (a usage error: argparse could not convert a value) or 1 (the job is invalid)."""
    try:
        int(opts.get("--priority", "0"))
        attempts = int(opts.get("--max-attempts", "5"))
        _duration_or_none(opts.get("--delay"))
        _duration_or_none(opts.get("--timeout"))
        payload = json.loads(opts.get("--payload", "{}"))
    except ValueError:
        return 2
    if attempts < 1 or not type_:
        return 2
    if not all(math.isfinite(v) for v in _leaves(payload) if isinstance(v, float)):
        return 1  # Python's json reads NaN and Infinity; skiplock refuses them as the job's payload
    job_opts: dict[str, Any] = {"queue": opts.get("--queue", "default"), "priority": int(opts.get("--priority", "0")),
                                "max_attempts": attempts, "delay": _duration_or_none(opts.get("--delay")),
                                "timeout": _duration_or_none(opts.get("--timeout")), "tenant": opts.get("--tenant"),
                                "dedup_key": opts.get("--dedup-key")}
    return 0 if expected_valid(type_, job_opts) else 1


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(type_=cli_text, opts=cli_options)
def test_cli_enqueue_arguments(dsn: str, type_: str, opts: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKIPLOCK_QUEUE", raising=False)
    timeout = opts.get("--timeout")
    assume(timeout is None or not math.isinf(_safe_duration(timeout)))  # +inf timeout: test_hostile_names
    assume(opts.get("--payload", "{}").strip() != "null")  # a top-level JSON null: test_hostile_names
    expected = cli_expectation(type_, opts)
    event(f"exit {expected}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM skiplock.jobs")  # no dedup key left over from an earlier example
    argv = ["enqueue", *(f"{k}={v}" for k, v in opts.items()), "--", type_]
    code, out, err = run_cli(argv, dsn)
    assert code == expected, (argv, out, err)
    assert "Traceback" not in err
    if code:
        assert ("error:" in err) and not out, err
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = _get(conn, int(out))
    assert (job["type"], job["queue"]) == (type_, opts.get("--queue", "default"))
    assert as_json_value(job["payload"]) == as_json_value(json.loads(opts.get("--payload", "{}")))
    assert (job["tenant"], job["dedup_key"]) == (opts.get("--tenant"), opts.get("--dedup-key"))
    assert job["timeout_seconds"] == _duration_or_none(opts.get("--timeout"))


def _safe_duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        return 0.0


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h", "d", "w"])),
                      min_size=1, max_size=4))
def test_durations_add_up(parts: list[tuple[int, str]]) -> None:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == pytest.approx(sum(n * units[u] for n, u in parts))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12))
def test_any_duration_text_parses_or_says_why(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert "invalid duration" in str(exc)
    else:
        assert math.isfinite(seconds) and seconds >= 0


worker_flags = st.fixed_dictionaries({}, optional={
    "--concurrency": st.integers(-1, 10_002).map(str), "--lease": durations, "--poll-interval": durations,
    "--shutdown-grace": durations, "--max-jobs": st.integers(-1, 5).map(str), "--worker-id": cli_text,
    "--queue": cli_text, "--types": cli_text,
})


@settings(max_examples=150, deadline=None)
@given(flags=worker_flags)
def test_worker_options_are_validated_or_taken_as_given(flags: dict[str, str]) -> None:
    argv = ["worker", *(f"{k}={v}" for k, v in flags.items())]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            config = worker_config(build_parser().parse_args(argv))
    except SystemExit as exc:  # argparse: a value it could not convert
        assert exc.code == 2 and "error:" in err.getvalue()
        return
    except _Usage as exc:  # the converted values, checked together
        assert str(exc).startswith("invalid worker option") and "\n" not in str(exc)
        return
    if "--concurrency" in flags:
        assert config.concurrency == int(flags["--concurrency"])
    if "--lease" in flags:
        assert config.lease_seconds == parse_duration(flags["--lease"]) >= 1
    if "--worker-id" in flags:
        assert config.worker_id == flags["--worker-id"]
    if "--queue" in flags:
        assert config.queues == [flags["--queue"]]
