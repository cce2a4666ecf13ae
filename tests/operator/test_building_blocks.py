"""Pure pieces: the Deployment manifest, pool demand, pod states, conditions, metric names."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from skiplock.operator import resources
from skiplock.operator.metrics import OperatorMetrics
from skiplock.operator.observe import PodInfo, count, demand, serves
from skiplock.operator.spec import parse
from skiplock.operator.status import Problem, conditions, summary

from .support import jobqueue


def two_pools(**gpu: Any) -> Any:
    return parse({"database": {"secretRef": {"name": "db", "key": "url"}}, "queues": ["a", "b"],
                  "handlers": "app.jobs:jobs", "recovery": {"leaseSeconds": 45},
                  "pools": [{"name": "cpu", "image": "w:1", "concurrency": 8,
                             "resources": {"requests": {"cpu": "500m", "memory": 1073741824}},
                             "env": [{"name": "EXTRA", "value": "1"}]},
                            {"name": "gpu", "image": "w:1-gpu", "jobTypes": ["train"], "concurrency": 1,
                             "priorityClassName": "batch", "command": ["python", "-m", "skiplock", "worker"],
                             "gpu": gpu}]})


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_the_worker_deployment_carries_everything_the_worker_needs() -> None:
    spec = two_pools()
    body = jobqueue({}, name="shop")
    d = resources.deployment(body, spec, spec.pools[0], replicas=3)
    assert d["metadata"]["name"] == "shop-cpu" and d["spec"]["replicas"] == 3
    assert d["metadata"]["ownerReferences"] == [{"apiVersion": "skiplock.dev/v1alpha1", "kind": "JobQueue",
                                                 "name": "shop", "uid": "uid-shop", "controller": True,
                                                 "blockOwnerDeletion": True}]
    assert d["spec"]["selector"]["matchLabels"] == {"skiplock.dev/jobqueue": "shop", "skiplock.dev/pool": "cpu"}
    assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    c = container(d)
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "db", "key": "url"}}
    assert env["SKIPLOCK_WORKER_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert (env["SKIPLOCK_QUEUES"], env["SKIPLOCK_CONCURRENCY"], env["SKIPLOCK_LEASE_SECONDS"]) == ("a,b", "8", "45")
    assert (env["SKIPLOCK_HANDLERS"], env["SKIPLOCK_METRICS_PORT"], env["EXTRA"]) == ("app.jobs:jobs", "9400", "1")
    assert "SKIPLOCK_TYPES" not in env and env["SKIPLOCK_SHUTDOWN_GRACE"] == "55"
    assert "SKIPLOCK_LISTEN_DATABASE_URL" not in env
    assert c["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1073741824"}}
    assert "tolerations" not in d["spec"]["template"]["spec"]
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_a_second_secret_key_names_the_direct_url_for_listen() -> None:
    """Behind a transaction pooler (PgBouncer): DATABASE_URL from one key, the workers' LISTEN
    connection from another of the same Secret."""
    spec = parse({"database": {"secretRef": {"name": "db", "key": "pooled", "listenKey": "direct"}},
                  "queues": ["a"], "pools": [{"name": "cpu", "image": "w:1"}]})
    c = container(resources.deployment(jobqueue({}, name="shop"), spec, spec.pools[0], replicas=1))
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "db", "key": "pooled"}}
    assert env["SKIPLOCK_LISTEN_DATABASE_URL"] == {"secretKeyRef": {"name": "db", "key": "direct"}}


def test_a_gpu_pool_requests_gpus_selects_and_tolerates_gpu_nodes() -> None:
    spec = two_pools(count=2, nodeSelector={"nvidia.com/gpu.present": "true"})
    d = resources.deployment(jobqueue({}), spec, spec.pools[1], replicas=0)
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    assert c["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert c["command"] == ["python", "-m", "skiplock", "worker"]
    assert {e["name"]: e.get("value") for e in c["env"]}["SKIPLOCK_TYPES"] == "train"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["priorityClassName"] == "batch"
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    own = two_pools(resourceName="amd.com/gpu", tolerations=[{"key": "dedicated", "operator": "Exists"}])
    pod = resources.deployment(jobqueue({}), own, own.pools[1], 0)["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["containers"][0]["resources"]["limits"] == {"amd.com/gpu": "1"}


def test_the_template_hash_follows_the_template_only() -> None:
    spec = two_pools()
    a = resources.deployment(jobqueue({}), spec, spec.pools[0], replicas=1)
    b = resources.deployment(jobqueue({}), spec, spec.pools[0], replicas=7)
    assert a["metadata"]["annotations"] == b["metadata"]["annotations"]
    other = two_pools(count=3)
    c = resources.deployment(jobqueue({}), other, other.pools[1], replicas=1)
    d = resources.deployment(jobqueue({}), spec, spec.pools[1], replicas=1)
    assert c["metadata"]["annotations"] != d["metadata"]["annotations"]
    ops = resources.update_patch(c)
    assert [o["path"] for o in ops] == ["/metadata/labels", "/metadata/annotations/skiplock.dev~1template-hash",
                                        "/spec/template", "/spec/strategy"]


def test_each_pool_counts_the_jobs_it_can_run() -> None:
    spec = two_pools()
    rows = [{"queue": "a", "type": "email", "pending": 5, "running": 1, "oldest_pending_seconds": 9.0},
            {"queue": "b", "type": "train", "pending": 2, "running": 2, "oldest_pending_seconds": 30.0},
            {"queue": "b", "type": "email", "pending": 0, "running": 3, "oldest_pending_seconds": 0.0},
            {"queue": "zzz", "type": "email", "pending": 100, "running": 0, "oldest_pending_seconds": 99.0}]
    cpu, gpu = (demand(spec, p, rows) for p in spec.pools)
    assert (cpu.pending, cpu.running, cpu.oldest_pending_seconds) == (5, 4, 9.0)
    assert (gpu.pending, gpu.running, gpu.oldest_pending_seconds) == (2, 2, 30.0)
    assert not serves(spec, spec.pools[0], "a", "train")


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"skiplock.dev/jobqueue": "jq", "skiplock.dev/pool": "gpu"},
                         "annotations": status.pop("annotations", {}), **status.pop("meta", {})},
            "status": status}


def test_pod_states_are_read_from_their_conditions() -> None:
    running = PodInfo.from_body(pod("a", phase="Running", conditions=[
        {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
        annotations={resources.DELETION_COST: "3"}))
    stuck = PodInfo.from_body(pod("b", phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU"}]))
    leaving = PodInfo.from_body(pod("c", phase="Running", meta={"deletionTimestamp": "2026-01-01T00:00:00Z"}))
    assert (running.ready, running.scheduled, running.deletion_cost, running.pool) == (True, True, "3", "gpu")
    assert (stuck.unschedulable, stuck.unschedulable_message) == (True, "no GPU")
    assert count([running, stuck, leaving]) == type(count([]))(current=2, ready=1, unschedulable=1, scheduled=1,
                                                               message="no GPU")


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    first = conditions([], [], 3, now=1000.0)
    assert [(c["type"], c["status"]) for c in first] == [("Ready", "True"), ("Degraded", "False")]
    later = conditions(first, [], 4, now=2000.0)
    assert later[0]["lastTransitionTime"] == first[0]["lastTransitionTime"] and later[0]["observedGeneration"] == 4
    problems = [Problem("GPUCapacityExhausted", "pool gpu: full", blocking=False, key="gpu"),
                Problem("DatabaseUnreachable", "database: refused")]
    ready, degraded = conditions(later, problems, 4, now=3000.0)
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "DatabaseUnreachable",
                                                                    "database: refused")
    assert (degraded["reason"], degraded["message"]) == ("DatabaseUnreachable", "database: refused; pool gpu: full")
    assert ready["lastTransitionTime"] != first[0]["lastTransitionTime"]


def test_the_printer_column_summary() -> None:
    pools = [{"name": "cpu", "pending": 3, "running": 1, "desiredReplicas": 2, "readyReplicas": 1},
             {"name": "gpu", "pending": 1, "running": 0, "desiredReplicas": 1, "readyReplicas": 0}]
    assert summary(pools) == {"pending": 4, "running": 1, "replicas": "cpu=2/1 gpu=1/0"}


def test_the_metric_names_the_dashboards_use() -> None:
    m = OperatorMetrics()
    labels = ("ns", "jq", "cpu")
    for gauge in (m.desired, m.ready, m.unschedulable, m.gpu_pods, m.oldest):
        gauge.labels(*labels).set(1)
    m.depth.labels(*labels, "pending").set(1)
    m.rescued.labels("ns", "jq", "pod_gone").inc()
    m.scaling.labels(*labels, "up").inc()
    m.database_up.labels("ns", "jq").set(1)
    m.reconcile_errors.inc()
    names = {line.split("{")[0].split(" ")[0] for line in generate_latest(m.registry).decode().splitlines()
             if not line.startswith("#")}
    assert {"skiplock_operator_pool_desired_replicas", "skiplock_operator_pool_ready_replicas",
            "skiplock_operator_pool_unschedulable_pods", "skiplock_operator_pool_gpu_pods",
            "skiplock_operator_pool_depth", "skiplock_operator_pool_oldest_pending_seconds",
            "skiplock_operator_rescued_jobs_total", "skiplock_operator_scaling_events_total",
            "skiplock_operator_database_up", "skiplock_operator_reconcile_errors_total"} <= names
    m.depth.labels("ns", "jq", "gpu", "pending").set(1)
    m.forget("ns", "jq", keep_pools=frozenset({"gpu"}))
    text = generate_latest(m.registry).decode()
    assert 'pool="cpu"' not in text and 'pool="gpu"' in text and 'reason="pod_gone"' in text
    m.forget("ns", "jq")
    assert 'jobqueue="jq"' not in generate_latest(m.registry).decode()
