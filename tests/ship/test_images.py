"""The Dockerfiles: hadolint (always), and with ``-m images`` real buildah builds on a local
debootstrap base, then ``skiplock --help`` and friends inside each image: each image carries the
extras it runs and not the others, and a command whose extra is missing says so in one line."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .tools import REPO, VERSION, need, run

DOCKERFILES = {"worker": REPO / "Dockerfile.worker", "operator": REPO / "Dockerfile.operator"}
BUILD = REPO / "tools" / "build-images.sh"
# The extras each image installs (pyproject.toml): the worker serves `skiplock ui` too (the chart runs
# it in the worker image) and never the operator; both pin psycopg's self-contained driver.
EXTRAS = {"worker": "binary,ui", "operator": "binary,operator"}
OCI_LABELS = ("title", "description", "source", "licenses", "version", "revision", "created")


# -- static: hadolint and the shape of the Dockerfiles ------------------------------------------------

@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint(image: str) -> None:
    res = run([need("hadolint"), "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILES[image])], check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_config_catches_what_we_rely_on(tmp_path: Path) -> None:
    """The config fails a Dockerfile without OCI labels, or running as root, or unpinned apt."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y gcc\nUSER root\n")
    res = run([need("hadolint"), "--config", str(REPO / ".hadolint.yaml"), str(bad)], check=False)
    assert res.returncode != 0
    for rule in ("DL3049", "DL3002", "DL3008", "DL3015", "DL3009"):
        assert rule in res.stdout, (rule, res.stdout)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    kept = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(kept))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.M)]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_shape(image: str) -> None:
    ins = instructions(DOCKERFILES[image])
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a clean runtime stage"
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in ins
    assert froms[0].startswith("${PYTHON_IMAGE} AS build")
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] == "10001:10001", "numeric non-root user, so runAsNonRoot can check it"
    (entrypoint,) = [json.loads(a) for i, a in ins if i == "ENTRYPOINT"]
    assert entrypoint == ["skiplock", image]
    labels = " ".join(a for i, a in ins if i == "LABEL")
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels
    installs = re.findall(r'"/src\[([\w,]+)\]"', " ".join(a for i, a in ins if i == "RUN"))
    assert installs == [EXTRAS[image]], "each image installs the extras it runs, and only those"
    runtime = ins[[n for n, (i, a) in enumerate(ins) if i == "FROM"][1]:]
    assert not [a for i, a in runtime if i == "RUN" and re.search(r"\b(pip|apt-get|gcc|make)\b", a)], \
        "the runtime stage installs nothing: build tools stay in the build stage"


# -- built: buildah on a debootstrap base (slow: -m images) ---------------------------------------------

@dataclass(frozen=True)
class Image:
    name: str
    size: str


@pytest.fixture(scope="session")
def images() -> dict[str, Image]:
    """Build all three images with tools/build-images.sh (cached base rootfs; ~3-7 min)."""
    for tool in ("buildah", "debootstrap"):
        need(tool)
    out = run(["bash", str(BUILD)], timeout=1200).stdout
    built = {}
    for line in out.splitlines():
        name, size = line.split(" ", 1)
        key = "worker-gpu" if name.endswith("-gpu") else name.split("/")[-1].split(":")[0].removeprefix("skiplock-")
        built[key] = Image(name, size)
    assert set(built) == {"worker", "worker-gpu", "operator"}, out
    print("\nimage sizes: " + ", ".join(f"{i.name} {i.size}" for i in built.values()))
    return built


def buildah(*args: str, check: bool = True, timeout: float = 120) -> str:
    return run(["bash", str(BUILD), "buildah", *args], check=check, timeout=timeout).stdout


@pytest.fixture
def container(images: dict[str, Image], request: pytest.FixtureRequest) -> Iterator[str]:
    name = buildah("from", "--pull=false", images[request.param].name).strip()
    yield name
    buildah("rm", name, check=False)


def config(image: Image) -> dict[str, Any]:
    inspected: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image.name))
    return dict(inspected["OCIv1"]["config"])


def in_image(container: str, *argv: str) -> str:
    """Run argv in the container as the image's user (chroot isolation: no daemon, no registry)."""
    return buildah("run", "--isolation", "chroot", "--user", "10001:10001", container, "--", *argv, timeout=300)


def attempt(container: str, *argv: str, user: str = "10001:10001") -> subprocess.CompletedProcess[str]:
    """Run argv in the container; its exit status and output, whatever they are."""
    return run(["bash", str(BUILD), "buildah", "run", "--isolation", "chroot", "--user", user, container, "--",
                *argv], check=False, timeout=300)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    # buildah adds its own lines ("subprocess exited with status 1"); the command's are skiplock's.
    lines = [ln for ln in res.stderr.strip().splitlines() if "exit status" not in ln and "exited with status" not in ln]
    assert len(lines) == 1 and lines[0].startswith("skiplock: error: "), res.stderr
    return lines[0]


SITE = "/opt/skiplock/lib/python3.11/site-packages"
# What each image imports: its extras' modules resolve, the others' are absent.
CARRIES = {"worker": ("starlette", "jinja2", "uvicorn", "psycopg_binary"),
           "operator": ("kopf", "kubernetes", "aiohttp", "psycopg_binary")}


@pytest.mark.images
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("container", ["worker", "worker-gpu", "operator"], indirect=True)
def test_skiplock_help_runs_in_the_image(container: str, request: pytest.FixtureRequest) -> None:
    out = in_image(container, "skiplock", "--help")
    assert "A PostgreSQL job queue that lives natively in Kubernetes." in out
    assert "worker" in in_image(container, "skiplock", "worker", "--help")
    assert "--all-namespaces" in in_image(container, "skiplock", "operator", "--help")
    kind = "operator" if request.node.callspec.params["container"] == "operator" else "worker"
    other = "worker" if kind == "operator" else "operator"
    carried = CARRIES[kind]
    absent = sorted(set(CARRIES[other]) - set(carried))
    in_image(container, "python3", "-c", f"import skiplock.worker, {', '.join(carried)}")
    found = in_image(container, "python3", "-c", "import importlib.util as u; "
                     f"print([m for m in {absent!r} if u.find_spec(m)])")
    assert found.strip() == "[]", f"the {kind} image carries modules of the other image: {found}"
    if kind == "worker":  # the chart runs `skiplock ui` in the worker image
        in_image(container, "python3", "-c", "import skiplock.ui.app")
        line = one_line_error(attempt(container, "skiplock", "operator", "--standalone", "--namespace", "x"))
        assert "needs the 'operator' extra" in line and "pip install 'skiplock[operator]'" in line, line
    else:
        in_image(container, "python3", "-c", "import skiplock.operator.main")
        line = one_line_error(attempt(container, "skiplock", "ui"))
        assert "needs the 'ui' extra" in line and "pip install 'skiplock[ui]'" in line, line


@pytest.mark.images
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("container", ["worker"], indirect=True)
def test_no_driver_in_the_image_is_one_line(container: str) -> None:
    """The base has no system libpq: without psycopg's binary wheel, psycopg has nothing to load."""
    assert attempt(container, "sh", "-c", f"rm -rf {SITE}/psycopg_binary {SITE}/psycopg_binary-*",
                   user="0:0").returncode == 0
    line = one_line_error(attempt(container, "skiplock", "migrate"))
    assert "no PostgreSQL driver" in line and "pip install 'skiplock[binary]'" in line, line


@pytest.mark.images
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("container", ["worker", "worker-gpu", "operator"], indirect=True)
def test_no_build_tools_in_the_final_image(container: str) -> None:
    out = in_image(container, "sh", "-c", "ls /opt/skiplock/bin; command -v gcc cc make pip || true")
    bins = set(out.split())
    assert "skiplock" in bins
    assert not bins & {"pip", "pip3", "/usr/bin/gcc", "/usr/bin/cc", "/usr/bin/make"}, out
    assert in_image(container, "id", "-u").strip() == "10001"
    # The source tree and the wheelhouse stay in the build stage.
    assert "missing" in in_image(container, "sh", "-c", "test -e /src && echo present || echo missing")


@pytest.mark.images
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("kind", ["worker", "worker-gpu", "operator"])
def test_image_config(images: dict[str, Image], kind: str) -> None:
    cfg = config(images[kind])
    assert cfg["User"] == "10001:10001"
    entry = ["skiplock", "operator" if kind == "operator" else "worker"]
    assert cfg["Entrypoint"] == entry
    labels = cfg["Labels"]
    for label in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{label}"), label
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.title"] == f"skiplock-{kind}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"])
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["PATH"].startswith("/opt/skiplock/bin:")
    if kind == "worker-gpu":
        assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
        assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]
    else:
        assert "NVIDIA_VISIBLE_DEVICES" not in env
    ports = set(cfg.get("ExposedPorts", {}))
    assert ports == ({"8080/tcp", "9090/tcp"} if kind == "operator" else {"9400/tcp"})


def test_build_script_is_offline_ready() -> None:
    """The build reads wheels from build/wheels (no index inside the build) and the context is allow-listed."""
    text = BUILD.read_text()
    assert "PIP_FIND_LINKS=/src/build/wheels" in text
    (union,) = re.findall(r"^EXTRAS=([\w,]+)", text, re.M)
    assert set(union.split(",")) == {e for extras in EXTRAS.values() for e in extras.split(",")}, \
        "the wheelhouse holds the dependencies of every extra an image installs"
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and "!build/wheels/" in ignore and "!worker/" in ignore and "!operator/" in ignore
