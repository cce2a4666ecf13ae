"""Fixtures of the operator's database tier: a fake Kubernetes holding the DSN Secret, the events
the operator posts, and a Runtime on them (closed after the test)."""

from __future__ import annotations

from typing import Any

import pytest

from .fakes import FakeKube
from .support import NS, Events, runtime


@pytest.fixture
def kube(dsn: str) -> FakeKube:
    fake = FakeKube()
    fake.add_secret(NS, "db", "DATABASE_URL", dsn)
    return fake


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def rt(kube: FakeKube, events: Events) -> Any:
    rt = runtime(kube, events)
    yield rt
    await rt.close()
