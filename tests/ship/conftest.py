"""The ship tier: chart, manifests, Dockerfiles, alert rules and dashboards (tests/ship).

Tests marked ``images`` build the container images with buildah (minutes): they run only when
asked for, with ``-m images`` (or SKIPLOCK_IMAGES=1).
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "images: builds the container images with buildah (run with -m images)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "images" in (config.option.markexpr or "") or os.environ.get("SKIPLOCK_IMAGES") == "1":
        return
    skip = pytest.mark.skip(reason="image build tier (minutes): run with -m images or SKIPLOCK_IMAGES=1")
    for item in items:
        if item.get_closest_marker("images"):
            item.add_marker(skip)
