"""Clock edges: leases that expire while a slow handler is still running. Workers are frozen with
SIGSTOP for longer than their lease (a GC pause, a stalled VM) and resumed; one worker's heartbeats
are held back by the proxy for longer than the lease. Other workers rescue and re-claim the jobs;
when the stale execution finally finishes, its outcome must change nothing (the stored result
names the execution that held the last lease), and nothing is completed twice."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from skiplock import sync as skiplock_sync
from tests.chaos.harness import (
    Fleet,
    Report,
    all_done,
    assert_clean,
    check_history,
    count,
    enqueue_direct,
    note_fault,
    wait_until,
)
from tests.chaos.proxy import DelayRule, PgProxy
from tests.helpers import sql

LEASE, RECOVERY = 2.0, 0.5
SLACK = 8.0
HEARTBEAT = "INSERT INTO skiplock.workers"  # the heartbeat statement (it also records the worker as seen)


def _slow_ms() -> int:
    return random.randint(1500, 3000)


@pytest.mark.timeout(240)
def test_leases_expire_under_slow_handlers_paused_workers_and_late_heartbeats(audited_dsn: str,
                                                                               logdir: Path) -> None:
    dsn = audited_dsn
    started = time.monotonic()
    report = Report("clock-edges")
    port = urlsplit(dsn).port
    assert port is not None
    acked = enqueue_direct(dsn, 2000, prefix="short", ms=lambda: random.choice([0, 0, 5, 20]))
    slow = enqueue_direct(dsn, 100, prefix="slow", ms=_slow_ms, extra={"trace": True})
    stubborn = enqueue_direct(dsn, 100, prefix="stubborn", ms=_slow_ms, extra={"trace": True, "stubborn": True})
    acked += slow + stubborn
    total = len(acked)
    # Interleave slow and short jobs so every worker holds slow ones throughout.
    sql(dsn, "UPDATE skiplock.jobs SET priority = (random() * 3)::int")
    pauses: list[tuple[float, float]] = []
    with PgProxy(port, seed=random.randrange(2**32)) as proxy:
        fleet = Fleet(dsn, logdir, lease=LEASE, recovery=RECOVERY, concurrency=6)
        direct = [fleet.spawn() for _ in range(3)]
        late = fleet.spawn(dsn=proxy.dsn(dsn), name="late")
        proxy.add_rule(DelayRule("heartbeat", HEARTBEAT, seconds=LEASE + 1.0, chance=0.3))
        try:
            wait_until(lambda: all("started:" in w.output() for w in [*direct, late]), 90, "workers started")
            deadline = time.monotonic() + 100
            while count(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'") < 0.9 * total \
                    and time.monotonic() < deadline:
                time.sleep(random.uniform(1.0, 2.5))
                victim = random.choice([w for w in direct if w.alive()])
                held = count(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state = 'running' AND worker_id = %s",
                             (victim.id,))
                note_fault(dsn, "SIGSTOP", victim.id)
                t0 = time.time()
                victim.proc.send_signal(signal.SIGSTOP)
                time.sleep(LEASE + random.uniform(0.5, 2.0))
                victim.proc.send_signal(signal.SIGCONT)
                pauses.append((t0, time.time()))
                report.faults["SIGSTOP>lease"] += 1
                report.faults["jobs-held-while-paused"] += held
            wait_until(lambda: all_done(dsn, total), LEASE + 1.5 * RECOVERY + SLACK + 60, "all jobs finished")
            assert all(w.alive() for w in fleet.workers.values()), fleet.tails()
        finally:
            proxy.clear_rules()
            fleet.stop_all()
        report.faults["heartbeat-delayed>lease"] = proxy.counts["delay:heartbeat"]
    report.seconds = time.monotonic() - started
    # A worker frozen mid-transaction holds its row locks: rescue waits for it, so pauses count as outages.
    check_history(dsn, report, acked=acked, lease=LEASE, recovery=RECOVERY, slack=SLACK, outages=pauses)
    assert report.late_finishes > 0, "no stale execution ever finished late: the scenario tested nothing"
    assert report.faults["heartbeat-delayed>lease"] > 0
    assert all(w.proc.returncode == 0 for w in fleet.workers.values()), fleet.tails()
    assert_clean(report, fleet.tails())


@pytest.mark.timeout(120)
def test_a_job_reclaimed_by_the_same_worker_survives_its_stale_execution(audited_dsn: str, logdir: Path) -> None:
    dsn = audited_dsn
    port = urlsplit(dsn).port
    assert port is not None
    with psycopg.connect(dsn, autocommit=True) as conn:
        # A handler that does not stop when told (stuck in a C call, say): whether the delayed heartbeat
        # comes back before or after the re-claim, the stale execution runs to its end.
        job_id = skiplock_sync.enqueue(conn, "work", {"ms": 5000, "stubborn": True}, max_attempts=3)
    with PgProxy(port) as proxy:
        # Two pooled connections: with the default one, the held-back heartbeat holds the worker's
        # only connection, so its own rescue and re-claim cannot run meanwhile (the leader's would).
        fleet = Fleet(proxy.dsn(dsn), logdir, lease=2, recovery=0.5, poll=0.2, concurrency=2, record_dsn=dsn,
                      extra_args=("--pool-size", "2"))
        fleet.spawn()
        try:
            wait_until(lambda: count(dsn, "SELECT count(*) FROM chaos_executions") == 1, 60, "job started")
            # One heartbeat held back past the lease: the worker's own maintenance rescues the job and
            # its claim loop (a slot is free) takes it again while the first execution goes on.
            proxy.add_rule(DelayRule("heartbeat", HEARTBEAT, seconds=3.5, limit=1))
            wait_until(lambda: sql(dsn, "SELECT state::text FROM skiplock.jobs")[0][0] in ("completed", "dead"),
                       60, "job finished")
        finally:
            fleet.stop_all()
    state, attempts = sql(dsn, "SELECT state::text, attempts FROM skiplock.jobs WHERE id = %s", (job_id,))[0]
    assert (state, attempts) == ("completed", 2), f"ended {state} after {attempts} attempts"
