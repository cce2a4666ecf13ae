"""The operator's Prometheus metrics (names are a contract with the dashboards: change with care)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

POOL = ("namespace", "jobqueue", "pool")
JOBQUEUE = ("namespace", "jobqueue")


class OperatorMetrics:
    """Every metric the operator exports, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.desired = Gauge("skiplock_operator_pool_desired_replicas", "Replicas the operator set.", POOL,
                             registry=r)
        self.ready = Gauge("skiplock_operator_pool_ready_replicas", "Ready worker pods.", POOL, registry=r)
        self.unschedulable = Gauge("skiplock_operator_pool_unschedulable_pods",
                                   "Worker pods the scheduler could not place.", POOL, registry=r)
        self.gpu_pods = Gauge("skiplock_operator_pool_gpu_pods", "Scheduled worker pods holding GPUs.", POOL,
                              registry=r)
        # From the pool's spec (gpu.count; 0 for a CPU pool): what alerts and dashboards join on to
        # tell GPU pools from CPU pools.
        self.gpus_per_pod = Gauge("skiplock_operator_pool_gpus_per_pod",
                                  "GPUs each worker pod of the pool requests (0: a CPU pool).", POOL, registry=r)
        self.depth = Gauge("skiplock_operator_pool_depth", "Jobs the pool can run, by state.",
                           (*POOL, "state"), registry=r)
        self.oldest = Gauge("skiplock_operator_pool_oldest_pending_seconds",
                            "Wait of the oldest runnable job of the pool.", POOL, registry=r)
        self.rescued = Counter("skiplock_operator_rescued_jobs", "Jobs rescued by the operator.",
                               (*JOBQUEUE, "reason"), registry=r)
        self.scaling = Counter("skiplock_operator_scaling_events", "Replica changes by direction.",
                               (*POOL, "direction"), registry=r)
        self.database_up = Gauge("skiplock_operator_database_up", "1 if the JobQueue's database answers.",
                                 JOBQUEUE, registry=r)
        self.reconcile_errors = Counter("skiplock_operator_reconcile_errors",
                                        "Unexpected errors while reconciling a JobQueue.", registry=r)

    def forget(self, namespace: str, jobqueue: str, keep_pools: frozenset[str] | None = None) -> None:
        """Drop the series of a JobQueue (all of them, or those of pools not in ``keep_pools``)."""
        for metric in (self.desired, self.ready, self.unschedulable, self.gpu_pods, self.gpus_per_pod, self.depth,
                       self.oldest, self.scaling, self.rescued, self.database_up):
            for labels in _series(metric):
                if labels[:2] != (namespace, jobqueue):
                    continue
                if keep_pools is not None and (metric in (self.rescued, self.database_up)
                                               or labels[2] in keep_pools):
                    continue
                metric.remove(*labels)


def _series(metric: Gauge | Counter) -> set[tuple[str, ...]]:
    """The label values of every child of ``metric`` (sample labels keep the declared order)."""
    return {tuple(s.labels.values()) for family in metric.collect() for s in family.samples}
