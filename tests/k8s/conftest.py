"""Fixtures for tests against a real local Kubernetes control plane (see ``cluster.py``).

Every test under ``tests/k8s`` gets the ``k8s`` marker; ``SKIPLOCK_SKIP_K8S=1`` skips them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.cluster import KWOK_NODES, Cluster, build

HERE = Path(__file__).resolve().parent


def _skipped() -> bool:
    return os.environ.get("SKIPLOCK_SKIP_K8S") == "1"


def _ours(item: pytest.Item) -> bool:
    return HERE in item.path.parents


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "k8s: needs the real Kubernetes control plane (tests/k8s)")
    # The kubeconfig skips TLS verification of the loopback apiserver on purpose.
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in filter(_ours, items):
        item.add_marker(pytest.mark.k8s)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before any test runs: a cold build (~10 min) must not eat a test's timeout."""
    if _skipped() or session.config.option.collectonly or not any(map(_ours, session.items)):
        return
    capman = session.config.pluginmanager.getplugin("capturemanager")  # None under -p no:capture
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        try:
            build()
        except subprocess.CalledProcessError as e:
            pytest.exit(f"tools/k8s/build.sh failed ({e.returncode})", returncode=pytest.ExitCode.INTERNAL_ERROR)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running control plane with kwok nodes cpu-1, cpu-2 and one-GPU nodes gpu-1, gpu-2."""
    if _skipped():
        pytest.skip("SKIPLOCK_SKIP_K8S=1")
    with Cluster.start(tmp_path_factory.mktemp("k8s")) as cluster:
        for name, gpus in KWOK_NODES.items():
            cluster.add_node(name, gpus=gpus)
        cluster.wait_nodes_ready()
        yield cluster
