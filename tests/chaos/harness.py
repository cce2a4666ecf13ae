"""The chaos tier's machinery: an audited database, a fleet of real worker processes, producers that
keep enqueueing through faults, and the history check every scenario ends with.

The audit is a trigger on ``skiplock.jobs`` (test instrumentation, installed in the test database
only) that writes every state or attempt change, with the lease and worker it replaced, into
``chaos_transitions``, in the same transaction as the change. From it and from the handlers' own
``chaos_executions`` the check proves, for every job: it exists (none vanished), it ended
``completed`` (all scenarios give enough attempts), it was completed exactly once, by the execution
that held its last lease (the stored result token names that execution), every transition is one
the state machine allows, claims stayed within the attempts (plus refunded releases), and a job
held by a dead or unreachable worker was rescued within the lease plus the recovery interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from skiplock import DatabaseUnavailable, Queue, states
from skiplock import sync as skiplock_sync
from skiplock.states import Action
from tests.helpers import ROOT, sql

HANDLERS = "tests.chaos.handlers:jobs"

AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS chaos_executions (
    job_id bigint NOT NULL, attempt int NOT NULL, worker text NOT NULL, pid int NOT NULL, token text NOT NULL,
    note text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS chaos_transitions (
    job_id bigint NOT NULL, old_state text, new_state text NOT NULL, old_attempts int, new_attempts int NOT NULL,
    old_worker text, new_worker text, old_lease timestamptz, result jsonb,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS chaos_faults (
    kind text NOT NULL, target text, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION chaos_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO chaos_transitions (job_id, new_state, new_attempts, new_worker)
        VALUES (NEW.id, NEW.state, NEW.attempts, NEW.worker_id);
    ELSIF OLD.state IS DISTINCT FROM NEW.state OR OLD.attempts IS DISTINCT FROM NEW.attempts THEN
        INSERT INTO chaos_transitions (job_id, old_state, new_state, old_attempts, new_attempts, old_worker,
                                       new_worker, old_lease, result)
        VALUES (NEW.id, OLD.state, NEW.state, OLD.attempts, NEW.attempts, OLD.worker_id, NEW.worker_id,
                OLD.lease_expires_at, CASE WHEN NEW.state = 'completed' THEN NEW.result END);
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS chaos_audit ON skiplock.jobs;
CREATE TRIGGER chaos_audit AFTER INSERT OR UPDATE ON skiplock.jobs
    FOR EACH ROW EXECUTE FUNCTION chaos_audit();
"""

# Transitions the state machine (skiplock.states) allows without a person: no admin cancel or
# retry happens in these scenarios.
LEGAL = states.edges(Action.ENQUEUE, Action.CLAIM, Action.FINISH, Action.RELEASE, Action.RESCUE, Action.PROPAGATE)


def child_pythonpath() -> str:
    """The inherited PYTHONPATH without empty entries: the handlers load as ``tests.chaos.handlers``
    from the working directory, which ``skiplock worker`` adds to ``sys.path`` after startup."""
    return os.pathsep.join(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)


def install_audit(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUDIT_SQL)


def note_fault(dsn: str, kind: str, target: str | None = None) -> None:
    """Record a fault on the database's clock (best effort: the database may be the fault)."""
    with contextlib.suppress(psycopg.Error):
        sql(dsn, "INSERT INTO chaos_faults (kind, target) VALUES (%s, %s)", (kind, target))


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.25) -> float:
    """Poll ``check`` until true; returns the seconds it took, fails after ``timeout``."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except psycopg.OperationalError:
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(every)


def count(dsn: str, query: str, params: Any = None) -> int:
    return int(sql(dsn, query, params)[0][0])


def all_done(dsn: str, total: int) -> bool:
    """At least ``total`` jobs exist and every one of them is finished."""
    (jobs, unfinished), = sql(dsn, "SELECT count(*), count(*) FILTER (WHERE state NOT IN "
                                   "('completed', 'dead', 'cancelled')) FROM skiplock.jobs")
    return bool(jobs >= total and unfinished == 0)


# -- workers -----------------------------------------------------------------------------------------


@dataclass
class WorkerProc:
    id: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Fleet:
    """Real ``skiplock worker`` processes with known worker ids and logs in ``logdir``."""

    def __init__(self, dsn: str, logdir: Path, *, lease: float, recovery: float, poll: float = 0.5,
                 concurrency: int = 6, record_dsn: str | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.dsn, self.logdir = dsn, logdir
        self.lease, self.recovery, self.poll = lease, recovery, poll
        self.concurrency = concurrency
        self.record_dsn = record_dsn or dsn
        self.extra_args = extra_args
        self.env = env or {}
        self.workers: dict[str, WorkerProc] = {}
        self._n = 0

    def spawn(self, *args: str, dsn: str | None = None, name: str = "w") -> WorkerProc:
        self._n += 1
        wid = f"{name}{self._n}"
        log = self.logdir / f"{wid}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_")}
        env.update({
            "DATABASE_URL": dsn or self.dsn, "CHAOS_RECORD_DSN": self.record_dsn,
            "PYTHONPATH": child_pythonpath(), "SKIPLOCK_WORKER_ID": wid,
            "SKIPLOCK_POLL_INTERVAL": str(self.poll), "SKIPLOCK_RECOVERY_INTERVAL": str(self.recovery),
            "SKIPLOCK_BACKOFF_BASE": "0.2", "SKIPLOCK_BACKOFF_MAX": "1", "SKIPLOCK_CONNECT_TIMEOUT": "3",
            **self.env,
        })
        cmd = [sys.executable, "-m", "skiplock", "worker", "--handlers", HANDLERS,
               "--lease", str(self.lease), "--concurrency", str(self.concurrency), *self.extra_args, *args]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        worker = WorkerProc(wid, proc, log)
        self.workers[wid] = worker
        return worker

    def alive(self) -> list[WorkerProc]:
        return [w for w in self.workers.values() if w.alive()]

    def kill(self, worker: WorkerProc, sig: int = signal.SIGKILL) -> None:
        worker.proc.send_signal(sig)

    def stop_all(self, timeout: float = 60) -> None:
        """SIGTERM everyone still running (SIGCONT first, in case one is paused), then reap."""
        for w in self.alive():
            w.proc.send_signal(signal.SIGCONT)
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in self.workers.values():
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()

    def tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {w.id} (rc={w.proc.returncode})\n" + "\n".join(w.output().splitlines()[-lines:])
                         for w in self.workers.values())


# -- producers ---------------------------------------------------------------------------------------


@dataclass
class ProducerStats:
    batches: int = 0
    acked: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # every logical key handed to the queue
    errors: Counter[str] = field(default_factory=Counter)
    ambiguous_keys: set[str] = field(default_factory=set)  # keys whose enqueue failed at least once
    unexpected: list[str] = field(default_factory=list)  # errors that are not a clear DatabaseUnavailable


class Producer(threading.Thread):
    """Enqueue ``total`` jobs in batches, through whatever happens to the database.

    Every job carries a logical key (payload ``k`` and ``dedup_key``). A batch that fails must fail
    with ``DatabaseUnavailable`` (a clear error, never a hang or a driver error leaking out); the
    producer then retries the same batch, so a job can only be missing if the queue said "done" and
    then lost it. ``mode``: ``sync`` (the sync facade on one connection) or ``async`` (``Queue``)."""

    def __init__(self, dsn: str, total: int, *, prefix: str, batch: int = 100, ms: Callable[[], int] = lambda: 0,
                 mode: str = "sync", pace: float = 0.0, max_attempts: int = 25, queue: str = "default") -> None:
        super().__init__(name=f"producer-{prefix}", daemon=True)
        self.dsn, self.total, self.prefix, self.batch = dsn, total, prefix, batch
        self.ms, self.mode, self.pace, self.max_attempts, self.queue = ms, mode, pace, max_attempts, queue
        self.stats = ProducerStats()
        self.failure: BaseException | None = None
        self.stop_event = threading.Event()

    def _batches(self) -> Iterator[list[dict[str, Any]]]:
        for start in range(0, self.total, self.batch):
            specs = []
            for i in range(start, min(self.total, start + self.batch)):
                key = f"{self.prefix}-{i}"
                specs.append({"type": "work", "payload": {"k": key, "ms": self.ms()}, "dedup_key": key,
                              "max_attempts": self.max_attempts, "queue": self.queue})
            yield specs

    def _note_error(self, exc: BaseException, batch: list[dict[str, Any]]) -> None:
        self.stats.errors[type(exc).__name__] += 1
        self.stats.ambiguous_keys.update(s["dedup_key"] for s in batch)
        if not isinstance(exc, DatabaseUnavailable):
            self.stats.unexpected.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")

    def run(self) -> None:
        try:
            if self.mode == "async":
                asyncio.run(self._run_async())
            else:
                self._run_sync()
        except BaseException as exc:  # surfaced by the test through .failure
            self.failure = exc

    def _run_sync(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        for specs in self._batches():
            self.stats.keys += [s["dedup_key"] for s in specs]
            while not self.stop_event.is_set():
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
                    ids = skiplock_sync.enqueue_many(conn, specs)
                    break
                except DatabaseUnavailable as exc:
                    self._note_error(exc, specs)
                except psycopg.OperationalError as exc:  # connecting is our code, not skiplock's
                    self.stats.errors["connect"] += 1
                    self.stats.ambiguous_keys.update(s["dedup_key"] for s in specs)
                    del exc
                except Exception as exc:
                    self._note_error(exc, specs)
                if conn is not None and (conn.closed or conn.broken):
                    conn = None
                time.sleep(0.1 + random.random() * 0.2)
            else:
                return
            self.stats.acked += ids
            self.stats.batches += 1
            if self.pace:
                time.sleep(self.pace)
        if conn is not None:
            conn.close()

    async def _run_async(self) -> None:
        queue: Queue | None = None
        try:
            for specs in self._batches():
                self.stats.keys += [s["dedup_key"] for s in specs]
                while not self.stop_event.is_set():
                    try:
                        if queue is None:
                            queue = Queue(self.dsn, pool_size=2)
                            await queue.open()
                        ids = await queue.enqueue_many(specs)
                        break
                    except Exception as exc:
                        self._note_error(exc, specs)
                        if queue is not None and not isinstance(exc, DatabaseUnavailable):
                            await queue.close()
                            queue = None
                    await asyncio.sleep(0.1 + random.random() * 0.2)
                else:
                    return
                self.stats.acked += ids
                self.stats.batches += 1
                if self.pace:
                    await asyncio.sleep(self.pace)
        finally:
            if queue is not None:
                await queue.close()


def enqueue_direct(dsn: str, n: int, *, prefix: str, ms: Callable[[], int] = lambda: 0,
                   max_attempts: int = 25, extra: dict[str, Any] | None = None) -> list[int]:
    p = Producer(dsn, n, prefix=prefix, batch=1000, ms=ms, max_attempts=max_attempts)
    p.run()
    if p.failure:
        raise p.failure
    if extra:
        sql(dsn, "UPDATE skiplock.jobs SET payload = payload || %s::jsonb WHERE id = ANY(%s)",
            (json.dumps(extra), p.stats.acked))
    return p.stats.acked


# -- the history check ---------------------------------------------------------------------------------


@dataclass
class Report:
    scenario: str
    jobs: int = 0
    executions: int = 0
    claims: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicated: int = 0
    not_final: int = 0
    illegal: int = 0
    stale_results: int = 0
    over_attempts: int = 0
    rescues: int = 0
    releases: int = 0
    late_finishes: int = 0
    reenqueued: int = 0
    max_stuck_after_lease: float = 0.0
    max_stuck_after_kill: float = 0.0
    stuck_bound_after_lease: float = 0.0
    stuck_bound_after_kill: float = 0.0
    stuck_over_bound: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "problems"}
        d["faults"] = dict(self.faults)
        d["faults_total"] = sum(self.faults.values())
        d["problems"] = self.problems[:20]
        return d

    def line(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        return (f"{self.scenario}: jobs={self.jobs} executions={self.executions} "
                f"faults={sum(self.faults.values())} ({faults}) "
                f"lost={self.lost} duplicated={self.duplicated} rescued={self.rescues} released={self.releases} "
                f"late_finishes_ignored={self.late_finishes} reenqueued={self.reenqueued} "
                f"max_stuck_after_kill={self.max_stuck_after_kill:.1f}s/{self.stuck_bound_after_kill:.1f}s "
                f"max_stuck_after_lease={self.max_stuck_after_lease:.1f}s/{self.stuck_bound_after_lease:.1f}s "
                f"in {self.seconds:.0f}s")


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def check_history(dsn: str, report: Report, *, acked: list[int], keys: list[str] | None = None,
                  ambiguous_keys: set[str] | None = None, lease: float, recovery: float,
                  slack: float, outages: list[tuple[float, float]] | None = None) -> Report:
    """Fill ``report`` from the audit tables and list every violation in ``report.problems``.

    Stuck time is measured two ways: from a lease's expiry to its rescue (bound: 1.5 x recovery,
    the maintenance loop's jittered period, plus ``slack``), and from a worker's SIGKILL to the
    rescue of every job it held (bound: lease + 1.5 x recovery + ``slack``). Database outages
    (``(start, end)`` epoch seconds) are added to the bound of any rescue they overlap."""
    problems = report.problems
    jobs = {r[0]: r[1:] for r in sql(dsn, """
        SELECT id, state::text, attempts, max_attempts, result, payload->>'k', worker_id FROM skiplock.jobs
        UNION ALL
        SELECT id, state::text, attempts, max_attempts, result, payload->>'k', worker_id FROM skiplock.jobs_history""")}
    report.jobs = len(jobs)
    missing = sorted(set(acked) - set(jobs))
    report.lost = len(missing)
    if missing:
        problems.append(f"lost: acknowledged jobs that do not exist: {missing[:10]}")
    if keys is not None:
        per_key = Counter(k for (_, _, _, _, k, _) in jobs.values())
        absent = [k for k in keys if per_key[k] == 0]
        if absent:
            report.lost += len(absent)
            problems.append(f"lost: {len(absent)} logical jobs never made it into the queue: {absent[:5]}")
        multi = {k for k, n in per_key.items() if n > 1}
        report.reenqueued = sum(per_key[k] - 1 for k in multi)
        unexplained = multi - (ambiguous_keys or set())
        if unexplained:
            problems.append(f"duplicate enqueue without an error to explain it: {sorted(unexplained)[:5]}")
    for job_id, (state, attempts, max_attempts, _result, _k, _w) in jobs.items():
        if state != "completed":
            report.not_final += 1
            if report.not_final <= 5:
                problems.append(f"job {job_id} ended {state} after {attempts}/{max_attempts} attempts")

    executions: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    # DISTINCT: a handler re-sends its insert once if the connection broke (it may have committed).
    for job_id, attempt, token, note in sql(dsn, "SELECT DISTINCT job_id, attempt, token, note FROM chaos_executions"):
        executions[job_id].append((attempt, token, note))
    report.executions = sum(1 for rows in executions.values() for r in rows if r[2] == "start")

    transitions: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in sql(dsn, """SELECT job_id, old_state, new_state, old_attempts, new_attempts, old_worker, new_worker,
                                  old_lease, at
                           FROM chaos_transitions ORDER BY at, job_id"""):
        transitions[row[0]].append(row[1:])

    kills = [(target, _ts(at)) for target, at in sql(dsn, "SELECT target, at FROM chaos_faults WHERE kind = 'SIGKILL'")]
    kill_at = dict(kills)
    outages = outages or []

    def outage_overlap(start: float, end: float) -> float:
        return sum(max(0.0, min(end, o_end) - max(start, o_start)) for o_start, o_end in outages)

    report.stuck_bound_after_lease = 1.5 * recovery + slack
    report.stuck_bound_after_kill = lease + 1.5 * recovery + slack
    for job_id, rows in transitions.items():
        completions = 0
        claims = 0
        releases = 0
        for old, new, old_att, new_att, old_w, new_w, old_lease, at in rows:
            if (old, new) not in LEGAL:
                report.illegal += 1
                problems.append(f"job {job_id}: illegal transition {old} -> {new}")
            if new == "running":
                claims += 1
                if new_att != (old_att or 0) + 1:
                    problems.append(f"job {job_id}: claim moved attempts {old_att} -> {new_att}")
            if old == "running" and new != "running" and new_w is None:  # not a finish: it keeps the worker
                if new_att == old_att - 1:
                    releases += 1
                else:
                    report.rescues += 1
                    t_rescue = _ts(at)
                    after_lease = t_rescue - _ts(old_lease)
                    bound = report.stuck_bound_after_lease + outage_overlap(_ts(old_lease), t_rescue)
                    report.max_stuck_after_lease = max(report.max_stuck_after_lease, after_lease)
                    if after_lease > bound:
                        report.stuck_over_bound += 1
                        problems.append(f"job {job_id}: rescued {after_lease:.1f}s after its lease expired "
                                        f"(bound {bound:.1f}s)")
                    if old_w in kill_at:
                        after_kill = t_rescue - kill_at[old_w]
                        bound = report.stuck_bound_after_kill + outage_overlap(kill_at[old_w], t_rescue)
                        report.max_stuck_after_kill = max(report.max_stuck_after_kill, after_kill)
                        if after_kill > bound:
                            report.stuck_over_bound += 1
                            problems.append(f"job {job_id}: held by killed worker {old_w}, rescued "
                                            f"{after_kill:.1f}s after the kill (bound {bound:.1f}s)")
            if new == "completed":
                completions += 1
        report.claims += claims
        report.releases += releases
        if completions > 1:
            report.duplicated += 1
            problems.append(f"job {job_id}: completed {completions} times")
        if job_id in jobs:
            state, attempts, max_attempts, result, _k, _w = jobs[job_id]
            if claims > max_attempts + releases:
                report.over_attempts += 1
                problems.append(f"job {job_id}: claimed {claims} times with {max_attempts} attempts "
                                f"and {releases} releases")
            starts = [e for e in executions.get(job_id, []) if e[2] == "start"]
            if len(starts) > claims:
                report.over_attempts += 1
                problems.append(f"job {job_id}: {len(starts)} executions for {claims} claims")
            if state == "completed":
                token = (result or {}).get("token")
                owners = [e for e in starts if e[1] == token]
                if not owners or owners[0][0] != attempts:
                    report.stale_results += 1
                    problems.append(f"job {job_id}: result {result} is not from the execution holding the last "
                                    f"lease (attempt {attempts}; executions {starts})")
                late = [e for e in executions.get(job_id, []) if e[2] == "end" and e[1] != token]
                report.late_finishes += len(late)
    # A job still held by a killed worker at the end was never rescued at all.
    for job_id, (state, *_rest, worker) in jobs.items():
        if state == "running" and worker in kill_at:
            problems.append(f"job {job_id}: still running on killed worker {worker}")
            report.stuck_over_bound += 1
    return report


REPORTS: list[Report] = []


def write_report(report: Report) -> None:
    """Keep the report for the terminal summary; also append it to ``$SKIPLOCK_CHAOS_REPORT`` (JSON lines)."""
    REPORTS.append(report)
    target = os.environ.get("SKIPLOCK_CHAOS_REPORT")
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(report.as_dict()) + "\n")


def assert_clean(report: Report, context: str = "") -> None:
    write_report(report)
    print(report.line())
    assert not report.problems, f"{report.line()}\n" + "\n".join(report.problems[:20]) + (
        f"\n{context}" if context else "")
    assert report.lost == 0 and report.duplicated == 0 and report.not_final == 0
