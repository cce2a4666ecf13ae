"""One poll of a JobQueue (``reconcile.poll``) against a real database and a fake Kubernetes API."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from prometheus_client import generate_latest

from skiplock import Queue
from skiplock.embedded import LocalPostgres
from skiplock.operator import reconcile
from skiplock.operator.resources import DELETION_COST, TEMPLATE_HASH
from skiplock.operator.runtime import Runtime

from .fakes import FakeKube
from .support import NS, Events, claim, index, jobqueue, runtime, spec


async def poll(rt: Runtime, kube: FakeKube, body: dict[str, Any]) -> dict[str, Any]:
    await reconcile.poll(rt, rt.jobqueue(NS, body["metadata"]["name"]), body, index(kube))
    return kube.statuses.get((NS, body["metadata"]["name"]), {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


async def enqueue(dsn: str, n: int, type: str = "t") -> list[int]:
    async with Queue(dsn) as q:
        return await q.enqueue_many([{"type": type} for _ in range(n)])


async def test_a_burst_creates_the_deployments_at_the_needed_size(rt: Runtime, kube: FakeKube, events: Events,
                                                                  dsn: str) -> None:
    await enqueue(dsn, 7)
    await enqueue(dsn, 3, type="train")
    body = jobqueue(spec({"name": "cpu", "image": "w:1", "concurrency": 2},
                         {"name": "gpu", "image": "w:1", "jobTypes": ["train"], "concurrency": 1, "gpu": {}}))
    status = await poll(rt, kube, body)

    cpu, gpu = kube.deploys[(NS, "jq-cpu")], kube.deploys[(NS, "jq-gpu")]
    assert (cpu["spec"]["replicas"], gpu["spec"]["replicas"]) == (4, 1)  # GPU: one pod probes for capacity
    assert events.reasons().count("DeploymentCreated") == 2 and events.reasons().count("ScaledUp") == 2
    assert (status["pending"], status["running"], status["replicas"]) == (10, 0, "cpu=4/0 gpu=1/0")
    assert status["observedGeneration"] == 1 and status["queues"] == "default"
    assert [p["pending"] for p in status["pools"]] == [7, 3]
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Degraded")["status"] == "False"
    text = generate_latest(rt.metrics.registry).decode()
    assert 'skiplock_operator_pool_desired_replicas{jobqueue="jq",namespace="apps",pool="cpu"} 4.0' in text
    assert 'skiplock_operator_scaling_events_total{direction="up",jobqueue="jq",namespace="apps",pool="gpu"} 1.0' \
        in text
    assert 'skiplock_operator_database_up{jobqueue="jq",namespace="apps"} 1.0' in text


async def test_an_unchanged_spec_writes_nothing_a_changed_one_rolls_the_template(rt: Runtime, kube: FakeKube,
                                                                                 events: Events) -> None:
    body = jobqueue(spec())
    await poll(rt, kube, body)
    writes = [c for c in kube.calls if c[0] in ("create-deployment", "patch-deployment")]
    await poll(rt, kube, body)
    assert [c for c in kube.calls if c[0] in ("create-deployment", "patch-deployment")] == writes

    kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] = 0
    before = kube.deploys[(NS, "jq-cpu")]["metadata"]["annotations"][TEMPLATE_HASH]
    changed = jobqueue(spec({"name": "cpu", "image": "w:2", "concurrency": 2}), generation=2)
    status = await poll(rt, kube, changed)
    deployment = kube.deploys[(NS, "jq-cpu")]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "w:2"
    assert deployment["metadata"]["annotations"][TEMPLATE_HASH] != before
    assert deployment["spec"]["replicas"] == 0
    assert "DeploymentUpdated" in events.reasons() and status["observedGeneration"] == 2


async def test_a_pool_that_leaves_the_spec_loses_its_deployment(rt: Runtime, kube: FakeKube, events: Events) -> None:
    two = spec({"name": "a", "image": "w", "jobTypes": ["x"]}, {"name": "b", "image": "w"})
    await poll(rt, kube, jobqueue(two))
    assert set(kube.deploys) == {(NS, "jq-a"), (NS, "jq-b")}
    status = await poll(rt, kube, jobqueue(spec({"name": "b", "image": "w"}), generation=2))
    assert set(kube.deploys) == {(NS, "jq-b")}
    assert "DeploymentDeleted" in events.reasons()
    assert [p["name"] for p in status["pools"]] == ["b"]
    assert 'pool="a"' not in generate_latest(rt.metrics.registry).decode()


async def test_scale_down_marks_busy_pods_expensive_before_shrinking(rt: Runtime, kube: FakeKube, dsn: str) -> None:
    body = jobqueue(spec())
    await poll(rt, kube, body)
    kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] = 4
    for i in range(4):
        kube.add_pod(NS, f"jq-cpu-5d8f7c9b4-p{i}xyz", "jq", "cpu")
    await enqueue(dsn, 4)
    assert len(claim(dsn, "jq-cpu-5d8f7c9b4-p0xyz", 2)) == 2
    assert len(claim(dsn, "jq-cpu-5d8f7c9b4-p2xyz", 2)) == 2
    rt.jobqueues[(NS, "jq")].policies.clear()  # as after a window without a higher need
    kube.calls.clear()

    status = await poll(rt, kube, body)
    costs = {name: pod["metadata"]["annotations"][DELETION_COST] for (_, name), pod in kube.pods.items()}
    assert costs == {"jq-cpu-5d8f7c9b4-p0xyz": "2", "jq-cpu-5d8f7c9b4-p1xyz": "0",
                     "jq-cpu-5d8f7c9b4-p2xyz": "2", "jq-cpu-5d8f7c9b4-p3xyz": "0"}
    kinds = [c[0] for c in kube.calls]
    assert "annotate-pod" in kinds and "patch-deployment" not in kinds  # costs first, then a poll
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 4
    kube.calls.clear()
    await poll(rt, kube, body)  # the watch shows the costs: the ReplicaSet controller has them too
    assert [c[0] for c in kube.calls].count("annotate-pod") == 0
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 3  # half the gap, then the rest
    await poll(rt, kube, body)
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 2
    assert status["pools"][0]["running"] == 4


async def test_a_busy_pods_changing_count_does_not_hold_a_scale_down_back(rt: Runtime, kube: FakeKube,
                                                                         dsn: str) -> None:
    body = jobqueue(spec())
    await poll(rt, kube, body)
    kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] = 3
    for i in range(3):
        kube.add_pod(NS, f"jq-cpu-5d8f7c9b4-p{i}xyz", "jq", "cpu")
    await enqueue(dsn, 2)
    assert len(claim(dsn, "jq-cpu-5d8f7c9b4-p0xyz", 1)) == 1
    rt.jobqueues[(NS, "jq")].policies.clear()
    await poll(rt, kube, body)  # p0 turned busy: its cost is set, the scale-down waits a poll
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 3
    assert len(claim(dsn, "jq-cpu-5d8f7c9b4-p0xyz", 1)) == 1  # busy still, now with 2 jobs
    await poll(rt, kube, body)
    assert kube.pods[(NS, "jq-cpu-5d8f7c9b4-p0xyz")]["metadata"]["annotations"][DELETION_COST] == "2"
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 2


async def test_unschedulable_gpu_pods_hold_the_pool_and_degrade_the_queue(rt: Runtime, kube: FakeKube,
                                                                          events: Events, dsn: str) -> None:
    body = jobqueue(spec({"name": "gpu", "image": "w", "concurrency": 1, "gpu": {}}))
    await enqueue(dsn, 2)
    await poll(rt, kube, body)
    assert kube.deploys[(NS, "jq-gpu")]["spec"]["replicas"] == 1  # probing: one pod until it is placed
    kube.add_pod(NS, "jq-gpu-5d8f7c9b4-aaaaa", "jq", "gpu")
    await poll(rt, kube, body)
    assert kube.deploys[(NS, "jq-gpu")]["spec"]["replicas"] == 2
    kube.add_pod(NS, "jq-gpu-5d8f7c9b4-bbbbb", "jq", "gpu",
                 unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    await enqueue(dsn, 6)
    status = await poll(rt, kube, body)
    assert kube.deploys[(NS, "jq-gpu")]["spec"]["replicas"] == 2
    pool = status["pools"][0]
    assert (pool["held"], pool["unschedulableReplicas"], pool["gpuPods"]) == (True, 1, 1)
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "GPUCapacityExhausted")
    assert "Insufficient nvidia.com/gpu" in degraded["message"]
    assert condition(status, "Ready")["status"] == "True"  # still serving
    assert events.reasons().count("GPUCapacityExhausted") == 1

    del kube.pods[(NS, "jq-gpu-5d8f7c9b4-bbbbb")]  # capacity appeared: it was scheduled
    kube.add_pod(NS, "jq-gpu-5d8f7c9b4-bbbbb", "jq", "gpu")
    status = await poll(rt, kube, body)
    assert kube.deploys[(NS, "jq-gpu")]["spec"]["replicas"] == 3  # both placed: one more probes
    assert status["pools"][0]["held"] is True  # 8 jobs, but no more than one pod waits for a GPU
    assert condition(status, "Degraded")["status"] == "False"
    assert "GPUCapacityAvailable" in events.reasons()


async def test_a_database_outage_degrades_holds_and_recovers(kube: FakeKube, events: Events,
                                                             own_server: LocalPostgres) -> None:
    dsn = own_server.uri.replace("postgres@", "postgres:s3cret-pw@")
    kube.add_secret(NS, "db", "DATABASE_URL", dsn)
    rt = runtime(kube, events, query_timeout=1.0)
    body = jobqueue(spec())
    try:
        await enqueue(own_server.uri, 3)
        await poll(rt, kube, body)
        assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 2
        own_server.stop()
        status = await poll(rt, kube, body)
        assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 2  # held, not zeroed
        ready, degraded = condition(status, "Ready"), condition(status, "Degraded")
        assert (ready["status"], ready["reason"]) == ("False", "DatabaseUnreachable")
        assert degraded["reason"] == "DatabaseUnreachable" and "Connection refused" in degraded["message"]
        assert 'database_up{jobqueue="jq",namespace="apps"} 0.0' in generate_latest(rt.metrics.registry).decode()
        own_server.start()
        # The pool reconnects in the background (with backoff): a poll or two may still miss it.
        deadline = time.monotonic() + 30
        while condition(status := await poll(rt, kube, body), "Ready")["status"] != "True":
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.5)
        assert events.reasons()[-1] == "DatabaseReachable"
        everything = json.dumps([list(kube.statuses.values()), list(events)])
        assert "s3cret-pw" not in everything and dsn not in everything
    finally:
        await rt.close()


async def test_a_missing_secret_or_a_bad_dsn_is_reported_without_its_content(rt: Runtime, kube: FakeKube,
                                                                             events: Events) -> None:
    body = jobqueue(spec(database={"secretRef": {"name": "other", "key": "url"}}))
    status = await poll(rt, kube, body)
    assert condition(status, "Ready")["reason"] == "SecretNotFound"
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 0  # created at minReplicas anyway
    kube.add_secret(NS, "other", "url", "not a dsn at all password=hunter2 =")
    rt.jobqueues[(NS, "jq")].dsn_read_at = 0.0
    status = await poll(rt, kube, body)
    assert condition(status, "Ready")["reason"] == "InvalidDsn"
    assert "hunter2" not in json.dumps([list(kube.statuses.values()), list(events)])


async def test_an_unreadable_spec_or_a_foreign_deployment_is_a_condition(rt: Runtime, kube: FakeKube,
                                                                        events: Events) -> None:
    status = await poll(rt, kube, jobqueue({"queues": ["q"]}))
    assert condition(status, "Ready")["reason"] == "InvalidSpec"
    assert "observedGeneration" not in status and not kube.deploys

    kube.deploys[(NS, "jq-cpu")] = {"metadata": {"name": "jq-cpu", "labels": {}}, "spec": {"replicas": 1}}
    status = await poll(rt, kube, jobqueue(spec()))
    assert condition(status, "Ready")["reason"] == "DeploymentConflict"
    assert kube.deploys[(NS, "jq-cpu")] == {"metadata": {"name": "jq-cpu", "labels": {}},
                                                 "spec": {"replicas": 1}}


async def test_an_api_failure_is_a_condition_not_a_crash(rt: Runtime, kube: FakeKube) -> None:
    await poll(rt, kube, jobqueue(spec()))
    kube.down = True
    await poll(rt, kube, jobqueue(spec()))
    kube.down = False
    assert rt.jobqueues[(NS, "jq")].problems == {"ReconcileError": "ReconcileError"}
    assert 'skiplock_operator_reconcile_errors_total 1.0' in generate_latest(rt.metrics.registry).decode()


async def test_a_restarted_operator_resumes_from_the_status(kube: FakeKube, events: Events, dsn: str) -> None:
    body = jobqueue(spec())
    first = runtime(kube, events)
    try:
        ids = await enqueue(dsn, 8)
        await poll(first, kube, body)
    finally:
        await first.close()
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 4
    body["status"] = kube.statuses[(NS, "jq")]
    body["spec"]["scaling"]["scaleDownStabilizationSeconds"] = 30
    second = runtime(kube, Events())
    try:
        async with Queue(dsn) as q:  # the work is gone, but a fresh operator waits a full window
            for job_id in ids:
                await q.cancel(job_id)
        await poll(second, kube, body)
        assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 4
        assert second.jobqueues[(NS, "jq")].written == {**body["status"], **kube.statuses[(NS, "jq")]}
    finally:
        await second.close()
