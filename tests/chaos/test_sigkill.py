"""Worker processes killed with SIGKILL at random moments, again and again, while others keep working."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from tests.chaos.harness import (
    Fleet,
    Producer,
    Report,
    all_done,
    assert_clean,
    check_history,
    enqueue_direct,
    note_fault,
    wait_until,
)

LEASE, RECOVERY = 3.0, 1.0
SLACK = 8.0  # scheduling on two busy cores: the bounds below are lease/recovery plus this


def _work_ms() -> int:
    r = random.random()
    return 0 if r < 0.6 else random.randint(20, 150) if r < 0.95 else random.randint(400, 1200)


@pytest.mark.timeout(240)
def test_sigkill_storm_loses_and_duplicates_nothing(audited_dsn: str, logdir: Path) -> None:
    dsn = audited_dsn
    started = time.monotonic()
    report = Report("sigkill-storm")
    acked = enqueue_direct(dsn, 2000, prefix="pre", ms=_work_ms)
    producer = Producer(dsn, 800, prefix="live", batch=50, ms=_work_ms, pace=0.1)
    fleet = Fleet(dsn, logdir, lease=LEASE, recovery=RECOVERY, concurrency=6)
    for _ in range(4):
        fleet.spawn()
    producer.start()
    total = 2800
    kills = 0
    try:
        # Kill a random worker (any moment: starting, claiming, mid-job, finishing) and replace it,
        # until the target number of kills, keeping at least three alive.
        deadline = time.monotonic() + 120
        while kills < 18 and time.monotonic() < deadline:
            time.sleep(random.uniform(0.3, 1.2))
            alive = fleet.alive()
            if len(alive) < 3:
                fleet.spawn()
                continue
            victim = random.choice(alive)
            note_fault(dsn, "SIGKILL", victim.id)
            fleet.kill(victim, signal.SIGKILL)
            kills += 1
            report.faults["SIGKILL"] += 1
            fleet.spawn()
        producer.join(60)
        assert producer.failure is None, producer.failure
        acked += producer.stats.acked
        # Everything left is done within the recovery bound plus the remaining work.
        wait_until(lambda: all_done(dsn, total), LEASE + 1.5 * RECOVERY + SLACK + 60, "all jobs finished")
    finally:
        producer.stop_event.set()
        fleet.stop_all()
    report.seconds = time.monotonic() - started
    check_history(dsn, report, acked=acked, keys=[f"pre-{i}" for i in range(2000)] + producer.stats.keys,
                  ambiguous_keys=producer.stats.ambiguous_keys, lease=LEASE, recovery=RECOVERY, slack=SLACK)
    survivors = [w for w in fleet.workers.values() if w.proc.returncode != -signal.SIGKILL]
    assert all(w.proc.returncode == 0 for w in survivors), fleet.tails()
    assert report.rescues > 0, "no kill ever caught a job in flight: the scenario tested nothing"
    assert_clean(report, fleet.tails())
