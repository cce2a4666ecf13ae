"""Autoscaling policy against KEDA's: a trace-driven simulator in simulated time.

The same traces run through the operator's real policy (``SkiplockScaler``) and a model of KEDA's
postgresql scaler + HPA (``KedaScaler``) on the same simulated cluster (``cluster.Cluster``).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..stats import ratio
from .cluster import SHUTDOWN_GRACE_S, Cluster, summarize
from .scalers import CeilingScaler, KedaScaler, SkiplockScaler
from .traces import CPU, GPU, GPU_NODE_IDLE_REMOVAL_S, GPU_NODE_PROVISION_S, GPU_NODES, Trace, all_traces

POOLS = [CPU, GPU]
TIMELINE = "bursty"  # the trace whose replicas over time are kept for the plot
HEADROOMS = (0.0, 0.5, 1.0, 1.5)  # the CPU pool's scaling.headroom in the trade-off sweep


def run(hours: float) -> dict[str, Any]:
    started = time.perf_counter()
    traces = []
    for trace in all_traces(hours):
        row: dict[str, Any] = {"trace": trace.name, "description": trace.description, "jobs": len(trace.jobs)}
        for scaler in (SkiplockScaler(POOLS), KedaScaler(POOLS)):
            cluster = Cluster(trace, POOLS, scaler, record_every_s=30 if trace.name == TIMELINE else 0)
            row[scaler.name] = summarize(cluster.run())
            if cluster.timeline:
                row.setdefault("timeline", {})[scaler.name] = cluster.timeline
        ceiling = summarize(Cluster(trace, POOLS, CeilingScaler(POOLS)).run())
        row["ceiling"] = {k: ceiling[k] for k in ("wait_p50_s", "wait_p95_s", "high_priority_wait_p95_s")}
        s, k = row["skiplock"], row["keda"]
        row["ratios"] = {"wait_p95": ratio(s["wait_p95_s"], k["wait_p95_s"]),
                         "idle_gpu_pod_min": ratio(s["idle_gpu_pod_min"], k["idle_gpu_pod_min"]),
                         "idle_cpu_pod_min": ratio(s["idle_cpu_pod_min"], k["idle_cpu_pod_min"]),
                         "ceiling_wait_p95": ratio(ceiling["wait_p95_s"], k["wait_p95_s"])}
        if not math.isnan(s["high_priority_wait_p95_s"]):
            row["ratios"]["high_priority_wait_p95"] = ratio(s["high_priority_wait_p95_s"],
                                                            k["high_priority_wait_p95_s"])
        row["targets_met"] = {
            "wait_p95_at_most_half": s["wait_p95_s"] <= 0.5 * k["wait_p95_s"],
            "idle_gpu_at_most_0.7x": s["idle_gpu_pod_min"] <= 0.7 * k["idle_gpu_pod_min"],
            "idle_cpu_no_worse": s["idle_cpu_pod_min"] <= k["idle_cpu_pod_min"],
            "no_busy_pod_killed": s["busy_pods_killed"] == 0,
        }
        row["tradeoff"] = [_with_headroom(trace, h, k) for h in HEADROOMS]
        traces.append(row)
    return {
        "hours": hours, "traces": traces, "seconds": time.perf_counter() - started, "headrooms": list(HEADROOMS),
        "cluster": {"pools": [vars(p) for p in POOLS], "gpu_nodes": GPU_NODES,
                    "gpu_node_provision_s": GPU_NODE_PROVISION_S, "gpu_node_idle_removal_s": GPU_NODE_IDLE_REMOVAL_S,
                    "shutdown_grace_s": SHUTDOWN_GRACE_S},
        "skiplock": SkiplockScaler(POOLS).describe(), "keda": KedaScaler(POOLS).describe(),
    }


def _with_headroom(trace: Trace, headroom: float, keda: dict[str, Any]) -> dict[str, Any]:
    """The trace again with the CPU pool's ``scaling.headroom`` set in the JobQueue: what spare
    slots cost in idle CPU pods and buy in waits, as ratios to KEDA's run."""
    m = summarize(Cluster(trace, POOLS, SkiplockScaler(POOLS, {CPU.name: {"headroom": headroom}})).run())
    return {"headroom": headroom, "wait_p95_s": m["wait_p95_s"], "idle_cpu_pod_min": m["idle_cpu_pod_min"],
            "busy_pods_killed": m["busy_pods_killed"], "wait_p95": ratio(m["wait_p95_s"], keda["wait_p95_s"]),
            "idle_cpu": ratio(m["idle_cpu_pod_min"], keda["idle_cpu_pod_min"])}
