"""A pool's pod template merged with what the operator owns (``podtemplate``), the conflicts it
refuses, and the upgrade path: a JobQueue of the previous schema renders as it did."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from skiplock.operator import resources
from skiplock.operator.podtemplate import CONTAINER_SECURITY, POD_SECURITY
from skiplock.operator.spec import parse

from .pod_policy_cases import RESTRICTED
from .support import jobqueue

LEGACY = Path(__file__).parent / "data" / "legacy-deployments.json"
# What the operator of the previous schema rendered (tests/operator/data/legacy-deployments.json,
# written by it) and what this one adds on purpose: no ServiceAccount token, and the restricted
# standard's required fields in a securityContext the pool gives.
ADDED = {"automountServiceAccountToken": False}


def pool_spec(*pools: dict[str, Any], **extra: Any) -> Any:
    return parse({"database": {"secretRef": {"name": "db"}}, "queues": ["q"], "pools": list(pools), **extra})


def render(pool: dict[str, Any], **extra: Any) -> dict[str, Any]:
    spec = pool_spec(pool, **extra)
    return resources.deployment(jobqueue({}, name="shop"), spec, spec.pools[0], replicas=1)


def pod(pool: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = render(pool)["spec"]["template"]["spec"]
    return result


def containers(pool: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod(pool)["containers"]}


def conflicts(pool: dict[str, Any]) -> list[str]:
    return resources.conflicts("shop", pool_spec(pool).pools[0])


@pytest.mark.parametrize("name", sorted(json.loads(LEGACY.read_text())))
def test_a_jobqueue_of_the_previous_schema_renders_as_before(name: str) -> None:
    case = json.loads(LEGACY.read_text())[name]
    spec = parse(case["spec"])
    body = {"metadata": {"name": name, "namespace": "apps", "uid": f"uid-{name}"}}
    for pool, before in zip(spec.pools, case["deployments"], strict=True):
        now = resources.deployment(body, spec, pool, 1)
        assert resources.conflicts(name, pool) == []
        expected = copy.deepcopy(before)
        template = expected["spec"]["template"]["spec"]
        template.update(ADDED)
        if pool.pod_security_context is not None:  # given: the required fields are added where unset
            template["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                           **template["securityContext"]}
        for key in ("metadata", "spec"):  # the template hash changes with the template: one rollout
            expected[key].pop("annotations", None), now[key].pop("annotations", None)
        assert now == expected


def test_without_a_template_the_pod_is_the_restricted_default() -> None:
    spec = pod({"name": "cpu", "image": "w:1"})
    assert spec["securityContext"] == POD_SECURITY and spec["automountServiceAccountToken"] is False
    (worker,) = spec["containers"]
    assert worker["securityContext"] == CONTAINER_SECURITY
    assert worker["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]


def test_the_worker_container_of_the_template_is_merged_by_name() -> None:
    found = containers(RESTRICTED)
    assert list(found) == ["worker", "cloud-sql-proxy"]  # where the template puts it
    worker = found["worker"]
    assert worker["image"] == RESTRICTED["image"]
    assert worker["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}]
    env = [e["name"] for e in worker["env"]]
    assert env[:2] == ["DATABASE_URL", "SKIPLOCK_WORKER_ID"] and env[-1] == "MODEL_DIR"
    assert worker["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5,
                                        "failureThreshold": 3}
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert worker["securityContext"] == CONTAINER_SECURITY


def test_a_template_without_the_worker_gets_it_first_and_keeps_its_own_containers() -> None:
    proxy = {"name": "proxy", "image": "p:1", "securityContext": {"runAsUser": 65532, "capabilities": {
        "add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}}
    init = {"name": "migrate", "image": "m:1", "command": ["migrate"]}
    spec = pod({"name": "cpu", "image": "w:1", "template": {"spec": {"containers": [proxy],
                                                                     "initContainers": [init]}}})
    assert [c["name"] for c in spec["containers"]] == ["worker", "proxy"]
    # The restricted standard's required fields are added where a container leaves them unset.
    assert spec["containers"][1]["securityContext"] == {"allowPrivilegeEscalation": False, "runAsUser": 65532,
                                                         "capabilities": {"add": ["NET_BIND_SERVICE"],
                                                                          "drop": ["ALL"]}}
    assert spec["initContainers"] == [{**init, "securityContext": {"allowPrivilegeEscalation": False,
                                                                    "capabilities": {"drop": ["ALL"]}}}]


def test_pod_fields_of_the_template_pass_through_and_the_operators_win() -> None:
    spec = pod(RESTRICTED)
    own = RESTRICTED["template"]["spec"]
    for field in ("serviceAccountName", "imagePullSecrets", "topologySpreadConstraints", "tolerations",
                  "nodeSelector", "priorityClassName", "hostAliases", "dnsConfig"):
        assert spec[field] == own[field], field
    assert "automountServiceAccountToken" not in spec  # a named ServiceAccount decides
    assert spec["volumes"][1:] == own["volumes"] and spec["terminationGracePeriodSeconds"] == 60
    meta = render(RESTRICTED)["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "search" and meta["labels"]["skiplock.dev/pool"] == "cpu"
    assert meta["annotations"] == {"cost-center": "42", "prometheus.io/scrape": "true", "prometheus.io/port": "9400"}


def test_the_service_account_token_follows_the_template() -> None:
    assert pod({"name": "a", "image": "w", "template": {"spec": {"serviceAccountName": "s"}}}).get(
        "automountServiceAccountToken") is None
    assert pod({"name": "a", "image": "w", "template": {"spec": {"automountServiceAccountToken": True}}})[
        "automountServiceAccountToken"] is True
    assert pod({"name": "a", "image": "w", "template": {"spec": {"serviceAccountName": "s",
                                                                 "automountServiceAccountToken": False}}})[
        "automountServiceAccountToken"] is False


def test_a_given_security_context_keeps_its_fields_and_gets_the_required_ones() -> None:
    spec = pod({"name": "a", "image": "w", "securityContext": {"readOnlyRootFilesystem": False},
                "template": {"spec": {"securityContext": {"fsGroup": 3000, "seccompProfile": {
                    "type": "Localhost", "localhostProfile": "p.json"}}}}})
    assert spec["securityContext"] == {"runAsNonRoot": True, "fsGroup": 3000, "seccompProfile": {
        "type": "Localhost", "localhostProfile": "p.json"}}
    assert spec["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]},
                                                        "readOnlyRootFilesystem": False}


def test_a_gpu_pool_adds_its_tolerations_and_node_selector_to_the_templates() -> None:
    spec = pod({"name": "g", "image": "w", "gpu": {"nodeSelector": {"gpu": "h200"}},
                "template": {"spec": {"nodeSelector": {"zone": "a"},
                                      "tolerations": [{"key": "spot", "operator": "Exists"}]}}})
    assert spec["nodeSelector"] == {"zone": "a", "gpu": "h200"}
    assert spec["tolerations"] == [{"key": "spot", "operator": "Exists"},
                                   {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}


def test_a_template_change_rolls_the_deployment() -> None:
    a = render(RESTRICTED)
    changed = copy.deepcopy(RESTRICTED)
    changed["template"]["spec"]["imagePullSecrets"] = [{"name": "other"}]
    assert a["metadata"]["annotations"] != render(changed)["metadata"]["annotations"]


CONFLICTS = [
    ({"labels": {"skiplock.dev/pool": "x", "app.kubernetes.io/name": "y", "team": "ok"}}, {},
     ["spec.pools[cpu].template.metadata.labels[skiplock.dev/pool]: set by the operator",
      "spec.pools[cpu].template.metadata.labels[app.kubernetes.io/name]: set by the operator"]),
    ({"annotations": {"prometheus.io/port": "1", "controller.kubernetes.io/pod-deletion-cost": "9"}}, {},
     ["spec.pools[cpu].template.metadata.annotations[prometheus.io/port]: set by the operator",
      "spec.pools[cpu].template.metadata.annotations[controller.kubernetes.io/pod-deletion-cost]: set by the "
      "operator"]),
    ({}, {"terminationGracePeriodSeconds": 5, "volumes": [{"name": "tmp", "emptyDir": {}}],
          "initContainers": [{"name": "worker", "image": "i"}]},
     ["spec.pools[cpu].template.spec.terminationGracePeriodSeconds: set spec.pools[cpu]."
      "terminationGracePeriodSeconds (the workers' drain time follows it)",
      "spec.pools[cpu].template.spec.volumes[tmp]: the operator's scratch volume for /tmp",
      "spec.pools[cpu].template.spec.initContainers[worker]: the name of the operator's worker container"]),
    ({}, {"containers": [{"name": "worker", "image": "other", "command": ["x"], "args": ["y"],
                          "imagePullPolicy": "Always", "resources": {}, "securityContext": {},
                          "env": [{"name": "DATABASE_URL", "value": "postgresql://inline"}, {"name": "POOL"}],
                          "ports": [{"containerPort": 9400}, {"containerPort": 8080, "name": "metrics"}],
                          "volumeMounts": [{"name": "x", "mountPath": "/tmp"}],
                          "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]},
     [f"spec.pools[cpu].template.spec.containers[worker].{f}: set spec.pools[cpu].{f}"
      for f in ("image", "imagePullPolicy", "command", "args", "resources", "securityContext")] + [
      "spec.pools[cpu].template.spec.containers[worker].env[DATABASE_URL]: set by the operator",
      "spec.pools[cpu].template.spec.containers[worker].env[POOL]: spec.pools[cpu].env sets it too",
      "spec.pools[cpu].template.spec.containers[worker].ports[9400]: the operator's metrics port (9400, named "
      "metrics)",
      "spec.pools[cpu].template.spec.containers[worker].ports[8080]: the operator's metrics port (9400, named "
      "metrics)",
      "spec.pools[cpu].template.spec.containers[worker].volumeMounts[/tmp]: the operator's scratch directory",
      "spec.pools[cpu].template.spec.containers[worker].livenessProbe.exec: the operator sets the probe's "
      "endpoint; give only its timing"]),
]


@pytest.mark.parametrize("meta, spec, expected", CONFLICTS)
def test_a_template_may_not_set_what_the_operator_owns(meta: dict[str, Any], spec: dict[str, Any],
                                                       expected: list[str]) -> None:
    pool = {"name": "cpu", "image": "w", "env": [{"name": "POOL", "value": "1"}],
            "template": {"metadata": meta, "spec": spec}}
    assert conflicts(pool) == expected


def test_a_pool_field_and_its_template_field_are_one_or_the_other() -> None:
    pool = {"name": "cpu", "image": "w", "priorityClassName": "a", "podSecurityContext": {"fsGroup": 1},
            "gpu": {"nodeSelector": {"gpu": "a100", "zone": "a"}},
            "template": {"spec": {"priorityClassName": "b", "securityContext": {"fsGroup": 2},
                                  "nodeSelector": {"gpu": "h200", "zone": "a"}}}}
    assert conflicts(pool) == [
        "spec.pools[cpu].template.spec.priorityClassName: spec.pools[cpu].priorityClassName sets it too: give one "
        "of them",
        "spec.pools[cpu].template.spec.securityContext: spec.pools[cpu].podSecurityContext sets it too: give one "
        "of them",
        "spec.pools[cpu].template.spec.nodeSelector[gpu]: spec.pools[cpu].gpu.nodeSelector sets gpu to 'a100'"]
    assert conflicts(RESTRICTED) == []
