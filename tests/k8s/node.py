"""A real Kubernetes node for tests: containerd, runc and a kubelet on this machine, beside kwok's fakes.

``PodNetwork`` is a Linux bridge of its own with a free /24 (name and subnet chosen per run, so two
runs on one machine do not collide) and a CNI conflist for it. The host's address on the bridge is
the one address pods reach besides each other: put what pods must reach (PostgreSQL, the API server
via ``Cluster.start(address=...)``) there. Pods get no default route and the host forwards nothing
for them, so nothing is routed off the machine. The ClusterIP of ``kubernetes.default`` is DNATed to
the API server on the bridge, which is what kube-proxy would do for that one Service: in-cluster
clients (the operator pod) work unchanged.

``RealNode`` runs containerd (root, state, socket and config of its own) and a kubelet registered as
a node of a ``Cluster``; images reach it with ``import_archive`` (an OCI archive from ``buildah push``)
and pods never pull. ``stop`` removes everything: pods, shims, mounts, the bridge and the rules.
Binaries and the sandbox image come from ``tools/k8s/build-node.sh``.

By hand: ``python tests/k8s/node.py up DIR`` starts a cluster with a real node and keeps it running.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

if __package__ in (None, ""):  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.k8s.cluster import REPO, Cluster, ClusterError, Component, free_ports, wait_for

BUILD_NODE_SH = REPO / "tools" / "k8s" / "build-node.sh"
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
NAMESPACE = "k8s.io"  # containerd's namespace for CRI (kubelet) containers and images
KUBERNETES_SERVICE_IP = "10.96.0.1"  # first address of the cluster's --service-cluster-ip-range
# Real-node pods get their addresses from here, a /24 per run; kwok uses 10.244.0.0/16, Services 10.96.0.0/16.
SUBNET_POOL = ipaddress.IPv4Network("10.160.0.0/12")
REAL_NODE_LABEL = "skiplock.dev/real-node"
CNI_CACHE = Path("/var/lib/cni/results")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd's DefaultStateDir/s: host-wide, whatever --state says


def build_node() -> Path:
    """Run ``tools/k8s/build-node.sh`` (a no-op when cached) and return the bin dir it prints."""
    out = subprocess.run(["bash", str(BUILD_NODE_SH)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a host command; ``ClusterError`` with its output if it fails and ``check``."""
    res = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
    if check and res.returncode:
        raise ClusterError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def _used_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]")
    found = []
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default" and not dst.startswith(("broadcast", "local")):
            with contextlib.suppress(ValueError):
                found.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    return found


class PodNetwork:
    """A bridge with the host as ``gateway`` on a /24 of its own, its CNI conflist, and its iptables rules."""

    def __init__(self, workdir: Path, name: str, subnet: ipaddress.IPv4Network) -> None:
        self.workdir = workdir
        self.name = name
        self.subnet = subnet
        self.gateway = str(next(subnet.hosts()))
        self.conf_dir = workdir / "net.d"
        self._rules: list[tuple[str, ...]] = []

    @classmethod
    def create(cls, workdir: Path) -> PodNetwork:
        """Pick an unused /24 and bridge name, create the bridge with the gateway address, write the conflist."""
        used = _used_networks()
        for _ in range(50):
            subnet = random.choice(list(SUBNET_POOL.subnets(new_prefix=24)))
            if not any(subnet.overlaps(u) for u in used):
                break
        else:
            raise ClusterError(f"no free /24 in {SUBNET_POOL}")
        net = cls(workdir, f"skl{secrets.token_hex(3)}", subnet)
        workdir.mkdir(parents=True, exist_ok=True)
        sh("ip", "link", "add", "name", net.name, "type", "bridge")
        try:
            sh("ip", "addr", "add", f"{net.gateway}/{subnet.prefixlen}", "dev", net.name)
            sh("ip", "link", "set", net.name, "up")
            # Belt and braces: even with forwarding on, nothing from the pods leaves the bridge.
            net.add_rule("filter", "FORWARD", "-i", net.name, "!", "-o", net.name, "-j", "DROP")
            net.add_rule("filter", "FORWARD", "-o", net.name, "!", "-i", net.name, "-j", "DROP")
            net._write_conflist()
        except BaseException:
            net.delete()
            raise
        return net

    def _write_conflist(self) -> None:
        # isGateway false: the bridge plugin would otherwise switch on IP forwarding for the whole host.
        # The gateway address is ours (set above); pods get routes to it, the subnet and the Services only.
        ipam = {"type": "host-local", "ranges": [[{"subnet": str(self.subnet), "gateway": self.gateway}]],
                "routes": [{"dst": "10.96.0.0/16", "gw": self.gateway}], "dataDir": str(self.workdir / "ipam")}
        conflist = {"cniVersion": "1.0.0", "name": self.name,
                    "plugins": [{"type": "bridge", "bridge": self.name, "isGateway": False, "ipMasq": False,
                                 "hairpinMode": True, "ipam": ipam}]}
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / f"10-{self.name}.conflist").write_text(json.dumps(conflist, indent=2) + "\n")

    def add_rule(self, table: str, chain: str, *spec: str) -> None:
        """Append an iptables rule (removed by ``delete`` or ``remove_rule``)."""
        sh("iptables", "-w", "-t", table, "-A", chain, *spec)
        self._rules.append((table, chain, *spec))

    def remove_rule(self, table: str, chain: str, *spec: str) -> None:
        rule = (table, chain, *spec)
        if rule in self._rules:
            self._rules.remove(rule)
            sh("iptables", "-w", "-t", table, "-D", chain, *spec, check=False)

    @contextlib.contextmanager
    def rule(self, table: str, chain: str, *spec: str) -> Iterator[None]:
        """An iptables rule for the duration of a ``with`` block (e.g. cutting one pod off PostgreSQL)."""
        self.add_rule(table, chain, *spec)
        try:
            yield
        finally:
            self.remove_rule(table, chain, *spec)

    def forward_to_host(self, ip: str, port: int, host_port: int) -> None:
        """Make ``ip:port`` seen from the pods reach ``gateway:host_port`` (a ClusterIP, as kube-proxy would)."""
        self.add_rule("nat", "PREROUTING", "-i", self.name, "-d", f"{ip}/32", "-p", "tcp", "--dport", str(port),
                      "-j", "DNAT", "--to-destination", f"{self.gateway}:{host_port}")

    def delete(self) -> None:
        """Remove the rules and the bridge (veths still on it go with their pods' namespaces)."""
        for table, chain, *spec in reversed(self._rules):
            sh("iptables", "-w", "-t", table, "-D", chain, *spec, check=False)
        self._rules.clear()
        sh("ip", "link", "del", self.name, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


class RealNode:
    """containerd + kubelet registered as node ``name`` of ``cluster``, with pods on ``network``."""

    def __init__(self, cluster: Cluster, network: PodNetwork, workdir: Path, bin_dir: Path, name: str,
                 labels: dict[str, str], taints: list[dict[str, str]]) -> None:
        self.cluster, self.network, self.workdir, self.bin_dir = cluster, network, workdir, bin_dir
        self.name, self.labels, self.taints = name, labels, taints
        self.socket = workdir / "containerd.sock"
        self.runc_root = workdir / "runc"
        self.kubelet_root = workdir / "kubelet"
        self.pause_image = dict(
            line.split("=", 1) for line in (bin_dir.parent / "node.env").read_text().split()
        )["PAUSE_IMAGE"]
        metrics, healthz = free_ports(2)
        (self.kubelet_port,) = free_ports(1, network.gateway)
        self.containerd = Component("containerd", [str(bin_dir / "containerd"), "--config",
                                                   str(self._containerd_config(metrics))],
                                    f"http://127.0.0.1:{metrics}/v1/metrics", workdir / "containerd.log")
        # Without iptables on its PATH the kubelet leaves the host's rules alone: its chains (KUBE-FIREWALL,
        # canaries) are host-wide, serve kube-proxy, which this node does not run, and would outlive it.
        kubelet_env = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}
        self.kubelet = Component("kubelet", [str(bin_dir / "kubelet"), *self._kubelet_flags(healthz)],
                                 f"http://127.0.0.1:{healthz}/healthz", workdir / "kubelet.log", env=kubelet_env)

    @classmethod
    def start(cls, cluster: Cluster, network: PodNetwork, workdir: Path | str, name: str = "real-1",
              labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None,
              timeout: float = 120.0) -> RealNode:
        """Build if needed, start containerd (with the sandbox image) and the kubelet, wait for the Node Ready.

        ``cluster`` must listen on ``network.gateway`` for pods to reach the API server."""
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        node = cls(cluster, network, workdir, build_node(), name, labels or {}, taints or [])
        try:
            node._boot(time.monotonic() + timeout)
        except BaseException:
            node.stop()
            raise
        return node

    # -- configuration ---------------------------------------------------------------------------

    def _containerd_config(self, metrics_port: int) -> Path:
        d = self.workdir
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        text = f"""version = 4
root = '{d / "containerd" / "root"}'
state = '{d / "containerd" / "state"}'

[plugins.'io.containerd.server.v1.grpc']
  address = '{self.socket}'

[plugins.'io.containerd.server.v1.ttrpc']
  address = '{self.socket}.ttrpc'

[plugins.'io.containerd.server.v1.metrics']
  address = '127.0.0.1:{metrics_port}'

# NRI listens on a fixed host-wide socket: off, so that two nodes on one machine do not collide.
[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.internal.v1.opt']
  path = '{d / "containerd" / "opt"}'

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = '{self.pause_image}'

[{runtime}]
  # This machine cannot lower oom_score_adj (no CAP_SYS_RESOURCE): without this every sandbox fails.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true

[{runtime}.cni]
  bin_dirs = ['{CNI_BIN}']
  conf_dir = '{self.network.conf_dir}'
  max_conf_num = 1

[{runtime}.containerd]
  default_runtime_name = 'runc'

[{runtime}.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'

[{runtime}.containerd.runtimes.runc.options]
  BinaryName = '{self.bin_dir / "runc"}'
  Root = '{self.runc_root}'
  SystemdCgroup = false
"""
        path = d / "containerd.toml"
        path.write_text(text)
        return path

    def _kubelet_flags(self, healthz_port: int) -> list[str]:
        root = self.kubelet_root
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine: cgroup v1, no systemd, swap possible, cannot lower oom_score_adj.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "localStorageCapacityIsolation": False,
            "oomScoreAdj": 0,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            # The API server reaches it on the node IP for logs and exec; nothing else may.
            "address": self.network.gateway,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            # A test machine's disk and memory are whatever they are: never evict, never collect images.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                             "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(root / "volume-plugins"),
            "registerWithTaints": self.taints,
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
        }
        path = self.workdir / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return [f"--config={path}", f"--kubeconfig={self.cluster.kubeconfig}", f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={self.name}", f"--node-ip={self.network.gateway}",
                *([f"--node-labels={labels}"] if labels else []), "--v=1"]

    # -- lifecycle -------------------------------------------------------------------------------

    def _boot(self, deadline: float) -> None:
        self.containerd.start()
        self.containerd.wait_healthy(deadline)
        self.import_archive(self.bin_dir.parent / "pause.tar")
        # kubernetes.default's ClusterIP, for in-cluster clients, to the API server on the bridge.
        if self.cluster.address == self.network.gateway:
            self.network.forward_to_host(KUBERNETES_SERVICE_IP, 443, self.cluster.api_port)
        self.kubelet.start()
        self.kubelet.wait_healthy(deadline)
        wait_for(self._ready, max(deadline - time.monotonic(), 1.0), f"node {self.name} Ready")

    def _ready(self) -> bool:
        try:
            node = self.cluster.core.read_node(self.name)
        except Exception:  # not registered yet
            return False
        if self.kubelet.proc is None or self.kubelet.proc.poll() is not None:
            raise self.kubelet.error("exited")
        conditions = {c.type: c.status for c in node.status.conditions or []}
        taints = {t.key for t in node.spec.taints or []}
        return conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the built ``ctr`` on this node's containerd, in the CRI namespace."""
        return sh(str(self.bin_dir / "ctr"), "--address", str(self.socket), "--namespace", NAMESPACE, *args,
                  check=check)

    def import_archive(self, archive: Path) -> None:
        """Import an OCI archive (``buildah push IMAGE oci-archive:FILE:NAME``) under the names it carries."""
        self.ctr("images", "import", "--platform", "linux/amd64", str(archive))

    def images(self) -> list[str]:
        return self.ctr("images", "list", "--quiet").stdout.split()

    def kill_container(self, container_id: str, sig: str = "SIGKILL") -> None:
        """Signal a container's processes directly through containerd (``containerd://ID`` or ``ID``)."""
        self.ctr("tasks", "kill", "--signal", sig, container_id.removeprefix("containerd://"))

    def drain(self, timeout: float = 60.0) -> bool:
        """Cordon the node and delete its pods (1 s grace), so that the kubelet stops them the normal
        way (network torn down, shims gone); whether no container runs any more within ``timeout``."""
        self.cluster.core.patch_node(self.name, {"spec": {"unschedulable": True}})
        for pod in self.cluster.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.name}").items:
            with contextlib.suppress(Exception):  # gone meanwhile
                self.cluster.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                        grace_period_seconds=1)
        deadline = time.monotonic() + timeout
        while self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def stop(self) -> None:
        """Drain (while the kubelet and the API server run), stop the kubelet, then kill whatever still
        runs: containers, shims; unmount, remove the workdir."""
        if self.kubelet.proc is not None and self.kubelet.proc.poll() is None:
            with contextlib.suppress(Exception):  # the API server may be gone already: the hard way below
                self.drain()
        self.kubelet.stop()
        if not any(Path(argv[0]).name == "kubelet" for _, argv in _processes()):
            # Its device-plugin socket has a fixed path, whatever --root-dir says: gone with the last kubelet.
            (DEVICE_PLUGINS / "kubelet.sock").unlink(missing_ok=True)
            for empty in (DEVICE_PLUGINS, DEVICE_PLUGINS.parent):
                with contextlib.suppress(OSError):
                    empty.rmdir()
        runc = [str(self.bin_dir / "runc"), "--root", str(self.runc_root / NAMESPACE)]  # the shim adds the namespace
        if (self.runc_root / NAMESPACE).exists():
            for cid in sh(*runc, "list", "--quiet", check=False).stdout.split():
                sh(*runc, "delete", "--force", cid, check=False)
        self.containerd.stop()
        _kill_shims(str(self.socket))
        # libcni's result cache is host-wide too; a pod stopped the normal way (drain) leaves none.
        for sandbox in (self.workdir / "containerd" / "root" / "io.containerd.grpc.v1.cri" / "sandboxes").glob("*"):
            (CNI_CACHE / f"cni-loopback-{sandbox.name}-lo").unlink(missing_ok=True)
            (CNI_CACHE / f"{self.network.name}-{sandbox.name}-eth0").unlink(missing_ok=True)
        for link in CONTAINER_LOG_LINKS.glob("*.log"):  # the kubelet's links to its logs: host-wide too
            with contextlib.suppress(OSError):
                if str(link.readlink()).startswith(f"{self.workdir}/"):
                    link.unlink()
        _unmount_under(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(proc.name), (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")


def _kill_shims(address: str) -> None:
    """SIGKILL the shims of the containerd at ``address`` (their argv names it; they run in process
    groups of their own) and remove their sockets, which live in a host-wide directory."""
    for pid, argv in _processes():
        if not argv[0].endswith("containerd-shim-runc-v2") or address not in argv:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        opts = dict(zip(argv[1::2], argv[2::2], strict=False))
        if "-id" in opts:  # containerd's shim.SocketAddress: sha256 of "<address>/<namespace>/<id>"
            path = f"{address}/{opts.get('-namespace', NAMESPACE)}/{opts['-id']}"
            for name in (path, f"{path}/debug"):
                Path(SHIM_SOCKETS, hashlib.sha256(name.encode()).hexdigest()).unlink(missing_ok=True)


def _unmount_under(root: Path) -> None:
    """Lazily unmount every mount point under ``root``, deepest first (overlays, tmpfs volumes, netns)."""
    prefix = str(root.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        sh("umount", "--lazy", point, check=False)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``up DIR`` starts a cluster on a bridge with a real node and keeps it running until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up"])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    workdir = args.workdir.resolve()
    network = PodNetwork.create(workdir / "net")
    try:
        with (Cluster.start(workdir / "cluster", address=network.gateway) as cluster,
              RealNode.start(cluster, network, workdir / "node") as node):
            print(cluster.kubeconfig, node.name, network.gateway, flush=True)
            signal.pause()
    finally:
        network.delete()


if __name__ == "__main__":
    main()
