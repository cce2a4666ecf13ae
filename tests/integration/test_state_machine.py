"""Every statement that writes ``skiplock.jobs``, run against the real PostgreSQL from every state
(and every variant that changes its answer: outcome, attempts left or spent, a cancel request, a
lease expired or a worker gone...), moves jobs only along the edges of ``skiplock.states``, and
every edge of the table is taken by the statement it names. A statement added or changed without
the table fails here."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from skiplock import plans, states
from skiplock.models import make_spec
from skiplock.retry import DEFAULT
from skiplock.runner import run_sync
from skiplock.sql import QUERIES
from skiplock.states import State

Conn = psycopg.Connection[dict[str, Any]]
WRITES_JOBS = re.compile(r"\b(UPDATE|INSERT INTO|DELETE FROM)\s+skiplock\.jobs\b(?!_)", re.IGNORECASE)


@dataclass(frozen=True)
class Variant:
    """How the job is set up before the statement runs."""

    attempts_spent: bool = False
    cancel_requested: bool = False  # only a running job can hold one
    lease_alive: bool = False  # running: lease not yet expired (rescue then needs the worker gone)
    run_at_future: bool = False
    extra: tuple[tuple[str, Any], ...] = field(default=())

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


def put(conn: Conn, state: State, v: Variant, **columns: Any) -> int:
    """A job in ``state``, as the statements would have left it (test instrumentation)."""
    running = state == State.RUNNING
    finished = state in states.FINISHED
    values = {
        "queue": "q", "type": "t", "state": state.value, "attempts": 0 if state == State.PENDING else 1,
        "max_attempts": 1 if v.attempts_spent else 5, "worker_id": "w" if running or finished else None,
        "cancel_requested": running and v.cancel_requested, **columns}
    names = ", ".join(values)
    marks = ", ".join(f"%({k})s" for k in values)
    lease = "now() + interval '1 hour'" if v.lease_alive else "now() - interval '1 second'"
    run_at = "now() + interval '1 hour'" if v.run_at_future else "now() - interval '1 second'"
    row = conn.execute(
        f"INSERT INTO skiplock.jobs ({names}, lease_expires_at, run_at, finished_at) "
        f"VALUES ({marks}, {lease if running else 'NULL'}, {run_at}, "
        f"{'now() - interval ' + chr(39) + '2 hours' + chr(39) if finished else 'NULL'}) RETURNING id",
        values).fetchone()
    assert row is not None
    return int(row["id"])


def observe(conn: Conn, job_id: int) -> tuple[State | None, bool]:
    row = conn.execute("SELECT state::text AS state, cancel_requested FROM skiplock.jobs WHERE id = %s",
                       (job_id,)).fetchone()
    return (None, False) if row is None else (State(row["state"]), row["cancel_requested"])


def execute(conn: Conn, name: str, params: dict[str, Any]) -> None:
    conn.execute(QUERIES[name], params)


POLICY = DEFAULT.as_json()
RUNNING_VARIANTS = [Variant(attempts_spent=a, cancel_requested=c)
                    for a, c in itertools.product((False, True), repeat=2)]
ANY_STATE = [Variant(), Variant(attempts_spent=True)]


def run_finish(conn: Conn, job_id: int, v: Variant) -> None:
    attempt = conn.execute("SELECT attempts FROM skiplock.jobs WHERE id = %s", (job_id,)).fetchone()
    assert attempt is not None
    batch = [{"id": job_id, "attempt": attempt["attempts"], "outcome": v.get("outcome"), "result": None,
              "error": "boom"}]
    execute(conn, "finish", {"worker_id": "w", "batch": json.dumps(batch), "ids": [job_id], "retry_policy": POLICY})


def run_release(conn: Conn, job_id: int, v: Variant) -> None:
    row = conn.execute("SELECT attempts FROM skiplock.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    execute(conn, "release", {"ids": [job_id], "attempts": [row["attempts"]], "worker_id": "w"})


def run_propagate(conn: Conn, job_id: int, v: Variant) -> None:
    """The job depends on a running parent, which ends (``parent_ends``) in this same transaction."""
    with conn.transaction():
        conn.execute("UPDATE skiplock.jobs SET state = %s, finished_at = now(), worker_id = NULL, "
                     "lease_expires_at = NULL WHERE id = %s", (v.get("parent_ends"), v.get("parent")))
        execute(conn, "propagate", {"ids": [v.get("parent")]})


def run_enqueue(conn: Conn, _job_id: int, v: Variant) -> None:
    spec = make_spec("t", queue="q", delay=3600 if v.run_at_future else None,
                     depends_on=(v.get("parent"),) if v.get("parent") else ())
    run_sync(conn, plans.enqueue([spec]))


def run_unarchive(conn: Conn, job_id: int, v: Variant) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO skiplock.jobs_history SELECT * FROM skiplock.jobs WHERE id = %s", (job_id,))
        conn.execute("DELETE FROM skiplock.jobs WHERE id = %s", (job_id,))
    execute(conn, "unarchive", {"id": job_id})


def run_expire(conn: Conn, job_id: int, v: Variant) -> None:
    """The job's lifetime has run out: a ttl (waiting) and a result and failure ttl (finished) of 0."""
    conn.execute("UPDATE skiplock.jobs SET ttl_seconds = 1, expires_at = now() - interval '1 second', "
                 "result_ttl_seconds = 0, failure_ttl_seconds = 0 WHERE id = %s", (job_id,))
    execute(conn, v.get("query"), {"limit": 100})


def run_update(conn: Conn, job_id: int, v: Variant) -> None:
    when = datetime.now(UTC) + timedelta(hours=1 if v.run_at_future else -1)
    execute(conn, "update_job", {"id": job_id, "priority": 3, "run_at": when})


def plain(name: str, params: Callable[[int, Variant], dict[str, Any]]) -> Callable[[Conn, int, Variant], None]:
    return lambda conn, job_id, v: execute(conn, name, params(job_id, v))


CLAIM = {"queue": "q", "types": None, "limit": 10, "worker_id": "w2", "lease_seconds": 30}
HEARTBEAT = {"worker_id": "w", "queues": ["q"], "types": None, "hostname": "h", "pid": 1, "concurrency": 1,
             "lease_seconds": 30}


def run_claim_limited(conn: Conn, job_id: int, v: Variant) -> None:
    conn.execute("INSERT INTO skiplock.limits (type, tenant, concurrency) VALUES ('t', '', 100)")
    run_sync(conn, plans.claim_limited(dict(CLAIM)))


Runner = Callable[[Conn, int, Variant], None]
RUNS: dict[str, tuple[Runner, list[Variant]]] = {
    "claim": (plain("claim", lambda i, v: CLAIM), ANY_STATE),
    "claim_announce": (plain("claim_announce", lambda i, v: CLAIM), ANY_STATE),
    "claim_limited": (run_claim_limited, ANY_STATE),
    "finish": (run_finish, [Variant(attempts_spent=r.attempts_spent, cancel_requested=r.cancel_requested,
                                    extra=(("outcome", o),))
                            for r in RUNNING_VARIANTS for o in ("completed", "failed", "dead", "cancelled")]),
    "release": (run_release, RUNNING_VARIANTS),
    "rescue": (plain("rescue", lambda i, v: {"gone_workers": ["w"] if v.lease_alive else [], "retry_policy": POLICY}),
               [*RUNNING_VARIANTS, *(Variant(lease_alive=True, attempts_spent=r.attempts_spent,
                                             cancel_requested=r.cancel_requested) for r in RUNNING_VARIANTS)]),
    "propagate": (run_propagate, [Variant(run_at_future=f, extra=(("parent_ends", e), ("deps", d)))
                                  for f in (False, True) for e in ("completed", "dead", "cancelled") for d in (1, 2)]),
    "cancel": (plain("cancel", lambda i, v: {"id": i, "reason": "test", "filter": "{}"}), ANY_STATE),
    "retry": (plain("retry", lambda i, v: {"id": None, "filter": json.dumps({"states": ["dead"]}) if v.get("bulk")
                                           else "{}"} if v.get("bulk") else {"id": i, "filter": "{}"}),
              [*ANY_STATE, Variant(extra=(("bulk", True),))]),
    "update_job": (run_update, [Variant(), Variant(run_at_future=True)]),
    "expire": (run_expire, [Variant(extra=(("query", "expire"),))]),
    "expire_finished": (run_expire, [Variant(extra=(("query", "expire_finished"),))]),
    "archive": (plain("archive", lambda i, v: {"finished_after": 0, "dead_after": 0, "limit": 100}), ANY_STATE),
    "purge": (plain("purge", lambda i, v: {"ids": None, "filter": json.dumps({"older_than": 0})}), ANY_STATE),
    "unarchive": (run_unarchive, ANY_STATE),
    "heartbeat": (plain("heartbeat", lambda i, v: {**HEARTBEAT, "ids": [i]}), RUNNING_VARIANTS),
    "worker_heartbeat": (plain("worker_heartbeat", lambda i, v: {**HEARTBEAT, "ids": [i], "leader_seconds": 30}),
                         RUNNING_VARIANTS),
    "lock_parents": (plain("lock_parents", lambda i, v: {"ids": [i]}), ANY_STATE),
    "watch": (plain("watch", lambda i, v: {"id": i}), ANY_STATE),
}
ENQUEUE_VARIANTS = [Variant(), Variant(run_at_future=True), Variant(extra=(("parent_state", State.PENDING),)),
                    Variant(extra=(("parent_state", State.DEAD),)), Variant(extra=(("parent_state", State.COMPLETED),))]


@pytest.fixture
def conn(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
        yield c


def fresh(conn: Conn) -> None:
    conn.execute("TRUNCATE skiplock.jobs, skiplock.jobs_history, skiplock.limits")


def setup_job(conn: Conn, query: str, state: State, v: Variant) -> tuple[int, Variant]:
    """The job the statement is run against (for propagate: a child of a running parent)."""
    if query != "propagate":
        return put(conn, state, v), v
    parent = put(conn, State.RUNNING, Variant(), has_dependents=True)
    deps = v.get("deps")
    child = put(conn, state, v, depends_on=[parent], pending_deps=deps if state == State.BLOCKED else 0)
    return child, Variant(run_at_future=v.run_at_future, extra=(*v.extra, ("parent", parent)))


def test_every_statement_moves_jobs_only_along_the_table(conn: Conn) -> None:
    allowed = {(t.source, t.target, q) for t in states.TRANSITIONS for q in t.queries}
    seen: set[tuple[State | None, State | None, str]] = set()
    illegal: list[str] = []
    for query, (runner, variants) in RUNS.items():
        for state, v in itertools.product(State, variants):
            fresh(conn)
            job_id, v = setup_job(conn, query, state, v)
            flag_before = observe(conn, job_id)[1]
            runner(conn, job_id, v)
            after, flag = observe(conn, job_id)
            if after == state and flag == flag_before:
                continue  # the statement does not apply to this job: nothing changed
            seen.add((state, after, query))
            if query in states.KEEPS_STATE and after != state:
                illegal.append(f"{query} keeps states, yet moved {state} -> {after} ({v})")
            elif query not in states.KEEPS_STATE and (state, after, query) not in allowed:
                illegal.append(f"{query}: {state} -> {after} is not in skiplock.states ({v})")
            assert not flag or after == State.RUNNING
    for v in ENQUEUE_VARIANTS:
        fresh(conn)
        parent_state = v.get("parent_state")
        parent = put(conn, parent_state, Variant()) if parent_state else None
        run_enqueue(conn, 0, Variant(run_at_future=v.run_at_future, extra=(("parent", parent),)))
        (row,) = conn.execute("SELECT state::text AS state FROM skiplock.jobs WHERE id IS DISTINCT FROM %s",
                              (parent,)).fetchall()
        seen.add((None, State(row["state"]), "enqueue"))
        if (None, State(row["state"]), "enqueue") not in allowed:
            illegal.append(f"enqueue: new -> {row['state']} is not in skiplock.states ({v})")
    assert not illegal, "\n".join(illegal)
    never = sorted(f"{s} -> {t} by {q}" for s, t, q in allowed - seen)
    assert not never, "edges of the table no statement took:\n" + "\n".join(never)


def test_every_statement_that_writes_jobs_is_covered() -> None:
    writers = {name for name, text in QUERIES.items() if WRITES_JOBS.search(text)}
    in_table = {q for t in states.TRANSITIONS for q in t.queries} | set(states.KEEPS_STATE)
    assert writers <= in_table, f"statements writing skiplock.jobs that the table does not know: {writers - in_table}"
    assert writers <= set(RUNS) | {"enqueue"}, f"not exercised here: {writers - set(RUNS)}"


def test_the_schema_agrees_with_the_table(conn: Conn) -> None:
    (row,) = conn.execute("SELECT enum_range(NULL::skiplock.job_state)::text[] AS states").fetchall()
    assert row["states"] == [s.value for s in State]

    def index_states(name: str) -> set[str]:
        (ix,) = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'skiplock' AND indexname = %s",
                             (name,)).fetchall()
        return set(re.findall(r"'(\w+)'::skiplock\.job_state", ix["indexdef"]))

    assert index_states("jobs_claim_idx") == {s.value for s in states.RUNNABLE}
    assert index_states("jobs_finished_idx") == {s.value for s in states.FINISHED}
    assert index_states("jobs_dedup_idx") == {s.value for s in states.FINISHED}
    job_id = put(conn, State.RUNNING, Variant(cancel_requested=True))
    with pytest.raises(psycopg.errors.CheckViolation):  # a cancel request outliving its execution
        conn.execute("UPDATE skiplock.jobs SET state = 'retry' WHERE id = %s", (job_id,))
