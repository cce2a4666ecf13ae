"""The two scalers under comparison.

``SkiplockScaler`` drives the operator's own code: the pool settings come from a real
``JobQueue`` spec through ``skiplock.operator.spec`` (its defaults included), and every poll calls
``skiplock.operator.policy.decide`` with the pool's observation, carrying its ``PolicyState``.
Before a scale-down the operator sets each pod's deletion cost to its in-flight job count, so
the ReplicaSet controller deletes idle pods first.

``KedaScaler`` is KEDA's postgresql scaler feeding an HPA, as documented and as KEDA v2.21.0's
source does it (``pkg/scaling/scale_handler.go``): the scaler's query returns the queue depth
(runnable + running jobs); the HPA syncs every 15 s and, without ``useCachedMetrics`` (the
default), each sync queries the database afresh through KEDA's metrics server (``pollingInterval``,
30 s, only paces KEDA's own loop: activation from zero and the cooldown to zero). The metric is an
``AverageValue`` target: ``desired = ceil(depth / target)``,
no change while ``|depth / (target * replicas) - 1| <= 0.1``; scale-up at most
``max(100 %, 4 pods)`` per 15 s; scale-down to the highest recommendation of the last 300 s; KEDA
itself activates 0 -> 1 on a poll that sees work and deactivates to 0 after ``cooldownPeriod``
(300 s) without any; pods to delete are chosen at random among ready pods.
"""

from __future__ import annotations

import math
import random
from typing import Any

from skiplock.operator import policy, spec

from .cluster import Pod, PoolView
from .traces import PoolSpec


def jobqueue(pools: list[PoolSpec], scaling: dict[str, dict[str, Any]] | None = None) -> spec.JobQueueSpec:
    """The JobQueue a user would write for these pools: every scaling setting at its default, except
    what ``scaling`` (pool name -> the pool's ``scaling`` in the CR) sets."""
    scaling = scaling or {}
    return spec.parse({
        "database": {"secretRef": {"name": "db"}},
        "queues": ["default"],
        "pools": [{"name": p.name, "image": "worker:1", "jobTypes": [p.name], "concurrency": p.slots,
                   "maxReplicas": p.max_replicas, **({"gpu": {"count": 1}} if p.gpu else {}),
                   **({"scaling": scaling[p.name]} if p.name in scaling else {})} for p in pools],
    })


class SkiplockScaler:
    name = "skiplock"

    def __init__(self, pools: list[PoolSpec], scaling: dict[str, dict[str, Any]] | None = None) -> None:
        self.spec = jobqueue(pools, scaling)
        self.interval_s = self.spec.poll_interval()
        self.settings = {p.name: self.spec.pool_settings(p) for p in self.spec.pools}
        self.states: dict[str, policy.PolicyState] = {}
        self.reasons: dict[str, str] = {}

    def describe(self) -> dict[str, Any]:
        return {"poll_interval_s": self.interval_s,
                "settings": {name: vars(s) for name, s in self.settings.items()}}

    def replicas(self, view: PoolView, now: float) -> int:
        name = view.pool.name
        state = self.states.get(name) or policy.PolicyState.resumed(view.replicas, now)
        obs = policy.Observation(pending=view.pending, running=view.running,
                                 oldest_pending_seconds=view.oldest_pending_s, replicas=view.replicas,
                                 ready=view.ready, unschedulable=view.unschedulable, scheduled=view.scheduled)
        decision = policy.decide(self.settings[name], state, obs, now)
        self.states[name] = decision.state
        self.reasons[name] = decision.reason
        return decision.replicas

    def victims(self, pods: list[Pod], count: int, rng: random.Random) -> list[Pod]:
        # pod-deletion-cost = in-flight jobs (lowest first); equal costs: the newest pod first.
        return sorted(pods, key=lambda p: (len(p.jobs), -p.created))[:count]


class KedaScaler:
    name = "keda"
    interval_s = 15.0  # HPA sync period
    polling_s = 30.0  # KEDA pollingInterval
    cooldown_s = 300.0  # KEDA cooldownPeriod (only for scaling to zero)
    tolerance = 0.1
    down_window_s = 300.0
    up_pods, up_percent = 4, 100

    def __init__(self, pools: list[PoolSpec]) -> None:
        self.target = {p.name: p.slots for p in pools}
        self.metric: dict[str, tuple[float, int]] = {}  # pool -> (sampled at, depth)
        self.last_active: dict[str, float] = {}
        self.recs: dict[str, list[tuple[float, int]]] = {}

    def describe(self) -> dict[str, Any]:
        return {"hpa_sync_s": self.interval_s, "polling_interval_s": self.polling_s, "cooldown_s": self.cooldown_s,
                "tolerance": self.tolerance, "scale_down_stabilization_s": self.down_window_s,
                "target_per_pod": self.target}

    def replicas(self, view: PoolView, now: float) -> int:
        name = view.pool.name
        depth = view.pending + view.running  # the HPA's sync queries afresh (no useCachedMetrics)
        polled = name not in self.metric or now - self.metric[name][0] >= self.polling_s
        if polled:  # KEDA's own loop: activation and cooldown see the depth every pollingInterval
            self.metric[name] = (now, depth)
            if depth > 0:
                self.last_active[name] = now
        current = view.replicas
        if current == 0:  # the HPA is idle at zero; KEDA activates on a poll that sees work
            return 1 if polled and depth > 0 else 0
        if polled and depth == 0 and now - self.last_active.get(name, -math.inf) >= self.cooldown_s:
            self.recs[name] = []
            return 0
        return self._hpa(name, depth, current, now, view.pool.max_replicas)

    def _hpa(self, name: str, depth: int, current: int, now: float, max_replicas: int) -> int:
        target = self.target[name]
        ratio = depth / (target * current)
        desired = current if abs(ratio - 1) <= self.tolerance else math.ceil(depth / target)
        desired = max(1, min(desired, max_replicas))
        recs = [r for r in self.recs.get(name, []) if r[0] > now - self.down_window_s]
        recs.append((now, desired))
        self.recs[name] = recs
        if desired < current:
            desired = min(current, max(n for _, n in recs))  # scale-down stabilization
        elif desired > current:
            desired = min(desired, max(current + self.up_pods, current * (100 + self.up_percent) // 100))
        return desired

    def victims(self, pods: list[Pod], count: int, rng: random.Random) -> list[Pod]:
        return rng.sample(pods, min(count, len(pods)))


class CeilingScaler:
    """Not a scaler: every pool at ``maxReplicas`` from the first second. The waits it gets are the
    best any scaler bounded by the same ``maxReplicas`` and GPU nodes could reach."""

    name = "ceiling"
    interval_s = 10.0

    def __init__(self, pools: list[PoolSpec]) -> None:
        del pools

    def replicas(self, view: PoolView, now: float) -> int:
        return view.pool.max_replicas

    def victims(self, pods: list[Pod], count: int, rng: random.Random) -> list[Pod]:
        return []
