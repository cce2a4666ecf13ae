"""Summarise chaos reports (the JSON lines ``$SKIPLOCK_CHAOS_REPORT`` collects) as a Markdown table.

    SKIPLOCK_CHAOS_REPORT=/tmp/chaos.jsonl pytest tests/chaos   # as many runs as you like
    python -m tests.chaos.summary /tmp/chaos.jsonl

Each cell is min-max over the runs of a scenario (one number where they agree)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def span(values: Iterable[float], fmt: str = "{:,.0f}") -> str:
    vals = sorted(values)
    low, high = fmt.format(vals[0]), fmt.format(vals[-1])
    return low if low == high else f"{low}-{high}"


def faults(runs: Sequence[dict[str, Any]]) -> str:
    kinds = sorted({k for r in runs for k in r["faults"]})
    return ", ".join(f"{k} {span(r['faults'].get(k, 0) for r in runs)}" for k in kinds) or "-"


def stuck(runs: Sequence[dict[str, Any]], key: str) -> str:
    if not any(r[f"max_stuck_after_{key}"] for r in runs):
        return "-"
    bound = span((r[f"stuck_bound_after_{key}"] for r in runs), "{:.1f}")
    return f"{span((r[f'max_stuck_after_{key}'] for r in runs), '{:.1f}')} s ({bound} s)"


def table(reports: Sequence[dict[str, Any]]) -> str:
    by_scenario: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in reports:
        by_scenario[r["scenario"]].append(r)
    rows = ["| Scenario | Runs | Jobs (per run) | Executions | Faults injected (per run) | Lost | Duplicated "
            "| Rescued / released | Late finishes ignored | Worst stuck after a kill / after lease expiry "
            "(bound) | Time |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in by_scenario.items():
        rows.append(" | ".join([
            f"| `{name}`", str(len(runs)), span(r["jobs"] for r in runs), span(r["executions"] for r in runs),
            faults(runs), str(sum(r["lost"] for r in runs)), str(sum(r["duplicated"] for r in runs)),
            f"{span(r['rescues'] for r in runs)} / {span(r['releases'] for r in runs)}",
            span(r["late_finishes"] for r in runs), f"{stuck(runs, 'kill')} / {stuck(runs, 'lease')}",
            f"{span(r['seconds'] for r in runs)} s |"]))
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    lines = Path(args[0]).read_text().splitlines()
    print(table([json.loads(line) for line in lines if line.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
