"""Fixtures for the job browser: an app on the test database, a client, the CSRF form token."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from skiplock.embedded import free_port
from skiplock.ui.app import create_app
from tests import helpers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real browser (Debian's chromium through Playwright)")


BASE_URL = "http://localhost"  # the UI answers to loopback names only, by default


def ui_client(app: Starlette) -> TestClient:
    """A client of ``app`` as a browser on the same machine would reach it."""
    return TestClient(app, base_url=BASE_URL, follow_redirects=False)


@pytest.fixture
def client(dsn: str) -> Iterator[TestClient]:
    """The UI without credentials (as served on loopback)."""
    with ui_client(create_app(dsn)) as c:
        yield c


def csrf_token(client: TestClient, page: str = "/") -> str:
    """Load a page (which sets the CSRF cookie) and return the form token in it."""
    response = client.get(page)
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', response.text)
    assert match, response.text
    return match.group(1)


@contextmanager
def running_ui(dsn: str, log_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``skiplock ui`` as a real process on a free loopback port (``args`` added, ``env`` its
    SKIPLOCK_UI_* settings); yields its URL once /healthz answers."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("SKIPLOCK_UI_") and k != "SKIPLOCK_DATABASE_URL"}
    full_env.update(DATABASE_URL=dsn, PYTHONPATH=helpers.test_pythonpath(), **(env or {}))
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "skiplock", "ui", "--host", "127.0.0.1", "--port", str(port),
                                 *args], env=full_env, cwd=helpers.ROOT, stdout=log, stderr=subprocess.STDOUT,
                                text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        try:
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    assert time.monotonic() < deadline, "skiplock ui did not start"
                    time.sleep(0.2)
            yield url
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
