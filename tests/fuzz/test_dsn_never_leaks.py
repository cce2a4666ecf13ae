"""The DSN (and above all its password) never shows up in what skiplock writes: worker and CLI logs
(at debug level, through database outages and failing jobs), error messages, /metrics, the jobs'
errors and results, the workers table, the server's view of the sessions, or the process arguments."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from skiplock import sync as skiplock_sync
from skiplock.embedded import LocalPostgres, free_port
from tests.chaos.harness import child_pythonpath, count, install_audit, wait_until
from tests.helpers import ROOT, sql


def _secret_dsn(server: LocalPostgres, secret: str) -> str:
    """The server's DSN with a password (the embedded server trusts loopback, so any password works)."""
    return f"postgresql://postgres:{secret}@127.0.0.1:{server.port}/postgres"


def _env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_") and k != "DATABASE_URL"}
    env.update(DATABASE_URL=dsn, PYTHONPATH=child_pythonpath(), SKIPLOCK_CONNECT_TIMEOUT="2",
               SKIPLOCK_LOG_LEVEL="debug")
    return env


def _skiplock(*args: str, dsn: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skiplock", *args], capture_output=True, text=True,
                          env=_env(dsn), cwd=ROOT, timeout=timeout)


@pytest.mark.timeout(180)
def test_the_dsn_never_appears_in_logs_metrics_errors_or_the_database(own_server: LocalPostgres,
                                                                      tmp_path: Path) -> None:
    secret = "pw-" + secrets.token_hex(8)
    dsn = _secret_dsn(own_server, secret)
    install_audit(own_server.uri)
    with psycopg.connect(dsn, autocommit=True) as conn:
        skiplock_sync.enqueue_many(conn, [{"type": "work", "payload": {"ms": 10}} for _ in range(20)]
                                   + [{"type": "no-such-handler"}, {"type": "work", "payload": "not an object"}])
    port = free_port()
    log = tmp_path / "worker.log"
    env = _env(dsn) | {"SKIPLOCK_WORKER_ID": "secrecy", "CHAOS_RECORD_DSN": dsn}
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "skiplock", "--log-level", "debug", "worker",
                                   "--handlers", "tests.chaos.handlers:jobs", "--types", "work,no-such-handler",
                                   "--metrics-port", str(port), "--lease", "2"],
                                  env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    outputs: list[str] = []
    try:
        wait_until(lambda: count(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state IN "
                                      "('completed', 'dead')") == 22, 60, "jobs finished")
        # The database goes away for a while (every loop logs its connection errors), then comes back.
        own_server.stop("immediate")
        outputs.append(_skiplock("stats", dsn=dsn).stderr)  # the CLI's error while it is down
        time.sleep(3)
        own_server.start()
        wait_until(lambda: "database unavailable" in log.read_text(errors="replace"), 30, "worker saw the outage")
        with psycopg.connect(dsn, autocommit=True) as conn:
            job_id = skiplock_sync.enqueue(conn, "work", {"ms": 1})
        wait_until(lambda: count(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed' AND id = %s",
                                 (job_id,)) == 1, 60, "worker back at work")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            outputs.append(resp.read().decode())
        cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().decode(errors="replace")
        outputs.append(cmdline)
        for args in (("stats",), ("stats", "--json"), ("jobs", "list", "--json"), ("jobs", "show", str(job_id)),
                     ("enqueue", "work", "--payload", '{"ms": 1}'), ("jobs", "list", "--state", "dead")):
            proc = _skiplock(*args, dsn=dsn)
            assert proc.returncode == 0, proc.stderr
            outputs += [proc.stdout, proc.stderr]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    outputs.append(log.read_text(errors="replace"))
    assert "database unavailable" in outputs[-1] and "DEBUG" in outputs[-1]
    stored = sql(dsn, "SELECT coalesce(string_agg(concat_ws(' ', last_error, result::text, payload::text, "
                      "labels::text, worker_id), ' '), '') FROM skiplock.jobs")[0][0]
    sessions = sql(dsn, "SELECT coalesce(string_agg(concat_ws(' ', application_name, query), ' '), '') "
                        "FROM pg_stat_activity")[0][0]
    outputs += [stored, sessions]
    leaked = [text[max(0, text.find(secret) - 200):text.find(secret) + 50] for text in outputs if secret in text]
    assert leaked == [], f"the DSN's password appeared in: {leaked}"


@pytest.mark.parametrize("template", [
    "postgresql://postgres:{secret}@127.0.0.1:1/postgres",
    "postgresql://postgres:{secret}@127.0.0.1:notaport/postgres",
    "postgresql://postgres:{secret}@127.0.0.1:1/postgres?sslmode=bogus",
    "postgresql://postgres:{secret}@127.0.0.1:1/postgres?foo=bar",
    "host=127.0.0.1 port=1 password={secret} bogus",
    "postgresql://postgres:{secret}@nohost.invalid:5432/postgres",
    pytest.param("postgresql://postgres:{secret}@[::1/postgres", id="unclosed-IPv6-bracket"),
    pytest.param("postgresql://postgres:{secret}%zz@127.0.0.1:1/postgres", id="bad-percent-escape"),
    pytest.param("host=127.0.0.1 port=1 password='{secret} x' =oops", id="quoted-password-then-garbage"),
])
@pytest.mark.parametrize("command", [("stats",), ("worker", "--handlers", "tests.chaos.handlers:jobs")])
def test_connection_errors_do_not_echo_the_password(template: str, command: tuple[str, ...]) -> None:
    secret = "pw" + secrets.token_hex(6)
    proc = _skiplock(*command, dsn=template.format(secret=secret), timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "skiplock: error:" in proc.stderr and "Traceback" not in proc.stderr
    assert secret not in proc.stderr + proc.stdout, proc.stderr
