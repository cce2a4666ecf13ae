"""``python -m bench all [--quick]``: every benchmark, then ``results/latest.json``, the plots and
the results section of ``bench/README.md``. A single benchmark (``python -m bench drain``) updates
only its own part of the results."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import report, server
from .profiles import PROFILES, Profile

HERE = Path(__file__).resolve().parent
QUEUE_KINDS = ("continuous", "drain", "latency")
COMMANDS = ("all", "queue", *QUEUE_KINDS, "floor", "scale", "leases", "limits", "autoscale", "fleet", "report")


def _log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _queue(srv: server.Server, profile: Profile, kinds: tuple[str, ...], results: dict[str, Any]) -> None:
    from . import queues

    run: dict[str, Callable[[server.Server, Profile, str], dict[str, Any]]] = {
        "continuous": queues.continuous, "drain": queues.drain, "latency": queues.latency}
    section = results.setdefault("queue", {})
    section["settings"] = {"processes": profile.processes, "concurrency": profile.concurrency, "batch": profile.batch,
                           "producers": profile.producers, "producer_batch": profile.producer_batch,
                           "backlog": profile.backlog, "window_s": profile.window_s}
    section["drain_jobs"] = profile.drain_jobs
    section["rounds"] = profile.rounds
    for kind in kinds:
        # Throughput runs in interleaved rounds (every peer once per round) and keeps each peer's
        # best: other load on a shared machine only ever slows a run down.
        rounds = 1 if kind == "latency" else profile.rounds
        runs: dict[str, list[dict[str, Any]]] = {}
        for n in range(rounds):
            for peer in profile.peers:
                _log(f"{kind}: {peer}" + (f" (round {n + 1} of {rounds})" if rounds > 1 else ""))
                runs.setdefault(peer, []).append(run[kind](srv, profile, peer))
        for peer, results_ in runs.items():
            best = max(results_, key=lambda r: r.get("jobs_per_s", 0.0))
            if rounds > 1:
                best = {**best, "rounds_jobs_per_s": [r["jobs_per_s"] for r in results_]}
            section.setdefault(kind, {})[peer] = best


def _leases(srv: server.Server, profile: Profile, results: dict[str, Any]) -> None:
    from . import leases

    section = results.setdefault("leases", {})
    for peer in profile.peers:
        _log(f"leases: {peer}")
        section[peer] = leases.run(srv, profile, peer)


def run(command: str, profile: Profile, out: Path, readme: Path, dsn: str | None = None) -> dict[str, Any]:
    results = report.load(out) if command != "all" else {}
    started = time.perf_counter()
    load_before = server.load()
    needs_db = command not in ("autoscale", "report")
    if command != "report":
        results.update(profile=profile.as_dict(), command="python -m bench " + " ".join(sys.argv[1:]))
        if needs_db:
            with server.start(dsn) as srv:
                results.update(postgres=srv.settings(), pgbench=server.pgbench_version(srv))
                if command in ("all", "queue", *QUEUE_KINDS):
                    kinds = QUEUE_KINDS if command in ("all", "queue") else (command,)
                    _queue(srv, profile, kinds, results)
                if command in ("all", "floor"):
                    from . import floor
                    _log("floor: pgbench")
                    results["floor"] = floor.run(srv, profile)
                if command in ("all", "scale"):
                    from . import scale
                    _log("scale of history")
                    results["scale"] = scale.run(srv, profile)
                if command in ("all", "leases"):
                    _leases(srv, profile, results)
                if command == "fleet":  # its own command: hundreds of processes, not part of `all`
                    from . import fleet
                    _log("fleet: connections, idle cost, latency and drain of N workers, direct and via PgBouncer")
                    results["fleet"] = fleet.run(srv, profile)
                if command == "limits" or (command == "all" and "skiplock" in profile.peers):
                    from . import limits
                    _log("limits: throughput on vs off, concurrency and rate accuracy")
                    results["limits"] = limits.run(srv, profile)
        if command in ("all", "autoscale"):
            from . import autoscale
            _log("autoscaling simulator")
            results["autoscale"] = autoscale.run(profile.sim_hours)
        machine = server.machine()
        machine.update(load_before=load_before, load_after=server.load())
        results.update(machine=machine, versions=server.versions(), duration_s=time.perf_counter() - started,
                       finished_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
        results["headline"] = report.headline(results)
        report.save(results, out)
    made = report.plots(results, out)
    report.write_readme(results, made, readme)
    _log(f"wrote {out / 'latest.json'}, {len(made)} plots and {readme}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS, help="which benchmark (all: every one; report: re-render)")
    parser.add_argument("--quick", action="store_true", help="short run (what CI may run once)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None, help="sizes (default: full)")
    parser.add_argument("--peers", default=None, help="comma-separated subset of skiplock,pgqueuer,procrastinate")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md", help="README to update")
    parser.add_argument("--database-url", default=None, help="use this server instead of an embedded one")
    parser.add_argument("--fleet-sizes", default=None, help="fleet: comma-separated worker counts (default 20,100,200)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile or ("quick" if args.quick else "full")]
    if args.fleet_sizes:
        profile = replace(profile, fleet_sizes=tuple(int(n) for n in args.fleet_sizes.split(",") if n.strip()))
    if args.peers:
        profile = replace(profile, peers=tuple(p.strip() for p in args.peers.split(",") if p.strip()))
    logging.basicConfig(level=logging.WARNING)
    run(args.command, profile, args.out, args.readme, args.database_url)
    return 0
