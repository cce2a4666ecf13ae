"""The job state machine in one table: every state, every transition, who may take it, and the
named statements (``queries.sql``) that do.

Everything else derives from ``TRANSITIONS``: the state lists in the SQL (``{{runnable}}`` and the
other sets of ``SQL_SETS``, expanded when ``skiplock.sql`` loads the file), the choices of the CLI
and the UI, the chaos tier's set of legal moves, and the diagram and table of
docs/state-machine.md (``python tools/state_diagram.py`` writes them; a test checks they are
current). ``tests/integration/test_state_machine.py`` runs every statement that writes
``skiplock.jobs`` against the real PostgreSQL from every state and fails on a move this table lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """A job's state (the ``skiplock.job_state`` enum, in its order)."""

    SCHEDULED = "scheduled"  # run_at in the future
    BLOCKED = "blocked"  # waiting on dependencies (pending_deps > 0)
    PENDING = "pending"  # runnable now
    RUNNING = "running"  # claimed by worker_id until lease_expires_at
    COMPLETED = "completed"  # the handler returned; result stored
    RETRY = "retry"  # an attempt failed; waiting for its retry delay (run_at)
    DEAD = "dead"  # attempts spent, or a permanent failure: the dead-letter list
    CANCELLED = "cancelled"  # by a request, or by a dependency that ended dead or cancelled


class Action(StrEnum):
    """What moves a job."""

    ENQUEUE = "enqueue"
    CLAIM = "claim"
    FINISH = "finish"  # the lease holder records an outcome: completed, failed, dead, cancelled
    RELEASE = "release"  # the lease holder hands the job back unfinished, attempt refunded
    RESCUE = "rescue"  # the lease expired, or the worker is known to be gone
    PROPAGATE = "propagate"  # a dependency ended
    CANCEL = "cancel"
    RETRY = "retry"
    UPDATE = "update"  # a person reprioritises or reschedules a job that has not started
    EXPIRE = "expire"  # a lifetime ran out: ttl (waiting), result_ttl / failure_ttl (finished)
    ARCHIVE = "archive"
    PURGE = "purge"


class Actor(StrEnum):
    """Who may take a transition."""

    PRODUCER = "producer"  # anyone who enqueues: Queue, CLI, schedules
    CLAIMER = "claimer"  # a worker with free slots
    LEASE_HOLDER = "lease holder"  # only the execution that holds the lease (id, attempt, worker)
    MAINTENANCE = "maintenance"  # a worker's maintenance service, or the operator
    DEPENDENCY = "dependency"  # the transaction in which a parent job ended
    ADMIN = "admin"  # a person or program: CLI, UI, Queue


@dataclass(frozen=True)
class Transition:
    """One arrow: ``source`` (None: a new job) to ``target`` (None: the job leaves the hot table)."""

    action: Action
    source: State | None
    target: State | None
    actor: Actor
    when: str
    queries: tuple[str, ...]


S = State
_RUNNABLE_FROM = (S.PENDING, S.SCHEDULED, S.RETRY)
_FINISHED = (S.COMPLETED, S.DEAD, S.CANCELLED)
_WAITING = (S.SCHEDULED, S.BLOCKED, S.PENDING, S.RETRY)

TRANSITIONS: tuple[Transition, ...] = (
    Transition(Action.ENQUEUE, None, S.PENDING, Actor.PRODUCER, "run_at now", ("enqueue",)),
    Transition(Action.ENQUEUE, None, S.SCHEDULED, Actor.PRODUCER, "run_at later", ("enqueue",)),
    Transition(Action.ENQUEUE, None, S.BLOCKED, Actor.PRODUCER, "depends on unfinished jobs", ("enqueue",)),
    Transition(Action.ENQUEUE, None, S.CANCELLED, Actor.PRODUCER, "a dependency already ended dead or cancelled",
               ("enqueue",)),
    *(Transition(Action.CLAIM, s, S.RUNNING, Actor.CLAIMER, when, ("claim", "claim_announce", "claim_limited"))
      for s, when in zip(_RUNNABLE_FROM, ("spends an attempt, starts a lease", "once run_at has passed",
                                          "once the retry delay has passed"), strict=True)),
    Transition(Action.PROPAGATE, S.BLOCKED, S.PENDING, Actor.DEPENDENCY, "the last dependency completed",
               ("propagate",)),
    Transition(Action.PROPAGATE, S.BLOCKED, S.SCHEDULED, Actor.DEPENDENCY, "... and run_at is still ahead",
               ("propagate",)),
    Transition(Action.PROPAGATE, S.BLOCKED, S.CANCELLED, Actor.DEPENDENCY, "a dependency ended dead or cancelled",
               ("propagate",)),
    Transition(Action.FINISH, S.RUNNING, S.COMPLETED, Actor.LEASE_HOLDER, "the handler returned", ("finish",)),
    Transition(Action.FINISH, S.RUNNING, S.RETRY, Actor.LEASE_HOLDER,
               "failed, attempts left: run_at = now + retry delay", ("finish",)),
    Transition(Action.FINISH, S.RUNNING, S.DEAD, Actor.LEASE_HOLDER,
               "failed with attempts spent, or a permanent failure", ("finish",)),
    Transition(Action.FINISH, S.RUNNING, S.CANCELLED, Actor.LEASE_HOLDER,
               "stopped after a cancel request, or failed after one", ("finish",)),
    Transition(Action.RELEASE, S.RUNNING, S.PENDING, Actor.LEASE_HOLDER, "shutdown: the attempt is refunded",
               ("release",)),
    Transition(Action.RELEASE, S.RUNNING, S.CANCELLED, Actor.LEASE_HOLDER, "shutdown after a cancel request",
               ("release",)),
    Transition(Action.RESCUE, S.RUNNING, S.RETRY, Actor.MAINTENANCE,
               "lease expired or worker gone, attempts left: run_at = now + retry delay", ("rescue",)),
    Transition(Action.RESCUE, S.RUNNING, S.DEAD, Actor.MAINTENANCE, "lease expired or worker gone, attempts spent",
               ("rescue",)),
    Transition(Action.RESCUE, S.RUNNING, S.CANCELLED, Actor.MAINTENANCE,
               "lease expired or worker gone after a cancel request", ("rescue",)),
    *(Transition(Action.EXPIRE, s, S.CANCELLED, Actor.MAINTENANCE,
                 "waited past its ttl: never runs (last_error: expired)", ("expire",)) for s in _WAITING),
    *(Transition(Action.CANCEL, s, S.CANCELLED, Actor.ADMIN, "never runs", ("cancel",)) for s in _WAITING),
    Transition(Action.CANCEL, S.RUNNING, S.RUNNING, Actor.ADMIN,
               "sets cancel_requested: the handler is asked to stop", ("cancel",)),
    *(Transition(Action.RETRY, s, S.PENDING, Actor.ADMIN, "fresh attempts and ttl, now", ("retry",))
      for s in (*_FINISHED, S.RETRY, S.SCHEDULED)),
    Transition(Action.UPDATE, S.PENDING, S.SCHEDULED, Actor.ADMIN, "run_at moved later", ("update_job",)),
    Transition(Action.UPDATE, S.SCHEDULED, S.PENDING, Actor.ADMIN, "run_at moved to now", ("update_job",)),
    *(Transition(Action.ARCHIVE, s, None, Actor.MAINTENANCE, "after the retention window, to jobs_history",
                 ("archive",)) for s in _FINISHED),
    *(Transition(Action.EXPIRE, s, None, Actor.MAINTENANCE, "result_ttl (completed) or failure_ttl passed: deleted",
                 ("expire_finished",)) for s in _FINISHED),
    *(Transition(Action.PURGE, s, None, Actor.ADMIN, "deleted (by age, queue, type, tenant, label)", ("purge",))
      for s in _FINISHED),
)

KEEPS_STATE: tuple[str, ...] = ("heartbeat", "worker_heartbeat", "lock_parents", "watch", "unarchive")
"""Statements that write ``skiplock.jobs`` without ever changing a job's state (leases, marks, and
the move back from the history table that a retry starts with)."""


def of(action: Action) -> tuple[Transition, ...]:
    return tuple(t for t in TRANSITIONS if t.action == action)


def sources(action: Action, query: str | None = None) -> frozenset[State]:
    """The states ``action`` (as done by ``query``, if given) moves jobs from."""
    return frozenset(t.source for t in of(action) if t.source is not None and (query is None or query in t.queries))


def ordered(states: frozenset[State] | set[State]) -> list[State]:
    """In the enum's order (stable SQL text and choices)."""
    return [s for s in State if s in states]


FINISHED = sources(Action.ARCHIVE)
"""Final states: nothing moves a job on from them but a person (retry) or retention."""
RUNNABLE = sources(Action.CLAIM)
"""Claimable once ``run_at <= now()``: a scheduled or retrying job needs no promoter."""
TIMED = RUNNABLE - {State.PENDING}
"""Runnable states that wait for their time (``stats`` counts them as pending once it has come)."""
CANCELLABLE = sources(Action.CANCEL)
RETRYABLE = sources(Action.RETRY, "retry")
PURGEABLE = sources(Action.PURGE)
EXPIRABLE = sources(Action.EXPIRE, "expire")
"""Waiting states: a job in one of them past its ``expires_at`` (ttl) expires."""
UPDATABLE = EXPIRABLE
"""A job that has not started can be reprioritised or rescheduled (``jobs update``)."""
FAILED = FINISHED - {State.COMPLETED}
"""Ended without completing: what cancels a job's dependents."""

SQL_SETS: dict[str, frozenset[State]] = {
    "runnable": RUNNABLE, "timed": TIMED, "finished": FINISHED, "failed": FAILED, "cancellable": CANCELLABLE,
    "retryable": RETRYABLE, "expirable": EXPIRABLE,
}
"""The sets ``queries.sql`` names as ``{{name}}``; each becomes a SQL list ``('a', 'b')``."""


def sql_list(states: frozenset[State]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in ordered(states)) + ")"


def edges(*actions: Action) -> frozenset[tuple[str | None, str | None]]:
    """``(old, new)`` state pairs of the given actions (all if none), as text."""
    return frozenset((t.source and t.source.value, t.target and t.target.value)
                     for t in TRANSITIONS if not actions or t.action in actions)


def mermaid() -> str:
    """The state diagram (mermaid), one arrow per transition."""
    lines = ["stateDiagram-v2"]
    for t in TRANSITIONS:
        source = t.source.value if t.source else "[*]"
        target = t.target.value if t.target else "[*]"
        lines.append(f"    {source} --> {target}: {t.action.value} ({t.when})")
    return "\n".join(lines)


def table() -> str:
    """The transitions as a markdown table: from, to, action, who, condition, statements."""
    rows = ["| from | to | action | who | when | statements |", "|---|---|---|---|---|---|"]
    for t in TRANSITIONS:
        rows.append(f"| {t.source.value if t.source else '(new)'} | {t.target.value if t.target else '(gone)'} "
                    f"| {t.action.value} | {t.actor.value} | {t.when} | "
                    + ", ".join(f"`{q}`" for q in t.queries) + " |")
    return "\n".join(rows)


GENERATED_BEGIN = "<!-- generated from skiplock/states.py by tools/state_diagram.py: do not edit -->"
GENERATED_END = "<!-- end of generated part -->"


def sets() -> str:
    """The named state sets (``SQL_SETS``) as a markdown list."""
    return "\n".join(f"- `{{{{{name}}}}}`: " + ", ".join(s.value for s in ordered(members))
                     for name, members in SQL_SETS.items())


def generated_docs() -> str:
    """The generated part of docs/state-machine.md, markers included."""
    return (f"{GENERATED_BEGIN}\n\n```mermaid\n{mermaid()}\n```\n\n{table()}\n\n"
            f"The state sets the statements name:\n\n{sets()}\n\n{GENERATED_END}")


def with_generated_docs(text: str) -> str:
    """``text`` (docs/state-machine.md) with its generated part replaced by the current one."""
    start, end = text.index(GENERATED_BEGIN), text.index(GENERATED_END) + len(GENERATED_END)
    return text[:start] + generated_docs() + text[end:]
