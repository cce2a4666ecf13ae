"""The Helm chart with the real ``helm``: lint and render every ci/ scenario, the schema's
rejections, ``fail`` on contradictory values, NOTES.txt, checksums, RBAC and security settings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .tools import (
    CHART,
    CI_VALUES,
    CRD_FILE,
    NAMESPACE,
    RELEASE,
    VERSION,
    Doc,
    find,
    helm,
    notes,
    one,
    render,
    template,
)

OPERATOR = f"{RELEASE}-operator"
SCENARIOS = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}


def test_every_ci_scenario_is_there() -> None:
    assert set(SCENARIOS) >= {"default", "gpu-pool", "existing-secret", "dashboards-off", "namespaced"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict(scenario: str) -> None:
    out = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(SCENARIOS[scenario]))
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_template_renders_valid_objects(scenario: str) -> None:
    objects = render(files=[SCENARIOS[scenario]])
    assert objects
    for o in objects:
        assert {"apiVersion", "kind", "metadata"} <= o.keys(), o
        name = o["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) and len(name) <= 63, name
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, o["metadata"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"
    keys = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
    assert len(keys) == len(objects), "two objects of one kind share a name"


def operator_deployment(objects: list[Doc]) -> Doc:
    return one(objects, "Deployment", OPERATOR)


def test_operator_deployment_defaults() -> None:
    objects = render()
    dep = operator_deployment(objects)
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/skiplock/skiplock-operator:{VERSION}"
    assert container["args"] == ["--all-namespaces", "--peering=skiplock-operator", "--lease-duration=15",
                                 "--liveness-port=8080", "--metrics-port=9090"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert pod["serviceAccountName"] == OPERATOR


def test_operator_runs_under_the_restricted_pod_security_standard() -> None:
    pod = operator_deployment(render())["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged")


def test_selectors_are_a_subset_of_the_pod_labels() -> None:
    objects = render({"ui": {"enabled": True}, "database": {"url": "postgresql://u:p@db/x"}})
    for dep in find(objects, "Deployment"):
        selector = dep["spec"]["selector"]["matchLabels"]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items(), dep["metadata"]["name"]
    for svc in find(objects, "Service"):
        targets = [d for d in find(objects, "Deployment")
                   if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)} Deployments"


# -- NOTES.txt --------------------------------------------------------------------------------------

def kubectl_selector(text: str) -> dict[str, str]:
    """The ``-l`` argument of the first ``kubectl ... get pods -l`` line of NOTES.txt."""
    m = re.search(r"get pods -l (\S+)", text)
    assert m, text
    return dict(pair.split("=", 1) for pair in m.group(1).split(","))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_notes_selector_matches_the_operator_pods(scenario: str) -> None:
    text = notes(files=[SCENARIOS[scenario]])
    selector = kubectl_selector(text)
    dep = operator_deployment(render(files=[SCENARIOS[scenario]]))
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert selector == dep["spec"]["selector"]["matchLabels"]
    assert f"--namespace {NAMESPACE} get pods" in text


def test_notes_name_the_objects_that_exist() -> None:
    files = [SCENARIOS["existing-secret"]]
    text = notes(files=files)
    objects = render(files=files)
    (svc_name,) = re.findall(r"port-forward service/(\S+)", text)
    one(objects, "Service", svc_name)
    assert "get secret skiplock-ui-token" in text and "{.data.token}" in text
    assert f"{NAMESPACE}/emails" in text
    text = notes({"operator": {"clusterWide": False, "watchNamespaces": ["a", "b"]}})
    assert "watching JobQueues in: a, b" in text


# -- values.schema.json: wrong types and unknown keys are rejected --------------------------------

REJECTED = [
    ({"operator": {"replicas": "two"}}, "/operator/replicas"),
    ({"operator": {"logLevel": "verbose"}}, "/operator/logLevel"),
    ({"operator": {"clusterWide": "yes"}}, "/operator/clusterWide"),
    ({"operator": {"image": {"tagg": "1.0"}}}, "tagg"),
    ({"operatr": {"replicas": 1}}, "operatr"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "/metrics/serviceMonitor/interval"),
    ({"metrics": {"prometheusRule": {"alerts": {"queueStuck": {"severity": "page"}}}}}, "severity"),
    ({"metrics": {"prometheusRule": {"alerts": {"queueStuck": {"oldestPendingSeconds": "15m"}}}}},
     "oldestPendingSeconds"),
    ({"dashboards": {"labelValue": 1}}, "/dashboards/labelValue"),
    ({"dashboards": {"enabled": "false"}}, "/dashboards/enabled"),
    ({"database": {"url": "mysql://x"}}, "/database/url"),
    ({"ui": {"service": {"type": "Ingress"}}}, "/ui/service/type"),
    ({"jobQueues": [{"name": "q"}]}, "spec"),
    ({"jobQueues": [{"name": "Q_1", "spec": {"queues": ["a"], "pools": [{"name": "p"}]}}]}, "/jobQueues/0/name"),
    ({"operator": {"watchNamespaces": "team-a"}}, "/operator/watchNamespaces"),
    ({"commonLabels": {"team": 7}}, "/commonLabels/team"),
    ({"crds": {"install": "yes"}}, "/crds/install"),
    ({"crds": {"annotations": {"a": 1}}}, "/crds/annotations/a"),
    ({"migration": {"backoffLimit": -1}}, "/migration/backoffLimit"),
    ({"migration": {"image": "x"}}, "image"),
    ({"operator": {"podDisruptionBudget": {"maxUnavailable": 0}}}, "/operator/podDisruptionBudget/maxUnavailable"),
    ({"operator": {"migrateDatabases": "no"}}, "/operator/migrateDatabases"),
]


@pytest.mark.parametrize(("values", "where"), REJECTED, ids=[w for _, w in REJECTED])
def test_schema_rejects(values: dict[str, Any], where: str) -> None:
    res = template(values, check=False)
    assert res.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in res.stderr, res.stderr
    assert where in res.stderr, res.stderr


def walk_schema(node: dict[str, Any], path: str = "") -> list[str]:
    """Paths of object schemas that leave additionalProperties open while listing properties."""
    open_ = []
    if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
        open_.append(path or "/")
    for key, child in node.get("properties", {}).items():
        open_ += walk_schema(child, f"{path}/{key}")
    if isinstance(node.get("items"), dict):
        open_ += walk_schema(node["items"], f"{path}[]")
    return open_


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    # jobQueues[].spec is the JobQueue spec: the CRD's schema validates it in the API server.
    assert walk_schema(schema) == ["/jobQueues[]/spec"]


def leaves(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of values.yaml down to where the schema stops listing properties (an opaque map,
    e.g. resources, is one leaf)."""
    props = schema.get("properties")
    if isinstance(values, dict) and props:
        return [p for k, v in values.items() for p in leaves(v, props.get(k, {}), f"{path}/{k}")]
    return [path]


def schema_paths(node: dict[str, Any], path: str = "") -> set[str]:
    props = node.get("properties")
    if node.get("type") == "object" and props:
        return {p for k, v in props.items() for p in schema_paths(v, f"{path}/{k}")}
    return {path}


def test_schema_and_values_describe_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(leaves(values, schema)) == schema_paths(schema)


def test_every_value_is_commented() -> None:
    """Each key of values.yaml that holds a value (not a nested block) has a comment above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    assert lines[0].startswith("# yaml-language-server: $schema=values.schema.json")
    missing = []
    for n, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not m or not m.group(3).strip():
            continue  # a nested block: its keys carry the comments
        above = lines[n - 1].strip() if n else ""
        if not above.startswith("#"):
            missing.append(line.strip())
    # Values inside a default list or map (probe fields, resources) are not chart values.
    allowed = re.compile(r"^(path|port|type|cpu|memory|drop|initialDelaySeconds|periodSeconds|timeoutSeconds|"
                         r"failureThreshold|runAsNonRoot|runAsUser|runAsGroup|fsGroup|allowPrivilegeEscalation|"
                         r"readOnlyRootFilesystem|app\.kubernetes\.io/name):")
    assert [m for m in missing if not allowed.match(m)] == []


# -- fail on contradictory values -------------------------------------------------------------------

CONTRADICTIONS = [
    ({"database": {"url": "postgresql://x@db/x", "existingSecret": {"name": "db", "key": "url"}}},
     "database.url and database.existingSecret.name are both set"),
    ({"operator": {"watchNamespaces": ["a"]}}, "operator.clusterWide=true watches every namespace"),
    ({"operator": {"clusterWide": False}}, "operator.clusterWide=false needs operator.watchNamespaces"),
    ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
     "metrics.serviceMonitor.enabled=true needs metrics.enabled=true"),
    ({"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}}, "the alerts would have no data"),
    ({"ui": {"enabled": True}}, "ui.enabled=true needs a database"),
    ({"ui": {"enabled": True, "token": "t", "existingSecret": {"name": "s", "key": "token"}},
      "database": {"url": "postgresql://x@db/x"}}, "ui.token and ui.existingSecret.name are both set"),
    ({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}},
     "operator.replicas > 1 needs operator.leaderElection.enabled=true"),
    ({"jobQueues": [{"name": "q", "spec": {"queues": ["a"], "pools": [{"name": "p"}]}}]},
     "names no spec.database and the chart has none"),
    ({"database": {"url": "postgresql://x@db/x"},
      "jobQueues": [{"name": "q", "namespace": "other", "spec": {"queues": ["a"], "pools": [{"name": "p"}]}}]},
     "lives in namespace other, where the chart's database Secret is not"),
]


@pytest.mark.parametrize(("values", "message"), CONTRADICTIONS, ids=[m[:40] for _, m in CONTRADICTIONS])
def test_fail_on_contradictory_values(values: dict[str, Any], message: str) -> None:
    res = template(values, check=False)
    assert res.returncode != 0, f"accepted {values}"
    assert message in res.stderr, res.stderr


# -- checksums ---------------------------------------------------------------------------------------

def pod_annotations(objects: list[Doc], name: str) -> dict[str, str]:
    annotations: dict[str, str] = one(objects, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    return annotations


def test_config_checksum_rolls_the_operator() -> None:
    base = pod_annotations(render(), OPERATOR)["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert pod_annotations(render(), OPERATOR)["checksum/config"] == base  # deterministic
    changed = pod_annotations(render({"operator": {"logLevel": "debug"}}), OPERATOR)["checksum/config"]
    assert changed != base
    changed = pod_annotations(render({"operator": {"env": {"SKIPLOCK_X": 1}}}), OPERATOR)["checksum/config"]
    assert changed != base


def test_secret_checksum_rolls_the_ui() -> None:
    def checksum(token: str, url: str = "postgresql://u@db/x") -> str:
        values = {"ui": {"enabled": True, "token": token}, "database": {"url": url}}
        return pod_annotations(render(values), f"{RELEASE}-ui")["checksum/secret"]

    assert checksum("a") == checksum("a")
    assert checksum("a") != checksum("b")
    assert checksum("a") != checksum("a", "postgresql://u@db2/x")


# -- scenarios ---------------------------------------------------------------------------------------

def test_gpu_pool_scenario() -> None:
    objects = render(files=[SCENARIOS["gpu-pool"]])
    secret = one(objects, "Secret", f"{RELEASE}-database")
    assert secret["stringData"]["DATABASE_URL"].startswith("postgresql://")
    jq = one(objects, "JobQueue", "media")
    assert jq["apiVersion"] == "skiplock.dev/v1alpha1"
    assert jq["metadata"]["namespace"] == NAMESPACE
    assert jq["spec"]["database"] == {"secretRef": {"name": f"{RELEASE}-database", "key": "DATABASE_URL"}}
    images = {p["name"]: p["image"] for p in jq["spec"]["pools"]}
    worker = f"ghcr.io/skiplock/skiplock-worker:{VERSION}"
    assert images == {"cpu": worker, "gpu": f"{worker}-gpu"}


def test_existing_secret_scenario() -> None:
    objects = render(files=[SCENARIOS["existing-secret"]])
    assert not find(objects, "Secret"), "the chart must not make Secrets when existing ones are named"
    jq = one(objects, "JobQueue", "emails")
    assert jq["spec"]["database"] == {"secretRef": {"name": "skiplock-db", "key": "uri"}}
    assert jq["spec"]["pools"][0]["image"] == "registry.example.com/mail-worker:1.4.2"
    ui = one(objects, "Deployment", f"{RELEASE}-ui")["spec"]["template"]["spec"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in ui["containers"][0]["env"]}
    assert env["DATABASE_URL"] == {"name": "skiplock-db", "key": "uri"}
    assert env["SKIPLOCK_UI_TOKEN"] == {"name": "skiplock-ui-token", "key": "token"}
    assert ui["containers"][0]["command"] == ["skiplock"]
    assert ui["containers"][0]["args"][:5] == ["ui", "--host", "0.0.0.0", "--port", "8000"]
    assert ui["automountServiceAccountToken"] is False


def test_ui_answers_to_its_service_names_loopback_and_the_allowed_hosts() -> None:
    """The UI's Host allow-list (against DNS rebinding) lets in port-forward, the Service and an Ingress host."""
    values = {"ui": {"enabled": True, "allowedHosts": ["jobs.example.com"]}, "database": {"url": "postgresql://u@db/x"}}
    args = one(render(values), "Deployment", f"{RELEASE}-ui")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[5] == "--allowed-hosts"
    svc = f"{RELEASE}-ui"
    assert args[6].split(",") == ["localhost", "127.0.0.1", "::1", svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc",
                                  f"{svc}.{NAMESPACE}.svc.cluster.local", "jobs.example.com"]


def test_ui_token_is_generated_when_not_given() -> None:
    objects = render({"ui": {"enabled": True}, "database": {"url": "postgresql://u@db/x"}})
    secret = one(objects, "Secret", f"{RELEASE}-ui")
    assert len(secret["data"]["token"]) >= 40


def test_dashboards_off_scenario() -> None:
    objects = render(files=[SCENARIOS["dashboards-off"]])
    assert not [o for o in find(objects, "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]
    sm = one(objects, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["spec"]["endpoints"][0]["interval"] == "30s"
    svc = one(objects, "Service", OPERATOR)
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    pm = one(objects, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "skiplock-worker"}
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    rule = one(objects, "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {a["labels"]["team"] for a in alerts} == {"platform"}


def test_dashboards_ship_as_labelled_configmaps() -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert {f.stem for f in files} == {"queues", "pools"}
    objects = render({"dashboards": {"namespace": "monitoring", "label": "grafana_dash", "labelValue": "yes",
                                     "annotations": {"grafana_folder": "skiplock"}}})
    maps = [o for o in find(objects, "ConfigMap") if "grafana_dash" in o["metadata"]["labels"]]
    assert len(maps) == len(files)
    for cm in maps:
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["labels"]["grafana_dash"] == "yes"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "skiplock"}
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / key).read_text())
    defaults = [o for o in find(render(), "ConfigMap") if o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(defaults) == len(files) and {o["metadata"]["namespace"] for o in defaults} == {NAMESPACE}


def test_namespaced_scenario_grants_nothing_cluster_wide() -> None:
    objects = render(files=[SCENARIOS["namespaced"]])
    dep = operator_deployment(objects)
    assert dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["--namespace=team-a", "--namespace=team-b", "--peering=skiplock-teams"]
    assert container["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in find(objects, "Role")}
    assert set(roles) == {("team-a", OPERATOR), ("team-b", OPERATOR), (NAMESPACE, f"{OPERATOR}-leader-election")}
    for ns in ("team-a", "team-b"):
        resources = {r for rule in roles[ns, OPERATOR]["rules"] for r in rule["resources"]}
        assert resources == {"jobqueues", "jobqueues/status", "deployments", "pods", "secrets", "events",
                             "namespaces"}
    lease_rules = roles[NAMESPACE, f"{OPERATOR}-leader-election"]["rules"]
    assert {"resourceNames": ["skiplock-teams"]}.items() <= lease_rules[1].items()
    bindings = find(objects, "RoleBinding")
    assert len(bindings) == 3
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
               for b in bindings)
    pm = one(objects, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    for cm in [o for o in find(objects, "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]:
        assert cm["metadata"]["namespace"] == "monitoring"


def test_standalone_operator_has_no_lease_rights() -> None:
    objects = render({"operator": {"leaderElection": {"enabled": False}}})
    assert "--standalone" in operator_deployment(objects)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not find(objects, "Role") and not find(objects, "RoleBinding")


def rbac_rule_blocks(text: str) -> list[tuple[list[str], str]]:
    """Each ``- apiGroups:`` rule of rendered RBAC with the comment lines right above it."""
    lines = text.splitlines()
    blocks = []
    for n, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            comments: list[str] = []
            k = n - 1
            while k >= 0 and lines[k].strip().startswith("#"):
                comments.insert(0, lines[k].strip())
                k -= 1
            blocks.append((comments, line))
    return blocks


@pytest.mark.parametrize("scenario", ["default", "namespaced"])
def test_every_rbac_rule_says_why(scenario: str) -> None:
    text = template(files=[SCENARIOS[scenario]], show_only=["rbac.yaml"]).stdout
    blocks = rbac_rule_blocks(text)
    assert blocks
    for comments, rule in blocks:
        assert comments and re.match(r"# (Framework|Application|Leader election): \S", comments[0]), rule


def test_rbac_is_least_privilege() -> None:
    objects = render()
    rules = one(objects, "ClusterRole", OPERATOR)["rules"]
    rules += [r for role in find(objects, "Role") for r in role["rules"]]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
    grants = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    secrets = {v for g, r, v in grants if r == "secrets"}
    assert secrets == {"get"}, "the operator reads the DSN Secret a JobQueue names; it never lists Secrets"
    assert not {v for g, r, v in grants if r == "jobqueues"} & {"create", "update", "delete"}
    assert {v for g, r, v in grants if r == "namespaces"} == {"get"}, "a namespace's labels, never a list"
    assert {(g, r) for g, r, _ in grants} == {
        ("skiplock.dev", "jobqueues"), ("skiplock.dev", "jobqueues/status"), ("apps", "deployments"),
        ("", "pods"), ("", "secrets"), ("", "events"), ("", "namespaces"), ("coordination.k8s.io", "leases")}
    binding = one(objects, "ClusterRoleBinding", OPERATOR)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]


def test_rbac_and_serviceaccount_can_be_brought_by_the_user() -> None:
    objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}})
    assert not find(objects, "ClusterRole") and not find(objects, "Role") and not find(objects, "ServiceAccount")
    assert operator_deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    res = template({"serviceAccount": {"create": False}}, check=False)
    assert "serviceAccount.name is required" in res.stderr


def test_names_follow_overrides_and_stay_within_63_characters() -> None:
    objects = render({"fullnameOverride": "q"})
    one(objects, "Deployment", "q-operator")
    longest = render({"ui": {"enabled": True}, "database": {"url": "postgresql://u@db/x"}}, release="r" * 53)
    for o in longest:
        assert len(o["metadata"]["name"]) <= 63
    assert len({(o["kind"], o["metadata"]["name"]) for o in longest}) == len(longest)
    objects = render(release="prod")
    one(objects, "Deployment", "prod-skiplock-operator")


def test_namespace_override() -> None:
    for o in render({"namespaceOverride": "elsewhere"}):
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                             "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            assert o["metadata"]["namespace"] == "elsewhere", o["kind"]


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["type"] == "application"
    crd = yaml.safe_load(CRD_FILE.read_text())
    versions = [v["name"] for v in crd["spec"]["versions"]]
    annotated = yaml.safe_load(chart["annotations"]["artifacthub.io/crds"])
    assert [c["version"] for c in annotated] == versions[:1]
    assert Path(CHART / ".helmignore").exists()


# -- the CRD: a template over the plain file, upgraded with the release, kept on uninstall ------------

def test_crd_is_the_plain_file_with_the_release_metadata() -> None:
    crd = one(render(), "CustomResourceDefinition")
    plain = yaml.safe_load(CRD_FILE.read_text())
    assert {k: v for k, v in crd.items() if k != "metadata"} == {k: v for k, v in plain.items() if k != "metadata"}
    assert crd["metadata"]["name"] == plain["metadata"]["name"] == "jobqueues.skiplock.dev"
    assert plain["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert "namespace" not in crd["metadata"]


def test_crd_values() -> None:
    assert not find(render({"crds": {"install": False}}), "CustomResourceDefinition")
    assert "annotations" not in one(render({"crds": {"keep": False}}), "CustomResourceDefinition")["metadata"]
    crd = one(render({"crds": {"annotations": {"team": "platform"}}}), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep", "team": "platform"}


def test_nothing_is_left_in_crds_dir() -> None:
    """Helm installs crds/ once and never upgrades it: the CRD must live in templates/ only."""
    assert not (CHART / "crds").exists()


# -- the migration Job: `skiplock migrate` for the chart's database, before install and upgrade -------

MIGRATION = f"{RELEASE}-migration"
HOOK = {"helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}


def migration_job(objects: list[Doc]) -> Doc:
    job = one(objects, "Job", MIGRATION)
    assert job["apiVersion"] == "batch/v1"
    annotations = job["metadata"]["annotations"]
    assert HOOK.items() <= annotations.items()
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/skiplock/skiplock-worker:{VERSION}"
    assert container["command"] == ["skiplock"] and container["args"] == ["migrate"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert job["spec"]["backoffLimit"] == 3 and job["spec"]["activeDeadlineSeconds"] == 600
    return job


def database_url_ref(job: Doc) -> dict[str, str]:
    (env,) = [e for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "DATABASE_URL"]
    ref: dict[str, str] = env["valueFrom"]["secretKeyRef"]
    return ref


def test_no_database_no_migration_job() -> None:
    objects = render()
    assert not find(objects, "Job") and not find(objects, "Secret")


def test_migration_job_with_a_database_url_reads_it_from_a_hook_secret() -> None:
    """At pre-install the chart's own database Secret does not exist yet: the Job's comes first."""
    objects = render(files=[SCENARIOS["gpu-pool"]])
    job = migration_job(objects)
    secret = one(objects, "Secret", MIGRATION)
    assert HOOK.items() <= secret["metadata"]["annotations"].items()
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < \
        int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert secret["stringData"] == one(objects, "Secret", f"{RELEASE}-database")["stringData"]
    assert database_url_ref(job) == {"name": MIGRATION, "key": "DATABASE_URL"}
    assert f"migrated by the Job {MIGRATION}" in notes(files=[SCENARIOS["gpu-pool"]])


def test_migration_job_with_an_existing_secret_reads_it() -> None:
    objects = render(files=[SCENARIOS["existing-secret"]])
    assert database_url_ref(migration_job(objects)) == {"name": "skiplock-db", "key": "uri"}
    assert not find(objects, "Secret")


def test_migration_job_values() -> None:
    url = {"database": {"url": "postgresql://u@db/x"}}
    assert not find(render({**url, "migration": {"enabled": False}}), "Job")
    job = one(render({**url, "global": {"imageRegistry": "mirror.example"},
                      "worker": {"image": {"tag": "9.9.9"}},
                      "migration": {"backoffLimit": 0, "activeDeadlineSeconds": 30,
                                    "extraEnv": [{"name": "PGSSLMODE", "value": "verify-full"}],
                                    "nodeSelector": {"pool": "system"}}}), "Job", MIGRATION)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "mirror.example/ghcr.io/skiplock/skiplock-worker:9.9.9"
    assert {"name": "PGSSLMODE", "value": "verify-full"} in pod["containers"][0]["env"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (0, 30)


# -- the operator: its PodDisruptionBudget with standbys, and its schema migrations -----------------------

def test_pdb_only_with_more_than_one_operator() -> None:
    assert not find(render(), "PodDisruptionBudget"), "one replica: a budget would block every drain"
    objects = render(files=[SCENARIOS["namespaced"]])
    pdb = one(objects, "PodDisruptionBudget", OPERATOR)
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == operator_deployment(objects)["spec"]["selector"]["matchLabels"]
    assert not find(render({"operator": {"replicas": 3, "podDisruptionBudget": {"enabled": False}}}),
                    "PodDisruptionBudget")


def test_operator_migrates_databases_unless_told_not_to() -> None:
    def args(values: dict[str, Any]) -> list[str]:
        found: list[str] = operator_deployment(render(values))["spec"]["template"]["spec"]["containers"][0]["args"]
        return found

    assert "--no-migrate" not in args({})
    assert "--no-migrate" in args({"operator": {"migrateDatabases": False}})
