"""The benchmarks run end to end at tiny sizes and produce well-formed results. Nothing here
asserts on speed: these are benchmarks, not timed tests."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import cli, floor, report
from bench.autoscale import POOLS, scalers, traces
from bench.autoscale.cluster import Cluster, summarize
from bench.profiles import TINY
from skiplock.operator import policy
from skiplock.sql import QUERIES
from tests.ship.tools import missing

BENCH_EXTRA = ("pgqueuer", "procrastinate", "asyncpg", "matplotlib")  # what bench/ imports when it runs

PEERS = ("skiplock", "pgqueuer", "procrastinate")


@pytest.fixture(scope="module", autouse=True)  # before `results`, which runs the benchmarks
def _bench_extra_installed() -> None:
    """The `bench` extra: these tests skip without it, and fail under SKIPLOCK_REQUIRE_TOOLS=1 (tools/test.sh, CI)."""
    absent = [m for m in BENCH_EXTRA if importlib.util.find_spec(m) is None]
    if absent:
        missing(f"the bench extra ({', '.join(absent)})", "pip install -e '.[bench]', by tools/setup.sh --test")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    readme = out / "README.md"
    readme.write_text("# Benchmarks\n\nHand-written text stays.\n")
    cli.run("all", TINY, out, readme)
    return json.loads((out / "latest.json").read_text()), out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_queue_benchmarks_cover_every_peer(results: tuple[dict[str, Any], Path]) -> None:
    data, _ = results
    for kind in ("continuous", "drain"):
        for peer in PEERS:
            row = data["queue"][kind][peer]
            assert _finite(row["jobs_per_s"]) and row["jobs_per_s"] > 0, (kind, peer, row)
            assert _finite(row["worker_cpu_ms_per_job"]) and _finite(row["statements_per_job"])
    for peer in PEERS:
        lat = data["queue"]["latency"][peer]
        assert lat["single_ms"]["n"] == TINY.singles and lat["burst_ms"]["n"] == TINY.bursts * TINY.burst_size
        assert 0 <= lat["single_ms"]["p50"] <= lat["single_ms"]["p99"]


def test_floor_scale_and_leases_are_measured(results: tuple[dict[str, Any], Path]) -> None:
    data, _ = results
    assert {r["batch"] for r in data["floor"]["runs"]} == {*TINY.floor_batches, TINY.concurrency}
    assert all(r["jobs_per_s"] > 0 for r in data["floor"]["runs"])
    assert {(r["batch"], r["clients"]) for r in data["floor"]["runs"]} == {
        (b, c) for b in (*TINY.floor_batches, TINY.concurrency) for c in TINY.floor_clients}
    batched = max(r["jobs_per_s"] for r in data["floor"]["runs"] if r["batch"] > 1)
    assert data["floor"]["batched"]["jobs_per_s"] == batched
    lat = data["floor"]["latency"]
    assert lat["total_ms"]["n"] == TINY.singles and 0 < lat["total_ms"]["p50"] <= lat["total_ms"]["p95"]
    cases = data["scale"]["cases"]
    # the bloat case twice: right after the history went through, and after a vacuum
    assert len(cases) == len(TINY.scale_pending) + 2 and cases[0]["ratio"] == 1.0
    assert cases[-2]["before_vacuum"] and cases[-1]["vacuum_s"] >= 0
    assert all(_finite(c["jobs_per_s"]) and c["jobs_per_s"] > 0 for c in cases)
    for peer in PEERS:
        row = data["leases"][peer]
        assert row["running_jobs"] == TINY.lease_jobs and row["connections"] >= 1
        assert _finite(row["statements_per_s"]) and _finite(row["lease_statements_per_s"])


def test_limits_throughput_and_accuracy_are_measured(results: tuple[dict[str, Any], Path]) -> None:
    data, out = results
    li = data["limits"]
    for side in ("off", "on"):
        row = li["throughput"][side]
        assert row["complete"] and row["finished"] == TINY.drain_jobs, (side, row)
        assert _finite(row["jobs_per_s"]) and row["jobs_per_s"] > 0 and _finite(row["statements_per_job"])
    assert _finite(li["throughput"]["ratio_on_off"]) and li["throughput"]["ratio_on_off"] > 0
    c = li["concurrency"]
    assert c["jobs"] == TINY.limit_concurrency_jobs and c["configured"] == TINY.limit_concurrency
    assert 1 <= c["observed_max"] <= c["configured"], c  # never more running than the limit
    r = li["rate"]
    assert r["jobs"] == TINY.limit_rate_jobs and r["configured_per_s"] == TINY.limit_rate
    assert 0 < r["observed_per_s"] <= r["configured_per_s"] * 1.2, r
    assert 1 <= r["max_in_1s"] <= r["bound_in_1s"] * 1.2, r
    text = (out / "README.md").read_text()
    assert "### Rate and concurrency limits" in text and "limit-aware claim" in text


def test_autoscale_compares_every_trace(results: tuple[dict[str, Any], Path]) -> None:
    data, _ = results
    rows = data["autoscale"]["traces"]
    assert [r["trace"] for r in rows] == ["steady", "bursty", "diurnal", "priority mix"]
    for row in rows:
        for scaler in ("skiplock", "keda"):
            assert row[scaler]["jobs"] == row["jobs"] and row[scaler]["unfinished"] == 0
            assert set(row["targets_met"]) == {"wait_p95_at_most_half", "idle_gpu_at_most_0.7x", "idle_cpu_no_worse",
                                               "no_busy_pod_killed"}
        assert row["ceiling"]["wait_p95_s"] <= row["keda"]["wait_p95_s"]  # nothing waits less than every pod up
        assert [h["headroom"] for h in row["tradeoff"]] == [0.0, 0.5, 1.0, 1.5]


def test_report_has_table_plots_and_machine(results: tuple[dict[str, Any], Path]) -> None:
    data, out = results
    text = (out / "README.md").read_text()
    assert text.startswith("# Benchmarks\n\nHand-written text stays.")
    assert report.START in text and report.END in text and "| skiplock |" in text
    assert "Load average" in text and data["machine"]["load_before"] is not None
    for png in ("throughput.png", "latency.png", "scale.png", "leases.png", "autoscale.png"):
        assert (out / png).stat().st_size > 1000 and f"results/{png}" in text
    assert set(data["headline"]) >= {"continuous_vs_pgqueuer", "drain_vs_procrastinate", "drain_vs_floor"}
    # Re-rendering replaces the generated section instead of appending a second one.
    report.write_readme(data, [], out / "README.md")
    assert (out / "README.md").read_text().count(report.START) == 1


def test_floor_translates_skiplocks_own_statements() -> None:
    script = floor.cycle_script(replenish=True)
    assert "%(" not in script and ":limit" in script and ":worker_id" in script and ":jobs::jsonb" in script
    for name in ("claim", "finish", "propagate", "enqueue"):
        assert floor.to_pgbench(QUERIES[name]) in script
    assert floor.defines(3, replenish=True)["jobs"].count('"type":"noop"') == 3


def test_simulator_calls_the_operators_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = policy.decide

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(policy, "decide", counting)
    trace = traces.bursty(1800)
    summary = summarize(Cluster(trace, POOLS, scalers.SkiplockScaler(POOLS)).run())
    assert calls > 0 and summary["jobs"] == len(trace.jobs)
