"""The admin commands in subprocesses: queue settings, job lifetimes and retry schedules on enqueue,
bulk cancel/purge/retry with their question, jobs update, label filters, and the command-line habits
(lists either way, any-case log levels, libpq's PG* variables). Bad input: one line, nothing changed."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from tests.acceptance.test_cli import _fails, _ok
from tests.helpers import cli, sql


def _job(dsn: str, job_id: int | str) -> dict[str, object]:
    shown: dict[str, object] = json.loads(_ok("jobs", "show", str(job_id), "--json", dsn=dsn))
    return shown


def test_queue_settings_become_the_defaults_of_its_jobs(dsn: str) -> None:
    out = _ok("queues", "set", "mail", "--max-attempts", "3", "--ttl", "1h", "--result-ttl", "1d",
              "--failure-ttl", "7d", "--retry-intervals", "60", "180,600", dsn=dsn)
    assert "intervals 60,180,600s" in out and "3600s" in out
    _ok("queues", "set", "mail", "--retry-every", "30s", "--clear", "ttl", dsn=dsn)  # the rest is kept
    (listed,) = [q for q in json.loads(_ok("queues", "list", "--json", dsn=dsn)) if q["name"] == "mail"]
    assert (listed["max_attempts"], listed["ttl"], listed["result_ttl"], listed["failure_ttl"]) == (3, None, 86400,
                                                                                                   604800)
    assert listed["retry"] == {"kind": "fixed", "every": 30, "jitter": 0}
    job = _job(dsn, _ok("enqueue", "send", "--queue", "mail", dsn=dsn).strip())
    assert (job["max_attempts"], job["result_ttl_seconds"], job["failure_ttl_seconds"]) == (3, 86400, 604800)
    assert job["retry_policy"] is None  # the queue's policy is read at each failure
    own = _job(dsn, _ok("enqueue", "send", "--queue", "mail", "--max-attempts", "9", "--ttl", "5m",
                        "--backoff-base", "2s", "--backoff-max", "1m", "--label", "env=prod", "team=a",
                        dsn=dsn).strip())
    assert own["max_attempts"] == 9 and own["labels"] == {"env": "prod", "team": "a"}
    assert own["retry_policy"] == {"kind": "exponential", "base": 2, "max": 60, "jitter": 0.5}
    assert own["expires_at"] is not None
    assert "mail" in _ok("queues", "list", dsn=dsn)
    assert "settings removed" in _ok("queues", "remove", "mail", dsn=dsn)


def test_bulk_actions_say_how_many_and_ask(dsn: str) -> None:
    for label in ("env=prod", "env=prod", "env=dev"):
        _ok("enqueue", "t", "--queue", "q", "--label", label, dsn=dsn)
    proc = cli("jobs", "cancel", "--queue", "q", "--label", "env=prod", dsn=dsn, input="n\n")
    assert proc.returncode == 1 and "2 jobs match (queue=q label env=prod)" in proc.stderr
    assert "nothing changed" in proc.stderr
    proc = cli("jobs", "cancel", "--queue", "q", "--label", "env=prod", dsn=dsn, input="y\n")
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    listed = json.loads(_ok("jobs", "list", "--label", "env=prod", "--json", dsn=dsn))
    assert [j["state"] for j in listed] == ["cancelled", "cancelled"]
    dead = _ok("jobs", "list", "--state", "cancelled", dsn=dsn)
    assert "ERROR" in dead and "cancelled by request" in dead  # the first line of the last error
    assert _ok("jobs", "retry", "--state", "cancelled", "--yes", dsn=dsn).strip() == "2"
    assert _ok("jobs", "purge", "--queue", "q", "--state", "pending", "--label", "env=dev", "--yes",
               dsn=dsn).strip() == "1"
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs WHERE queue = 'q'") == [(2,)]
    assert _ok("jobs", "cancel", "--type", "nothing-like-this", dsn=dsn).strip() == "0"  # none: no question


def test_update_reprioritises_and_reschedules_a_waiting_job(dsn: str) -> None:
    job_id = _ok("enqueue", "t", dsn=dsn).strip()
    assert "is scheduled" in _ok("jobs", "update", job_id, "--delay", "1h", "--priority", "8", dsn=dsn)
    assert "is pending" in _ok("jobs", "update", job_id, "--run-at", "2020-01-01T00:00:00Z", dsn=dsn)
    assert _job(dsn, job_id)["priority"] == 8
    sql(dsn, "UPDATE skiplock.jobs SET state = 'completed', finished_at = now()")
    assert "only a job that has not started" in _fails("jobs", "update", job_id, "--priority", "1", dsn=dsn)


def test_list_options_take_spaces_or_commas_and_log_levels_any_case(dsn: str) -> None:
    parent = _ok("enqueue", "p", dsn=dsn).strip()
    other = _ok("enqueue", "p", dsn=dsn).strip()
    child = _job(dsn, _ok("enqueue", "c", "--depends-on", parent, f"{other},{parent}", dsn=dsn).strip())
    assert child["depends_on"] == [int(parent), int(other)]
    for args in (("--types", "record", "sleep"), ("--types", "record,sleep")):
        _ok("enqueue", "record", "--queue", "c", dsn=dsn)
        proc = cli("--log-level", "INFO", "worker", "--handlers", "jobs_fixture:jobs", "--queue", "a", "b,c",
                   *args, "--max-jobs", "1", "--poll-interval", "0.1", dsn=dsn,
                   env={"SKIPLOCK_LOG_LEVEL": "Debug"}, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "types=['record', 'sleep']" in proc.stderr and "queues=['a', 'b', 'c']" in proc.stderr, proc.stderr
    assert _ok("stats", "--log-level", "WARNING", dsn=dsn)


def test_libpq_variables_name_the_database_when_no_url_is_given(dsn: str) -> None:
    url = urlsplit(dsn)
    env = {"PGHOST": url.hostname or "", "PGPORT": str(url.port), "PGUSER": url.username or "",
           "PGDATABASE": url.path.lstrip("/")}
    assert "QUEUE" in _ok("stats", dsn=None, env=env) or "no jobs" in _ok("stats", dsn=None, env=env)
    assert _ok("enqueue", "t", dsn=None, env=env).strip().isdigit()


@pytest.mark.parametrize("args, message", [
    (("queues", "set", "q", "--retry-every", "30s", "--retry-intervals", "1"), "give one retry schedule"),
    (("queues", "set", "q", "--max-attempts", "0"), "must be between 1 and 1000"),
    (("queues", "set", "q", "--ttl", "0"), "must be more than 0"),
    (("queues", "set", "q", "--retry-intervals", "1,soon"), "invalid duration"),
    (("queues", "set", "q", "--clear", "colour"), "invalid choice 'colour'"),
    (("queues", "set", "q", "--ttl", "1h", "--clear", "ttl"), "--clear ttl and a value for it"),
    (("enqueue", "t", "--label", "novalue"), "a label filter is KEY=VALUE"),
    (("enqueue", "t", "--result-ttl", "-1"), "invalid duration"),
    (("jobs", "purge"), "give at least one filter"),
    (("jobs", "cancel"), "give a job ID or at least one filter"),
    (("jobs", "cancel", "1", "--queue", "q"), "a job ID or filters, not both"),
    (("jobs", "purge", "--state", "running"), "invalid choice 'running'"),
    (("jobs", "retry", "--state", "blocked"), "invalid choice 'blocked'"),
    (("jobs", "update", "1", "--run-at", "tomorrow"), "is not an ISO 8601 time"),
    (("jobs", "update", "1", "--run-at", "2030-01-01T00:00:00"), "has no time zone"),
    (("jobs", "update", "1", "--delay", "1h", "--run-at", "2030-01-01T00:00:00Z"), "not allowed with"),
    (("jobs", "update", "1", "--priority", "99999999999"), "is not a 32-bit integer"),
    (("jobs", "list", "--label", "x"), "KEY=VALUE"),
])
def test_bad_admin_input_is_a_usage_error(dsn: str, args: tuple[str, ...], message: str) -> None:
    assert message in _fails(*args, dsn=dsn, code=2)
    assert sql(dsn, "SELECT count(*) FROM skiplock.queues") == [(0,)]


@pytest.mark.parametrize("args, message", [
    (("jobs", "update", "999", "--priority", "1"), "no job 999"),
    (("jobs", "update", "1"), "give a priority, a run_at or a delay"),
    (("queues", "remove", "nope"), "queue 'nope' has no settings"),
])
def test_admin_errors_exit_1_with_one_line(dsn: str, args: tuple[str, ...], message: str) -> None:
    _ok("enqueue", "t", dsn=dsn)
    assert message in _fails(*args, dsn=dsn)
