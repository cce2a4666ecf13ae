"""The ``skiplock`` command. Exit codes: 0 success, 1 error, 2 usage error, 130 interrupted.

Every option can also come from the environment: ``DATABASE_URL`` (or ``SKIPLOCK_DATABASE_URL``)
and ``SKIPLOCK_<OPTION>`` for the others (``SKIPLOCK_CONCURRENCY=20``...); the rule is in
``cli_env`` and in ``skiplock --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from pydantic import ValidationError

from . import __version__, cli_admin, states
from .cli_env import EnvParser, check_library_env, configure_env, list_of
from .db import RedactingFilter, connect_sync, redact, resolve_dsn
from .durations import parse_duration
from .errors import InvalidJob, SkiplockError, UnknownDependency
from .extras import MissingDependency, needs
from .migrate import migrate, require_current
from .models import JobSpec, State, describe, make_spec
from .progress import Progress
from .queue import Queue
from .registry import JobRegistry

log = logging.getLogger("skiplock")
LOG_LEVELS = ("debug", "info", "warning", "error")
STATES = tuple(s.value for s in State)
PURGEABLE = tuple(s.value for s in states.ordered(states.PURGEABLE))
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_UNSAFE.update({c: f"\\u{c:04x}" for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))})
_UNSAFE_KEEP_LINES = {c: e for c, e in _UNSAFE.items() if c != ord("\n")}


def terminal_safe(text: str, keep_lines: bool = False) -> str:
    """``text`` with control characters (escape sequences, carriage returns...) and bidirectional
    overrides written as ``\\x1b``-style escapes: a job's name cannot drive the terminal it is
    printed on. ``keep_lines``: newlines stay (a traceback)."""
    return text.translate(_UNSAFE_KEEP_LINES if keep_lines else _UNSAFE)


def _say(text: str, keep_lines: bool = False) -> None:
    print(terminal_safe(text, keep_lines))


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate_arg(text: str) -> float:
    from .schedules import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


# -- parser ------------------------------------------------------------------------------------

EPILOG = """\
environment:
  Every option can also be set as a variable; a flag on the command line wins over it.
  SKIPLOCK_<OPTION>            the option's name as `COMMAND --help` shows it: SKIPLOCK_CONCURRENCY=20,
                               SKIPLOCK_QUEUES=a,b (worker --queue; lists take commas), SKIPLOCK_JSON=1
                               (switches take 1/0, true/false, yes/no, on/off)
  SKIPLOCK_<COMMAND>_<OPTION>  for one command only, winning over the plain name: SKIPLOCK_UI_PORT=9000,
                               SKIPLOCK_OPERATOR_METRICS_PORT=9090; the actions of jobs, schedule and
                               limits read only these: SKIPLOCK_JOBS_LIST_LIMIT=20
  DATABASE_URL                 the database, after --database-url and SKIPLOCK_DATABASE_URL
  An empty variable counts as unset. A bad value is a usage error naming the variable.
  --database-url and --log-level go before or after the command.

exit codes: 0 success, 1 error, 2 usage error, 130 interrupted
"""


def _port_arg(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535)")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def build_parser() -> EnvParser:
    parser = EnvParser(
        prog="skiplock", description="A PostgreSQL job queue that lives natively in Kubernetes.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"skiplock {__version__}")
    parser.add_argument("--database-url", default=None, help="PostgreSQL DSN")
    parser.env_aliases["database_url"] = ("DATABASE_URL",)
    parser.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS, help="log verbosity")
    # The same two options after the command (`skiplock stats --database-url X`); SUPPRESS keeps a
    # subcommand from overwriting a value given before it.
    shared = EnvParser(add_help=False)
    shared.add_argument("--database-url", default=argparse.SUPPRESS,
                        help="PostgreSQL DSN (env SKIPLOCK_DATABASE_URL or DATABASE_URL)")
    shared.add_argument("--log-level", default=argparse.SUPPRESS, type=str.lower, choices=LOG_LEVELS,
                        help="log verbosity (env SKIPLOCK_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(group: Any, name: str, text: str) -> EnvParser:
        made: EnvParser = group.add_parser(name, help=text, parents=[shared])
        return made

    command(sub, "migrate", "create or update the schema (idempotent)")

    p = command(sub, "enqueue", "enqueue a job (or many from a JSONL file); prints ids")
    p.add_argument("type", nargs="?", help="job type")
    p.add_argument("--payload", type=_json_arg, default={}, help="JSON payload (default {})")
    p.add_argument("--queue", default="default")
    p.add_argument("--priority", type=_int, default=0, help="higher runs first (default 0)")
    p.add_argument("--delay", type=_duration_arg, default=None, help="seconds (or 5m, 2h) before it may run")
    p.add_argument("--max-attempts", type=_positive_int, default=None,
                   help="attempts, the first run included (default: the queue's setting, else 5)")
    p.add_argument("--timeout", type=_duration_arg, default=None, help="per-job handler timeout")
    p.add_argument("--depends-on", action="list", type=list_of(_positive_int), default=[], metavar="ID",
                   help="IDs the job waits for: 1 2 or 1,2")
    p.add_argument("--dedup-key", default=None)
    p.add_argument("--tenant", default=None)
    cli_admin.add_label_arg(p, "a label of the job (repeatable)")
    cli_admin.add_lifetime_args(p)
    p.add_argument("--from-file", metavar="FILE.jsonl",
                   help='one job per line: {"type": ..., "payload": ..., ...}; "-" reads stdin')
    p.add_argument("--batch-size", type=_positive_int, default=1000, help="jobs per round trip (--from-file)")

    p = command(sub, "worker", "run handlers for queued jobs")
    p.add_argument("--handlers", default=None, help="MODULE:REGISTRY holding a JobRegistry")
    p.add_argument("--queue", dest="queues", action="list", type=list_of(str), default=None, metavar="Q",
                   help="queues to serve, in claim order (--queue a b, --queue a,b, or repeated; default: default)")
    p.add_argument("--types", action="list", type=list_of(str), default=None, metavar="TYPE",
                   help="job types: a b or a,b (default: all handled)")
    p.add_argument("--concurrency", type=_positive_int, default=None, help="jobs at once (default 10)")
    p.add_argument("--claim-batch", type=_positive_int, default=None,
                   help="most jobs one claim statement takes (default: every free slot)")
    p.add_argument("--worker-id", default=None, help="default: hostname-pid-random")
    p.add_argument("--max-jobs", type=_positive_int, default=None, help="exit after this many jobs")
    p.add_argument("--poll-interval", type=_duration_arg, default=None,
                   help="claim poll without a LISTEN connection (default 2s)")
    p.add_argument("--idle-poll-interval", type=_duration_arg, default=None,
                   help="safety-net claim poll while the LISTEN connection is healthy (default 60s)")
    p.add_argument("--pool-size", type=_positive_int, default=None,
                   help="connections shared by everything but LISTEN (default 1)")
    p.add_argument("--listen-database-url", default=None, metavar="URL",
                   help="direct PostgreSQL URL for LISTEN when --database-url is a transaction pooler "
                        "(default: the database URL; none: no LISTEN, poll every --poll-interval)")
    p.add_argument("--job-timeout", type=_duration_arg, default=None, help="default: none")
    p.add_argument("--lease", dest="lease_seconds", type=_duration_arg, default=None, help="default 30s")
    p.add_argument("--heartbeat-interval", type=_duration_arg, default=None, help="default: a third of the lease")
    p.add_argument("--recovery-interval", type=_duration_arg, default=None,
                   help="how often expired leases are rescued (default 10s)")
    p.add_argument("--shutdown-grace", type=_duration_arg, default=None, help="default 30s")
    p.add_argument("--backoff-base", type=_duration_arg, default=None, help="first retry delay (default 1s)")
    p.add_argument("--backoff-max", type=_duration_arg, default=None, help="longest retry delay (default 1h)")
    p.add_argument("--retain-finished", type=_duration_arg, default=None,
                   help="keep completed/cancelled jobs in the hot table this long (default 1h)")
    p.add_argument("--retain-dead", type=_duration_arg, default=None, help="keep dead jobs this long (default 7d)")
    p.add_argument("--metrics-port", type=_port_arg, default=None, help="serve /metrics, /healthz, /readyz")
    p.add_argument("--metrics-host", default=None, help="address for --metrics-port (default 0.0.0.0)")
    p.add_argument("--max-result-bytes", type=_positive_int, default=None,
                   help="largest result a handler may return, as JSON (default 1 MiB); a larger one fails the job")
    p.add_argument("--loop-lag-warning", type=_duration_arg, default=None,
                   help="warn when a handler blocks the event loop this long (default 1s; 0: never)")

    p = command(sub, "stats", "per queue: jobs by state and the oldest pending age")
    p.add_argument("--json", action="store_true")

    jobs = command(sub, "jobs", "list, show, retry, cancel or purge jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = command(jsub, "list", "newest first")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--queue")
    p.add_argument("--type")
    p.add_argument("--tenant")
    cli_admin.add_label_arg(p, "only jobs with this label (repeatable)")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--offset", type=_non_negative_int, default=0)
    p.add_argument("--json", action="store_true")
    p = command(jsub, "show", "one job in full")
    p.add_argument("id", type=_positive_int)
    p.add_argument("--json", action="store_true")
    cli_admin.add_jobs_actions(jsub, command, _positive_int)
    cli_admin.add_queues_parser(sub, command)

    sched = command(sub, "schedule", "periodic jobs: add, list, remove, pause, resume")
    ssub = sched.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    p = command(ssub, "add", "create or redefine a schedule")
    p.add_argument("name")
    timing = p.add_mutually_exclusive_group(required=True)
    timing.add_argument("--cron", help='5 fields, or 6 with seconds first, e.g. "*/5 * * * *"')
    timing.add_argument("--every", type=_duration_arg, help="fixed interval, e.g. 30s, 5m")
    p.add_argument("--type", required=True, help="job type to enqueue")
    p.add_argument("--payload", type=_json_arg, default={})
    p.add_argument("--queue", default="default")
    p.add_argument("--priority", type=_int, default=0)
    p.add_argument("--max-attempts", type=_positive_int, default=5)
    p.add_argument("--timezone", default="UTC", help="IANA name for cron expressions (default UTC)")
    p.add_argument("--catch-up", choices=["latest", "skip", "all"], default="latest",
                   help="after downtime: one job for the missed ticks (latest), none (skip), or each (all)")
    p = command(ssub, "list", "schedules with their next run time")
    p.add_argument("--json", action="store_true")
    for action, text in (("remove", "delete a schedule"), ("pause", "stop firing"), ("resume", "fire again")):
        command(ssub, action, text).add_argument("name")

    lim = command(sub, "limits", "concurrency and rate limits per job type (and tenant)")
    lsub = lim.add_subparsers(dest="limits_command", metavar="ACTION", required=True)
    p = command(lsub, "set", "set the limits of a job type")
    p.add_argument("type")
    p.add_argument("--tenant", default="", help="one tenant, or '*' for each tenant separately")
    p.add_argument("--concurrency", type=_positive_int, help="at most N running at once")
    p.add_argument("--rate", type=_rate_arg, help="at most N starts per second or minute: N/s, N/m")
    p = command(lsub, "list", "limits with their running jobs")
    p.add_argument("--json", action="store_true")
    p = command(lsub, "clear", "remove a limit")
    p.add_argument("type")
    p.add_argument("--tenant", default="")

    p = command(sub, "ui", "the job browser (web UI)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=_port_arg, default=8000, help="default 8000")
    p.add_argument("--allowed-hosts", action="list", type=list_of(str), default=None, metavar="NAMES",
                   help="names the UI answers to (Host header), e.g. jobs.example.com (a b or a,b); "
                        "default: loopback names and --host; '*': any (needs credentials)")
    p.add_argument("--forwarded-allow-ips", action="list", type=list_of(str), default=None, metavar="IPS",
                   help="proxies whose X-Forwarded-Proto/-For are believed (a b or a,b; '*': any); "
                        "https from them makes cookies Secure (default 127.0.0.1)")

    p = command(sub, "demo", "a demo queue with real workers (embedded PostgreSQL if no DATABASE_URL)")
    p.add_argument("--jobs", type=_positive_int, default=3000)
    p.add_argument("--workers", type=_positive_int, default=2, help="worker processes")
    p.add_argument("--concurrency", type=_positive_int, default=20)
    p.add_argument("--metrics-port", type=_port_arg, default=9400, help="first worker's metrics port (0: none)")

    p = command(sub, "operator", "run the Kubernetes operator (kopf)")
    p.add_argument("--namespace", action="append", default=None,
                   help="watch these namespaces (repeatable; default: $POD_NAMESPACE)")
    p.add_argument("--all-namespaces", action="store_true", help="watch the whole cluster")
    p.add_argument("--metrics-port", type=_port_arg, default=9090,
                   help="serve /metrics (and /healthz, /readyz) on this port")
    p.add_argument("--liveness-port", type=_port_arg, default=8080,
                   help="serve /healthz and /readyz on this port too")
    p.add_argument("--peering", default="skiplock-operator",
                   help="name of the Lease that elects the one acting replica")
    p.add_argument("--lease-namespace", default=None,
                   help="namespace of that Lease (default: $POD_NAMESPACE, else the first --namespace)")
    p.add_argument("--lease-duration", type=_duration_arg, default=15.0,
                   help="seconds a silent leader keeps the Lease (default 15)")
    p.add_argument("--query-timeout", type=_duration_arg, default=5.0,
                   help="seconds a database query may take (default 5)")
    p.add_argument("--standalone", action="store_true", help="no leader election (a single operator)")
    p.add_argument("--no-migrate", action="store_true",
                   help="leave each JobQueue's database schema alone (default: migrate it when it is behind)")
    p.add_argument("--pod-policy", choices=["enforce", "off"], default="enforce",
                   help="enforce (default): refuse pools whose pods break the restricted Pod Security Standard "
                        "or the tenancy rules, unless their namespace is labelled "
                        "skiplock.dev/unrestricted-pools=true; off: check nothing")
    configure_env(parser)
    return parser


# -- commands ----------------------------------------------------------------------------------

def cmd_migrate(args: argparse.Namespace) -> int:
    with connect_sync(resolve_dsn(args.database_url), "migrate") as conn:
        applied = migrate(conn)
    print(f"applied {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _jsonl_specs(path: str) -> Iterator[tuple[int, JobSpec]]:
    """(line number, job) for each line of a JSONL file, each checked as ``enqueue`` would."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    with stream:
        for number, raw in enumerate(stream, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidJob(f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                 f"{exc.start + 1})") from None
            line = line.removeprefix("\ufeff") if number == 1 else line
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
                if not isinstance(fields, dict):
                    raise InvalidJob("each line must be a JSON object")
                spec = JobSpec(**fields)
                spec.encoded_payload()
            except json.JSONDecodeError as exc:
                raise InvalidJob(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            except RecursionError:
                raise InvalidJob(f"{where}: JSON nested too deeply") from None
            except ValidationError as exc:
                raise InvalidJob(f"{where}: {describe(exc)}") from None
            except InvalidJob as exc:
                raise InvalidJob(f"{where}: {exc}") from None
            yield number, spec


def _chunks(items: list[tuple[int, JobSpec]], size: int) -> Iterator[list[tuple[int, JobSpec]]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def _enqueue_file(queue: Queue, path: str, batch_size: int) -> int:
    """All or nothing: every line is checked first, then the batches go in one transaction, so a
    failure at any line (an unknown dependency, a lost connection) enqueues nothing and names it."""
    lines = list(_jsonl_specs(path))
    progress = Progress("enqueue", total=len(lines))
    done, committing = 0, False
    try:
        async with queue.transaction() as conn:
            for batch in _chunks(lines, batch_size):
                try:
                    await queue.enqueue_many([spec for _, spec in batch], conn=conn)
                except UnknownDependency as exc:
                    line = next(n for n, spec in batch if set(spec.depends_on) & set(exc.ids))
                    raise InvalidJob(f"{path}:{line}: {exc}") from None
                except InvalidJob as exc:
                    raise InvalidJob(f"{path}:{batch[0][0]}-{batch[-1][0]}: {exc}") from None
                done += len(batch)
                progress.update(done)
            committing = True
    except SkiplockError as exc:
        if committing:
            raise SkiplockError(f"{exc}; the commit of all {len(lines)} jobs did not complete: check with "
                                "`skiplock jobs list` before enqueueing the file again") from None
        raise SkiplockError(f"{exc}; nothing was enqueued (a file is all or nothing: 0 of {len(lines)} jobs, "
                            f"{done} had been sent)") from None
    progress.finish()
    return done


def cmd_enqueue(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with Queue(args.database_url) as queue:
            if args.from_file:
                print(await _enqueue_file(queue, args.from_file, args.batch_size))
                return
            spec = make_spec(args.type, payload=args.payload, queue=args.queue, priority=args.priority,
                             delay=args.delay, max_attempts=args.max_attempts, timeout=args.timeout,
                             depends_on=tuple(args.depends_on), dedup_key=args.dedup_key, tenant=args.tenant,
                             labels=cli_admin.labels_from(args), **cli_admin.lifetimes_from(args))
            spec.encoded_payload()
            print((await queue.enqueue_many([spec]))[0])

    if bool(args.type) == bool(args.from_file):
        raise _Usage("give a job TYPE or --from-file, not both and not neither")
    asyncio.run(go())
    return 0


def load_registry(target: str | None) -> JobRegistry:
    """Import ``MODULE:ATTR`` and return the ``JobRegistry`` it names."""
    if not target or ":" not in target:
        raise _Usage("--handlers takes MODULE:REGISTRY, e.g. myapp.jobs:jobs (or set SKIPLOCK_HANDLERS)")
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SkiplockError(f"cannot import handler module {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself raised while it was imported (or has a syntax error)
        raise SkiplockError(f"handler module {module_name!r} failed while importing: {_where(exc)}") from None
    registry = getattr(module, attr, None)
    if not isinstance(registry, JobRegistry):
        raise SkiplockError(f"{target} is not a JobRegistry (found {type(registry).__name__})")
    return registry


def _where(exc: BaseException) -> str:
    """``Type: first line of the message (file:line)``, the innermost frame of its traceback."""
    text = (str(exc).strip().splitlines() or [""])[0]
    frames = traceback.extract_tb(exc.__traceback__)
    filename, line = (exc.filename, exc.lineno) if isinstance(exc, SyntaxError) else \
        ((frames[-1].filename, frames[-1].lineno) if frames else (None, None))
    place = f" ({filename}:{line})" if filename else ""
    return f"{type(exc).__name__}: {text}{place}" if text else f"{type(exc).__name__}{place}"


WORKER_FLAGS = {
    "queues": "--queue", "types": "--types", "concurrency": "--concurrency", "claim_batch": "--claim-batch",
    "worker_id": "--worker-id",
    "max_jobs": "--max-jobs", "poll_interval": "--poll-interval", "job_timeout": "--job-timeout",
    "idle_poll_interval": "--idle-poll-interval", "pool_size": "--pool-size",
    "listen_database_url": "--listen-database-url",
    "lease_seconds": "--lease", "heartbeat_interval": "--heartbeat-interval",
    "recovery_interval": "--recovery-interval", "shutdown_grace": "--shutdown-grace",
    "backoff_base": "--backoff-base", "backoff_max": "--backoff-max", "retain_finished": "--retain-finished",
    "retain_dead": "--retain-dead", "metrics_port": "--metrics-port", "metrics_host": "--metrics-host",
    "max_result_bytes": "--max-result-bytes", "loop_lag_warning": "--loop-lag-warning",
}
"""Each ``WorkerConfig`` field and its ``skiplock worker`` flag (its variable: see ``cli_env``)."""


def _option_problems(exc: ValidationError, flags: dict[str, str], sources: dict[str, str]) -> str:
    """A pydantic error with each field named as the user gave it: the flag, or the variable."""
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        where = sources.get(field) or flags.get(field) or field or "options"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def worker_config(args: argparse.Namespace) -> Any:
    """A ``WorkerConfig`` from the parsed flags (which ``SKIPLOCK_*`` variables default), then defaults."""
    from .worker import WorkerConfig

    fields = {name: getattr(args, name) for name in WORKER_FLAGS if getattr(args, name, None) is not None}
    try:
        return WorkerConfig(**fields)
    except ValidationError as exc:
        problems = _option_problems(exc, WORKER_FLAGS, getattr(args, "env_sources", {}))
        raise _Usage(f"invalid worker option: {problems}") from None


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import Worker

    registry = load_registry(args.handlers)
    config = worker_config(args)
    dsn = resolve_dsn(args.database_url)
    with connect_sync(dsn, "worker") as conn:
        require_current(conn)

    async def go() -> None:
        worker = Worker(registry, dsn, config)
        loop = asyncio.get_running_loop()
        signals = {"count": 0}

        def on_signal() -> None:
            signals["count"] += 1
            log.info("shutdown requested (signal %d)", signals["count"])
            worker.stop(hard=signals["count"] > 1)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await worker.run()

    asyncio.run(go())
    return 0


def _print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(c) for c in headers]] + [["" if c is None else terminal_safe(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_stats(args: argparse.Namespace) -> int:
    async def go() -> list[dict[str, Any]]:
        async with Queue(args.database_url) as queue:
            return await queue.stats()

    rows = asyncio.run(go())
    by_queue: dict[str, dict[str, Any]] = {}
    for r in rows:
        q = by_queue.setdefault(r["queue"], {"queue": r["queue"], **dict.fromkeys(STATES, 0),
                                             "oldest_pending_seconds": 0.0})
        q[r["state"]] = r["jobs"]
        if r["state"] == "pending":
            q["oldest_pending_seconds"] = round(r["oldest_pending_seconds"], 3)
    result = list(by_queue.values())
    if args.json:
        print(json.dumps(result, indent=2))
    elif not result:
        print("no jobs")
    else:
        _print_table([[q["queue"], *(q[s] for s in STATES), f"{q['oldest_pending_seconds']:.1f}s"]
                      for q in result], ["QUEUE", *(s.upper() for s in STATES), "OLDEST PENDING"])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with Queue(args.database_url) as queue:
            action = args.jobs_command
            if action == "list":
                jobs = await queue.list_jobs(state=args.state, queue=args.queue, type=args.type, tenant=args.tenant,
                                             labels=cli_admin.labels_from(args), limit=args.limit,
                                             offset=args.offset, brief=not args.json)
                if args.json:
                    print(json.dumps([j.as_json() for j in jobs], indent=2))
                else:
                    errors = any(j.state in states.FAILED and j.last_error for j in jobs)
                    _print_table([[j.id, j.queue, j.type, j.state.value, j.priority,
                                   f"{j.attempts}/{j.max_attempts}", j.created_at.isoformat(timespec="seconds"),
                                   *([_first_line(j.last_error)] if errors else [])]
                                  for j in jobs],
                                 ["ID", "QUEUE", "TYPE", "STATE", "PRIORITY", "ATTEMPTS", "CREATED",
                                  *(["ERROR"] if errors else [])])
            elif action == "show":
                job = await queue.get(args.id)
                if args.json:
                    print(json.dumps(job.as_json(), indent=2))
                else:
                    for key, value in job.as_json().items():
                        shown = json.dumps(value) if isinstance(value, (dict, list)) else value
                        _say(f"{key + ':':20} {shown}", keep_lines=key == "last_error")
            else:
                await cli_admin.jobs_action(queue, args, _say)
            return 0

    return asyncio.run(go())


def _first_line(text: str | None, width: int = 80) -> str:
    """The first non-blank line of an error (a traceback's), cut to ``width``."""
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    return line if len(line) <= width else line[:width - 3] + "..."


def cmd_queues(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with Queue(args.database_url) as queue:
            await cli_admin.queues_action(queue, args, _print_table, _say)

    asyncio.run(go())
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from .schedules import make_schedule

    async def go() -> None:
        async with Queue(args.database_url) as queue:
            action = args.schedule_command
            if action == "add":
                spec = make_schedule(name=args.name, type=args.type, cron=args.cron, every=args.every,
                                     payload=args.payload, queue=args.queue, priority=args.priority,
                                     max_attempts=args.max_attempts, timezone=args.timezone,
                                     catch_up=args.catch_up)
                _say(f"schedule {spec.name}: next run {(await queue.set_schedule(spec)).isoformat()}")
            elif action == "list":
                rows = await queue.schedules()
                if args.json:
                    print(json.dumps(rows, indent=2, default=str))
                else:
                    _print_table([[r["name"], r["cron"] or f"every {r['every_seconds']:g}s", r["type"], r["queue"],
                                   r["timezone"], "paused" if r["paused"] else "active",
                                   r["next_run_at"].isoformat(timespec="seconds"), r["source"]] for r in rows],
                                 ["NAME", "WHEN", "TYPE", "QUEUE", "TIMEZONE", "STATE", "NEXT RUN", "SOURCE"])
            elif action == "remove":
                await queue.remove_schedule(args.name)
                _say(f"schedule {args.name} removed")
            else:
                await queue.pause_schedule(args.name, paused=action == "pause")
                _say(f"schedule {args.name} {'paused' if action == 'pause' else 'resumed'}")

    asyncio.run(go())
    return 0


def _rate_text(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate:g}/s" if rate >= 1 else f"{rate * 60:g}/m"


def cmd_limits(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with Queue(args.database_url) as queue:
            action = args.limits_command
            if action == "set":
                row = await queue.set_limit(args.type, args.tenant, concurrency=args.concurrency, rate=args.rate)
                _say(f"limit {row['type']}{'/' + row['tenant'] if row['tenant'] else ''}: "
                      f"concurrency {row['concurrency'] or '-'}, rate {_rate_text(row['rate'])}")
            elif action == "list":
                rows = await queue.limits()
                if args.json:
                    print(json.dumps(rows, indent=2))
                else:
                    _print_table([[r["type"], r["tenant"] or "(all)", r["concurrency"] or "-", _rate_text(r["rate"]),
                                   r["running"]] for r in rows], ["TYPE", "TENANT", "CONCURRENCY", "RATE", "RUNNING"])
            elif not await queue.clear_limit(args.type, args.tenant):
                raise SkiplockError(f"no limit for {args.type!r}" + (f" tenant {args.tenant!r}" if args.tenant else ""))
            else:
                _say(f"limit {args.type} cleared")

    asyncio.run(go())
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    with needs("ui", "`skiplock ui`"):
        from .ui.app import run_ui

    return run_ui(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_operator(args: argparse.Namespace) -> int:
    with needs("operator", "`skiplock operator`"):
        from .operator.main import run_operator

    return run_operator(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "migrate": cmd_migrate, "enqueue": cmd_enqueue, "worker": cmd_worker, "stats": cmd_stats,
    "jobs": cmd_jobs, "demo": cmd_demo, "operator": cmd_operator, "schedule": cmd_schedule,
    "limits": cmd_limits, "ui": cmd_ui, "queues": cmd_queues,
}


_Usage = cli_admin.Usage  # bad command-line input: exit 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # bad flags and SKIPLOCK_* values: usage error, exit 2
    if problem := check_library_env():
        parser.error(problem)
    try:
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for handler in logging.getLogger().handlers:
            handler.addFilter(RedactingFilter(args.database_url))
            if getattr(args, "listen_database_url", None):
                handler.addFilter(RedactingFilter(args.listen_database_url))
        return COMMANDS[args.command](args)
    except _Usage as exc:
        parser.error(redact(str(exc), args.database_url))
    except KeyboardInterrupt:
        print("skiplock: interrupted", file=sys.stderr)
        return 130
    except (SkiplockError, MissingDependency, OSError, psycopg.Error) as exc:
        text = str(exc).strip()
        ours = isinstance(exc, (SkiplockError, MissingDependency))
        message = text if ours else (text.splitlines()[0] if text else repr(exc))
        print(f"skiplock: error: {terminal_safe(redact(message, args.database_url))}", file=sys.stderr)
        return 1
    return 0
