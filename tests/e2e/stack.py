"""What the end-to-end tier runs on: the images, a cluster whose API server listens on a real node's
bridge, kwok nodes beside the real one, and a PostgreSQL that pods reach on the bridge.

The real node carries the label and NoSchedule taint ``skiplock.dev/real-node=true``, so nothing
lands on it by accident (the kwok nodes take everything else, as in tests/k8s). Namespaces made by
``pinned_namespace`` send every pod of theirs there: their annotations give each pod the node
selector and the toleration (the PodNodeSelector and PodTolerationRestriction admission plugins,
the way a cluster admin dedicates nodes to a team), whatever created the pod: the chart, the
operator, a hook Job.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from skiplock.embedded import LocalPostgres
from tests.k8s.cluster import KWOK_NODES, Cluster
from tests.k8s.node import REAL_NODE_LABEL, PodNetwork, RealNode
from tests.ship.tools import REPO, run
from tests.ship.tools import build_images as build_targets

IMAGE_DIR = Path(__file__).resolve().parent / "image"
FIGURES: dict[str, str] = {}  # what the tier measured: printed in the terminal summary
REAL_NODE = "real-1"
TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
PIN = {
    "scheduler.alpha.kubernetes.io/node-selector": f"{REAL_NODE_LABEL}=true",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [{"key": TAINT["key"], "operator": "Equal", "value": TAINT["value"], "effect": TAINT["effect"]}]),
}


@dataclass(frozen=True)
class Images:
    """Image names as the chart and the JobQueue name them (``localhost/...:<version>``)."""

    version: str
    operator: str
    worker: str
    e2e: dict[str, str]  # revision ("a", "b") -> the test worker image of that revision
    built: dict[str, float] = field(default_factory=dict)  # what -> seconds it took

    def all(self) -> list[str]:
        return [self.operator, self.worker, *self.e2e.values()]


def package_version() -> str:
    """The tag tools/build-images.sh gives the images: the package's version."""
    return os.environ.get("SKIPLOCK_IMAGE_TAG") or importlib.metadata.version("skiplock")


def buildah(*args: str, timeout: float = 600) -> str:
    """buildah on the storage of tools/build-images.sh."""
    return run(["bash", str(REPO / "tools" / "build-images.sh"), "buildah", *args], timeout=timeout).stdout


def build_images() -> Images:
    """The worker and operator images by tools/build-images.sh, then the test worker image FROM the
    worker (tests/e2e/image) in two revisions for the rolling update."""
    took: dict[str, float] = {}
    start = time.monotonic()
    if os.environ.get("SKIPLOCK_E2E_IMAGES") == "reuse":  # by hand, between runs: the images of the last build
        names = buildah("images", "--format", "{{.Name}}:{{.Tag}}").split()
    else:
        names = [name for name, _ in build_targets("worker", "operator").values()]
    took["worker+operator"] = time.monotonic() - start
    version = package_version()
    (worker,) = [n for n in names if n == f"localhost/skiplock-worker:{version}"]
    (operator,) = [n for n in names if n == f"localhost/skiplock-operator:{version}"]
    e2e = {}
    start = time.monotonic()
    for rev in ("a", "b"):
        e2e[rev] = f"localhost/skiplock-e2e:{version}-{rev}"
        buildah("bud", "--quiet", "--pull=false", "--isolation", "chroot", "--layers=false",
                "--build-arg", f"WORKER_IMAGE={worker}", "--build-arg", f"E2E_REVISION={rev}",
                "-t", e2e[rev], "-f", str(IMAGE_DIR / "Containerfile"), str(IMAGE_DIR))
    took["e2e worker a+b"] = time.monotonic() - start
    return Images(version, operator, worker, e2e, took)


def push_images(images: Images, workdir: Path) -> Path:
    """``buildah push`` of every image into one OCI layout (shared layers written once), as a tar."""
    layout = workdir / "layout"
    workdir.mkdir(parents=True)
    for name in images.all():
        buildah("push", "--quiet", name, f"oci:{layout}:{name}")
    archive = workdir / "images.tar"
    run(["tar", "-C", str(layout), "-cf", str(archive), "."])
    shutil.rmtree(layout)
    return archive


@dataclass
class Stack:
    """The running parts; ``dsn`` is the database the pods use (host and pods reach it alike)."""

    network: PodNetwork
    cluster: Cluster
    node: RealNode
    postgres: LocalPostgres
    dsn: str
    images: Images
    timings: dict[str, float]


def postgres_on_bridge(network: PodNetwork) -> LocalPostgres:
    """A PostgreSQL listening on loopback and on the bridge, letting the pod subnet in."""
    server = LocalPostgres(settings={"listen_addresses": f"127.0.0.1,{network.gateway}"}).start()
    hba = server.datadir / "data" / "pg_hba.conf"
    hba.write_text(hba.read_text() + f"host all all {network.subnet} trust\n")
    with psycopg.connect(server.uri, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    return server


@contextmanager
def start_stack(workdir: Path, images: Images) -> Iterator[Stack]:
    """Everything up, yielded once; everything down afterwards, in reverse order, whatever failed."""
    timings: dict[str, float] = {}
    with ExitStack() as down, ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        pushed = pool.submit(push_images, images, workdir / "images")  # meanwhile, the cluster starts
        network = PodNetwork.create(workdir / "net")
        down.callback(network.delete)
        cluster = Cluster.start(workdir / "cluster", address=network.gateway)
        down.callback(cluster.stop)
        for name, gpus in KWOK_NODES.items():
            cluster.add_node(name, gpus=gpus)
        node = RealNode.start(cluster, network, workdir / "node", REAL_NODE, labels={REAL_NODE_LABEL: "true"},
                              taints=[TAINT])
        down.callback(node.stop)
        cluster.wait_nodes_ready()
        timings["cluster and node up"] = time.monotonic() - start
        node.import_archive(pushed.result())
        timings["images pushed (meanwhile) and imported"] = time.monotonic() - start
        postgres = postgres_on_bridge(network)
        down.callback(postgres.stop)
        dsn = postgres.uri.replace("127.0.0.1", network.gateway)
        yield Stack(network, cluster, node, postgres, dsn, images, timings)


def pinned_namespace(cluster: Cluster, name: str) -> None:
    """A namespace whose pods all run on the real node, under the restricted Pod Security Standard."""
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": name, "annotations": PIN,
                                         "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
