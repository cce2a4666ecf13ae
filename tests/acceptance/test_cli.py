"""The real ``skiplock`` command in subprocesses: happy paths and every bad-input case."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from skiplock.cli import build_parser
from skiplock.cli_env import LIBRARY_VARIABLES, EnvParser
from tests.helpers import ROOT, cli, sql


def _ok(*args: str, dsn: str | None, **kw: object) -> str:
    proc = cli(*args, dsn=dsn, **kw)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _fails(*args: str, dsn: str | None, code: int = 1, **kw: object) -> str:
    proc = cli(*args, dsn=dsn, **kw)  # type: ignore[arg-type]
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and "error:" in lines[-1], proc.stderr
    return proc.stderr


def test_migrate_is_idempotent(dsn: str) -> None:
    assert _ok("migrate", dsn=dsn).strip() == "schema is up to date"


def test_enqueue_then_inspect_and_act(dsn: str) -> None:
    job_id = int(_ok("enqueue", "resize", "--payload", '{"w": 5}', "--priority", "7", "--tenant", "acme",
                     "--queue", "imgs", "--max-attempts", "2", dsn=dsn))
    child = int(_ok("enqueue", "after", "--depends-on", str(job_id), "--delay", "5m", dsn=dsn))
    assert int(_ok("enqueue", "resize", "--dedup-key", "k", dsn=dsn)) == int(
        _ok("enqueue", "resize", "--dedup-key", "k", dsn=dsn))
    shown = json.loads(_ok("jobs", "show", str(job_id), "--json", dsn=dsn))
    assert (shown["payload"], shown["priority"], shown["queue"], shown["tenant"]) == ({"w": 5}, 7, "imgs", "acme")
    assert json.loads(_ok("jobs", "show", str(child), "--json", dsn=dsn))["state"] == "blocked"
    listed = json.loads(_ok("jobs", "list", "--queue", "imgs", "--json", dsn=dsn))
    assert [j["id"] for j in listed] == [job_id]
    assert "cancelled" in _ok("jobs", "cancel", str(job_id), dsn=dsn)
    assert json.loads(_ok("jobs", "show", str(child), "--json", dsn=dsn))["state"] == "cancelled"
    assert "pending again" in _ok("jobs", "retry", str(job_id), dsn=dsn)
    stats = json.loads(_ok("stats", "--json", dsn=dsn))
    imgs = next(q for q in stats if q["queue"] == "imgs")
    assert imgs["pending"] == 1
    assert "QUEUE" in _ok("stats", dsn=dsn) and "ID" in _ok("jobs", "list", dsn=dsn)
    sql(dsn, "UPDATE skiplock.jobs SET state='completed', finished_at = now() - interval '8 days'")
    assert _ok("jobs", "purge", "--state", "completed", "--older-than", "7d", "--yes", dsn=dsn).strip() == "3"


def test_enqueue_from_file_in_batches_with_progress(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps({"type": "t", "payload": {"i": i}, "priority": i % 3}) for i in range(2500)))
    proc = cli("enqueue", "--from-file", str(path), "--batch-size", "1000", dsn=dsn)
    assert proc.returncode == 0 and proc.stdout.strip() == "2500"
    assert "2500/2500" in proc.stderr
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs")[0][0] == 2500


def test_a_bad_line_enqueues_nothing(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"type": "t"}\n{"type": "t", "priority": "high"}\n')
    assert "jobs.jsonl:2: priority" in _fails("enqueue", "--from-file", str(path), dsn=dsn)
    path.write_text('{"type": "t"}\n{not json\n')
    assert "jobs.jsonl:2: invalid JSON" in _fails("enqueue", "--from-file", str(path), dsn=dsn)
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs")[0][0] == 0


@pytest.mark.parametrize("args, message", [
    (("enqueue", "t", "--payload", "{oops"), "invalid JSON"),
    (("enqueue", "t", "--max-attempts", "0"), "must be at least 1"),
    (("enqueue", "t", "--delay", "soon"), "invalid duration"),
    (("enqueue",), "give a job TYPE or --from-file"),
    (("worker",), "--handlers takes MODULE:REGISTRY"),
    (("worker", "--handlers", "jobs_fixture:jobs", "--poll-interval", "-1"), "invalid"),
    (("worker", "--handlers", "jobs_fixture:jobs", "--concurrency", "20000"), "--concurrency: Input should be"),
    (("worker", "--handlers", "jobs_fixture:jobs", "--lease", "0.5"), "--lease: Input should be"),
    (("ui", "--port", "abc"), "argument --port: 'abc' is not an integer"),
    (("ui", "--port", "70000"), "argument --port: 70000 is not a port"),
    (("operator", "--metrics-port", "-1"), "argument --metrics-port"),
    (("jobs", "list", "--offset", "-1"), "argument --offset: -1 must not be negative"),
    (("--log-level", "verbose", "stats"), "argument --log-level: invalid choice"),
    (("stats", "--log-level", "verbose"), "argument --log-level: invalid choice"),
])
def test_usage_errors_exit_2(dsn: str, args: tuple[str, ...], message: str) -> None:
    assert message in _fails(*args, dsn=dsn, code=2)


@pytest.mark.parametrize("args, message", [
    (("worker", "--handlers", "no_such_module:jobs"), "cannot import handler module 'no_such_module'"),
    (("worker", "--handlers", "jobs_fixture:missing"), "is not a JobRegistry"),
    (("enqueue", "t", "--depends-on", "999"), "unknown job ids"),
    (("jobs", "show", "999"), "no job 999"),
    (("jobs", "retry", "999"), "no job 999"),
])
def test_runtime_errors_exit_1_with_one_line(dsn: str, args: tuple[str, ...], message: str) -> None:
    assert message in _fails(*args, dsn=dsn)


def test_unreachable_database_and_missing_url_and_missing_schema(pg_admin_dsn: str) -> None:
    assert "no database" in _fails("stats", dsn=None)
    err = _fails("stats", dsn="postgresql://nobody@127.0.0.1:1/none")
    assert "127.0.0.1" in err and "password" not in err
    assert "run `skiplock migrate`" in _fails("stats", dsn=pg_admin_dsn)


def test_demo_runs_to_a_summary(pg_admin_dsn: str, template_dsn: str) -> None:
    from tests.conftest import drop_database, fresh_database

    url = fresh_database(pg_admin_dsn)
    try:
        proc = cli("demo", "--jobs", "300", "--workers", "2", "--metrics-port", "0", dsn=url, timeout=120)
    finally:
        drop_database(pg_admin_dsn, url)
    assert proc.returncode == 0, proc.stderr
    assert "300 jobs in" in proc.stdout and "dead       5" in proc.stdout


# -- options from the environment ------------------------------------------------------------------

def _one_error_line(stderr: str) -> str:
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


HANDLERS = ("worker", "--handlers", "jobs_fixture:jobs")


@pytest.mark.parametrize("variable, value, args", [
    ("SKIPLOCK_UI_PORT", "abc", ("ui",)),
    ("SKIPLOCK_PORT", "99999", ("ui",)),
    ("SKIPLOCK_LOG_LEVEL", "verbose", ("stats",)),
    ("SKIPLOCK_LOG_LEVEL", "verbose", ("jobs", "list")),
    ("SKIPLOCK_CONCURRENCY", "abc", HANDLERS),
    ("SKIPLOCK_CONCURRENCY", "0", HANDLERS),
    ("SKIPLOCK_CONCURRENCY", "20000", HANDLERS),  # in range for argparse, not for WorkerConfig
    ("SKIPLOCK_LEASE_SECONDS", "0.5", HANDLERS),
    ("SKIPLOCK_POLL_INTERVAL", "soon", HANDLERS),
    ("SKIPLOCK_METRICS_PORT", "http", HANDLERS),
    ("SKIPLOCK_QUEUES", ",", HANDLERS),
    ("SKIPLOCK_RETAIN_DEAD", "-1", HANDLERS),
    ("SKIPLOCK_JSON", "maybe", ("stats",)),
    ("SKIPLOCK_PRIORITY", "high", ("enqueue", "t")),
    ("SKIPLOCK_PAYLOAD", "{oops", ("enqueue", "t")),
    ("SKIPLOCK_DEPENDS_ON", "1,x", ("enqueue", "t")),
    ("SKIPLOCK_JOBS_LIST_LIMIT", "0", ("jobs", "list")),
    ("SKIPLOCK_JOBS_LIST_STATE", "lost", ("jobs", "list")),
    ("SKIPLOCK_JOBS_PURGE_STATES", "completed,running", ("jobs", "purge", "--older-than", "7d")),
    ("SKIPLOCK_LIMITS_SET_RATE", "fast", ("limits", "set", "t")),
    ("SKIPLOCK_OPERATOR_METRICS_PORT", "x", ("operator",)),
    ("SKIPLOCK_LEASE_DURATION", "forever", ("operator",)),
    ("SKIPLOCK_STANDALONE", "perhaps", ("operator",)),
    ("SKIPLOCK_DEMO_JOBS", "many", ("demo",)),
    *((name, "lots", ("stats",)) for name in LIBRARY_VARIABLES),  # read by the library, checked up front
])
def test_a_bad_variable_is_a_usage_error_naming_it(variable: str, value: str, args: tuple[str, ...]) -> None:
    proc = cli(*args, env={variable: value})  # no database: the value is refused before connecting
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert variable in _one_error_line(proc.stderr) and not proc.stdout


def test_a_bad_variable_troubles_only_the_command_that_reads_it(dsn: str) -> None:
    proc = cli("stats", "--help", env={"SKIPLOCK_UI_PORT": "abc", "SKIPLOCK_CONCURRENCY": "abc"})
    assert proc.returncode == 0 and "usage: skiplock stats" in proc.stdout, proc.stderr
    assert _ok("stats", "--json", dsn=dsn, env={"SKIPLOCK_UI_PORT": "abc"}).strip() == "[]"
    # A flag wins over a variable, even a bad one: this fails later, on the handlers.
    err = _fails("worker", "--handlers", "jobs_fixture:missing", "--concurrency", "3", dsn=dsn,
                 env={"SKIPLOCK_CONCURRENCY": "abc"})
    assert "is not a JobRegistry" in err


def test_database_url_before_or_after_the_command(dsn: str) -> None:
    dead = "postgresql://nobody@127.0.0.1:1/none"
    for args in (("--database-url", dsn, "stats", "--json"), ("stats", "--json", "--database-url", dsn),
                 ("stats", "--database-url", dsn, "--json"), ("jobs", "list", "--database-url", dsn),
                 ("jobs", "--database-url", dsn, "list"), ("--database-url", dead, "stats", "--database-url", dsn)):
        assert _ok(*args, dsn=dead), args  # the flag wins over DATABASE_URL
    job_id = int(_ok("enqueue", "t", "--database-url", dsn, dsn=None))
    assert json.loads(_ok("jobs", "show", str(job_id), "--json", "--database-url", dsn, dsn=None))["id"] == job_id
    assert _ok("stats", dsn=None, env={"SKIPLOCK_DATABASE_URL": dsn, "DATABASE_URL": dead})  # then SKIPLOCK_*
    assert _ok("stats", "--database-url", dsn, dsn=None, env={"SKIPLOCK_DATABASE_URL": dead})
    assert "port 1 failed" in _fails("stats", "--database-url", dead, dsn=dsn)  # and over a good DATABASE_URL


def test_variables_set_options_and_flags_win(dsn: str) -> None:
    env = {"SKIPLOCK_QUEUE": "imgs", "SKIPLOCK_PRIORITY": "7", "SKIPLOCK_TENANT": "acme",
           "SKIPLOCK_PAYLOAD": '{"w": 5}', "SKIPLOCK_MAX_ATTEMPTS": "2", "SKIPLOCK_DELAY": "5m"}
    job = json.loads(_ok("jobs", "show", _ok("enqueue", "resize", dsn=dsn, env=env).strip(), "--json", dsn=dsn))
    assert (job["queue"], job["priority"], job["tenant"], job["payload"], job["max_attempts"], job["state"]) == (
        "imgs", 7, "acme", {"w": 5}, 2, "scheduled")
    job_id = _ok("enqueue", "resize", "--priority", "3", "--queue", "other", dsn=dsn, env=env).strip()
    job = json.loads(_ok("jobs", "show", job_id, "--json", dsn=dsn))
    assert (job["queue"], job["priority"], job["tenant"]) == ("other", 3, "acme")
    assert json.loads(_ok("stats", dsn=dsn, env={"SKIPLOCK_JSON": "1"}))  # a switch from a variable
    assert _ok("stats", dsn=dsn, env={"SKIPLOCK_JSON": "false"}).startswith("QUEUE")
    listed = json.loads(_ok("jobs", "list", dsn=dsn, env={"SKIPLOCK_JOBS_LIST_QUEUE": "imgs",
                                                           "SKIPLOCK_JOBS_LIST_JSON": "yes"}))
    assert [j["queue"] for j in listed] == ["imgs"]
    # The actions of jobs/schedule/limits read only their own names: a worker pod's
    # SKIPLOCK_CONCURRENCY does not become a concurrency limit...
    out = _ok("limits", "set", "resize", "--rate", "5/s", dsn=dsn, env={"SKIPLOCK_CONCURRENCY": "20"})
    assert "concurrency -" in out, out
    # ...while the scoped name does, and a flag still beats it.
    assert "concurrency 3" in _ok("limits", "set", "resize", dsn=dsn, env={"SKIPLOCK_LIMITS_SET_CONCURRENCY": "3"})
    assert "concurrency 4" in _ok("limits", "set", "resize", "--concurrency", "4", dsn=dsn,
                                  env={"SKIPLOCK_LIMITS_SET_CONCURRENCY": "3"})
    # Required options can come from variables too.
    assert _ok("jobs", "purge", dsn=dsn, env={"SKIPLOCK_JOBS_PURGE_STATES": "completed,dead",
                                              "SKIPLOCK_JOBS_PURGE_OLDER_THAN": "7d"}).strip() == "0"  # none match


def _run_worker(dsn: str, *args: str, env: dict[str, str]) -> None:
    proc = cli(*HANDLERS, *args, dsn=dsn, env={"SKIPLOCK_POLL_INTERVAL": "0.2", **env}, timeout=90)
    assert proc.returncode == 0, proc.stderr


def test_worker_options_from_variables_and_both_queue_forms(dsn: str) -> None:
    from tests.fixtures.jobs_fixture import ensure_table

    ensure_table(dsn)
    ids = {q: int(_ok("enqueue", "record", "--queue", q, dsn=dsn)) for q in ("a", "b", "c", "d", "e")}
    # SKIPLOCK_QUEUES (comma-separated), SKIPLOCK_MAX_JOBS and SKIPLOCK_WORKER_ID: what the operator sets.
    _run_worker(dsn, env={"SKIPLOCK_QUEUES": "a,b", "SKIPLOCK_MAX_JOBS": "2", "SKIPLOCK_WORKER_ID": "env-worker"})
    # --queue c d (several after one flag) plus --queue e (repeated); the flags beat SKIPLOCK_QUEUES.
    _run_worker(dsn, "--queue", "c", "d", "--queue", "e", "--max-jobs", "3", "--worker-id", "flag-worker",
                env={"SKIPLOCK_QUEUES": "a", "SKIPLOCK_WORKER_ID": "env-worker"})
    rows = dict(sql(dsn, "SELECT id, worker_id FROM skiplock.jobs WHERE state = 'completed' "
                         "UNION ALL SELECT id, worker_id FROM skiplock.jobs_history"))
    assert {q: rows.get(i) for q, i in ids.items()} == {
        "a": "env-worker", "b": "env-worker", "c": "flag-worker", "d": "flag-worker", "e": "flag-worker"}


def test_every_documented_variable_sets_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each SKIPLOCK_* name in the README, docs, chart and operator is an option's variable (or
    one of the few settings with no flag), so renaming an option cannot silently orphan it."""
    names: dict[str, EnvParser] = {}

    def walk(parser: EnvParser) -> None:
        for action in parser._actions:
            names.update(dict.fromkeys(parser.env_names(action), parser))
            for sub in getattr(action, "_name_parser_map", {}).values():
                walk(sub)

    walk(build_parser())
    sources = [ROOT / "README.md", ROOT / "operator" / "skiplock" / "operator" / "resources.py",
               *(ROOT / "docs").rglob("*.md"), *(ROOT / "charts").rglob("*.yaml")]
    used = {m for path in sources for m in re.findall(r"SKIPLOCK_[A-Z0-9_]*[A-Z0-9]", path.read_text())}
    no_flag = {*LIBRARY_VARIABLES, "SKIPLOCK_UI_TOKEN", "SKIPLOCK_UI_USER", "SKIPLOCK_UI_PASSWORD",  # secrets
               "SKIPLOCK_TEST_DATABASE_URL", "SKIPLOCK_SKIP_SETUP", "SKIPLOCK_SKIP_CHAOS", "SKIPLOCK_CHAOS_REPORT",
               "SKIPLOCK_UI_SCREENSHOTS", "SKIPLOCK_IMAGES", "SKIPLOCK_IMAGE_TAG", "SKIPLOCK_IMAGE_CACHE",
               "SKIPLOCK_BUILD_LAYERS", "SKIPLOCK_SKIP_K8S", "SKIPLOCK_SKIP_E2E", "SKIPLOCK_K8S_CACHE",
               "SKIPLOCK_REQUIRE_TOOLS"}  # the test suite's own switches
    assert {"SKIPLOCK_QUEUES", "SKIPLOCK_HANDLERS", "SKIPLOCK_LOG_LEVEL", "SKIPLOCK_UI_PORT"} <= used
    orphans = used - no_flag - set(names)
    assert not orphans, f"documented but read by no option: {sorted(orphans)} (see skiplock/cli_env.py)"
    # The names of the operator's and the UI's flags, set in a Deployment, reach those flags.
    for var in [k for k in os.environ if k.startswith("SKIPLOCK_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(var)
    for var, value in {"SKIPLOCK_OPERATOR_METRICS_PORT": "9999", "SKIPLOCK_LIVENESS_PORT": "8888",
                       "SKIPLOCK_PEERING": "p", "SKIPLOCK_LEASE_NAMESPACE": "ops", "SKIPLOCK_LEASE_DURATION": "1m",
                       "SKIPLOCK_QUERY_TIMEOUT": "2s", "SKIPLOCK_UI_HOST": "0.0.0.0", "SKIPLOCK_UI_PORT": "9000",
                       "SKIPLOCK_LOG_LEVEL": "debug", "DATABASE_URL": "postgresql://x/y"}.items():
        monkeypatch.setenv(var, value)
    op = build_parser().parse_args(["operator"])
    assert (op.metrics_port, op.liveness_port, op.peering, op.lease_namespace, op.lease_duration,
            op.query_timeout, op.log_level, op.database_url) == (9999, 8888, "p", "ops", 60.0, 2.0, "debug",
                                                                 "postgresql://x/y")
    ui = build_parser().parse_args(["ui", "--port", "1234"])
    assert (ui.host, ui.port) == ("0.0.0.0", 1234)


def test_help_documents_the_rule() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for text in ("SKIPLOCK_<OPTION>", "SKIPLOCK_<COMMAND>_<OPTION>", "SKIPLOCK_QUEUES=a,b", "wins"):
        assert text in top.stdout, text
    worker = cli("worker", "--help").stdout
    assert "SKIPLOCK_[WORKER_]CONCURRENCY" in worker and "SKIPLOCK_[WORKER_]LEASE_SECONDS" in worker
    assert "SKIPLOCK_JOBS_LIST_LIMIT" in cli("jobs", "list", "--help").stdout


def test_demo_starts_its_own_postgres_without_a_database_url() -> None:
    """`skiplock demo` with no DATABASE_URL: an embedded server, started, used and removed (~15 s)."""
    scratch = Path(tempfile.mkdtemp(prefix="skiplock-demo-"))
    try:
        proc = cli("demo", "--jobs", "300", "--workers", "2", "--concurrency", "10", "--metrics-port", "0",
                   dsn=None, env={"TMPDIR": str(scratch)}, timeout=240)
        leftovers = list(scratch.glob("skiplock-pg-*"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    assert "starting an embedded PostgreSQL" in proc.stderr and "Traceback" not in proc.stderr
    assert "300 jobs in" in proc.stdout and "with 2 workers" in proc.stdout
    assert "completed  295" in proc.stdout and "dead       5" in proc.stdout, proc.stdout
    assert leftovers == [], "the embedded server's data directory was left behind"
