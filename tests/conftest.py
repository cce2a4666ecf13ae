"""Shared fixtures: one real PostgreSQL per session (embedded, or $DATABASE_URL), a migrated
template database, and a fresh database cloned from it for every test that asks for ``dsn``."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from skiplock import Queue
from skiplock.embedded import LocalPostgres
from skiplock.migrate import migrate

TEMPLATE = "skiplock_test_template"
_counter = itertools.count()


def _with_db(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """DSN of a maintenance database on the test server."""
    external = os.environ.get("SKIPLOCK_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    with LocalPostgres() as server:
        yield server.uri


@pytest.fixture(scope="session")
def template_dsn(pg_admin_dsn: str) -> str:
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    dsn = _with_db(pg_admin_dsn, TEMPLATE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    return dsn


def fresh_database(admin_dsn: str, template: str = TEMPLATE) -> str:
    """Clone the migrated template into a new database; returns its DSN."""
    name = f"skiplock_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return _with_db(admin_dsn, name)


def drop_database(admin_dsn: str, dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def dsn(pg_admin_dsn: str, template_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    url = fresh_database(pg_admin_dsn)
    yield url
    drop_database(pg_admin_dsn, url)


@pytest.fixture
async def queue(dsn: str) -> AsyncIterator[Queue]:
    async with Queue(dsn) as q:
        yield q


@pytest.fixture
def own_server() -> Iterator[LocalPostgres]:
    """A private PostgreSQL server this test may stop and restart."""
    with LocalPostgres() as server:
        with psycopg.connect(server.uri, autocommit=True) as conn:
            migrate(conn)
        yield server
