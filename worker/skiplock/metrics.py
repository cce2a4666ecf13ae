"""Prometheus metrics of a worker process and the HTTP server for /metrics, /healthz, /readyz."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as Counter_
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import accumulate
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LABELS = ("queue", "type")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _Series:
    """One label set of a ``FastHistogram``."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class FastHistogram:
    """A labelled histogram exported exactly like prometheus_client's (``_bucket{le}``, ``_sum``,
    ``_count``), whose ``observe`` is a bisect and two additions: the worker observes two per job,
    and prometheus_client's lock-and-loop observe was a tenth of a worker's CPU per job. Observed
    from the event loop's thread only; collected (a copy) from the metrics server's."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.bounds = sorted(float(b) for b in buckets if b != float("inf"))
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str) -> _Series:
        with self._lock:
            return self._series.setdefault(tuple(values), _Series(self.bounds))

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = [(key, list(series.counts), series.total) for key, series in self._series.items()]
        for key, counts, total in snapshot:
            cumulative = list(accumulate(counts))
            les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call,unused-ignore]
            family.add_metric(list(key), list(zip(les, cumulative, strict=True)), total)
        yield family


@dataclass(frozen=True)
class JobMetrics:
    """The children of the per-(queue, type) metrics, looked up once per pair, not once per job."""

    enqueued: Any
    started: Any
    completed: Any
    failed: Any
    retried: Any
    dead: Any
    cancelled: Any
    lost: Any
    duration: Any
    wait: Any


class WorkerMetrics:
    """Every metric a worker exports, on its own registry (several workers can share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"skiplock_jobs_{name}", doc, LABELS, registry=r)

        self.enqueued = counter("enqueued", "Jobs enqueued by this process.")
        self.started = counter("started", "Job executions started.")
        self.completed = counter("completed", "Jobs completed.")
        self.failed = counter("failed", "Job executions that failed (retried or dead).")
        self.retried = counter("retried", "Failed jobs scheduled for another attempt.")
        self.dead = counter("dead", "Jobs moved to the dead-letter list.")
        self.cancelled = counter("cancelled", "Running jobs that ended cancelled.")
        self.lost = counter("lost", "Executions whose lease was lost before they finished.")
        self.duration = FastHistogram("skiplock_job_duration_seconds", "Handler run time.", LABELS,
                                      DURATION_BUCKETS, r)
        self.wait = FastHistogram("skiplock_job_queue_wait_seconds", "Time from run_at to start.", LABELS,
                                  DURATION_BUCKETS, r)
        self.in_flight = Gauge("skiplock_worker_in_flight", "Jobs running in this worker.", registry=r)
        self.concurrency = Gauge("skiplock_worker_concurrency", "Configured concurrency.", registry=r)
        self.depth = Gauge("skiplock_queue_depth", "Jobs by queue and effective state.",
                           ("queue", "state"), registry=r)
        self.by_priority = Gauge("skiplock_queue_pending_by_priority",
                                 "Runnable jobs by queue and priority bucket (<0, 0, 1-9, 10-99, >=100).",
                                 ("queue", "priority"), registry=r)
        self.oldest = Gauge("skiplock_queue_oldest_pending_seconds", "Age of the oldest runnable job.",
                            ("queue",), registry=r)
        self.rescued = Counter("skiplock_jobs_rescued", "Jobs rescued from expired leases or gone workers.",
                               ("queue",), registry=r)
        self.expired = Counter("skiplock_jobs_expired", "Waiting jobs ended cancelled past their ttl.",
                               ("queue",), registry=r)
        self.empty_claims = Counter("skiplock_worker_empty_claims", "Claims that found no runnable job.",
                                    registry=r)
        self.db_errors = Counter("skiplock_db_errors", "Database errors by operation.", ("operation",),
                                 registry=r)
        self._children: dict[tuple[str, str], JobMetrics] = {}

    def of(self, queue: str, type: str) -> JobMetrics:
        """The metrics of jobs of ``type`` in ``queue``."""
        found = self._children.get((queue, type))
        if found is None:
            names = [f.name for f in fields(JobMetrics)]
            found = JobMetrics(**{n: getattr(self, n).labels(queue, type) for n in names})
            self._children[queue, type] = found
        return found

    def declare(self, queues: list[str], types: list[str]) -> None:
        """Export every series of these queues and types at zero from the start, so a rate over
        them reads 0, not "no data", until the first job (and a counter's first increment counts)."""
        for queue in queues:
            self.rescued.labels(queue)
            self.expired.labels(queue)
            for type in types:
                self.of(queue, type)

    def count_enqueued(self, jobs: list[tuple[str, str]]) -> None:
        """Count enqueued jobs, given as (queue, type) pairs."""
        for (queue, type), n in Counter_(jobs).items():
            self.of(queue, type).enqueued.inc(n)


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    live: Callable[[], bool]
    ready: Callable[[], bool]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/livez"):
            ok = self.live()
            self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
        elif path == "/readyz":
            ok = self.ready()
            self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: probes hit this often
        return


def serve(port: int, registry: CollectorRegistry, live: Callable[[], bool], ready: Callable[[], bool],
          host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on a daemon thread; returns the server (``.shutdown()``)."""
    handler = type("Handler", (_Handler,), {"registry": registry, "live": staticmethod(live),
                                            "ready": staticmethod(ready)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="skiplock-metrics", daemon=True).start()
    return server
