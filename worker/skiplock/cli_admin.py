"""The admin commands of ``skiplock``: queue settings (``queues set``, ``queues list``), the bulk and
single-job actions of ``jobs`` (cancel, purge, retry by filter; update), and the job options they
share with ``enqueue`` (lifetimes, retry schedules, labels)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from . import states
from .cli_env import EnvParser, list_of
from .durations import parse_duration
from .errors import InvalidJob, SkiplockError
from .filters import JobFilter, parse_label
from .queue import Queue
from .queues import CLEARABLE, QueueSettings, make_settings
from .retry import RetryPolicy, from_options

Command = Callable[[Any, str, str], EnvParser]
STATES = tuple(s.value for s in states.State)


class Usage(SkiplockError):
    """Bad command-line input: exit 2 (``cli.main`` turns it into a usage error)."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_duration(text: str) -> float:
    value = _duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _label(text: str) -> tuple[str, str]:
    try:
        return parse_label(text)
    except InvalidJob as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def choice_of(options: Sequence[str]) -> Callable[[str], str]:
    """A ``type`` that accepts one of ``options`` (list options check their items with it)."""
    def check(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(options)})")
        return text
    check.__name__ = "state"
    check.choices = tuple(options)  # type: ignore[attr-defined]  # what --help and the tests read
    return check


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, e.g. 2026-01-31T09:00:00+00:00") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add +00:00 or Z)")
    return value


# -- options shared by enqueue and queues set ------------------------------------------------------

def add_lifetime_args(p: EnvParser) -> None:
    """``--ttl --result-ttl --failure-ttl`` and one retry schedule."""
    p.add_argument("--ttl", type=_positive_duration, default=None,
                   help="a job still waiting this long after it was due ends cancelled (expired)")
    p.add_argument("--result-ttl", type=_duration, default=None, help="delete a completed job this long after it ends")
    p.add_argument("--failure-ttl", type=_duration, default=None,
                   help="delete a dead or cancelled job this long after it ends")
    retry = p.add_argument_group("retry schedule (one of)")
    retry.add_argument("--retry-intervals", action="list", type=list_of(_duration), default=None, metavar="D",
                       help="wait these after the 1st, 2nd... failure, the last one after every further one: "
                            "60,180,600 or 60 180 600")
    retry.add_argument("--retry-every", type=_duration, default=None, help="a fixed wait after each failure")
    retry.add_argument("--backoff-base", type=_duration, default=None,
                       help="exponential: the first wait (default 1s), doubling up to --backoff-max")
    retry.add_argument("--backoff-max", type=_duration, default=None, help="exponential: the longest wait (default 1h)")


def retry_from(args: argparse.Namespace) -> RetryPolicy | None:
    try:
        return from_options(every=args.retry_every, intervals=args.retry_intervals, backoff_base=args.backoff_base,
                            backoff_max=args.backoff_max)
    except InvalidJob as exc:
        raise Usage(str(exc)) from None


def lifetimes_from(args: argparse.Namespace) -> dict[str, Any]:
    """The job options ``add_lifetime_args`` gave (only those set)."""
    found = {"ttl": args.ttl, "result_ttl": args.result_ttl, "failure_ttl": args.failure_ttl,
             "retry": retry_from(args)}
    return {k: v for k, v in found.items() if v is not None}


def add_label_arg(p: EnvParser, help: str) -> None:
    p.add_argument("--label", dest="labels", action="list", type=list_of(_label), default=None, metavar="K=V",
                   help=help)


def labels_from(args: argparse.Namespace) -> dict[str, str]:
    return dict(args.labels or [])


# -- queues ----------------------------------------------------------------------------------------

def add_queues_parser(sub: Any, command: Command) -> None:
    queues = command(sub, "queues", "queue settings: max attempts, lifetimes, retry schedule")
    qsub = queues.add_subparsers(dest="queues_command", metavar="ACTION", required=True)
    p = command(qsub, "set", "set a queue's defaults (what is not given is kept)")
    p.add_argument("name")
    p.add_argument("--max-attempts", type=_max_attempts, default=None, help="attempts per job, the first included")
    add_lifetime_args(p)
    p.add_argument("--clear", action="list", type=list_of(choice_of(CLEARABLE)), default=None, metavar="SETTING",
                   help=f"remove these settings ({', '.join(CLEARABLE)})")
    p = command(qsub, "list", "queues with settings or jobs, and their settings")
    p.add_argument("--json", action="store_true")
    p = command(qsub, "remove", "drop a queue's settings (its jobs stay)")
    p.add_argument("name")


def _max_attempts(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{value} must be between 1 and 1000")
    return value


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def settings_line(s: QueueSettings) -> list[str]:
    return [s.name, str(s.max_attempts or "-"), _seconds(s.ttl), _seconds(s.result_ttl), _seconds(s.failure_ttl),
            s.retry.describe() if s.retry else "-", s.source or "-"]


SETTINGS_HEADERS = ["QUEUE", "MAX ATTEMPTS", "TTL", "RESULT TTL", "FAILURE TTL", "RETRY", "SOURCE"]


async def queues_action(queue: Queue, args: argparse.Namespace, table: Callable[..., None],
                        say: Callable[[str], None]) -> None:
    action = args.queues_command
    if action == "set":
        options = {"max_attempts": args.max_attempts, **lifetimes_from(args)}
        settings = make_settings(args.name, **{k: v for k, v in options.items() if v is not None})
        clear = args.clear or []
        both = [c for c in clear if getattr(settings, c) is not None]
        if both:
            raise Usage(f"--clear {both[0]} and a value for it: give one")
        after = await queue.set_queue(settings, clear)
        table([settings_line(after)], SETTINGS_HEADERS)
    elif action == "list":
        rows = await queue.queues()
        if args.json:
            print(json.dumps([r.as_json() for r in rows], indent=2))
        elif not rows:
            print("no queues")
        else:
            table([settings_line(r) for r in rows], SETTINGS_HEADERS)
    elif not await queue.remove_queue(args.name):
        raise SkiplockError(f"queue {args.name!r} has no settings")
    else:
        say(f"queue {args.name}: settings removed")


# -- jobs: filters, bulk actions, update ------------------------------------------------------------

def add_filter_args(p: EnvParser, allowed: Sequence[str], older_than: str) -> None:
    p.add_argument("--queue")
    p.add_argument("--type")
    p.add_argument("--tenant")
    p.add_argument("--state", dest="states", action="list", type=list_of(choice_of(allowed)), default=None,
                   metavar="STATE", help=f"one or more of {', '.join(allowed)}")
    add_label_arg(p, "only jobs with this label (repeatable)")
    p.add_argument("--older-than", type=_duration, default=None, help=older_than)
    p.add_argument("--yes", action="store_true", help="do not ask")


def filter_from(args: argparse.Namespace) -> JobFilter:
    return JobFilter(queue=args.queue, type=args.type, tenant=args.tenant, states=tuple(args.states or ()),
                     labels=labels_from(args), older_than=args.older_than)


def add_jobs_actions(jsub: Any, command: Command, positive_int: Callable[[str], int]) -> None:
    cancellable = [s.value for s in states.ordered(states.CANCELLABLE)]
    purgeable = [s.value for s in states.ordered(states.PURGEABLE | states.EXPIRABLE)]
    retryable = [s.value for s in states.ordered(states.RETRYABLE)]
    p = command(jsub, "retry", "run a finished or waiting job again (one by ID, or all that match)")
    p.add_argument("id", nargs="?", type=positive_int)
    add_filter_args(p, retryable, "finished (or enqueued) longer ago than this")
    p = command(jsub, "cancel", "cancel a job, or all that match (running ones are asked to stop)")
    p.add_argument("id", nargs="?", type=positive_int)
    add_filter_args(p, cancellable, "enqueued longer ago than this")
    p = command(jsub, "purge", "delete finished and waiting jobs that match (never running ones)")
    add_filter_args(p, purgeable, "finished (or, waiting, enqueued) longer ago than this, e.g. 7d")
    p = command(jsub, "update", "reprioritise or reschedule a job that has not started")
    p.add_argument("id", type=positive_int)
    p.add_argument("--priority", type=_int32, default=None, help="higher runs first")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--run-at", type=_when, default=None, help="ISO 8601 time with a zone")
    when.add_argument("--delay", type=_duration, default=None, help="from now, e.g. 10m (0: now)")


def _int32(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not -(2**31 - 1) <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"{value} is not a 32-bit integer")
    return value


def _confirm(count: int, verb: str, where: JobFilter, yes: bool) -> bool:
    """Say how many jobs ``verb`` will touch; ask unless ``yes``. False: do nothing."""
    print(f"{count} job{'s' if count != 1 else ''} match ({where.describe()}): {verb}", file=sys.stderr)
    if yes or count == 0:
        return count > 0
    print("proceed? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise SkiplockError("not confirmed: nothing changed (--yes skips the question)")
    return True


def _has_filter(where: JobFilter) -> bool:
    return where != JobFilter()


async def jobs_action(queue: Queue, args: argparse.Namespace, say: Callable[[str], None]) -> bool:
    """Run ``jobs retry|cancel|purge|update``; False if ``args`` is another action."""
    action = args.jobs_command
    if action == "update":
        state = await queue.update(args.id, priority=args.priority, run_at=args.run_at, delay=args.delay)
        say(f"job {args.id} is {state}")
        return True
    if action not in ("retry", "cancel", "purge"):
        return False
    where = filter_from(args)
    single = getattr(args, "id", None)
    if single is not None:
        if _has_filter(where):
            raise Usage("give a job ID or filters, not both")
        if action == "retry":
            await queue.retry(single)
            say(f"job {single} is pending again")
        else:
            state = await queue.cancel(single)
            say(f"job {single}: cancel requested (still running)" if state == "running" else f"job {single} is {state}")
        return True
    if not _has_filter(where):
        raise Usage("give a job ID or at least one filter (--queue, --type, --tenant, --state, --label, --older-than)"
                    if action != "purge" else
                    "give at least one filter (--queue, --type, --tenant, --state, --label, --older-than)")
    # action: (the states it can take, the question, only the hot table (purge reaches the history too), the call)
    bulk = {"retry": (states.RETRYABLE, "run them again", True, queue.retry_jobs),
            "cancel": (states.CANCELLABLE, "cancel them (running ones are asked to stop)", True, queue.cancel_jobs),
            "purge": (states.PURGEABLE | states.EXPIRABLE, "delete them", False, queue.purge_jobs)}
    reachable, question, hot_only, call = bulk[action]
    scope = where.narrowed(states.ordered(reachable))
    count = await queue.count_jobs(scope, hot_only=hot_only) if scope.states else 0
    print(await call(where) if _confirm(count, question, where, args.yes) else 0)
    return True
