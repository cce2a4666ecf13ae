"""The end-to-end tier: the user's path on real pods (see ``stack.py`` and ``test_user_path.py``).

Every test under ``tests/e2e`` gets the ``e2e`` marker; ``SKIPLOCK_SKIP_E2E=1`` skips them. Before
any test runs, the control plane and the node are built (cached) and the images are built; the
figures the tier measures are printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import FIGURES, Images, Stack, build_images, start_stack
from tests.k8s.cluster import build
from tests.k8s.node import build_node
from tests.ship.tools import missing, need

HERE = Path(__file__).resolve().parent
_built: dict[str, Images] = {}


def _skipped() -> bool:
    return os.environ.get("SKIPLOCK_SKIP_E2E") == "1"


def _ours(item: pytest.Item) -> bool:
    return HERE in item.path.parents


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: the user's path on a real node (tests/e2e)")
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in filter(_ours, items):
        item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane, the node and the images before any test runs (a cold build takes
    many minutes and must not eat a test's timeout)."""
    if _skipped() or session.config.option.collectonly or not any(map(_ours, session.items)):
        return
    if os.geteuid() != 0:
        return  # the fixture says why
    capman = session.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        for what, step in (("tools/k8s/build.sh", build), ("tools/k8s/build-node.sh", build_node)):
            start = time.monotonic()
            try:
                step()
            except subprocess.CalledProcessError as e:
                pytest.exit(f"{what} failed ({e.returncode})", returncode=pytest.ExitCode.INTERNAL_ERROR)
            FIGURES[f"{what} (cached: ~0 s)"] = f"{time.monotonic() - start:.0f} s"
        try:
            for tool in ("buildah", "debootstrap"):
                need(tool)
        except BaseException:
            return
        try:
            _built["images"] = build_images()
        except AssertionError as e:
            pytest.exit(f"building the images failed: {e}", returncode=pytest.ExitCode.INTERNAL_ERROR)
        for what, seconds in _built["images"].built.items():
            FIGURES[f"image build: {what}"] = f"{seconds:.0f} s"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("end-to-end figures")
        for what, value in FIGURES.items():
            terminalreporter.write_line(f"{what}: {value}")


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The cluster (API server on the bridge), kwok nodes cpu-1, cpu-2, gpu-1, gpu-2, the real node
    real-1 with the images loaded, and a PostgreSQL on the bridge."""
    if _skipped():
        pytest.skip("SKIPLOCK_SKIP_E2E=1")
    if os.geteuid() != 0:
        missing("root (a real node needs a bridge, iptables rules and containerd)", "run the tier as root")
    for tool in ("buildah", "debootstrap", "helm"):
        need(tool)
    if not Path("/usr/lib/cni/bridge").exists():
        missing("the CNI plugins (/usr/lib/cni/bridge)", "the Debian package containernetworking-plugins, "
                "by tools/setup.sh --test as root")
    images = _built.get("images") or build_images()
    started = time.monotonic()
    with start_stack(tmp_path_factory.mktemp("e2e"), images) as up:
        FIGURES["stack up (cluster, real node, images loaded, PostgreSQL)"] = f"{time.monotonic() - started:.0f} s"
        for what, seconds in up.timings.items():
            FIGURES[f"  {what}"] = f"{seconds:.0f} s"
        yield up
