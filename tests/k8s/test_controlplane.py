"""Smoke tests of the local control plane: kwok nodes, scheduling, GPU capacity, apiserver restart."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.k8s.cluster import GPU, Cluster, wait_for


@pytest.fixture
def namespace(k8s_cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) afterwards."""
    name = f"smoke-{secrets.token_hex(3)}"
    k8s_cluster.kubectl("create", "namespace", name)
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false")


def deploy(cluster: Cluster, namespace: str, name: str, replicas: int, gpus: int = 0) -> None:
    """Apply a Deployment (kwok fakes its pods, so the image is never pulled)."""
    container: dict[str, Any] = {"name": "main", "image": "example.invalid/skiplock-smoke:1"}
    pod_spec: dict[str, Any] = {"containers": [container]}
    if gpus:
        container["resources"] = {"limits": {GPU: str(gpus)}}
        pod_spec["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    labels = {"app": name}
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def pods_by_phase(cluster: Cluster, namespace: str) -> dict[str, list[Any]]:
    """The namespace's pods grouped by phase."""
    phases: dict[str, list[Any]] = {}
    for pod in cluster.core.list_namespaced_pod(namespace).items:
        phases.setdefault(pod.status.phase, []).append(pod)
    return phases


def unschedulable(pod: Any) -> str | None:
    """The scheduler's message if ``pod`` is marked Unschedulable."""
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
            return str(c.message)
    return None


def test_nodes_ready(k8s_cluster: Cluster) -> None:
    assert sorted(k8s_cluster.wait_nodes_ready()) == ["cpu-1", "cpu-2", "gpu-1", "gpu-2"]
    gpu_node = k8s_cluster.core.read_node("gpu-1")
    assert gpu_node.status.allocatable[GPU] == "1"
    assert gpu_node.metadata.labels[f"{GPU}.present"] == "true"
    assert k8s_cluster.kubectl("get", "nodes", "-o", "name").stdout.split() == [
        "node/cpu-1",
        "node/cpu-2",
        "node/gpu-1",
        "node/gpu-2",
    ]


def wait_pods(cluster: Cluster, namespace: str, running: int, pending: int = 0) -> dict[str, list[Any]]:
    """Wait until the namespace has exactly ``running`` Running and ``pending`` Unschedulable pods."""
    expected = {phase: n for phase, n in (("Running", running), ("Pending", pending)) if n}

    def settled() -> dict[str, list[Any]] | None:
        phases = pods_by_phase(cluster, namespace)
        counts = {phase: len(pods) for phase, pods in phases.items()}
        ok = counts == expected and all(map(unschedulable, phases.get("Pending", [])))
        return phases if ok else None

    return wait_for(settled, 60, f"{running} Running and {pending} Unschedulable pods in {namespace}")


def test_deployment_pods_run(k8s_cluster: Cluster, namespace: str) -> None:
    deploy(k8s_cluster, namespace, "web", replicas=3)
    phases = wait_pods(k8s_cluster, namespace, running=3)
    assert {p.spec.node_name for p in phases["Running"]} <= {"cpu-1", "cpu-2"}  # GPU nodes are tainted


def test_gpu_pods_fill_gpu_nodes(k8s_cluster: Cluster, namespace: str) -> None:
    deploy(k8s_cluster, namespace, "trainer", replicas=4, gpus=1)
    phases = wait_pods(k8s_cluster, namespace, running=2, pending=2)
    assert {p.spec.node_name for p in phases["Running"]} == {"gpu-1", "gpu-2"}
    assert all(f"Insufficient {GPU}" in str(unschedulable(p)) for p in phases["Pending"])


def test_apiserver_restart(k8s_cluster: Cluster) -> None:
    k8s_cluster.restart_apiserver()
    assert k8s_cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
    assert len(k8s_cluster.wait_nodes_ready()) == 4  # the same client, reconnected; kwok still heartbeats
