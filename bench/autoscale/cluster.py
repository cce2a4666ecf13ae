"""A one-second-step simulation of worker Deployments on a cluster, driven by a scaler.

What it models, the same for every scaler:
- a queue per pool, served highest priority first, then oldest (skiplock's claim order);
- pods: scheduled -> ready after the pool's start time; a GPU pod first needs a free GPU node,
  and a new node takes minutes to provision; with every GPU node taken the pod is unschedulable
  until one frees; the cluster autoscaler removes a node left empty for 10 minutes;
- a ready pod runs up to ``slots`` jobs at once, taking work as soon as a slot is free (the loop
  steps one second at a time, but a job starts at the exact moment it arrived or a slot freed up,
  so waits are not rounded up to the step);
- scale-down: the ReplicaSet controller deletes unscheduled pods first, then not-ready ones, then
  ready ones in the order the scaler asks (``Scaler.victims``); a deleted pod stops taking jobs and
  gets its shutdown grace to finish them; what is still running then is interrupted and goes
  back to the queue (the worker releases it), and the pod counts as a busy pod killed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..stats import percentile
from .traces import GPU_NODE_IDLE_REMOVAL_S, GPU_NODE_PROVISION_S, GPU_NODES, Job, PoolSpec, Trace

SHUTDOWN_GRACE_S = 55.0  # the operator's default: terminationGracePeriodSeconds 60 minus 5


@dataclass
class Node:
    ready_at: float
    pod: Pod | None = None
    empty_since: float = 0.0


@dataclass
class Pod:
    id: int
    pool: str
    created: float
    node: Node | None = None  # GPU pods only
    ready_at: float | None = None  # None while unschedulable
    jobs: dict[int, float] = field(default_factory=dict)  # job id -> end time
    deleting_at: float | None = None
    freed: list[float] = field(default_factory=list)  # heap: when slots freed up (the others: since ready)

    def ready(self, now: float) -> bool:
        return self.ready_at is not None and self.ready_at <= now

    @property
    def scheduled(self) -> bool:
        return self.ready_at is not None


@dataclass(frozen=True)
class PoolView:
    """What a scaler may look at: the queue (as the database sees it) and the Deployment."""

    pool: PoolSpec
    pending: int
    running: int
    oldest_pending_s: float
    replicas: int
    ready: int
    unschedulable: int
    scheduled: int = 0  # live pods bound to a node (a GPU node being provisioned counts: the autoscaler placed it)


class Scaler(Protocol):
    name: str
    interval_s: float

    def replicas(self, view: PoolView, now: float) -> int:
        """The replicas the pool's Deployment should have now."""

    def victims(self, pods: list[Pod], count: int, rng: random.Random) -> list[Pod]:
        """Which ``count`` of these ready pods to delete."""


@dataclass
class Metrics:
    waits: list[float] = field(default_factory=list)
    waits_high: list[float] = field(default_factory=list)  # priority > 0
    idle_pod_s: dict[str, float] = field(default_factory=dict)
    pod_s: dict[str, float] = field(default_factory=dict)
    unschedulable_pod_s: float = 0.0
    empty_node_s: float = 0.0  # GPU nodes up with no pod (until the cluster autoscaler removes them)
    unschedulable_pods: int = 0
    max_unschedulable: int = 0
    busy_deleted: int = 0
    busy_killed: int = 0
    interrupted_jobs: int = 0
    actions: int = 0
    unfinished: int = 0


class Cluster:
    def __init__(self, trace: Trace, pools: Iterable[PoolSpec], scaler: Scaler, seed: int = 7,
                 record_every_s: int = 0) -> None:
        self.trace = trace
        self.pools = {p.name: p for p in pools}
        self.scaler = scaler
        self.rng = random.Random(seed)
        self.queue: dict[str, list[tuple[int, float, int, Job]]] = {p: [] for p in self.pools}
        self.pods: dict[str, list[Pod]] = {p: [] for p in self.pools}
        self.nodes: list[Node] = []
        self.jobs = {j.id: j for j in trace.jobs}
        self.started: set[int] = set()
        self.available: dict[int, float] = {}  # job id -> since when it can run
        self.ends: list[tuple[float, int, int]] = []  # (end time, pod id, job id)
        self.pod_by_id: dict[int, Pod] = {}
        self.ids = itertools.count()
        self.m = Metrics(idle_pod_s=dict.fromkeys(self.pools, 0.0), pod_s=dict.fromkeys(self.pools, 0.0))
        self.record_every_s = record_every_s
        self.timeline: list[dict[str, float]] = []  # every record_every_s: replicas, busy pods, queue

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> Metrics:
        arrivals = list(self.trace.jobs)
        nxt = 0
        horizon = self.trace.seconds + 3600  # let the last jobs finish
        for step in range(int(horizon)):
            now = float(step)
            while nxt < len(arrivals) and arrivals[nxt].arrival <= now:
                self._enqueue(arrivals[nxt])
                nxt += 1
            self._finish_jobs(now)
            self._nodes(now)
            self._terminations(now)
            self._dispatch(now)
            if step % int(self.scaler.interval_s) == 0:
                for name in self.pools:
                    self._scale(name, now)
            self._account(now)
            if self.record_every_s and step % self.record_every_s == 0:
                self._record(now)
            if now > self.trace.seconds and nxt == len(arrivals) and not self.ends and not any(self.queue.values()):
                break
        self.m.unfinished = sum(len(q) for q in self.queue.values()) + len(self.ends)
        return self.m

    # -- jobs -------------------------------------------------------------------------------------

    def _enqueue(self, job: Job, now: float | None = None) -> None:
        self.available[job.id] = job.arrival if now is None else now  # a released job runs again from now
        heapq.heappush(self.queue[job.pool], (-job.priority, job.arrival, job.id, job))

    def _finish_jobs(self, now: float) -> None:
        while self.ends and self.ends[0][0] <= now:
            end, pod_id, job_id = heapq.heappop(self.ends)
            pod = self.pod_by_id.get(pod_id)
            if pod is not None and pod.jobs.pop(job_id, None) is not None:
                heapq.heappush(pod.freed, end)

    def _dispatch(self, now: float) -> None:
        for name, pool in self.pools.items():
            queue = self.queue[name]
            while queue:
                open_ = [p for p in self.pods[name]
                         if p.deleting_at is None and p.ready(now) and len(p.jobs) < pool.slots]
                if not open_:
                    break
                _, _, _, job = heapq.heappop(queue)
                since = self.available[job.id]
                # The first pod (in order: pods fill up before others are used) with a slot free
                # when the job came; else the slot that freed up first after it.
                pod = next((p for p in open_ if self._free_since(p, pool) <= since), None) or min(
                    open_, key=lambda p: self._free_since(p, pool))
                start = max(since, self._take_slot(pod, pool))
                end = start + job.duration
                pod.jobs[job.id] = end
                heapq.heappush(self.ends, (end, pod.id, job.id))
                if job.id not in self.started:  # a re-run after an interruption keeps its first wait
                    self.started.add(job.id)
                    self.m.waits.append(start - job.arrival)
                    if job.priority > 0:
                        self.m.waits_high.append(start - job.arrival)

    @staticmethod
    def _free_since(pod: Pod, pool: PoolSpec) -> float:
        """Since when the pod's longest-free slot is free (time is continuous within a step: a job
        that arrives, or a slot that frees up, between two steps starts at that moment)."""
        assert pod.ready_at is not None
        return pod.ready_at if len(pod.freed) < pool.slots - len(pod.jobs) else pod.freed[0]

    @classmethod
    def _take_slot(cls, pod: Pod, pool: PoolSpec) -> float:
        since = cls._free_since(pod, pool)
        if len(pod.freed) >= pool.slots - len(pod.jobs):
            heapq.heappop(pod.freed)
        return since

    # -- pods and nodes ---------------------------------------------------------------------------

    def _new_pod(self, name: str, now: float) -> None:
        pool = self.pools[name]
        pod = Pod(next(self.ids), name, now)
        self.pods[name].append(pod)
        self.pod_by_id[pod.id] = pod
        if not pool.gpu:
            pod.ready_at = now + pool.pod_start_s
        elif not self._place(pod, now):
            self.m.unschedulable_pods += 1

    def _place(self, pod: Pod, now: float) -> bool:
        """Bind a GPU pod to a free node, provisioning one if the cluster may grow."""
        pool = self.pools[pod.pool]
        free = [n for n in self.nodes if n.pod is None]
        if free:
            node = min(free, key=lambda n: n.ready_at)
        elif len(self.nodes) < GPU_NODES:
            node = Node(ready_at=now + GPU_NODE_PROVISION_S)
            self.nodes.append(node)
        else:
            return False
        node.pod, pod.node = pod, node
        pod.ready_at = max(now, node.ready_at) + pool.pod_start_s
        return True

    def _nodes(self, now: float) -> None:
        for pods in self.pods.values():  # unschedulable pods retry as nodes free up
            for pod in pods:
                if not pod.scheduled and pod.deleting_at is None and self.pools[pod.pool].gpu:
                    self._place(pod, now)
        keep = []
        for node in self.nodes:
            if node.pod is None and node.ready_at <= now and now - node.empty_since >= GPU_NODE_IDLE_REMOVAL_S:
                continue  # the cluster autoscaler removes it
            keep.append(node)
        self.nodes = keep

    def _remove(self, pod: Pod, now: float) -> None:
        self.pods[pod.pool].remove(pod)
        self.pod_by_id.pop(pod.id, None)
        if pod.node is not None:
            pod.node.pod = None
            pod.node.empty_since = now

    def _terminations(self, now: float) -> None:
        for pods in self.pods.values():
            for pod in [p for p in pods if p.deleting_at is not None]:
                assert pod.deleting_at is not None
                if not pod.jobs:
                    self._remove(pod, now)
                elif now - pod.deleting_at >= SHUTDOWN_GRACE_S:
                    self.m.busy_killed += 1
                    for job_id in pod.jobs:
                        self.m.interrupted_jobs += 1
                        self._enqueue(self.jobs[job_id], now)
                    self.ends = [e for e in self.ends if e[1] != pod.id]
                    heapq.heapify(self.ends)
                    self._remove(pod, now)

    # -- scaling ----------------------------------------------------------------------------------

    def view(self, name: str, now: float) -> PoolView:
        live = [p for p in self.pods[name] if p.deleting_at is None]
        queue = self.queue[name]
        oldest = max((now - item[3].arrival for item in queue), default=0.0)
        return PoolView(self.pools[name], pending=len(queue),
                        running=sum(len(p.jobs) for p in self.pods[name]),
                        oldest_pending_s=oldest, replicas=len(live),
                        ready=sum(1 for p in live if p.ready(now)),
                        unschedulable=sum(1 for p in live if not p.scheduled),
                        scheduled=sum(1 for p in live if p.scheduled))

    def _scale(self, name: str, now: float) -> None:
        view = self.view(name, now)
        target = max(0, min(self.scaler.replicas(view, now), self.pools[name].max_replicas))
        if target == view.replicas:
            return
        self.m.actions += 1
        if target > view.replicas:
            for _ in range(target - view.replicas):
                self._new_pod(name, now)
            return
        live = [p for p in self.pods[name] if p.deleting_at is None]
        count = view.replicas - target
        # The ReplicaSet controller's ranking: unscheduled, then not ready, then the scaler's order.
        doomed = [p for p in live if not p.scheduled][:count]
        doomed += [p for p in live if p.scheduled and not p.ready(now)][:count - len(doomed)]
        if len(doomed) < count:
            doomed += self.scaler.victims([p for p in live if p.ready(now)], count - len(doomed), self.rng)
        for pod in doomed:
            if pod.jobs:
                self.m.busy_deleted += 1
            pod.deleting_at = now

    # -- accounting -------------------------------------------------------------------------------

    def _account(self, now: float) -> None:
        """Pod time starts when the pod holds its resources: at once on CPU, when its node is up
        on GPU (a node being provisioned is nobody's idle time). Idle = no job running."""
        unsched = 0
        for name, pods in self.pods.items():
            for pod in pods:
                if not pod.scheduled:
                    unsched += 1
                    continue
                if pod.node is not None and pod.node.ready_at > now:
                    continue
                self.m.pod_s[name] += 1
                if not pod.jobs:
                    self.m.idle_pod_s[name] += 1
        self.m.unschedulable_pod_s += unsched
        self.m.max_unschedulable = max(self.m.max_unschedulable, unsched)
        self.m.empty_node_s += sum(1 for n in self.nodes if n.pod is None and n.ready_at <= now)


    def _record(self, now: float) -> None:
        point = {"t": now}
        for name, pods in self.pods.items():
            point[f"{name}_replicas"] = sum(1 for p in pods if p.deleting_at is None)
            point[f"{name}_busy"] = sum(1 for p in pods if p.jobs)
            point[f"{name}_queue"] = len(self.queue[name])
        self.timeline.append(point)


def summarize(m: Metrics) -> dict[str, float | int]:
    return {
        "wait_p50_s": percentile(m.waits, 50), "wait_p95_s": percentile(m.waits, 95),
        "high_priority_wait_p95_s": percentile(m.waits_high, 95) if m.waits_high else math.nan,
        "idle_cpu_pod_min": m.idle_pod_s.get("cpu", 0.0) / 60, "idle_gpu_pod_min": m.idle_pod_s.get("gpu", 0.0) / 60,
        "cpu_pod_min": m.pod_s.get("cpu", 0.0) / 60, "gpu_pod_min": m.pod_s.get("gpu", 0.0) / 60,
        "busy_pods_killed": m.busy_killed, "busy_pods_drained": m.busy_deleted - m.busy_killed,
        "interrupted_jobs": m.interrupted_jobs, "unschedulable_pods": m.unschedulable_pods,
        "unschedulable_pod_min": m.unschedulable_pod_s / 60, "max_unschedulable": m.max_unschedulable,
        "empty_gpu_node_min": m.empty_node_s / 60,
        "scaling_actions": m.actions, "jobs": len(m.waits), "unfinished": m.unfinished,
    }
