"""PostgreSQL restarted mid-run, with a fast and with an immediate (crash-like) shutdown, while
workers run jobs and three kinds of producers (sync facade, async ``Queue``, the CLI) enqueue."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from skiplock.embedded import LocalPostgres
from tests.chaos.harness import (
    Fleet,
    Producer,
    Report,
    all_done,
    assert_clean,
    check_history,
    child_pythonpath,
    count,
    install_audit,
    note_fault,
    wait_until,
)
from tests.helpers import ROOT, sql

LEASE, RECOVERY = 3.0, 1.0
SLACK = 8.0


class CliProducer(threading.Thread):
    """Runs ``skiplock enqueue --from-file`` for batches of 50 keyed jobs; a failed run must exit 1
    with a one-line ``skiplock: error:`` message (not a traceback), and is run again."""

    def __init__(self, dsn: str, batches: int, workdir: Path) -> None:
        super().__init__(name="cli-producer", daemon=True)
        self.dsn, self.batches, self.workdir = dsn, batches, workdir
        self.keys: list[str] = []
        self.ambiguous: set[str] = set()
        self.failures: list[str] = []
        self.unclear: list[str] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_") and k != "DATABASE_URL"}
            env.update(PYTHONPATH=child_pythonpath(), DATABASE_URL=self.dsn, SKIPLOCK_CONNECT_TIMEOUT="3")
            for b in range(self.batches):
                keys = [f"cli-{b}-{i}" for i in range(50)]
                self.keys += keys
                path = self.workdir / f"batch-{b}.jsonl"
                path.write_text("".join(json.dumps({"type": "work", "payload": {"k": k, "ms": 0}, "dedup_key": k,
                                                    "max_attempts": 25}) + "\n" for k in keys))
                for _ in range(40):
                    proc = subprocess.run([sys.executable, "-m", "skiplock", "enqueue", "--from-file", str(path)],
                                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
                    if proc.returncode == 0:
                        break
                    self.ambiguous.update(keys)
                    self.failures.append(proc.stderr.strip())
                    if proc.returncode != 1 or "Traceback" in proc.stderr or "skiplock: error:" not in proc.stderr:
                        self.unclear.append(f"rc={proc.returncode}: {proc.stderr[-2000:]}")
                    time.sleep(0.3)
                else:
                    raise AssertionError("the CLI never got its batch in")
                time.sleep(0.3)
        except BaseException as exc:
            self.failure = exc


def _restart(server: LocalPostgres, mode: str, down: float, outages: list[tuple[float, float]]) -> None:
    start = time.time()
    server.stop(mode)
    time.sleep(down)
    server.start()
    outages.append((start, time.time()))


@pytest.mark.timeout(240)
def test_postgres_fast_and_immediate_restarts_mid_run(own_server: LocalPostgres, logdir: Path, tmp_path: Path) -> None:
    dsn = own_server.uri
    install_audit(dsn)
    started = time.monotonic()
    report = Report("postgres-restart")
    ms = lambda: random.choice([0, 0, 0, 5, 20, 50, 300])  # noqa: E731
    fleet = Fleet(dsn, logdir, lease=LEASE, recovery=RECOVERY, concurrency=6)
    workers = [fleet.spawn() for _ in range(3)]
    producers = [Producer(dsn, 1500, prefix="sync", batch=25, ms=ms, pace=0.02),
                 Producer(dsn, 1000, prefix="async", batch=25, ms=ms, pace=0.03, mode="async")]
    cli = CliProducer(dsn, 12, tmp_path)
    outages: list[tuple[float, float]] = []
    total = 1500 + 1000 + 12 * 50
    try:
        wait_until(lambda: all("started:" in w.output() for w in workers), 60, "workers started")
        for p in producers:
            p.start()
        cli.start()
        # Restart while producers are mid-stream and workers mid-job: fast, then immediate twice.
        def reached(fraction: float) -> bool:
            return count(dsn, "SELECT count(*) FROM chaos_executions") >= fraction * total

        for mode, at in (("fast", 0.2), ("immediate", 0.45), ("immediate", 0.7)):
            wait_until(functools.partial(reached, at), 90, f"progress to {at:.0%}")
            note_fault(dsn, f"restart-{mode}")
            _restart(own_server, mode, random.uniform(0.5, 2.0), outages)
            report.faults[f"restart-{mode}"] += 1
        last_restart = outages[-1][1]
        for p in producers:
            p.join(120)
            assert p.failure is None, p.failure
        cli.join(120)
        assert cli.failure is None, cli.failure
        wait_until(lambda: all_done(dsn, total), LEASE + 1.5 * RECOVERY + SLACK + 60, "all jobs finished")
        assert all(w.alive() for w in workers), "a worker died with the database:\n" + fleet.tails()
        # Each worker reconnected and went on claiming after the last restart.
        after = dict(sql(dsn, "SELECT worker, count(*) FROM chaos_executions WHERE at > to_timestamp(%s) "
                              "GROUP BY worker", (last_restart,)))
        assert all(after.get(w.id, 0) > 0 for w in workers), (after, fleet.tails())
    finally:
        for p in producers:
            p.stop_event.set()
        fleet.stop_all()
    report.seconds = time.monotonic() - started
    keys = producers[0].stats.keys + producers[1].stats.keys + cli.keys
    ambiguous = producers[0].stats.ambiguous_keys | producers[1].stats.ambiguous_keys | cli.ambiguous
    acked = producers[0].stats.acked + producers[1].stats.acked
    check_history(dsn, report, acked=acked, keys=keys, ambiguous_keys=ambiguous, lease=LEASE, recovery=RECOVERY,
                  slack=SLACK, outages=outages)
    unexpected = producers[0].stats.unexpected + producers[1].stats.unexpected + cli.unclear
    assert not unexpected, f"producers got errors that are not a clear DatabaseUnavailable: {unexpected[:5]}"
    report.faults["producer-errors"] = sum(sum(p.stats.errors.values()) for p in producers) + len(cli.failures)
    assert all(w.proc.returncode == 0 for w in workers), fleet.tails()
    assert_clean(report, fleet.tails())
