"""Connections cut mid-statement by a TCP proxy in front of PostgreSQL, during claim, finish,
heartbeat, rescue and enqueue; every connection severed at random moments; and the database
unreachable for a while (new connections refused). Workers and producers talk only through the
proxy; the handlers' bookkeeping goes straight to the database."""

from __future__ import annotations

import random
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from skiplock.sql import QUERIES
from tests.chaos.harness import (
    Fleet,
    Producer,
    Report,
    all_done,
    assert_clean,
    check_history,
    count,
    note_fault,
    wait_until,
)
from tests.chaos.proxy import CutRule, PgProxy

LEASE, RECOVERY = 3.0, 1.0
SLACK = 8.0
UNREACHABLE = 2.5  # seconds the database refuses new connections (and every open one is cut)

# A fragment of each statement's text, as it goes over the wire (placeholders already rewritten).
MARKERS = {
    "claim": "SET state = 'running', attempts = j.attempts + 1",
    "finish": "AS f(id bigint, attempt integer, outcome text",
    "heartbeat": "INSERT INTO skiplock.workers",
    "enqueue": "INSERT INTO skiplock.jobs (queue, type, payload",
    "rescue": "'lease expired on worker '",
}
CHANCES = {"claim": 0.04, "finish": 0.04, "heartbeat": 0.1, "enqueue": 0.08, "rescue": 0.15}


def test_markers_name_the_statements_they_cut() -> None:
    for name, marker in MARKERS.items():
        hits = sorted(q for q, text in QUERIES.items() if marker in text)
        assert hits and all(name in h for h in hits), (name, hits)  # heartbeat: the SQL API's and the worker's


@pytest.mark.timeout(240)
def test_connections_cut_mid_statement(audited_dsn: str, logdir: Path) -> None:
    dsn = audited_dsn
    started = time.monotonic()
    report = Report("connection-cuts")
    port = urlsplit(dsn).port
    assert port is not None
    outages: list[tuple[float, float]] = []
    with PgProxy(port, seed=random.randrange(2**32)) as proxy:
        via = proxy.dsn(dsn)
        ms = lambda: random.choice([0, 0, 0, 10, 30, 80, 250])  # noqa: E731
        fleet = Fleet(via, logdir, lease=LEASE, recovery=RECOVERY, concurrency=6, record_dsn=dsn)
        workers = [fleet.spawn() for _ in range(3)]
        producers = [Producer(via, 1400, prefix="sync", batch=30, ms=ms, pace=0.03),
                     Producer(via, 1000, prefix="async", batch=30, ms=ms, pace=0.04, mode="async")]
        total = 2400
        try:
            wait_until(lambda: all("started:" in w.output() for w in workers), 90, "workers started")
            rules = [CutRule(name, MARKERS[name], chance=CHANCES[name], max_delay=0.03) for name in MARKERS]
            for rule in rules:
                proxy.add_rule(rule)
            for p in producers:
                p.start()
            unreachable_at = 0.5 * total
            while count(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'") < total * 0.9 \
                    and time.monotonic() - started < 150:
                time.sleep(random.uniform(2.5, 5.0))
                severed = proxy.sever_all()
                report.faults["sever-all"] += 1
                note_fault(dsn, "sever-all", str(severed))
                if unreachable_at and count(dsn, "SELECT count(*) FROM chaos_executions") >= unreachable_at:
                    unreachable_at = 0
                    note_fault(dsn, "unreachable")
                    t0 = time.time()
                    proxy.refuse(True)
                    proxy.sever_all()
                    time.sleep(UNREACHABLE)
                    proxy.refuse(False)
                    outages.append((t0, time.time()))
                    report.faults["unreachable"] += 1
            for p in producers:
                p.join(120)
                assert p.failure is None, p.failure
            wait_until(lambda: all_done(dsn, total), LEASE + 1.5 * RECOVERY + SLACK + 60, "all jobs finished")
            assert all(w.alive() for w in workers), "a worker died of a cut connection:\n" + fleet.tails()
        finally:
            for p in producers:
                p.stop_event.set()
            proxy.clear_rules()
            fleet.stop_all()
        for key, n in proxy.counts.items():
            if key.startswith("cut:"):
                report.faults[key] += n
        report.faults["refused-connections"] = proxy.counts["refused"]
    report.seconds = time.monotonic() - started
    keys = producers[0].stats.keys + producers[1].stats.keys
    check_history(dsn, report, acked=producers[0].stats.acked + producers[1].stats.acked, keys=keys,
                  ambiguous_keys=producers[0].stats.ambiguous_keys | producers[1].stats.ambiguous_keys,
                  lease=LEASE, recovery=RECOVERY, slack=SLACK, outages=outages)
    unexpected = producers[0].stats.unexpected + producers[1].stats.unexpected
    assert not unexpected, f"producers got errors that are not a clear DatabaseUnavailable: {unexpected[:5]}"
    fired = {name: sum(n for k, n in report.faults.items() if k.startswith(f"cut:{name}:")) for name in MARKERS}
    assert all(fired.values()), f"some statements were never cut, the scenario did not test them: {fired}"
    assert all(w.proc.returncode == 0 for w in workers), fleet.tails()
    assert_clean(report, fleet.tails())
