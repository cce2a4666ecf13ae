"""Pool templates and the pod policy on the real API server (kube-apiserver, kwok nodes).

- The CRD's ``pools[].template`` schema is the upstream PodTemplateSpec of this very API server
  (regenerating it changes nothing), small enough for ``kubectl apply``, and strict about typos.
- The chart's ValidatingAdmissionPolicy refuses what ``pod_policy_cases`` refuses, with the same
  lines as the operator's own check, and admits what it admits; a labelled namespace is exempt.
- The operator refuses a hostile pool the policy did not see (PoolRefused) and renders a
  restricted pool with a ServiceAccount, a pull secret, /dev/shm, a sidecar, topology spread and
  tolerations into exactly the expected Deployment, whose pods the restricted Pod Security
  admission lets run.
- Upgrade: the Deployment an operator of the previous schema wrote is rolled once to the new
  template, which is the old one plus what this version adds on purpose.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import test_operator as harness
from tests.k8s.cluster import Cluster, wait_for
from tests.k8s.test_operator import CRD, Api, Operator, documented_rbac, jobqueue, restricted_kubeconfig
from tests.operator.pod_policy_cases import ADMITTED, HOSTILE, HOSTILE_VIOLATIONS, REFUSED, RESTRICTED
from tests.operator.test_podtemplate import ADDED, LEGACY
from tests.ship.tools import CHART, REPO, need, run

GENERATOR = REPO / "tools" / "podtemplate_schema.py"
EXPECTED = Path(__file__).parent / "data" / "search-cpu-deployment.yaml"
ANNOTATION_LIMIT = 262144  # bytes of all annotations: kubectl apply's last-applied-configuration
PREFIX = "allows them): "
EXEMPT = "skiplock.dev/unrestricted-pools=true"

# test_operator.py's fixtures, for this module too
cluster, namespace, start_operator, api = harness.cluster, harness.namespace, harness.start_operator, harness.api


# -- the schema -------------------------------------------------------------------------------------

def test_the_template_schema_is_this_api_servers_pod_template_spec(api: Api) -> None:
    env = {**os.environ, "PATH": f"{api.cluster.bin_dir}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run([sys.executable, str(GENERATOR), "--kubeconfig", str(api.cluster.kubeconfig), "--check"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert res.returncode == 0, f"{res.stderr}\n{res.stdout[-4000:]}"


def test_the_crd_fits_kubectl_apply(api: Api) -> None:
    crd = json.loads(api.cluster.kubectl("get", "crd", "jobqueues.skiplock.dev", "-o", "json").stdout)
    applied = crd["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    size = len(applied.encode())
    print(f"CRD file {CRD.stat().st_size} bytes, last-applied-configuration {size} bytes")
    assert size < ANNOTATION_LIMIT // 2, "the CRD grows toward kubectl apply's 256 KiB annotation limit"


def test_a_typo_in_a_template_is_refused_by_strict_field_validation(api: Api) -> None:
    pool = {"name": "cpu", "image": "w:1", "template": {"spec": {"containers": [
        {"name": "proxy", "image": "p:1", "imagePullPolicyy": "Always"}]}}}
    res = api.cluster.kubectl("apply", "-n", api.ns, "-f", "-", input=json.dumps(jobqueue("typo", pool)),
                              check=False)
    assert 'unknown field "spec.pools[0].template.spec.containers[0].imagePullPolicyy"' in res.stderr, res.stderr
    wrong = {"name": "cpu", "image": "w:1", "template": {"spec": {"hostNetwork": "yes"}}}
    res = api.cluster.kubectl("apply", "-n", api.ns, "-f", "-", input=json.dumps(jobqueue("typo", wrong)),
                              check=False)
    assert "spec.pools[0].template.spec.hostNetwork: Invalid value" in res.stderr, res.stderr


# -- the admission policy -----------------------------------------------------------------------------

def refusal(k8s: Cluster, ns: str, *pools: dict[str, Any]) -> list[str] | None:
    """The policy's lines for a JobQueue of these pools (a server-side dry run), None if admitted."""
    manifest = jobqueue("probe", *pools)
    res = k8s.kubectl("create", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(manifest), check=False)
    if res.returncode == 0:
        return None
    assert "ValidatingAdmissionPolicy" in res.stderr and PREFIX in res.stderr, res.stderr
    return res.stderr.strip().split(PREFIX, 1)[1].split("; ")


@pytest.fixture
def admission_policy(api: Api, tmp_path: Path) -> Iterator[None]:
    """The chart's policy and binding (default values), in force until the test ends."""
    rendered = run([need("helm"), "template", "skiplock", str(CHART), "--show-only", "templates/policy.yaml"]).stdout
    (tmp_path / "policy.yaml").write_text(rendered)
    k8s = api.cluster
    k8s.kubectl("apply", "-f", str(tmp_path / "policy.yaml"))
    wait_for(lambda: refusal(k8s, "default", HOSTILE), 30, "the policy in force")
    assert k8s.policy_type_checking("skiplock-worker-pod-policy") == {}  # no expression warnings
    yield
    k8s.kubectl("delete", "-f", str(tmp_path / "policy.yaml"), "--ignore-not-found")
    wait_for(lambda: refusal(k8s, "default", HOSTILE) is None, 30, "the policy gone")


@pytest.mark.usefixtures("admission_policy")
def test_the_policy_refuses_and_admits_as_the_operator_does(api: Api) -> None:
    for case, (pools, expected) in REFUSED.items():
        assert refusal(api.cluster, api.ns, *pools) == expected, case
    for case, pools in ADMITTED.items():
        assert refusal(api.cluster, api.ns, *pools) is None, case


@pytest.mark.usefixtures("admission_policy")
def test_the_hostile_spec_is_refused_naming_the_fields_unless_the_namespace_allows_it(api: Api) -> None:
    res = api.cluster.kubectl("apply", "-n", api.ns, "-f", "-", input=json.dumps(jobqueue("evil", HOSTILE)),
                              check=False)
    assert res.returncode != 0
    assert "spec.pools[evil].securityContext.privileged: must not be true" in res.stderr, res.stderr
    assert all(line in res.stderr for line in HOSTILE_VIOLATIONS), res.stderr
    api.cluster.kubectl("label", "namespace", api.ns, EXEMPT)
    wait_for(lambda: refusal(api.cluster, api.ns, HOSTILE) is None, 30, "the labelled namespace exempt")
    api.apply(jobqueue("evil", HOSTILE))
    # Admitted while exempt: once the label goes, a new spec is judged again, but its metadata may
    # still change (kopf's finalizer, labels) and it can be deleted.
    api.cluster.kubectl("label", "namespace", api.ns, "skiplock.dev/unrestricted-pools-")
    wait_for(lambda: refusal(api.cluster, api.ns, HOSTILE), 30, "the namespace no longer exempt")
    api.cluster.kubectl("label", "jobqueue", "evil", "-n", api.ns, "team=red")
    api.cluster.kubectl("patch", "jobqueue", "evil", "-n", api.ns, "--type=merge",
                        "-p", '{"metadata": {"finalizers": ["skiplock.dev/operator"]}}')
    res = api.cluster.kubectl("patch", "jobqueue", "evil", "-n", api.ns, "--type=json", "-p",
                              '[{"op": "replace", "path": "/spec/pools/0/image", "value": "other:2"}]', check=False)
    assert "spec.pools[evil].securityContext.privileged" in res.stderr, res.stderr
    api.cluster.kubectl("delete", "jobqueue", "evil", "-n", api.ns, "--wait=false")
    api.cluster.kubectl("patch", "jobqueue", "evil", "-n", api.ns, "--type=merge", "-p",
                        '{"metadata": {"finalizers": null}}')
    wait_for(lambda: api.cluster.kubectl("get", "jobqueue", "evil", "-n", api.ns, check=False).returncode != 0,
             30, "the JobQueue deleted")


# -- the operator --------------------------------------------------------------------------------------

def test_the_operator_refuses_a_hostile_pool_the_policy_did_not_see(
        api: Api, tmp_path: Path, start_operator: Callable[..., Operator]) -> None:
    namespaced, lease = documented_rbac()  # the operator's documented rules: the namespace's labels too
    kubeconfig = restricted_kubeconfig(api.cluster, api.ns, namespaced["rules"] + lease["rules"],
                                       tmp_path / "kubeconfig")
    op = start_operator("--lease-namespace", api.ns, kubeconfig=kubeconfig)
    api.apply(jobqueue("evil", {"name": "cpu", "image": "w:1", "jobTypes": ["a"]}, HOSTILE))
    ready = wait_for(lambda: (c := api.condition("evil", "Ready")).get("reason") == "PoolRefused" and c, 60,
                     "the pool refused")
    assert ready["message"].startswith("pool evil not deployed: ") and EXEMPT in ready["message"]
    assert all(line in ready["message"] for line in HOSTILE_VIOLATIONS), ready["message"]
    assert "could not be read" not in ready["message"]
    assert "evil-cpu" in api.deployments() and "evil-evil" not in api.deployments()
    assert "pool evil not deployed" in api.event("PoolRefused")
    # A namespace that allows it (read again within 30 s) gets the pool, as far as the API server
    # allows it: this one runs without --allow-privileged, so the pool asks for root and SYS_ADMIN only.
    api.cluster.kubectl("label", "namespace", api.ns, EXEMPT)
    api.apply(jobqueue("evil", {"name": "cpu", "image": "w:1", "jobTypes": ["a"]},
                       dict(HOSTILE, securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})))
    made = wait_for(lambda: api.deployments().get("evil-evil"), 90, "the pool deployed in a namespace that allows it")
    assert made["spec"]["template"]["spec"]["containers"][0]["securityContext"] == {
        "capabilities": {"add": ["SYS_ADMIN"]}}
    assert made["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 0
    wait_for(lambda: api.condition("evil", "Ready").get("status") == "True", 30, "Ready")
    assert "Forbidden" not in op.log.read_text() and "403" not in op.log.read_text(), op.tail()


def test_a_template_the_deployment_api_refuses_refuses_that_pool_only(
        api: Api, start_operator: Callable[..., Operator]) -> None:
    start_operator("--standalone")
    bad = {"name": "bad", "image": "w:1", "jobTypes": ["x"], "template": {"spec": {"restartPolicy": "Never"}}}
    api.apply(jobqueue("odd", {"name": "cpu", "image": "w:1"}, bad))
    ready = wait_for(lambda: (c := api.condition("odd", "Ready")).get("reason") == "PoolRefused" and c, 60,
                     "the pool refused")
    assert "pool bad not deployed: the API server refused its Deployment" in ready["message"], ready
    assert "restartPolicy" in ready["message"] and set(api.deployments()) == {"odd-cpu"}


def dry_run(k8s: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` as the API server would store it (defaults and all), created with a dry run."""
    out = k8s.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(manifest)).stdout
    stored: dict[str, Any] = json.loads(out)
    return stored


def comparable(deployment: dict[str, Any]) -> dict[str, Any]:
    """What the operator writes of a Deployment (not what the Deployment controller adds, nor the
    replicas, which the scaler moves)."""
    meta = deployment["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != "deployment.kubernetes.io/revision"}
    return {"metadata": {**{k: meta.get(k) for k in ("name", "labels", "ownerReferences")},
                         "annotations": annotations},
            "spec": {k: v for k, v in deployment["spec"].items() if k != "replicas"}}


def test_a_platform_teams_pool_renders_into_exactly_the_expected_deployment(
        api: Api, dsn: str, start_operator: Callable[..., Operator]) -> None:
    k8s = api.cluster
    k8s.kubectl("label", "namespace", api.ns, "pod-security.kubernetes.io/enforce=restricted")
    k8s.kubectl("create", "serviceaccount", "worker", "-n", api.ns)
    k8s.kubectl("create", "secret", "docker-registry", "registry", "-n", api.ns,
                "--docker-server=registry.invalid", "--docker-username=u", "--docker-password=p")
    k8s.kubectl("create", "priorityclass", "batch", "--value=1000", check=False)  # cluster-wide, kept
    start_operator("--standalone")
    api.apply(jobqueue("search", dict(RESTRICTED, minReplicas=2)))
    made = wait_for(lambda: api.deployments().get("search-cpu"), 60, "the Deployment")
    uid = api.jobqueue("search")["metadata"]["uid"]
    expected = yaml.safe_load(EXPECTED.read_text().replace("NAMESPACE", api.ns).replace("UID", uid))
    expected["metadata"]["name"] = "search-cpu-expected"  # a dry run of another name: same defaulting
    want = comparable(dry_run(k8s, expected))
    want["metadata"]["name"] = "search-cpu"
    assert comparable(made) == want
    pods = wait_for(lambda: len(r := api.running("cpu")) == 2 and r, 90, "2 pods admitted as restricted, Running")
    for pod in pods:
        spec = pod["spec"]
        assert spec["serviceAccountName"] == "worker" and spec["imagePullSecrets"] == [{"name": "registry"}]
        assert [c["name"] for c in spec["containers"]] == ["worker", "cloud-sql-proxy"]
    wait_for(lambda: api.condition("search", "Ready").get("status") == "True", 30, "Ready")


def test_a_deployment_of_the_previous_operator_rolls_once_to_the_new_template(
        api: Api, start_operator: Callable[..., Operator]) -> None:
    cases = json.loads(LEGACY.read_text())
    old_spec = copy.deepcopy(cases["legacy"]["spec"])
    old_spec["database"]["secretRef"] = {"name": "db"}
    for pool in old_spec["pools"]:
        pool["image"] = "example.invalid/" + pool["image"]
    api.apply({"apiVersion": "skiplock.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": "legacy"},
               "spec": old_spec})
    uid = api.jobqueue("legacy")["metadata"]["uid"]
    old = copy.deepcopy(cases["legacy"]["deployments"][0])  # pool "all", as the previous operator wrote it
    old["metadata"].update(namespace=api.ns, ownerReferences=[dict(old["metadata"]["ownerReferences"][0], uid=uid)])
    worker = old["spec"]["template"]["spec"]["containers"][0]
    worker["image"] = "example.invalid/" + worker["image"]
    for env in worker["env"]:
        if env["name"] == "DATABASE_URL":
            env["valueFrom"]["secretKeyRef"] = {"name": "db", "key": "DATABASE_URL"}
    old["spec"]["replicas"] = 0
    api.cluster.kubectl("create", "-n", api.ns, "-f", "-", input=json.dumps(old))
    before = api.deployments()["legacy-all"]
    start_operator("--standalone")
    after = wait_for(lambda: (d := api.deployments()["legacy-all"])["metadata"]["generation"] > 1 and d, 60,
                     "the template rolled")
    template, previous = after["spec"]["template"]["spec"], before["spec"]["template"]["spec"]
    assert {k: v for k, v in template.items() if k not in (*ADDED, "securityContext")} == \
        {k: v for k, v in previous.items() if k != "securityContext"}
    assert template["automountServiceAccountToken"] is False
    assert template["securityContext"] == {**previous["securityContext"], "seccompProfile": {"type": "RuntimeDefault"}}
    assert api.event("DeploymentUpdated").startswith("pool all")
    wait_for(lambda: api.condition("legacy", "Ready").get("status") == "True", 30, "Ready")
    generation = api.deployments()["legacy-all"]["metadata"]["generation"]
    with pytest.raises(TimeoutError):  # once: nothing more to roll
        wait_for(lambda: api.deployments()["legacy-all"]["metadata"]["generation"] != generation, 5, "no change")



def documented_roles() -> list[dict[str, Any]]:
    """The ClusterRoles of docs/operator.md's security model."""
    text = (REPO / "docs" / "operator.md").read_text().split("## Security model", 1)[1]
    block = next(b.split("```", 1)[0] for b in text.split("```yaml")[1:] if "aggregate-to-edit" in b)
    return [d for d in yaml.safe_load_all(block) if d]


def test_the_documented_roles_give_jobqueues_to_edit_and_read_access_to_view(api: Api) -> None:
    k8s, roles = api.cluster, documented_roles()
    k8s.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(r) for r in roles))
    try:
        k8s.kubectl("create", "rolebinding", "dev", "--clusterrole=edit", "--user=dev", "-n", api.ns)
        k8s.kubectl("create", "rolebinding", "auditor", "--clusterrole=view", "--user=auditor", "-n", api.ns)

        def can(who: str, verb: str, ns: str = api.ns) -> bool:
            res = k8s.kubectl("auth", "can-i", verb, "jobqueues.skiplock.dev", "-n", ns, f"--as={who}", check=False)
            return res.stdout.strip() == "yes"

        wait_for(lambda: can("dev", "create") and can("auditor", "list"), 30, "the roles aggregated")
        assert can("dev", "delete") and not can("auditor", "create") and not can("dev", "create", "default")
        status = k8s.kubectl("auth", "can-i", "patch", "jobqueues.skiplock.dev", "--subresource=status", "-n", api.ns,
                             "--as=dev", check=False)
        assert status.stdout.strip() == "no", "the status is the operator's"
    finally:
        k8s.kubectl("delete", "-f", "-", "--ignore-not-found", input="\n---\n".join(json.dumps(r) for r in roles))
