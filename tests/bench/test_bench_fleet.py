"""The fleet benchmark end to end at its tiny size (`python -m bench fleet --quick` is the same code
at a larger one): every mode and size measured, the section rendered. No speed is asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench import cli
from bench.profiles import TINY
from tests.pgbouncer import pgbouncer_binary
from tests.ship.tools import missing


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_the_fleet_benchmark_measures_every_mode_and_size(tmp_path: Path) -> None:
    if pgbouncer_binary() is None:
        missing("pgbouncer", "apt-get install pgbouncer, by tools/setup.sh --test")
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n")
    cli.run("fleet", TINY, tmp_path, readme)
    data = json.loads((tmp_path / "latest.json").read_text())["fleet"]
    for mode in ("direct", "pgbouncer"):
        for n in TINY.fleet_sizes:
            r = data[mode][str(n)]
            assert r["workers"] == n and r["finished"] == n * TINY.fleet_drain_per_worker + TINY.fleet_singles
            assert _finite(r["idle_statements_per_s"]) and _finite(r["drain"]["jobs_per_s"])
            assert r["start_ms"]["n"] == TINY.fleet_singles and 0 <= r["start_ms"]["p50"] <= r["start_ms"]["p95"]
            assert _finite(r["empty_claims_per_job"])
            if mode == "direct":  # at most 2 per worker (+ the benchmark's own connection)
                assert r["connections_busy_max"] <= 2 * n + 1, r
            else:  # PgBouncer's pool + one LISTEN connection per worker
                assert r["connections_busy_max"] <= TINY.fleet_pool + n + 1, r
    text = readme.read_text()
    assert "### Fleet: many workers on one PostgreSQL" in text and "pgbouncer" in text
