"""One version string: pyproject.toml's ``project.version``. The package reads it from its metadata,
tools/build-images.sh tags and labels the images with it, manifests/ and the chart's image tags
derive from the chart's appVersion; what cannot be derived is checked here against it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import skiplock

from .tools import CHART, REPO, VERSION

# Image references of ours in the docs, the examples and the chart's files, with their tag.
IMAGE_TAG = re.compile(r"skiplock-(?:worker|operator):(?P<tag>\d[\w.+-]*)")  # a version tag, not e.g. :gpu
FILES_WITH_TAGS = ["README.md", "docs/*.md", "manifests/*.yaml", "manifests/examples/*.yaml", "charts/skiplock/*.yaml",
                   "charts/skiplock/ci/*.yaml"]
FIX = "the version lives in pyproject.toml; change every copy with it"


def test_version_is_a_release_version() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


def test_the_package_reports_it() -> None:
    assert skiplock.__version__ == VERSION, "reinstall (tools/setup.sh): the installed metadata is stale"


def test_the_chart_carries_it() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (VERSION, VERSION), f"charts/skiplock/Chart.yaml: {FIX}"


def test_the_dockerfiles_default_to_it() -> None:
    for name in ("Dockerfile.worker", "Dockerfile.operator"):
        defaults = re.findall(r"^ARG VERSION=(\S+)$", (REPO / name).read_text(), re.M)
        assert defaults == [VERSION], f"{name}: {FIX}"


def test_every_image_tag_in_docs_and_examples_is_it() -> None:
    files = sorted({p for pattern in FILES_WITH_TAGS for p in REPO.glob(pattern)})
    seen: list[tuple[Path, str]] = [(p, m["tag"]) for p in files for m in IMAGE_TAG.finditer(p.read_text())]
    assert seen, "no image references found: the pattern is wrong"
    wrong = [(str(p.relative_to(REPO)), tag) for p, tag in seen if tag not in (VERSION, f"{VERSION}-gpu")]
    assert not wrong, f"{FIX}: {wrong}"
