"""Workload traces for the autoscaling simulator: job arrivals and durations per pool, seeded.

Two pools run in every trace: ``cpu`` (pods start in seconds, four jobs per pod) and ``gpu``
(one job per pod; a pod needs a GPU node, which takes minutes to provision, and the cluster has a
limited number of them). Arrivals are Poisson with a rate that is a function of time; durations
are log-normal around the pool's mean.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolSpec:
    name: str
    slots: int  # jobs one pod runs at once (the worker's concurrency = the scaling target per pod)
    max_replicas: int
    pod_start_s: float  # from scheduled to ready
    gpu: bool = False


CPU = PoolSpec("cpu", slots=4, max_replicas=40, pod_start_s=8.0)
GPU = PoolSpec("gpu", slots=1, max_replicas=12, pod_start_s=30.0, gpu=True)

# The GPU cluster: at most this many one-GPU nodes; a new one takes this long to provision; the
# cluster autoscaler removes a node left empty this long.
GPU_NODES = 8
GPU_NODE_PROVISION_S = 180.0
GPU_NODE_IDLE_REMOVAL_S = 600.0


@dataclass(frozen=True)
class Job:
    id: int
    pool: str
    arrival: float
    duration: float
    priority: int = 0


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    jobs: tuple[Job, ...]
    seconds: float


Rate = Callable[[float], float]


def _poisson(rng: random.Random, rate: Rate, peak: float, seconds: float) -> list[float]:
    """Arrival times of a Poisson process with rate ``rate(t) <= peak`` (thinning)."""
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= seconds:
            return times
        if rng.random() * peak <= rate(t):
            times.append(t)


def _durations(rng: random.Random, mean: float, n: int, sigma: float = 0.6) -> list[float]:
    mu = math.log(mean) - sigma**2 / 2
    return [max(1.0, rng.lognormvariate(mu, sigma)) for _ in range(n)]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.jobs: list[Job] = []

    def add(self, pool: str, times: list[float], mean_s: float, priority: int = 0) -> None:
        for t, d in zip(times, _durations(self.rng, mean_s, len(times)), strict=True):
            self.jobs.append(Job(0, pool, t, d, priority))

    def burst(self, pool: str, at: float, count: int, mean_s: float, spread_s: float = 10.0,
              priority: int = 0) -> None:
        self.add(pool, sorted(at + self.rng.uniform(0, spread_s) for _ in range(count)), mean_s, priority)

    def build(self, name: str, description: str, seconds: float) -> Trace:
        ordered = sorted(self.jobs, key=lambda j: j.arrival)
        jobs = tuple(Job(i, j.pool, j.arrival, j.duration, j.priority) for i, j in enumerate(ordered))
        return Trace(name, description, jobs, seconds)


def steady(seconds: float, seed: int = 1) -> Trace:
    b = _Builder(seed)
    b.add("cpu", _poisson(b.rng, lambda t: 1.0, 1.0, seconds), mean_s=20.0)
    b.add("gpu", _poisson(b.rng, lambda t: 1 / 60, 1 / 60, seconds), mean_s=240.0)
    return b.build("steady", "CPU 1 job/s x 20 s; GPU 1 job/min x 4 min", seconds)


def bursty(seconds: float, seed: int = 2) -> Trace:
    b = _Builder(seed)
    b.add("cpu", _poisson(b.rng, lambda t: 0.05, 0.05, seconds), mean_s=20.0)
    for k in range(int(seconds // 1800)):
        b.burst("cpu", 600 + k * 1800 + b.rng.uniform(0, 300), 400, mean_s=20.0)
    for k in range(int(seconds // 2700)):
        b.burst("gpu", 900 + k * 2700 + b.rng.uniform(0, 300), 6, mean_s=300.0, spread_s=60.0)
    return b.build("bursty", "CPU: 400-job bursts every 30 min over a trickle; GPU: 6-job bursts every 45 min",
                   seconds)


def diurnal(seconds: float, seed: int = 3) -> Trace:
    b = _Builder(seed)

    def day(peak: float) -> Rate:  # one compressed day over the trace: night, morning ramp, peak, evening
        return lambda t: peak * max(0.0, math.sin(math.pi * t / seconds)) ** 2

    b.add("cpu", _poisson(b.rng, day(2.0), 2.0, seconds), mean_s=20.0)
    b.add("gpu", _poisson(b.rng, day(1 / 40), 1 / 40, seconds), mean_s=240.0)
    return b.build("diurnal", "one compressed day: CPU 0 -> 2 jobs/s -> 0, GPU 0 -> 1.5 jobs/min -> 0", seconds)


def priority_mix(seconds: float, seed: int = 4) -> Trace:
    b = _Builder(seed)
    b.add("cpu", _poisson(b.rng, lambda t: 0.4, 0.4, seconds), mean_s=15.0, priority=10)
    for k in range(int(seconds // 3600)):
        b.burst("cpu", 300 + k * 3600, 1500, mean_s=30.0, spread_s=30.0, priority=0)
    b.add("gpu", _poisson(b.rng, lambda t: 1 / 120, 1 / 120, seconds), mean_s=180.0, priority=10)
    for k in range(int(seconds // 3600)):
        b.burst("gpu", 1200 + k * 3600, 20, mean_s=420.0, spread_s=30.0, priority=0)
    return b.build("priority mix", "interactive high-priority jobs under hourly low-priority batch floods "
                   "(CPU 1500 jobs, GPU 20 jobs > the 8 GPU nodes)", seconds)


def all_traces(hours: float) -> list[Trace]:
    seconds = hours * 3600
    return [steady(seconds), bursty(seconds), diurnal(seconds), priority_mix(seconds)]
