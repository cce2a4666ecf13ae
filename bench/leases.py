"""Connections and heartbeats: what it costs to hold ``lease_jobs`` running jobs (handlers that
sleep through the window) when nothing else happens. Every statement in that window is overhead:
lease renewal (the statements matching the peer's ``lease_markers``), polls, health checks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from . import peers, procs
from .probe import Listener
from .profiles import Profile
from .queues import marked
from .server import Server

SNAPSHOT = marked("""
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
       (SELECT coalesce(sum(n_tup_upd + n_tup_ins + n_tup_del), 0) FROM pg_stat_user_tables) AS rows_written,
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid())
           AS connections
""")
STATEMENTS = marked("""
SELECT s.queryid, s.calls, s.query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database() AND s.query NOT LIKE '%%/* bench */%%'
""")


def run(server: Server, profile: Profile, peer_name: str) -> dict[str, Any]:
    peer = peers.get(peer_name)
    per_process = max(1, profile.lease_jobs // profile.processes)
    jobs = per_process * profile.processes
    listener = Listener()
    try:
        with server.database(peer.name) as dsn:
            peer.setup(dsn)
            batch = min(profile.batch, per_process // 2 or 1)
            with procs.workers(peer.name, dsn, profile.processes, per_process, batch, listener.port,
                               hard_stop=True) as workers:
                asyncio.run(_hold(peer, dsn, jobs, profile.lease_window_s + 60, listener))
                time.sleep(min(5.0, profile.lease_window_s / 4))  # settle: the claims are done
                before, calls0 = _snapshot(dsn)
                started = time.perf_counter()
                time.sleep(profile.lease_window_s)
                elapsed = time.perf_counter() - started
                time.sleep(1.5)  # pg_stat_database lags by up to a second
                after, calls1 = _snapshot(dsn)
                procs.alive(workers)
    finally:
        listener.close()
    delta = {qid: calls1[qid][0] - calls0.get(qid, (0, ""))[0] for qid in calls1}
    lease = sum(n for qid, n in delta.items() if any(m in calls1[qid][1] for m in peer.lease_markers))
    top = sorted(((n, calls1[qid][1]) for qid, n in delta.items() if n > 0), reverse=True)[:6]
    return {"running_jobs": jobs, "window_s": elapsed,
            "statements_per_s": sum(delta.values()) / elapsed,
            "lease_statements_per_s": lease / elapsed,
            "commits_per_s": (after["commits"] - before["commits"]) / elapsed,
            "rows_written_per_s": (after["rows_written"] - before["rows_written"]) / elapsed,
            "connections": after["connections"],
            "top_statements": [{"calls": n, "query": " ".join(q.split())[:100]} for n, q in top]}


async def _hold(peer: peers.Peer, dsn: str, jobs: int, sleep_s: float, listener: Listener) -> None:
    """Enqueue ``jobs`` sleeping jobs and wait until every one has started."""
    listener.attach()
    try:
        async with peer.producer(dsn) as enqueue:
            await enqueue([{"t": time.time(), "sleep": sleep_s} for _ in range(jobs)])
        await listener.wait_latencies(jobs, 120, peer.name)
    finally:
        listener.detach()


def _snapshot(dsn: str) -> tuple[dict[str, int], dict[int, tuple[int, str]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(SNAPSHOT).fetchone()
        calls = {int(qid): (int(n), str(q)) for qid, n, q in conn.execute(STATEMENTS).fetchall()}
    assert row is not None
    return {"commits": int(row[0]), "rows_written": int(row[1]), "connections": int(row[2])}, calls
