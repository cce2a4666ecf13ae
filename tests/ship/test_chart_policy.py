"""The chart's tenancy guard (``policy``): a ValidatingAdmissionPolicy and binding by default, the
operator's own check and its namespace rule with them, all gone with ``policy.enforce: false``. What
the policy refuses is tested on the real API server (tests/k8s/test_pod_template.py)."""

from __future__ import annotations

from typing import Any

from .tools import RELEASE, Doc, find, one, render, template

POLICY = f"{RELEASE}-worker-pod-policy"
OPERATOR = f"{RELEASE}-operator"


def grants(objects: list[Doc]) -> set[tuple[str, str, str]]:
    rules = [r for kind in ("ClusterRole", "Role") for o in find(objects, kind) for r in o["rules"]]
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def operator_args(objects: list[Doc]) -> list[str]:
    args: list[str] = one(objects, "Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_the_policy_is_on_by_default() -> None:
    objects = render()
    policy = one(objects, "ValidatingAdmissionPolicy", POLICY)
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (["skiplock.dev"], ["jobqueues"],
                                                                          ["CREATE", "UPDATE"])
    names = [v["name"] for v in policy["spec"]["variables"]]
    assert names[-1] == "violations" and len(names) == len(set(names))
    binding = one(objects, "ValidatingAdmissionPolicyBinding", POLICY)
    assert binding["spec"]["policyName"] == POLICY and binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "skiplock.dev/unrestricted-pools", "operator": "NotIn", "values": ["true"]}]
    assert ("", "namespaces", "get") in grants(objects)
    assert not [a for a in operator_args(objects) if a.startswith("--pod-policy")]  # enforce: the default


def test_a_namespaced_operator_binds_the_policy_in_its_namespaces_only() -> None:
    values: dict[str, Any] = {"operator": {"clusterWide": False, "watchNamespaces": ["team-a", "team-b"]}}
    binding = one(render(values), "ValidatingAdmissionPolicyBinding", POLICY)
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][1] == {
        "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}


def test_policy_enforce_false_turns_the_policy_and_the_operators_check_off() -> None:
    objects = render({"policy": {"enforce": False}})
    assert not find(objects, "ValidatingAdmissionPolicy") and not find(objects, "ValidatingAdmissionPolicyBinding")
    assert "--pod-policy=off" in operator_args(objects)
    assert not [g for g in grants(objects) if g[1] == "namespaces"]


def test_the_schema_refuses_a_misspelt_policy_value() -> None:
    res = template({"policy": {"enforced": True}}, check=False)
    assert res.returncode != 0 and "enforced" in res.stderr
