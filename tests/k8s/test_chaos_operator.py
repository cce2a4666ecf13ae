"""Operator-side chaos on the real API server tier: the operator killed (SIGKILL) and restarted
again and again while it scales, the API server restarted mid-scaling, the database unreachable for
a while (connections refused, queries hanging, PostgreSQL restarted). Checked each time: no crash
loop, no duplicate or stray Deployment, no spurious rollout, the condition reported while it lasts,
scaling resumes after it, and the DSN's password never appears in status, events, logs or metrics."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from skiplock.embedded import LocalPostgres
from tests.chaos.proxy import DelayRule, PgProxy
from tests.k8s.cluster import Cluster, wait_for
from tests.k8s.test_operator import CRD, Api, Operator, cancel, cpu_pool, enqueue, jobqueue

pytestmark = pytest.mark.timeout(420)
DEPTH = "FILTER (WHERE state <> 'running') AS pending"  # the depth statement the operator polls with


@pytest.fixture(scope="module")
def crd_cluster(k8s_cluster: Cluster) -> Cluster:
    k8s_cluster.kubectl("apply", "-f", str(CRD))
    k8s_cluster.wait_established("jobqueues.skiplock.dev")
    return k8s_cluster


class Setup:
    """A namespace whose Secret holds a password-bearing DSN that goes through a severable proxy to a
    private PostgreSQL, and the operators started on it."""

    def __init__(self, cluster: Cluster, server: LocalPostgres, proxy: PgProxy, tmp: Path) -> None:
        self.cluster, self.server, self.proxy, self.tmp = cluster, server, proxy, tmp
        self.ns = f"chaos-{secrets.token_hex(3)}"
        self.password = "pw-" + secrets.token_hex(8)
        self.dsn = server.uri  # direct, for the test's own reads and writes
        self.secret_dsn = proxy.dsn(f"postgresql://postgres:{self.password}@127.0.0.1:{server.port}/postgres")
        self.api = Api(cluster, self.ns)
        self.operators: list[Operator] = []

    def start_operator(self, *args: str) -> Operator:
        """Start an operator and wait until it operates (past its startup check of the API, which
        waits out an API server outage: test_an_operator_started_while_the_api_server_is_away...)."""
        op = Operator(self.cluster, self.ns, self.tmp / f"operator-{len(self.operators)}.log",
                      "--standalone", "--query-timeout", "1", *args)
        self.operators.append(op.start())
        wait_for(lambda: "operating on" in op.log.read_text(errors="replace"), 60, "the operator operating")
        return op

    def kill_and_restart(self, op: Operator) -> Operator:
        """SIGKILL a running operator (it must still be running: no crash) and start another."""
        assert op.proc is not None and op.proc.poll() is None, "the operator exited on its own:\n" + op.tail()
        op.stop(signal.SIGKILL)
        time.sleep(random.uniform(0, 1.5))
        return self.start_operator()

    def deployments(self) -> dict[str, dict[str, Any]]:
        return self.api.deployments()

    def replica_sets(self) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", "replicasets", "-n", self.ns, "-o", "json").stdout
        return list(json.loads(out)["items"])

    def event_reasons(self) -> list[str]:
        out = self.cluster.kubectl("get", "events", "-n", self.ns, "-o", "json").stdout
        return [e["reason"] for e in json.loads(out)["items"]]

    def everything_written(self) -> str:
        """Status, events, operator logs and metrics: where a DSN must never appear."""
        events = self.cluster.kubectl("get", "events", "-n", self.ns, "-o", "json").stdout
        jqs = self.cluster.kubectl("get", "jobqueues", "-n", self.ns, "-o", "json").stdout
        logs = "\n".join(op.log.read_text(errors="replace") for op in self.operators if op.log.exists())
        metrics = "\n".join(op.get("/metrics", op.metrics_port) or "" for op in self.operators if op.proc)
        return "\n".join([events, jqs, logs, metrics])


@pytest.fixture
def setup(crd_cluster: Cluster, tmp_path: Path) -> Iterator[Setup]:
    with LocalPostgres() as server:
        from skiplock.migrate import migrate
        with psycopg.connect(server.uri, autocommit=True) as conn:
            migrate(conn)
        with PgProxy(server.port) as proxy:
            s = Setup(crd_cluster, server, proxy, tmp_path)
            crd_cluster.kubectl("create", "namespace", s.ns)
            crd_cluster.kubectl("create", "secret", "generic", "db", "-n", s.ns,
                                f"--from-literal=DATABASE_URL={s.secret_dsn}")
            try:
                yield s
            finally:
                proxy.clear_rules()
                proxy.refuse(False)
                running = [op for op in s.operators if op.proc is not None]
                if running:
                    crd_cluster.kubectl("delete", "jobqueues", "--all", "-n", s.ns, "--timeout=30s", check=False)
                for op in running:
                    op.stop()
                for op in s.operators:
                    print(f"--- {op.log.name} ---\n{op.tail(30)}")
                crd_cluster.kubectl("delete", "namespace", s.ns, "--wait=false")


def two_pools(name: str) -> dict[str, Any]:
    return jobqueue(name, cpu_pool(name="a", concurrency=2, maxReplicas=6),
                    cpu_pool(name="b", jobTypes=["b"], concurrency=2, maxReplicas=4))


def replicas(api: Api, name: str) -> tuple[int | None, int | None]:
    return api.replicas(f"{name}-a"), api.replicas(f"{name}-b")


def check_no_duplicates(s: Setup, name: str) -> None:
    """One Deployment per pool, owned by the JobQueue; one ReplicaSet each (a restart never rolls)."""
    deployments = s.deployments()
    assert sorted(deployments) == [f"{name}-a", f"{name}-b"], sorted(deployments)
    uid = s.api.jobqueue(name)["metadata"]["uid"]
    for dep in deployments.values():
        assert [o["uid"] for o in dep["metadata"]["ownerReferences"]] == [uid]
    owners = [rs["metadata"]["ownerReferences"][0]["name"] for rs in s.replica_sets()]
    assert sorted(owners) == [f"{name}-a", f"{name}-b"], f"spurious rollouts: {owners}"
    assert s.event_reasons().count("DeploymentCreated") == 2


def test_operator_killed_and_apiserver_restarted_while_scaling(setup: Setup) -> None:
    s, api = setup, setup.api
    op = s.start_operator()
    api.apply(two_pools("kq"))
    wait_for(lambda: api.condition("kq", "Ready").get("status") == "True", 60, "Ready")
    kills = 0
    # Scale up (a: 12 jobs / 2 per pod = 6, b: 8 / 2 = 4), killing the operator at random moments.
    ids = asyncio.run(enqueue(s.dsn, 12)) + asyncio.run(enqueue(s.dsn, 8, type="b"))
    for _ in range(3):
        time.sleep(random.uniform(0.3, 2.5))
        op = s.kill_and_restart(op)
        kills += 1
    s.cluster.restart_apiserver(graceful=False)  # mid-scaling, without a goodbye
    started = time.monotonic()
    wait_for(lambda: replicas(api, "kq") == (6, 4), 90, "scaled up to 6 + 4 after the faults")
    print(f"converged {time.monotonic() - started:.1f}s after the API server came back")
    check_no_duplicates(s, "kq")
    # Scale down to zero, killing it again, and restarting the API server gracefully this time.
    asyncio.run(cancel(s.dsn, ids))
    for _ in range(2):
        time.sleep(random.uniform(0.3, 2.0))
        op = s.kill_and_restart(op)
        kills += 1
    s.cluster.restart_apiserver(graceful=True)
    wait_for(lambda: replicas(api, "kq") == (0, 0), 120, "scaled down to zero after the faults")
    check_no_duplicates(s, "kq")
    wait_for(lambda: api.condition("kq", "Ready").get("status") == "True", 60, "Ready at the end")
    jq = api.jobqueue("kq")
    assert jq["status"]["observedGeneration"] == jq["metadata"]["generation"]
    assert op.proc is not None and op.proc.poll() is None and op.get("/healthz") == "ok\n", op.tail()
    print(f"operator-chaos: SIGKILL={kills} apiserver-restarts=2 deployments=2 duplicates=0")


def test_database_unreachable_while_scaling(setup: Setup) -> None:
    s, api = setup, setup.api
    op = s.start_operator()
    api.apply(jobqueue("dq", cpu_pool(concurrency=2, maxReplicas=6)))
    wait_for(lambda: api.condition("dq", "Ready").get("status") == "True", 60, "Ready")
    ids = asyncio.run(enqueue(s.dsn, 8))
    wait_for(lambda: api.replicas("dq-cpu") == 4, 60, "4 replicas")
    faults: list[str] = []

    def outage(kind: str, start: Callable[[], object], end: Callable[[], object], seconds: float) -> None:
        """While the fault lasts: reported (not Ready, DatabaseUnreachable), no crash, replicas held."""
        start()
        faults.append(kind)
        try:
            wait_for(lambda: api.condition("dq", "Ready").get("reason") == "DatabaseUnreachable", 30,
                     f"{kind}: DatabaseUnreachable reported")
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                assert op.proc is not None and op.proc.poll() is None, f"{kind}: the operator died\n{op.tail()}"
                assert api.replicas("dq-cpu") == 4, f"{kind}: replicas changed while the database was away"
                time.sleep(0.5)
            assert op.get("/healthz") == "ok\n" and op.metric("skiplock_operator_database_up", jobqueue="dq") == 0
        finally:
            end()
        wait_for(lambda: api.condition("dq", "Ready").get("status") == "True", 60, f"{kind}: Ready again")

    def refuse() -> None:
        s.proxy.refuse(True)
        s.proxy.sever_all()

    outage("refused", refuse, lambda: s.proxy.refuse(False), 6)
    outage("hanging", lambda: s.proxy.add_rule(DelayRule("depth", DEPTH, seconds=8)), s.proxy.clear_rules, 6)
    outage("postgres-down", lambda: s.server.stop("immediate"), s.server.start, 4)
    assert {"DatabaseUnreachable", "DatabaseReachable"} <= set(s.event_reasons())
    # Recovery resumes: more work scales up, no work scales down.
    ids += asyncio.run(enqueue(s.dsn, 4))
    wait_for(lambda: api.replicas("dq-cpu") == 6, 60, "scaled up after the outages")
    asyncio.run(cancel(s.dsn, ids))
    wait_for(lambda: api.replicas("dq-cpu") == 0, 60, "scaled to zero after the outages")
    assert sorted(s.deployments()) == ["dq-cpu"]
    assert len(s.operators) == 1, "the operator was restarted"
    written = s.everything_written()
    assert "DatabaseUnreachable" in written
    assert s.password not in written, "the DSN's password leaked into status, events, logs or metrics"
    print(f"operator-db-chaos: outages={faults} crashes=0 replicas-held=yes password-leaks=0")


def test_a_malformed_dsn_is_reported_without_echoing_it(setup: Setup) -> None:
    s, api = setup, setup.api
    broken = {"bad-escape": f"postgresql://postgres:{s.password}%zz@127.0.0.1:{s.server.port}/postgres",
              "bad-bracket": f"postgresql://postgres:{s.password}@[::1/postgres",
              "not-a-dsn": f"{s.password} is not a connection string"}
    for key, value in broken.items():
        s.cluster.kubectl("create", "secret", "generic", key, "-n", s.ns, f"--from-literal=DATABASE_URL={value}")
    op = s.start_operator()
    # What the schema cannot express (the Secret's content, its existence) is refused by the operator:
    # a condition and a Warning event, no crash, and never the DSN in either.
    for key in broken:
        api.apply(jobqueue(key, cpu_pool(), database={"secretRef": {"name": key}}))
    api.apply(jobqueue("no-secret", cpu_pool(), database={"secretRef": {"name": "absent"}}))
    reasons = {}
    def refused(name: str) -> bool:
        return bool(api.condition(name, "Ready").get("status") == "False")

    for key in [*broken, "no-secret"]:
        wait_for(functools.partial(refused, key), 60, f"{key}: not Ready")
        reasons[key] = api.condition(key, "Ready").get("reason")
        assert api.condition(key, "Degraded").get("status") == "True"
    assert reasons["no-secret"] == "SecretNotFound", reasons
    assert all(reasons[k] in ("InvalidDsn", "DatabaseUnreachable") for k in broken), reasons
    warnings = json.loads(s.cluster.kubectl("get", "events", "-n", s.ns, "--field-selector", "type=Warning",
                                            "-o", "json").stdout)["items"]
    assert set(reasons.values()) <= {e["reason"] for e in warnings}, [e["reason"] for e in warnings]
    assert op.proc is not None and op.proc.poll() is None
    assert s.password not in s.everything_written(), "a malformed DSN's password leaked"


def test_an_operator_started_while_the_api_server_is_away_waits_for_it(setup: Setup) -> None:
    s = setup
    server = s.cluster.server.rsplit(":", 1)
    with PgProxy(int(server[1]), raw=True) as gate:
        gate.refuse(True)
        config = json.loads(s.cluster.kubeconfig.read_text())
        for entry in config["clusters"]:
            entry["cluster"]["server"] = f"https://127.0.0.1:{gate.port}"
        kubeconfig = s.tmp / "gated-kubeconfig"
        kubeconfig.write_text(json.dumps(config))
        op = Operator(s.cluster, s.ns, s.tmp / "gated.log", "--standalone", kubeconfig=kubeconfig)
        s.operators.append(op.start())  # /healthz answers before the API is first asked anything
        time.sleep(8)  # the API server stays unreachable for a while
        assert op.proc is not None and op.proc.poll() is None, "exited while the API server was away:\n" + op.tail()
        gate.refuse(False)
        wait_for(lambda: "operating on" in op.log.read_text(errors="replace"), 60, "operating once it is back")


# -- bad input at the API server ----------------------------------------------------------------------

def cel_violation(spec: dict[str, Any]) -> str | None:
    """The message of the CRD's first CEL rule (x-kubernetes-validations) that ``spec`` breaks, if any."""
    pools = spec["pools"]
    if sum(1 for p in pools if not p.get("jobTypes")) > 1:
        return "at most one pool may leave jobTypes empty"
    types = [t for p in pools for t in p.get("jobTypes", [])]
    if len(types) != len(set(types)):
        return "a job type may be listed in the jobTypes of one pool only"
    if any(p.get("minReplicas", 0) > p.get("maxReplicas", 10) for p in pools):
        return "minReplicas must not exceed maxReplicas"
    reserved = {"DATABASE_URL", "SKIPLOCK_DATABASE_URL", "SKIPLOCK_WORKER_ID", "SKIPLOCK_QUEUES", "SKIPLOCK_TYPES",
                "SKIPLOCK_CONCURRENCY", "SKIPLOCK_METRICS_PORT", "SKIPLOCK_LEASE_SECONDS", "SKIPLOCK_HANDLERS",
                "SKIPLOCK_SHUTDOWN_GRACE"}
    if any(e["name"] in reserved for p in pools for e in p.get("env", [])):
        return "env may not set variables the operator manages"
    if any(("cron" in s) == ("every" in s) for s in spec.get("schedules", [])):
        return "give exactly one of cron or every"
    retries = [q["retry"] for q in spec.get("queueSettings", []) if "retry" in q]
    if any(("intervals" in r) + ("every" in r) + ("backoffBase" in r or "backoffMax" in r) != 1 for r in retries):
        return "give exactly one of intervals, every, or backoffBase/backoffMax"
    return None


# Values the schema forbids where they are put (each alone makes the API server refuse the JobQueue).
SCHEMA_VIOLATIONS: list[tuple[str, Any]] = [
    ("queues", []), ("queues", "default"), ("queues.0", ""), ("queues.0", "a,b"), ("queues.0", "a b"),
    ("queues.0", 5), ("pools", []), ("pools.0.name", "Bad_Name"), ("pools.0.name", ""), ("pools.0.name", "x" * 21),
    ("pools.0.image", ""), ("pools.0.concurrency", 0), ("pools.0.concurrency", "ten"), ("pools.0.minReplicas", -1),
    ("pools.0.maxReplicas", 1001), ("pools.0.gpu.count", 0), ("pools.0.terminationGracePeriodSeconds", 1),
    ("pools.0.resources.requests", "cpu"), ("pools.0.resources.limits", {"cpu": "lots"}),
    ("pools.0.imagePullPolicy", "Sometimes"), ("pools.0.handlers", "not a module"), ("database", {}),
    ("database.secretRef.name", ""), ("database.url", "postgresql://inline"), ("scaling.pollIntervalSeconds", 0),
    ("recovery.leaseSeconds", 0), ("recovery.intervalSeconds", "soon"), ("pools.0.env", [{"value": "x"}]),
    ("schedules", [{"name": "n", "type": "t", "cron": "* * *"}]), ("schedules", [{"name": "n", "type": "t",
                                                                                "every": "5 minutes"}]),
    ("schedules", [{"name": "n", "type": "t", "every": 5, "catchUp": "never"}]), ("schedules", [{"type": "t",
                                                                                                  "every": 5}]),
    ("schedules", [{"name": "n", "type": "a,b", "every": 5}]), ("schedules", [{"name": "n", "every": 5}]),
]


def test_the_api_server_admits_exactly_the_specs_the_schema_describes(crd_cluster: Cluster) -> None:
    """Specs generated from the CRD schema (tests/fuzz/test_jobqueue_spec.py) sent to the API server
    (server-side dry run): admitted unless a CEL rule forbids them - then refused with its message -
    and what it admits, defaults filled in, the operator reads. Broken ones are refused."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from tests.fuzz.test_jobqueue_spec import _set, spec_module, specs

    ns = f"cr-{secrets.token_hex(3)}"
    crd_cluster.kubectl("create", "namespace", ns)
    custom = client.CustomObjectsApi(crd_cluster.api_client)
    seen = {"admitted": 0, "cel": 0, "broken": 0}

    def submit(spec: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
        body = {"apiVersion": "skiplock.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": "s"}, "spec": spec}
        try:
            out = custom.create_namespaced_custom_object("skiplock.dev", "v1alpha1", ns, "jobqueues", body,
                                                         dry_run="All", field_validation="Strict")
            return 201, "", cast(dict[str, Any], out)
        except ApiException as exc:
            return int(exc.status), str(exc.body), {}

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(spec=specs)
    def admitted(spec: dict[str, Any]) -> None:
        status, message, stored = submit(spec)
        rule = cel_violation(spec)
        if rule is None:
            assert status == 201, (spec, message)
            spec_module.parse(stored["spec"])  # with the server's defaults
            seen["admitted"] += 1
        else:
            assert status == 422 and rule in message, (spec, status, message)
            seen["cel"] += 1

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(spec=specs, mutation=st.sampled_from(SCHEMA_VIOLATIONS))
    def refused(spec: dict[str, Any], mutation: tuple[str, Any]) -> None:
        path, value = mutation
        _set(spec, path, value)
        status, message, _ = submit(spec)
        # An unknown field (database.url) fails strict decoding (400) before validation (422).
        assert status == 422 or (status == 400 and "unknown field" in message), (spec, mutation, status, message)
        seen["broken"] += 1

    try:
        admitted()
        refused()
    finally:
        crd_cluster.kubectl("delete", "namespace", ns, "--wait=false")
    assert seen["admitted"] and seen["broken"], seen
    print(f"api-server schema: {seen}")
