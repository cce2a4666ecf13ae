"""The two installs on a real API server: ``kubectl apply -f manifests/`` and ``helm install``.

kwok runs the pods as fakes, so each install is checked twice: the API server admits and schedules
the operator (its namespace enforces the "restricted" Pod Security Standard, so the pod spec is
checked too), and the operator *works* with exactly the permissions the install gives it: it runs
here as a process authenticated with a token of the install's ServiceAccount, with the
Deployment's own arguments, reconciling the example JobQueues against a real PostgreSQL.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from skiplock.sync import enqueue
from tests.k8s.cluster import Cluster
from tests.ship.stack import Operator, wait_until
from tests.ship.tools import CHART, CRD_FILE, REPO, need, run

MANIFESTS = REPO / "manifests"
EXAMPLES = MANIFESTS / "examples"
SYSTEM = "skiplock-system"
SA = f"system:serviceaccount:{SYSTEM}:skiplock-operator"

pytestmark = pytest.mark.timeout(600)


# -- helpers ---------------------------------------------------------------------------------------

def objects(path: Path) -> list[dict[str, Any]]:
    return [d for f in sorted(path.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")]
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def local_args(container: dict[str, Any]) -> list[str]:
    """The Deployment's arguments without its ports (the local process takes free ones)."""
    return [a for a in container["args"] if not a.startswith(("--metrics-port", "--liveness-port"))]


def token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token)."""
    token = cluster.kubectl("-n", namespace, "create", "token", account, "--duration=1h").stdout.strip()
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "sa",
              "clusters": [{"name": "c", "cluster": {"server": cluster.server, "insecure-skip-tls-verify": True}}],
              "users": [{"name": account, "user": {"token": token}}],
              "contexts": [{"name": "sa", "context": {"cluster": "c", "user": account}}]}
    path.write_text(json.dumps(config))
    return path


def deployment_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    res = cluster.kubectl("-n", namespace, "get", "deployment", name, "-o", "json", check=False)
    if res.returncode:
        return {}
    found: dict[str, Any] = json.loads(res.stdout)
    return found


def running_pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items = json.loads(cluster.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout)["items"]
    return [p for p in items if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def wait_operator_pod(cluster: Cluster, namespace: str, selector: str) -> dict[str, Any]:
    """The operator Deployment's pod, admitted, scheduled on a node and Running (under kwok)."""
    pods = wait_until(lambda: running_pods(cluster, namespace, selector), 60,
                      f"a Running operator pod in {namespace} ({selector})",
                      state=lambda: cluster.kubectl("-n", namespace, "get", "events", "-o", "name").stdout[-800:])
    (pod,) = pods
    assert pod["spec"]["nodeName"] in {"cpu-1", "cpu-2"}  # never a GPU node: it tolerates no GPU taint
    return pod


def apply_example(cluster: Cluster, namespace: str, path: Path, secret: str = "skiplock-database") -> dict[str, Any]:
    body = yaml.safe_load(path.read_text())
    body["metadata"]["namespace"] = namespace
    assert body["spec"]["database"]["secretRef"]["name"] == secret
    # Fast polling, so that the test sees the scaling within seconds.
    body["spec"].setdefault("scaling", {})["pollIntervalSeconds"] = 1
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    return dict(body)


def forbidden_lines(log: Path) -> list[str]:
    return [ln for ln in log.read_text(errors="replace").splitlines()
            if "Forbidden" in ln or " 403" in ln or "forbidden" in ln]


@pytest.fixture(scope="module")
def dsn(pg_admin_dsn: str, template_dsn: str) -> Iterator[str]:
    from tests.conftest import drop_database, fresh_database

    url = fresh_database(pg_admin_dsn)
    yield url
    drop_database(pg_admin_dsn, url)


@pytest.fixture
def app_namespace(k8s_cluster: Cluster, dsn: str) -> Iterator[str]:
    """A namespace with the examples' database Secret; its JobQueues are deleted afterwards."""
    name = f"apps-{secrets.token_hex(3)}"
    k8s_cluster.kubectl("create", "namespace", name)
    k8s_cluster.kubectl("-n", name, "create", "secret", "generic", "skiplock-database",
                        f"--from-literal=DATABASE_URL={dsn}")
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def prove_the_operator_works(cluster: Cluster, namespace: str, dsn: str, operator: Operator) -> None:
    """Both examples reconciled: Deployments per pool, scaled with the queue, pods Running (GPU pods
    on GPU nodes), status written; then the JobQueues deleted (finalizers released)."""
    app = apply_example(cluster, namespace, EXAMPLES / "jobqueue-cpu.yaml")
    ml = apply_example(cluster, namespace, EXAMPLES / "jobqueue-gpu.yaml")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(30):
            enqueue(conn, "send", {}, queue=app["spec"]["queues"][0])
        for _ in range(2):
            enqueue(conn, "train", {}, queue="ml")
    app_pool, ml_gpu = f"{app['metadata']['name']}-cpu", f"{ml['metadata']['name']}-gpu"
    for deployment, want in ((app_pool, 2), (ml_gpu, 2)):
        def ready(d: str = deployment, w: int = want) -> bool:
            return int(deployment_status(cluster, namespace, d).get("status", {}).get("readyReplicas", 0)) >= w

        def seen(d: str = deployment) -> object:
            return deployment_status(cluster, namespace, d).get("status"), operator.tail(10)

        wait_until(ready, 90, f"{deployment} scaled to {want} ready pods", state=seen)
    gpu_selector = f"skiplock.dev/pool=gpu,skiplock.dev/jobqueue={ml['metadata']['name']}"
    for pod in running_pods(cluster, namespace, gpu_selector):
        assert pod["spec"]["nodeName"] in {"gpu-1", "gpu-2"}
    status = json.loads(cluster.kubectl("-n", namespace, "get", "jobqueue", "app", "-o", "json").stdout)["status"]
    assert status["pending"] >= 1 and status["pools"][0]["name"] == "cpu", status
    assert "skiplock_operator_pool_desired_replicas" in operator.metrics()
    cluster.kubectl("-n", namespace, "delete", "jobqueue", "--all", "--timeout=60s")  # the operator lets go
    wait_until(lambda: not deployment_status(cluster, namespace, ml_gpu), 60, "the GPU pool's Deployment gone")
    assert not forbidden_lines(operator.log), "\n".join(forbidden_lines(operator.log))


# -- kubectl apply -f manifests/ -------------------------------------------------------------------

@pytest.fixture(scope="module")
def applied(k8s_cluster: Cluster) -> Iterator[Cluster]:
    """manifests/ applied as a user would (files in order, the CRD before anything uses it)."""
    out = k8s_cluster.kubectl("apply", "-f", str(MANIFESTS)).stdout
    assert "namespace/skiplock-system" in out and "customresourcedefinition" in out, out
    k8s_cluster.wait_established("jobqueues.skiplock.dev")
    yield k8s_cluster
    # The namespaced part and the admission policy go; the CRD stays (other tests of the session use it).
    for f in ("05-policy.yaml", "04-dashboards.yaml", "03-operator.yaml", "02-rbac.yaml", "00-namespace.yaml"):
        k8s_cluster.kubectl("delete", "-f", str(MANIFESTS / f), "--wait=false", "--ignore-not-found", check=False)


def test_manifests_apply_cleanly_and_idempotently(applied: Cluster) -> None:
    again = applied.kubectl("apply", "-f", str(MANIFESTS)).stdout
    assert all(line.endswith("unchanged") for line in again.splitlines()), again
    dry = applied.kubectl("apply", "--dry-run=server", "-f", str(EXAMPLES), "-n", "default").stdout
    assert "jobqueue.skiplock.dev/app" in dry and "jobqueue.skiplock.dev/ml" in dry  # admitted by the pod policy
    assert applied.policy_type_checking("skiplock-worker-pod-policy") == {}  # no expression warnings
    crd = json.loads(applied.kubectl("get", "crd", "jobqueues.skiplock.dev", "-o", "json").stdout)
    annotation = crd["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    assert len(annotation.encode()) < 262144 // 2, "the CRD nears kubectl apply's annotation limit"


def test_manifests_bring_up_the_operator_deployment(applied: Cluster) -> None:
    pod = wait_operator_pod(applied, SYSTEM, "app.kubernetes.io/name=skiplock,app.kubernetes.io/component=operator")
    assert pod["spec"]["serviceAccountName"] == "skiplock-operator"
    dep = deployment_status(applied, SYSTEM, "skiplock-operator")
    assert dep["spec"]["strategy"]["type"] == "Recreate" and dep["spec"]["replicas"] == 1
    wait_until(lambda: deployment_status(applied, SYSTEM, "skiplock-operator")["status"].get("availableReplicas"),
               60, "the operator Deployment available")
    labels = applied.kubectl("get", "namespace", SYSTEM, "-o", "jsonpath={.metadata.labels}").stdout
    assert '"pod-security.kubernetes.io/enforce":"restricted"' in labels


# Every call the operator makes (operator/skiplock/operator/kube.py, kopf), and what it must not be able to do.
ALLOWED = [
    ("list", "jobqueues.skiplock.dev", None), ("watch", "jobqueues.skiplock.dev", None),
    ("patch", "jobqueues.skiplock.dev", "apps"), ("patch", "jobqueues.skiplock.dev/status", "apps"),
    ("list", "deployments.apps", "apps"), ("create", "deployments.apps", "apps"),
    ("patch", "deployments.apps", "apps"), ("delete", "deployments.apps", "apps"),
    ("list", "pods", None), ("watch", "pods", None), ("get", "pods", "apps"), ("patch", "pods", "apps"),
    ("get", "secrets", "apps"), ("create", "events", "apps"), ("get", "namespaces/apps", None),
    ("create", "leases.coordination.k8s.io", SYSTEM), ("get", "leases.coordination.k8s.io/skiplock-operator", SYSTEM),
    ("update", "leases.coordination.k8s.io/skiplock-operator", SYSTEM),
]
DENIED = [
    ("list", "secrets", "apps"), ("watch", "secrets", None), ("create", "jobqueues.skiplock.dev", "apps"),
    ("delete", "jobqueues.skiplock.dev", "apps"), ("update", "deployments.apps", "apps"),
    ("create", "pods", "apps"), ("delete", "pods", "apps"), ("create", "clusterroles.rbac.authorization.k8s.io", None),
    ("update", "leases.coordination.k8s.io/another-lease", SYSTEM), ("get", "leases.coordination.k8s.io", "apps"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None), ("list", "namespaces", None),
    ("get", "configmaps", SYSTEM),
]


def can_i(cluster: Cluster, verb: str, resource: str, namespace: str | None, who: str = SA) -> bool:
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    res = cluster.kubectl("auth", "can-i", verb, resource, *scope, f"--as={who}", check=False)
    return res.stdout.strip() == "yes"


def test_manifests_rbac_allows_what_the_operator_needs_and_nothing_else(applied: Cluster) -> None:
    missing = [a for a in ALLOWED if not can_i(applied, *a)]
    assert not missing, f"the operator's ServiceAccount may not: {missing}"
    extra = [d for d in DENIED if can_i(applied, *d)]
    assert not extra, f"the operator's ServiceAccount may: {extra}"


def test_manifests_operator_works_with_its_serviceaccount(applied: Cluster, dsn: str, app_namespace: str,
                                                         tmp_path: Path) -> None:
    container = operator_container(objects(MANIFESTS))
    kubeconfig = token_kubeconfig(applied, SYSTEM, "skiplock-operator", tmp_path / "sa.kubeconfig")
    operator = Operator(kubeconfig, tmp_path / "operator.log", *local_args(container), pod_namespace=SYSTEM)
    assert "--all-namespaces" in operator.argv and "--peering=skiplock-operator" in operator.argv
    operator.start()
    try:
        operator.wait_healthy()
        lease = wait_until(lambda: applied.kubectl("-n", SYSTEM, "get", "lease", "skiplock-operator", "-o",
                                                   "jsonpath={.spec.holderIdentity}", check=False).stdout, 30,
                           "the leader-election Lease")
        assert lease == "skiplock-operator-test"
        prove_the_operator_works(applied, app_namespace, dsn, operator)
    finally:
        operator.stop()
    assert operator.proc is not None and operator.proc.returncode == 0, operator.tail()


def test_manifests_operator_migrates_a_fresh_database(applied: Cluster, pg_admin_dsn: str, tmp_path: Path) -> None:
    """The kubectl path has no Helm hook: a JobQueue applied next to an empty database gets its
    schema from the operator (running with the install's ServiceAccount) before its pools scale."""
    from tests.conftest import drop_database, fresh_database

    empty = fresh_database(pg_admin_dsn, template="template0")
    ns = f"fresh-{secrets.token_hex(3)}"
    applied.kubectl("create", "namespace", ns)
    applied.kubectl("-n", ns, "create", "secret", "generic", "skiplock-database",
                    f"--from-literal=DATABASE_URL={empty}")
    container = operator_container(objects(MANIFESTS))
    kubeconfig = token_kubeconfig(applied, SYSTEM, "skiplock-operator", tmp_path / "sa.kubeconfig")
    operator = Operator(kubeconfig, tmp_path / "operator.log", *local_args(container), pod_namespace=SYSTEM)
    operator.start()
    try:
        operator.wait_healthy()
        app = apply_example(applied, ns, EXAMPLES / "jobqueue-cpu.yaml")

        def migrated_event() -> list[dict[str, Any]]:
            found = json.loads(applied.kubectl("-n", ns, "get", "events", "--field-selector",
                                               "reason=SchemaMigrated", "-o", "json").stdout)["items"]
            return [e for e in found if e["involvedObject"]["name"] == app["metadata"]["name"]]

        (event,) = wait_until(migrated_event, 90, "the SchemaMigrated event", state=lambda: operator.tail(10))
        assert event["type"] == "Normal" and "0001_initial" in event["message"], event
        with psycopg.connect(empty) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM skiplock.schema_migrations ORDER BY 1")]
        assert versions == sorted(versions) and len(versions) == len(set(versions)) >= 1
        with psycopg.connect(empty, autocommit=True) as conn:
            enqueue(conn, "send", {}, queue=app["spec"]["queues"][0])
        wait_until(lambda: deployment_status(applied, ns, "app-cpu").get("spec", {}).get("replicas", 0) >= 1, 90,
                   "the pool scaled up for the job", state=lambda: operator.tail(10))
        applied.kubectl("-n", ns, "delete", "jobqueue", "--all", "--timeout=60s")
        assert not forbidden_lines(operator.log), "\n".join(forbidden_lines(operator.log))
    finally:
        operator.stop()
        applied.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        drop_database(pg_admin_dsn, empty)


# -- helm install ----------------------------------------------------------------------------------

RELEASE, HELM_NS, WATCHED = "sk", "skiplock-helm", "team-a"
MIGRATION = f"{RELEASE}-skiplock-migration"
# The hook Job's pod runs on a kwok node, which "completes" Job pods without running them (the
# real-node tier runs `skiplock migrate` for real): what is checked here is that the API server
# admits it under the restricted standard, and that Helm runs it and cleans it up.
ON_KWOK = {"nodeSelector": {"kubernetes.io/hostname": "cpu-1"}}
HELM_VALUES: dict[str, Any] = {
    # A namespaced operator in a cluster whose CRD is managed elsewhere (as docs/install.md
    # advises for every release but one): the CRD's own lifecycle is test_helm_upgrades_the_crd's.
    "crds": {"install": False},
    "operator": {"clusterWide": False, "watchNamespaces": [WATCHED]},
    "database": {"url": "postgresql://skiplock@db.invalid/skiplock"},
    "migration": ON_KWOK,
    "ui": {"enabled": True},
}


def helm_run(cluster: Cluster, *args: str, check: bool = True, timeout: float = 180) -> str:
    res = run([need("helm"), *args, "--kubeconfig", str(cluster.kubeconfig)], check=check, timeout=timeout)
    return res.stdout + res.stderr


def crd(cluster: Cluster) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cluster.kubectl("get", "crd", "jobqueues.skiplock.dev", "-o", "json").stdout)
    return found


def printer_columns(cluster: Cluster) -> list[str]:
    return [c["name"] for c in crd(cluster)["spec"]["versions"][0]["additionalPrinterColumns"]]


def apply_crd_file(cluster: Cluster) -> None:
    """The CRD from the plain file, with `kubectl apply` (what manifests/01-crd.yaml installs)."""
    cluster.kubectl("apply", "-f", str(CRD_FILE))
    cluster.wait_established("jobqueues.skiplock.dev")


@pytest.fixture(scope="module")
def installed(k8s_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    """``helm install`` of the chart: a namespaced operator watching team-a, the UI, and the
    migration hook, into a namespace that enforces the restricted Pod Security Standard."""
    helm = need("helm")
    apply_crd_file(k8s_cluster)
    k8s_cluster.kubectl("create", "namespace", HELM_NS)
    k8s_cluster.kubectl("label", "namespace", HELM_NS, "pod-security.kubernetes.io/enforce=restricted",
                        "pod-security.kubernetes.io/warn=restricted")
    k8s_cluster.kubectl("create", "namespace", WATCHED, check=False)
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(yaml.safe_dump(HELM_VALUES))
    kube = ["--kubeconfig", str(k8s_cluster.kubeconfig)]
    out = run([helm, "install", RELEASE, str(CHART), "--namespace", HELM_NS, "-f", str(values), "--wait",
               "--timeout", "120s", *kube], timeout=180).stdout
    yield k8s_cluster, out
    run([helm, "uninstall", RELEASE, "--namespace", HELM_NS, "--wait", *kube], check=False, timeout=120)
    for ns in (HELM_NS, WATCHED):
        k8s_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_helm_install_brings_up_the_operator_and_its_notes_work(installed: tuple[Cluster, str]) -> None:
    cluster, out = installed
    assert "STATUS: deployed" in out, out
    release = cluster.kubectl("-n", HELM_NS, "get", "secret", f"sh.helm.release.v1.{RELEASE}.v1", "-o",
                              "jsonpath={.data.release}").stdout
    print(f"helm release Secret: {len(release)} bytes of {1 << 20}")
    assert len(release) < (1 << 20) // 2, "the release (chart and CRD included) nears the Secret size limit"
    notes = out.split("NOTES:", 1)[1]
    selector = notes.split("get pods -l ", 1)[1].split()[0]
    pod = wait_operator_pod(cluster, HELM_NS, selector)  # the NOTES' command finds the pod
    assert pod["metadata"]["name"].startswith(f"{RELEASE}-skiplock-operator-")
    ui = running_pods(cluster, HELM_NS, "app.kubernetes.io/component=ui")
    assert len(ui) == 1, "the UI pod, admitted under the restricted standard"
    token = cluster.kubectl("-n", HELM_NS, "get", "secret", f"{RELEASE}-skiplock-ui", "-o", "jsonpath={.data.token}")
    assert len(token.stdout) >= 40
    assert cluster.kubectl("get", "crd", "jobqueues.skiplock.dev").returncode == 0


def test_helm_upgrade_keeps_the_ui_token(installed: tuple[Cluster, str]) -> None:
    cluster, _ = installed
    get = ("-n", HELM_NS, "get", "secret", f"{RELEASE}-skiplock-ui", "-o", "jsonpath={.data.token}")
    before = cluster.kubectl(*get).stdout
    run([need("helm"), "upgrade", RELEASE, str(CHART), "--namespace", HELM_NS, "--reuse-values", "--kubeconfig",
         str(cluster.kubeconfig), "--set", "operator.logLevel=debug"], timeout=120)
    assert cluster.kubectl(*get).stdout == before


def test_helm_namespaced_rbac(installed: tuple[Cluster, str]) -> None:
    cluster, _ = installed
    sa = f"system:serviceaccount:{HELM_NS}:{RELEASE}-skiplock-operator"
    for verb, resource in (("list", "jobqueues.skiplock.dev"), ("create", "deployments.apps"),
                           ("get", "secrets"), ("watch", "pods"), ("get", "namespaces")):
        assert can_i(cluster, verb, resource, WATCHED, sa), (verb, resource)
        assert not can_i(cluster, verb, resource, "default", sa), (verb, resource, "outside its namespaces")
    assert not can_i(cluster, "list", "jobqueues.skiplock.dev", None, sa)


def test_helm_operator_works_with_its_serviceaccount(installed: tuple[Cluster, str], dsn: str, tmp_path: Path) -> None:
    cluster, _ = installed
    cluster.kubectl("-n", WATCHED, "create", "secret", "generic", "skiplock-database",
                    f"--from-literal=DATABASE_URL={dsn}")
    rendered = json.loads(cluster.kubectl("-n", HELM_NS, "get", "deployment", f"{RELEASE}-skiplock-operator",
                                          "-o", "json").stdout)
    container = rendered["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == f"--namespace={WATCHED}"
    kubeconfig = token_kubeconfig(cluster, HELM_NS, f"{RELEASE}-skiplock-operator", tmp_path / "sa.kubeconfig")
    operator = Operator(kubeconfig, tmp_path / "operator.log", *local_args(container), pod_namespace=HELM_NS)
    operator.start()
    try:
        operator.wait_healthy()
        prove_the_operator_works(cluster, WATCHED, dsn, operator)
    finally:
        operator.stop()


def test_helm_install_ran_the_migration_hook(installed: tuple[Cluster, str]) -> None:
    """Helm ran the hook (its Secret, then the Job) and, the Job having succeeded, deleted both."""
    cluster, _ = installed
    hooks = list(yaml.safe_load_all(helm_run(cluster, "get", "hooks", RELEASE, "--namespace", HELM_NS)))
    kinds = {(h["kind"], h["metadata"]["name"]) for h in hooks if h}
    assert {("Secret", MIGRATION), ("Job", MIGRATION)} <= kinds, kinds
    for kind in ("job", "secret"):
        gone = cluster.kubectl("-n", HELM_NS, "get", kind, MIGRATION, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, (kind, gone.stdout)


def test_the_migration_job_and_the_pdb_are_admitted(installed: tuple[Cluster, str], tmp_path: Path) -> None:
    """The hook objects and, with two operator replicas, the PodDisruptionBudget, as the chart
    renders them for this release, through the API server's validation and Pod Security admission
    (warn=restricted reports a violating pod template)."""
    cluster, _ = installed
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({**HELM_VALUES, "operator": {**HELM_VALUES["operator"], "replicas": 2}}))
    rendered = run([need("helm"), "template", RELEASE, str(CHART), "--namespace", HELM_NS, "-f", str(values),
                    "--show-only", "templates/migration-job.yaml",
                    "--show-only", "templates/poddisruptionbudget.yaml"]).stdout
    res = cluster.kubectl("apply", "--dry-run=server", "-n", HELM_NS, "-f", "-", input=rendered)
    assert f"job.batch/{MIGRATION} created (server dry run)" in res.stdout, res.stdout
    assert f"secret/{MIGRATION} created (server dry run)" in res.stdout, res.stdout
    assert f"poddisruptionbudget.policy/{RELEASE}-skiplock-operator created (server dry run)" in res.stdout
    assert "violate" not in res.stderr, res.stderr


# -- the CRD's lifecycle: installed, upgraded and kept by the release that owns it ---------------------

def test_helm_upgrades_the_crd_and_uninstall_keeps_it(k8s_cluster: Cluster, tmp_path: Path) -> None:
    cluster, owner, ns = k8s_cluster, "crd-owner", f"skiplock-crds-{secrets.token_hex(3)}"
    apply_crd_file(cluster)  # as `kubectl apply -f manifests/` (or an older chart's crds/) left it: not Helm's
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"operator": {"clusterWide": False, "watchNamespaces": [ns]}}))
    install = ["install", owner, str(CHART), "--namespace", ns, "--create-namespace", "-f", str(values), "--wait"]
    refused = helm_run(cluster, *install, check=False)
    assert "CustomResourceDefinition" in refused and "ownership" in refused, refused
    try:
        helm_run(cluster, *install, "--take-ownership")  # docs/install.md: adopting the existing CRD
        meta = crd(cluster)["metadata"]
        assert meta["labels"]["app.kubernetes.io/instance"] == owner
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
        assert meta["annotations"]["meta.helm.sh/release-name"] == owner

        # A chart whose CRD has one more printer column: `helm upgrade` puts it in the cluster...
        changed = tmp_path / "chart"
        shutil.copytree(CHART, changed)
        copy = changed / CRD_FILE.relative_to(CHART)
        body = yaml.safe_load(copy.read_text())
        body["spec"]["versions"][0]["additionalPrinterColumns"].append(
            {"name": "Probe", "type": "string", "jsonPath": ".spec.queues[0]"})
        copy.write_text(yaml.safe_dump(body, sort_keys=False))
        generation = crd(cluster)["metadata"]["generation"]
        # (Helm applies server-side; the fields kubectl set are still kubectl's, so the first upgrade
        # after adopting needs --force-conflicts, as docs/install.md says; later ones do not.)
        upgrade = ["upgrade", owner, str(changed), "--namespace", ns, "--reuse-values", "--wait"]
        refused = helm_run(cluster, *upgrade, check=False)
        assert "conflict" in refused and "kubectl-client-side-apply" in refused, refused
        helm_run(cluster, *upgrade, "--force-conflicts")
        assert "Probe" in printer_columns(cluster)
        assert crd(cluster)["metadata"]["generation"] > generation
        # ...and the chart's own CRD again takes it out.
        helm_run(cluster, "upgrade", owner, str(CHART), "--namespace", ns, "--reuse-values", "--wait")
        assert "Probe" not in printer_columns(cluster)

        # Uninstalling leaves the CRD, and with it every JobQueue.
        apply_example(cluster, ns, EXAMPLES / "jobqueue-cpu.yaml")
        helm_run(cluster, "uninstall", owner, "--namespace", ns, "--wait")
        assert crd(cluster)["metadata"]["name"] == "jobqueues.skiplock.dev"
        assert cluster.kubectl("-n", ns, "get", "jobqueue", "app", check=False).returncode == 0
    finally:
        helm_run(cluster, "uninstall", owner, "--namespace", ns, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
