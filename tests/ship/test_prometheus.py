"""Every PromQL expression of every dashboard panel and every alert rule, against a real Prometheus
scraping real workers and a real operator while jobs run.

The stack, all on loopback: a Kubernetes control plane (kwok nodes cpu-1, cpu-2 and one-GPU nodes
gpu-1, gpu-2), PostgreSQL, ``skiplock operator`` watching namespace ``obs``, four ``skiplock
worker`` processes, and Prometheus (Debian's package) scraping them every second with the chart's
alert rules loaded (thresholds lowered so that they can fire within the test). Worker pods are kwok
fakes; the local workers stand in for them, labelled with their JobQueue and pool as the chart's
PodMonitor labels real ones.

The scenario makes every series the dashboards and alerts read exist: jobs complete, fail, retry
and die; one is cancelled; a frozen worker loses its lease (the others rescue its job); a worker
pod is deleted under a running job (the operator rescues it); database connections are cut; a
queue nobody serves grows old; a GPU pool cannot be scheduled; a JobQueue's database is
unreachable; finally the operator stops. A query that errors or returns no series fails the test.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from skiplock.embedded import free_port
from skiplock.sync import enqueue
from tests.conftest import drop_database, fresh_database
from tests.fixtures.jobs_fixture import ensure_table
from tests.helpers import cli
from tests.k8s.cluster import Cluster

from .stack import Operator, Prometheus, Worker, http_get, wait_until
from .tools import CHART, alert_rules, need

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(900)]

NS = "obs"
CRD = CHART / "files" / "crds" / "jobqueues.skiplock.dev.yaml"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
NODES = {"cpu-1": 0, "cpu-2": 0, "gpu-1": 1, "gpu-2": 1}
IMAGE = "example.invalid/skiplock-worker:0.1.0"
# Alert thresholds low enough to fire within the test; `for` is irrelevant to the expressions.
FAST_ALERTS = {"metrics": {"prometheusRule": {"alerts": {
    "queueStuck": {"oldestPendingSeconds": 5, "window": "20s", "for": "1s"},
    "deadLetterGrowing": {"window": "2m", "for": "1s"},
    "noWorkers": {"for": "1s"},
    "podsUnschedulable": {"for": "1s"},
    "operatorDown": {"for": "1s"},
    "databaseUnreachable": {"for": "1s"},
}}}}
# What Grafana substitutes; the dashboards' own variables all select "All" (regex .*).
BUILTINS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}


def jobqueue(name: str, queues: list[str], *pools: dict[str, Any], secret: str = "db") -> dict[str, Any]:
    return {"apiVersion": "skiplock.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": name, "namespace": NS},
            "spec": {"database": {"secretRef": {"name": secret}}, "queues": queues,
                     "scaling": {"pollIntervalSeconds": 1, "scaleDownStabilizationSeconds": 5},
                     # Long: the workers' own maintenance rescues expired leases, the operator the
                     # jobs of deleted pods (on the pod's DELETED event), so each source shows.
                     "recovery": {"intervalSeconds": 3600, "leaseSeconds": 30},
                     "pools": list(pools)}}


JOBQUEUES = [
    jobqueue("shop", ["emails", "reports", "archive", "slow", "long"],
             {"name": "cpu", "image": IMAGE, "concurrency": 4, "minReplicas": 1, "maxReplicas": 3}),
    jobqueue("vision", ["vision"], {"name": "gpu", "image": IMAGE, "jobTypes": ["embed"], "concurrency": 1,
                                    "maxReplicas": 2, "gpu": {"count": 1}}),
    # Two GPUs a pod on one-GPU nodes: never schedulable, so no worker while jobs pend.
    jobqueue("ml", ["ml"], {"name": "gpu", "image": IMAGE, "jobTypes": ["train"], "concurrency": 1,
                            "maxReplicas": 2, "gpu": {"count": 2}}),
    jobqueue("broken", ["default"], {"name": "cpu", "image": IMAGE, "maxReplicas": 1}, secret="unreachable-db"),
]


# -- the stack ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.environ.get("SKIPLOCK_SKIP_K8S") == "1":
        pytest.skip("SKIPLOCK_SKIP_K8S=1")
    need("prometheus")
    with Cluster.start(tmp_path_factory.mktemp("k8s-obs")) as c:
        for name, gpus in NODES.items():
            c.add_node(name, gpus=gpus)
        c.wait_nodes_ready()
        c.kubectl("apply", "-f", str(CRD))
        c.wait_established("jobqueues.skiplock.dev")
        yield c


@pytest.fixture(scope="module")
def dsn(pg_admin_dsn: str, template_dsn: str) -> Iterator[str]:
    url = fresh_database(pg_admin_dsn)
    yield url
    drop_database(pg_admin_dsn, url)


def _sum_samples(text: str, name: str) -> float:
    """Sum of the samples of ``name`` (and its suffixed series) in a /metrics page."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


@dataclass
class Stack:
    cluster: Cluster
    dsn: str
    workdir: Path
    operator: Operator
    workers: dict[str, Worker]
    prometheus: Prometheus
    stop_traffic: threading.Event = field(default_factory=threading.Event)
    traffic: threading.Thread | None = None

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def enqueue(self, type: str, queue: str, payload: dict[str, Any] | None = None, **options: Any) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return int(enqueue(conn, type, payload or {}, queue=queue, **options))

    def job(self, job_id: int) -> tuple[str, str | None, int]:
        rows = self.sql("SELECT state::text, worker_id, attempts FROM skiplock.jobs WHERE id = %s UNION ALL "
                        "SELECT state::text, worker_id, attempts FROM skiplock.jobs_history WHERE id = %s",
                        job_id, job_id)
        assert rows, f"job {job_id} not found"
        state, worker, attempts = rows[0]
        return str(state), worker, int(attempts)

    def operator_metric(self, name: str) -> float:
        """Sum of a metric's samples on the operator's /metrics."""
        return _sum_samples(http_get(f"http://127.0.0.1:{self.operator.metrics_port}/metrics")[1], name)

    def worker_metric(self, worker: str, name: str) -> float:
        """Sum of a metric's samples on one worker's /metrics."""
        return _sum_samples(http_get(f"http://127.0.0.1:{self.workers[worker].metrics_port}/metrics")[1], name)

    def run_traffic(self) -> None:
        """Jobs of every kind, until stopped: quick ones, slower ones, failing ones, by priority."""
        rnd = random.Random(5)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            n = 0
            while not self.stop_traffic.wait(0.1):
                n += 1
                enqueue(conn, "record", {}, queue="emails", priority=rnd.choice([0, 5]))
                if n % 3 == 0:
                    enqueue(conn, "sleep", {"seconds": rnd.uniform(0.1, 1.5)}, queue="reports")
                if n % 15 == 0:
                    enqueue(conn, "fail", {}, queue="emails", max_attempts=2)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_traffic.set()
        if self.traffic is not None:
            self.traffic.join(10)
        for p in [self.prometheus, *self.workers.values(), self.operator]:
            p.stop()


def shop_pod(cluster: Cluster) -> str:
    """The name of a running kwok pod of shop's cpu pool."""
    def find() -> str | None:
        pods = cluster.core.list_namespaced_pod(NS, label_selector="skiplock.dev/jobqueue=shop").items
        running = [p.metadata.name for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        return running[0] if running else None

    return wait_until(find, 60, "a running pod of shop's cpu pool")


@pytest.fixture(scope="module")
def stack(cluster: Cluster, dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("obs")
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("-n", NS, "create", "secret", "generic", "db", f"--from-literal=DATABASE_URL={dsn}")
    closed = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=1"
    cluster.kubectl("-n", NS, "create", "secret", "generic", "unreachable-db", f"--from-literal=DATABASE_URL={closed}")
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(q) for q in JOBQUEUES))

    ensure_table(dsn)  # the test handlers record each execution there
    operator = Operator(cluster.kubeconfig, workdir / "operator.log", "--namespace", NS, "--standalone")
    operator.start()
    operator.wait_healthy()
    pod = shop_pod(cluster)
    workers = {
        "w1": Worker("w1", dsn, workdir / "w1.log", "--queue", "emails", "--queue", "reports", "--concurrency", "4"),
        "w2": Worker("w2", dsn, workdir / "w2.log", "--queue", "emails", "--queue", "reports", "--concurrency", "4"),
        # A short lease, so that freezing this worker soon loses its job to the others' rescue.
        "slow": Worker("slow", dsn, workdir / "slow.log", "--queue", "slow", "--lease", "2"),
        # Named like a pod of shop's cpu pool, as a real worker pod is (SKIPLOCK_WORKER_ID).
        "pod": Worker("pod", dsn, workdir / "pod.log", "--queue", "long", "--worker-id", pod),
    }
    for w in workers.values():
        w.start()
    for w in workers.values():
        w.wait_ready()

    rules = workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump(alert_rules(FAST_ALERTS), sort_keys=False))
    worker_labels = {"namespace": NS, "jobqueue": "shop", "pool": "cpu"}  # what the PodMonitor adds
    scrape: list[dict[str, Any]] = [
        {"job_name": "skiplock-operator", "honor_labels": True,
         "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]},
        {"job_name": "skiplock-worker",
         "static_configs": [{"targets": [f"127.0.0.1:{w.metrics_port}"], "labels": {**worker_labels, "pod": name}}
                            for name, w in workers.items()]},
    ]
    prometheus = Prometheus(need("prometheus"), workdir, scrape, [rules])
    prometheus.start()
    with Stack(cluster, dsn, workdir, operator, workers, prometheus) as s:
        prometheus.wait_ready()
        s.traffic = threading.Thread(target=s.run_traffic, name="traffic", daemon=True)
        s.traffic.start()
        for n in range(6):  # never served: they only grow older (and show up by priority)
            s.enqueue("record", "archive", priority=10 * (n % 2))
        for _ in range(3):  # due in an hour: scheduled
            s.enqueue("record", "reports", delay=3600)
        for _ in range(4):
            s.enqueue("embed", "vision")
            s.enqueue("train", "ml")
        try:
            yield s
        except BaseException:
            raise
        finally:
            for p in [operator, prometheus, *workers.values()]:
                print(p.tail(15))


# -- the scenario's incidents ----------------------------------------------------------------------------

def cancel_a_running_job(s: Stack) -> None:
    job = s.enqueue("sleep", "reports", {"seconds": 30})
    wait_until(lambda: s.job(job)[0] == "running", 30, f"job {job} running")
    res = cli("jobs", "cancel", str(job), dsn=s.dsn)
    assert res.returncode == 0, res.stderr
    wait_until(lambda: s.job(job)[0] == "cancelled", 30, f"job {job} cancelled", state=lambda: s.job(job))


def freeze_a_worker_until_its_lease_is_rescued(s: Stack) -> None:
    job = s.enqueue("sleep", "slow", {"seconds": 6})
    wait_until(lambda: s.job(job)[0] == "running", 30, f"job {job} running on the slow worker")
    s.workers["slow"].signal(signal.SIGSTOP)
    try:
        wait_until(lambda: s.job(job)[0] != "running" or s.job(job)[2] > 1, 30, f"job {job} rescued")
    finally:
        s.workers["slow"].signal(signal.SIGCONT)
    wait_until(lambda: s.worker_metric("slow", "skiplock_jobs_lost_total") > 0, 30, "the slow worker's lost job")
    # Whoever held the maintenance lock first rescued it: another worker, the operator (same statement),
    # or the slow worker itself once resumed.
    wait_until(lambda: sum(s.worker_metric(w, "skiplock_jobs_rescued_total") for w in s.workers)
               + s.operator_metric("skiplock_operator_rescued_jobs_total") > 0, 10, "a rescue")


def delete_a_worker_pod_under_its_job(s: Stack) -> None:
    job = s.enqueue("sleep", "long", {"seconds": 20})
    wait_until(lambda: s.job(job)[0] == "running", 30, f"job {job} running on the pod's worker")
    pod = s.job(job)[1]
    s.cluster.kubectl("-n", NS, "delete", "pod", str(pod), "--wait=false")
    wait_until(lambda: 'reason="pod_gone"' in s.operator.metrics(), 60, "the operator's pod_gone rescue")
    wait_until(lambda: s.worker_metric("pod", "skiplock_jobs_lost_total") > 0, 30, "the pod worker's lost job")


def cut_database_connections(s: Stack) -> None:
    s.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
          "WHERE datname = current_database() AND application_name IN ('skiplock-worker', 'skiplock-listener')")
    wait_until(lambda: sum(s.worker_metric(w, "skiplock_db_errors_total") for w in s.workers) > 0, 30,
               "database errors counted by a worker")


# -- the queries -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    source: str
    expr: str


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def substitute(expr: str, variables: set[str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if f"${name}" in BUILTINS:
            return BUILTINS[f"${name}"]
        assert name in variables, f"unknown dashboard variable ${name} in {expr}"
        return ".*"

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def dashboard_queries() -> list[Query]:
    """Every panel target and every query variable (label_values) of every dashboard."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        variables = {v["name"] for v in board["templating"]["list"]}
        for v in board["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
            assert m, v["query"]
            found.append(Query(f"{path.name} variable ${v['name']}", substitute(m.group(1), variables)))
        for panel in panels(board):
            for target in panel.get("targets", []):
                found.append(Query(f"{path.name} panel {panel['title']!r} {target['refId']}",
                                   substitute(target["expr"], variables)))
    return found


def rule_queries() -> dict[str, Query]:
    return {r["alert"]: Query(f"alert {r['alert']}", r["expr"])
            for g in alert_rules(FAST_ALERTS)["groups"] for r in g["rules"]}


def evaluate(prometheus: Prometheus, queries: list[Query]) -> tuple[list[str], list[str]]:
    """(failures, NaN-only results) of running each query now."""
    failures, nans = [], []
    for q in queries:
        try:
            result = prometheus.query(q.expr)
        except AssertionError as exc:
            failures.append(f"{q.source}: error {exc}")
            continue
        if not result:
            failures.append(f"{q.source}: no series\n  {q.expr}")
        elif all(math.isnan(float(r["value"][1])) for r in result):
            nans.append(f"{q.source}: only NaN\n  {q.expr}")
    return failures, nans


def firing(prometheus: Prometheus) -> set[str]:
    alerts = prometheus.api("alerts")["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


# -- the test ----------------------------------------------------------------------------------------------

def test_every_dashboard_and_alert_query_returns_data(stack: Stack) -> None:
    p = stack.prometheus
    cancel_a_running_job(stack)
    freeze_a_worker_until_its_lease_is_rescued(stack)
    delete_a_worker_pod_under_its_job(stack)
    cut_database_connections(stack)
    # Dead jobs, scaling, unschedulable GPU pods, the unreachable database: all in Prometheus by now?
    for expr, what in [
        ("sum(skiplock_jobs_dead_total)", "a dead job"),
        ('sum(skiplock_operator_scaling_events_total{direction="up"})', "a scale-up"),
        ('skiplock_operator_pool_unschedulable_pods{jobqueue="ml"} > 0', "ml's unschedulable GPU pod"),
        ('skiplock_operator_pool_gpu_pods{jobqueue="vision"} > 0', "vision's GPU pods"),
        ('skiplock_operator_database_up{jobqueue="broken"} == 0', "the unreachable database"),
        ("sum(skiplock_operator_rescued_jobs_total)", "the operator's rescue"),
        ("sum(skiplock_jobs_lost_total) > 1", "both lost jobs"),
        ("sum(skiplock_db_errors_total)", "database errors"),
        ("sum(skiplock_jobs_cancelled_total)", "the cancelled job"),
    ]:
        wait_until(functools.partial(p.query, expr), 60, f"{what} in Prometheus ({expr})")
    time.sleep(5)  # a few more scrapes of the steady traffic for the rate windows

    queries = dashboard_queries()
    assert len(queries) > 50
    failures, nans = evaluate(p, queries)
    assert not failures, f"{len(failures)} of {len(queries)} dashboard queries failed:\n" + "\n".join(failures)
    assert not nans, "dashboard queries with only NaN:\n" + "\n".join(nans)

    rules = rule_queries()
    running = [q for name, q in rules.items() if name != "SkiplockOperatorDown"]
    failures, _ = evaluate(p, running)
    assert not failures, "alert expressions without data:\n" + "\n".join(failures)
    expected = set(rules) - {"SkiplockOperatorDown"}
    wait_until(lambda: expected <= firing(p), 30, f"alerts {sorted(expected)} firing")

    # Last incident: the operator goes away.
    stack.operator.stop()
    wait_until(lambda: p.targets_up("skiplock-operator") == [False], 30, "the operator's target down")
    failures, _ = evaluate(p, [rules["SkiplockOperatorDown"]])
    assert not failures, failures
    wait_until(lambda: "SkiplockOperatorDown" in firing(p), 30, "SkiplockOperatorDown firing")
