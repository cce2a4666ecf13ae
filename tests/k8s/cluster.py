"""A throwaway Kubernetes control plane on loopback for tests.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake nodes and pods) run as
local processes built by ``tools/k8s/build.sh``. Use ``Cluster.start(workdir)`` (or ``with``), or
``python tests/k8s/cluster.py up DIR`` to keep one running by hand.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "tools" / "k8s" / "build.sh"
GPU = "nvidia.com/gpu"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODES = {"cpu-1": 0, "cpu-2": 0, "gpu-1": 1, "gpu-2": 1}  # the test clusters' fake nodes: name -> GPUs
_INSECURE = ssl._create_unverified_context()
T = TypeVar("T")


class ClusterError(RuntimeError):
    """A control-plane component failed to start or to become healthy."""


class KubectlError(subprocess.CalledProcessError):
    """``kubectl`` failed; the message carries its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


def build() -> Path:
    """Run ``tools/k8s/build.sh`` (a no-op when cached) and return the bin dir it prints."""
    out = subprocess.run(["bash", str(BUILD_SH)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def free_ports(n: int, address: str = "127.0.0.1") -> list[int]:
    """Return ``n`` distinct free ports on ``address`` (all bound at once, so no duplicates)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((address, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_ok(url: str, token: str | None = None) -> bool:
    """Whether ``url`` answers 200 (TLS not verified)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=2, context=_INSECURE) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class Component:
    """One control-plane process: its command line, health URL and log file."""

    name: str
    argv: list[str]
    health_url: str
    log: Path
    token: str | None = None
    env: dict[str, str] | None = None  # default: this process's environment
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the process in its own process group, appending to its log."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_healthy(self, deadline: float) -> None:
        """Poll the health URL until ``deadline``; raise with the log tail if it dies or times out."""
        while not http_ok(self.health_url, self.token):
            if self.proc is None or self.proc.poll() is not None:
                raise self.error("exited")
            if time.monotonic() > deadline:
                raise self.error(f"not healthy at {self.health_url}")
            time.sleep(0.2)

    def error(self, what: str, lines: int = 30) -> ClusterError:
        """A ``ClusterError`` carrying the last lines of the log."""
        tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        return ClusterError(f"{self.name} {what}; last log lines of {self.log}:\n" + "\n".join(tail))

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds (at once if ``grace`` is 0)."""
        if self.proc is None:
            return
        steps = [(signal.SIGTERM, grace)] if grace > 0 else []
        for sig, wait in [*steps, (signal.SIGKILL, 5.0)]:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None


class Cluster:
    """A running control plane; ``kubeconfig`` is the admin kubeconfig (token, TLS unverified).

    The API server listens on ``address``: loopback by default; a real node's bridge address
    (``tests/k8s/node.py``) when pods must reach it. Its serving certificate then names that address.
    """

    def __init__(self, workdir: Path, bin_dir: Path, address: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.address = address
        self.kubeconfig = workdir / "kubeconfig"
        self.token = secrets.token_hex(16)
        etcd, peer, kcm, sched, kwok, api = free_ports(6)
        self.api_port = api if address == "127.0.0.1" else free_ports(1, address)[0]
        self.server = f"https://{address}:{self.api_port}"
        self.components = [
            self._etcd(etcd, peer),
            self._apiserver(self.api_port, etcd),
            self._controller_manager(kcm),
            self._scheduler(sched),
            self._kwok(kwok),
        ]
        self._api_client: Any = None

    @classmethod
    def start(cls, workdir: Path | str, timeout: float = 90.0, address: str = "127.0.0.1") -> Cluster:
        """Build if needed, then start everything in ``workdir`` (created; must be empty) and wait for it."""
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise ClusterError(f"{workdir} is not empty (Cluster.stop removes it)")
        cluster = cls(workdir, build(), address)
        atexit.register(cluster.stop)
        try:
            cluster._boot(time.monotonic() + timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _boot(self, deadline: float) -> None:
        self._write_credentials()
        etcd, apiserver, *rest = self.components
        for group in ([etcd], [apiserver], rest):
            for c in group:
                c.start()
            for c in group:
                c.wait_healthy(deadline)

    def _write_credentials(self) -> None:
        (self.workdir / "tokens.csv").write_text(f'{self.token},admin,1,"system:masters"\n')
        key, pub = self.workdir / "sa.key", self.workdir / "sa.pub"
        for argv in (["genrsa", "-out", key, "2048"], ["rsa", "-in", key, "-pubout", "-out", pub]):
            subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True)
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "skiplock", "cluster": {"server": self.server, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "skiplock", "context": {"cluster": "skiplock", "user": "admin"}}],
            "current-context": "skiplock",
        }
        self.kubeconfig.write_text(json.dumps(kubeconfig, indent=2) + "\n")  # JSON is YAML

    def _component(self, name: str, flags: dict[str, object], health_url: str, token: str | None = None) -> Component:
        argv = [str(self.bin_dir / name), *(f"--{k}={v}" for k, v in flags.items())]
        return Component(name, argv, health_url, self.workdir / f"{name}.log", token)

    def _etcd(self, port: int, peer: int) -> Component:
        client_url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
        flags = {
            "data-dir": self.workdir / "etcd",
            "listen-client-urls": client_url,
            "advertise-client-urls": client_url,
            "listen-peer-urls": peer_url,
            "initial-advertise-peer-urls": peer_url,
            "initial-cluster": f"default={peer_url}",
            "unsafe-no-fsync": "true",
        }
        return self._component("etcd", flags, f"{client_url}/health")

    def _apiserver(self, port: int, etcd: int) -> Component:
        flags = {
            "etcd-servers": f"http://127.0.0.1:{etcd}",
            "cert-dir": self.workdir / "certs",
            "bind-address": self.address,
            "advertise-address": self.address,
            "secure-port": port,
            "endpoint-reconciler-type": "none",  # else: "may not be in the loopback range"
            # A real node (node.py) serves logs and exec on its bridge address; kwok nodes serve none.
            "kubelet-preferred-address-types": "InternalIP",
            # A namespace's annotations may pin its pods to a node and give them tolerations (the
            # end-to-end tier pins its namespaces to the real node); without annotations, no effect.
            "enable-admission-plugins": "PodNodeSelector,PodTolerationRestriction",
            "token-auth-file": self.workdir / "tokens.csv",
            "authorization-mode": "RBAC",
            "service-account-issuer": "https://kubernetes.default.svc",
            "service-account-key-file": self.workdir / "sa.pub",
            "service-account-signing-key-file": self.workdir / "sa.key",
            "service-cluster-ip-range": "10.96.0.0/16",
            # SIGTERM: drain, then a 2 s HTTP shutdown instead of waiting 60 s for open watches to end
            "shutdown-send-retry-after": "true",
        }
        return self._component("kube-apiserver", flags, f"{self.server}/readyz", self.token)

    def _controller_manager(self, port: int) -> Component:
        flags = {
            **self._client_flags(port),
            "service-account-private-key-file": self.workdir / "sa.key",
            # The CA in every pod's kube-root-ca.crt: the API server's self-signed bundle, so that
            # in-cluster clients on a real node verify it (the kubelet needs the ConfigMap to exist).
            "root-ca-file": self.workdir / "certs" / "apiserver.crt",
            "use-service-account-credentials": "false",
            "controllers": "*,-nodeipam",  # keeps node-lifecycle: it lifts the not-ready taint
        }
        return self._component("kube-controller-manager", flags, f"https://127.0.0.1:{port}/healthz")

    def _scheduler(self, port: int) -> Component:
        return self._component("kube-scheduler", self._client_flags(port), f"https://127.0.0.1:{port}/healthz")

    def _client_flags(self, port: int) -> dict[str, object]:
        return {
            "kubeconfig": self.kubeconfig,
            "leader-elect": "false",
            "bind-address": "127.0.0.1",
            "secure-port": port,
        }

    def _kwok(self, port: int) -> Component:
        flags = {
            "kubeconfig": self.kubeconfig,
            "config": self.bin_dir.parent / "stages.yaml",
            "manage-all-nodes": "false",
            "manage-nodes-with-annotation-selector": f"{FAKE_NODE_ANNOTATION}=fake",
            "cidr": "10.244.0.0/16",
            "node-ip": "10.0.0.1",
            "server-address": f"127.0.0.1:{port}",
        }
        return self._component("kwok", flags, f"http://127.0.0.1:{port}/healthz")

    def component(self, name: str) -> Component:
        """The component called ``name`` (e.g. ``"kube-apiserver"``)."""
        return next(c for c in self.components if c.name == name)

    def restart_apiserver(self, graceful: bool = True, timeout: float = 60.0) -> None:
        """Stop kube-apiserver (SIGTERM, or SIGKILL if not ``graceful``) and start it again with the same
        ports and flags; wait for /readyz."""
        apiserver = self.component("kube-apiserver")
        apiserver.stop(grace=15.0 if graceful else 0)
        apiserver.start()
        apiserver.wait_healthy(time.monotonic() + timeout)

    @property
    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster (created on first use)."""
        if self._api_client is None:
            self._api_client = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        return self._api_client

    @property
    def core(self) -> Any:
        """A ``kubernetes.client.CoreV1Api`` for this cluster."""
        return client.CoreV1Api(self.api_client)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the built ``kubectl`` against this cluster; raise ``KubectlError`` on failure if ``check``."""
        argv = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        res = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
        if check and res.returncode:
            raise KubectlError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def wait_established(self, crd: str, timeout: float = 30.0) -> None:
        """Wait until the CRD ``crd`` is Established (``kubectl wait`` fails outright while a new CRD
        has no conditions yet, which a large schema makes likely)."""
        def established() -> bool:
            path = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
            res = self.kubectl("get", "crd", crd, "-o", path, check=False)
            return res.stdout.strip() == "True"

        wait_for(established, timeout, f"{crd} established")

    def policy_type_checking(self, policy: str, timeout: float = 60.0) -> dict[str, Any]:
        """A ValidatingAdmissionPolicy's ``status.typeChecking`` (``{}``: no expression warnings), once the
        API server's status controller, which type-checks asynchronously, has written it."""
        def checked() -> dict[str, Any] | None:
            got = json.loads(self.kubectl("get", "validatingadmissionpolicy", policy, "-o", "json").stdout)
            status: dict[str, Any] = got.get("status", {})
            return status if "typeChecking" in status else None

        result: dict[str, Any] = wait_for(checked, timeout, f"{policy}'s type checking", interval=0.5)["typeChecking"]
        return result

    def add_node(
        self,
        name: str,
        cpu: str = "8",
        memory: str = "32Gi",
        pods: str = "110",
        gpus: int = 0,
        labels: dict[str, str] | None = None,
    ) -> None:
        """Create a kwok fake node; ``gpus`` > 0 advertises ``nvidia.com/gpu`` and taints it NoSchedule."""
        resources = {"cpu": cpu, "memory": memory, "pods": pods} | ({GPU: str(gpus)} if gpus else {})
        node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        node_labels |= ({f"{GPU}.present": "true"} if gpus else {}) | (labels or {})
        taints = [{"key": GPU, "value": "present", "effect": "NoSchedule"}] if gpus else []
        self.core.create_node(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": node_labels,
                    "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                },
                "spec": {"taints": taints},
                "status": {"capacity": resources, "allocatable": resources},
            }
        )

    def delete_node(self, name: str) -> None:
        """Delete node ``name``."""
        self.core.delete_node(name)

    def wait_nodes_ready(self, timeout: float = 60.0) -> list[str]:
        """Wait until every node is Ready and has lost the ``not-ready`` taint; return their names."""
        return wait_for(lambda: _ready_nodes(self.core.list_node().items), timeout, "nodes Ready")

    def stop(self) -> None:
        """Stop every component (reverse order, whole process groups) and remove the workdir."""
        atexit.unregister(self.stop)
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        for c in reversed(self.components):
            c.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _ready_nodes(nodes: list[Any]) -> list[str] | None:
    """Node names if all (at least one) are Ready and schedulable, else None."""

    def ready(n: Any) -> bool:
        conditions = {c.type: c.status for c in n.status.conditions or []}
        taints = {t.key for t in n.spec.taints or []}
        return conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints

    return [n.metadata.name for n in nodes] if nodes and all(map(ready, nodes)) else None


def wait_for(probe: Callable[[], T | Literal[False] | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Call ``probe`` until it returns something truthy; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``up DIR`` starts a cluster in DIR and keeps it running until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up"])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    with Cluster.start(args.workdir) as cluster:
        print(cluster.kubeconfig, flush=True)
        signal.pause()


if __name__ == "__main__":
    main()
