"""How big each benchmark runs: ``full`` (the default), ``quick`` (CI proves it works), ``tiny``
(the test suite). One place for every size, so a result file says exactly what it measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    # Worker settings shared by every peer: processes x concurrency, and the claim batch where the
    # peer has one (PgQueuer's batch_size must be at most half its max_concurrent_tasks).
    processes: int = 2
    concurrency: int = 100
    batch: int = 50
    rounds: int = 2  # continuous and drain run this many interleaved rounds; each peer's best counts
    # continuous: producers and consumers together
    warmup_s: float = 5.0
    window_s: float = 20.0
    producers: int = 4
    producer_batch: int = 100
    backlog: int = 5000
    # drain: pre-inserted jobs, time to empty (a peer slower than drain_cap_s is timed on part)
    drain_jobs: int = 100_000
    drain_cap_s: float = 90.0
    # latency with idle workers
    singles: int = 200
    bursts: int = 20
    burst_size: int = 100
    # SQL floor (pgbench): batch sizes per commit; the client counts tried at each (the floor is the best)
    floor_batches: tuple[int, ...] = (1, 50)
    floor_clients: tuple[int, ...] = (1, 2, 4, 8)
    # scale of history: pending backlogs, and completed jobs pushed through before the bloat case
    scale_pending: tuple[int, ...] = (10_000, 1_000_000, 10_000_000)
    scale_bloat: int = 1_000_000
    scale_seconds: float = 15.0
    scale_clients: int = 2
    # connections and heartbeats with long-running jobs
    lease_jobs: int = 300
    lease_window_s: float = 45.0
    # limits: a binding concurrency limit on jobs that sleep, a binding rate limit on no-op jobs
    # (the throughput with limits on vs off drains drain_jobs, as the drain benchmark does)
    limit_concurrency: int = 5
    limit_sleep_s: float = 0.2
    limit_concurrency_jobs: int = 250
    limit_rate: float = 50.0
    limit_rate_jobs: int = 500
    # autoscaling simulator: simulated hours per trace
    sim_hours: float = 6.0
    # fleet: worker processes of small concurrency on one server, direct and through PgBouncer
    fleet_sizes: tuple[int, ...] = (20, 100, 200)
    fleet_concurrency: int = 2
    fleet_pool: int = 20  # PgBouncer's server connections
    fleet_idle_s: float = 30.0
    fleet_singles: int = 40
    fleet_drain_per_worker: int = 100
    peers: tuple[str, ...] = field(default=("skiplock", "pgqueuer", "procrastinate"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Profile("full")
QUICK = Profile(
    "quick", rounds=1, warmup_s=2.0, window_s=8.0, drain_jobs=20_000, drain_cap_s=30.0, singles=40, bursts=5,
    burst_size=50, scale_pending=(10_000, 100_000, 1_000_000), scale_bloat=100_000, scale_seconds=4.0,
    lease_window_s=15.0, limit_concurrency_jobs=100, limit_rate_jobs=150, sim_hours=2.0,
    fleet_sizes=(5, 20), fleet_idle_s=10.0, fleet_singles=20, fleet_drain_per_worker=50)
TINY = Profile(
    "tiny", rounds=1, processes=1, concurrency=10, batch=5, warmup_s=0.5, window_s=1.5, producers=1, producer_batch=20,
    backlog=200, drain_jobs=1000, drain_cap_s=15.0, singles=4, bursts=2, burst_size=5,
    floor_batches=(1, 5), floor_clients=(1, 2), scale_clients=1, scale_pending=(1000, 5000), scale_bloat=2000,
    scale_seconds=1.0, lease_jobs=10, lease_window_s=2.0, limit_sleep_s=0.1, limit_concurrency_jobs=40,
    limit_rate=20.0, limit_rate_jobs=50, sim_hours=0.5,
    fleet_sizes=(2, 4), fleet_pool=2, fleet_idle_s=2.0, fleet_singles=4, fleet_drain_per_worker=20)

PROFILES = {p.name: p for p in (FULL, QUICK, TINY)}
