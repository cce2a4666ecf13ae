"""The operator's own check of the pod policy (``podpolicy``, the rules of the chart's admission
policy) and what a poll does with a pool it refuses: a ``PoolRefused`` condition naming the fields,
no Deployment written, no Secret read but the database's."""

from __future__ import annotations

from typing import Any

import pytest

from skiplock.operator import podpolicy
from skiplock.operator.runtime import Runtime

from .fakes import FakeKube
from .pod_policy_cases import ADMITTED, HOSTILE, HOSTILE_VIOLATIONS, REFUSED, RESTRICTED
from .support import NS, Events, jobqueue, spec
from .test_reconcile import condition, poll


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_rules_name_every_field_that_breaks_them(case: str) -> None:
    pools, expected = REFUSED[case]
    assert podpolicy.violations(pools) == expected


@pytest.mark.parametrize("case", sorted(ADMITTED))
def test_restricted_pools_pass(case: str) -> None:
    assert podpolicy.violations(ADMITTED[case]) == []


async def test_a_hostile_pool_is_refused_with_a_condition_that_names_the_fields(
        rt: Runtime, kube: FakeKube, events: Events) -> None:
    kube.namespaces[NS] = {}
    status = await poll(rt, kube, jobqueue(spec({"name": "cpu", "image": "w:1"}, dict(HOSTILE, jobTypes=["x"]))))
    assert (NS, "jq-evil") not in kube.deploys and (NS, "jq-cpu") in kube.deploys  # the other pool goes on
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PoolRefused")
    assert ready["message"].startswith("pool evil not deployed: " + HOSTILE_VIOLATIONS[0])
    assert all(line in ready["message"] for line in HOSTILE_VIOLATIONS)
    assert "skiplock.dev/unrestricted-pools=true" in ready["message"]
    assert ("Warning", "PoolRefused") in [(t, r) for t, r, _ in events]
    # Never a Secret it was not asked for: the template's secretKeyRef is not the operator's to read.
    assert [name for call, name in kube.calls if call == "secret"] == ["db"]


async def test_a_labelled_namespace_allows_it_and_the_label_is_read_only_when_needed(
        rt: Runtime, kube: FakeKube) -> None:
    kube.namespaces[NS] = {podpolicy.EXEMPT_LABEL: "true"}
    await poll(rt, kube, jobqueue(spec({"name": "cpu", "image": "w:1"})))
    assert not [c for c in kube.calls if c[0] == "namespace"]
    status = await poll(rt, kube, jobqueue(spec(dict(HOSTILE))))
    assert (NS, "jq-evil") in kube.deploys and condition(status, "Ready")["reason"] != "PoolRefused"
    pod = kube.deploys[(NS, "jq-evil")]["spec"]["template"]["spec"]
    # What the namespace allowed, and no allowPrivilegeEscalation: false the API server would refuse beside it.
    assert pod["containers"][0]["securityContext"] == HOSTILE["securityContext"]


async def test_an_unreadable_namespace_refuses_and_says_why(rt: Runtime, kube: FakeKube) -> None:
    kube.forbidden.add("namespace")
    status = await poll(rt, kube, jobqueue(spec(dict(HOSTILE))))
    message = condition(status, "Ready")["message"]
    assert "its labels could not be read: 403" in message and (NS, "jq-evil") not in kube.deploys


async def test_with_the_policy_off_the_operator_checks_only_its_own_fields(rt: Runtime, kube: FakeKube) -> None:
    rt.pod_policy = False
    await poll(rt, kube, jobqueue(spec(dict(HOSTILE))))
    assert (NS, "jq-evil") in kube.deploys
    owned: dict[str, Any] = {"name": "own", "image": "w", "template": {"spec": {"containers": [
        {"name": "worker", "image": "elsewhere:1"}]}}}
    status = await poll(rt, kube, jobqueue(spec(owned), name="own"))
    assert condition(status, "Ready")["message"] == (
        "pool own not deployed: spec.pools[own].template.spec.containers[worker].image: set spec.pools[own].image")


async def test_a_pool_refused_later_keeps_its_deployment_as_it_was(rt: Runtime, kube: FakeKube) -> None:
    kube.namespaces[NS] = {}
    await poll(rt, kube, jobqueue(spec(dict(RESTRICTED))))
    before = kube.deploys[(NS, "jq-cpu")]
    changed = dict(RESTRICTED, securityContext={"privileged": True})
    status = await poll(rt, kube, jobqueue(spec(changed), generation=2))
    assert kube.deploys[(NS, "jq-cpu")] == before
    assert condition(status, "Ready")["reason"] == "PoolRefused"
    status = await poll(rt, kube, jobqueue(spec(dict(RESTRICTED)), generation=3))
    assert condition(status, "Ready")["status"] == "True"


async def test_a_deployment_the_api_server_refuses_refuses_that_pool_only(rt: Runtime, kube: FakeKube) -> None:
    kube.invalid["jq-bad"] = "spec.template.spec.restartPolicy: Unsupported value: \"Never\""
    bad = {"name": "bad", "image": "w", "jobTypes": ["x"], "template": {"spec": {"restartPolicy": "Never"}}}
    status = await poll(rt, kube, jobqueue(spec({"name": "cpu", "image": "w:1"}, bad)))
    assert (NS, "jq-cpu") in kube.deploys and (NS, "jq-bad") not in kube.deploys
    ready = condition(status, "Ready")
    assert ready["reason"] == "PoolRefused" and "restartPolicy: Unsupported value" in ready["message"]
    assert [p["name"] for p in status["pools"]] == ["cpu", "bad"]
