"""Fixtures for the job browser: an app on the test database, a client, the CSRF form token."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from skiplock.ui.app import create_app


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real browser (Debian's chromium through Playwright)")


@pytest.fixture
def client(dsn: str) -> Iterator[TestClient]:
    """The UI without credentials (as served on loopback)."""
    with TestClient(create_app(dsn), follow_redirects=False) as c:
        yield c


def csrf_token(client: TestClient, page: str = "/") -> str:
    """Load a page (which sets the CSRF cookie) and return the form token in it."""
    response = client.get(page)
    match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', response.text)
    assert match, response.text
    return match.group(1)
