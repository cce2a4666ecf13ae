"""Schema migrations on the real PostgreSQL, the way an install runs them: several at once (operator
replicas, Helm's hook Job, a person running ``skiplock migrate``), on a fresh database and on an
upgrade from an older schema; and a database user that may not change the schema."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from skiplock.db import connect_sync
from skiplock.errors import SkiplockError
from skiplock.migrate import migrate, require_current, schema_version
from skiplock.sql import migrations
from tests.conftest import drop_database, fresh_database
from tests.helpers import ROOT, sql

ALL = [f"{m.version:04d}_{m.name}" for m in migrations()]
LATEST = migrations()[-1].version
RACERS = 6


@pytest.fixture
def empty_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A database without the skiplock schema."""
    url = fresh_database(pg_admin_dsn, template="template0")
    yield url
    drop_database(pg_admin_dsn, url)


def race(dsn: str, target: int | None = None) -> list[list[str]]:
    """``migrate`` from RACERS threads at once (each its own connection, released together); what each applied."""
    start = threading.Barrier(RACERS)
    results: list[list[str] | BaseException] = [[] for _ in range(RACERS)]

    def one(i: int) -> None:
        try:
            with connect_sync(dsn, "migrate") as conn:
                start.wait(30)
                results[i] = migrate(conn, target)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return [r for r in results if not isinstance(r, BaseException)]


def recorded(dsn: str) -> list[int]:
    return [r[0] for r in sql(dsn, "SELECT version FROM skiplock.schema_migrations ORDER BY version")]


def test_concurrent_migrations_of_a_fresh_database_apply_each_once(empty_dsn: str) -> None:
    applied = race(empty_dsn)
    assert sorted(name for names in applied for name in names) == ALL, applied
    assert recorded(empty_dsn) == [m.version for m in migrations()]
    with connect_sync(empty_dsn) as conn:
        require_current(conn)


def test_concurrent_migrations_upgrade_an_older_schema(empty_dsn: str) -> None:
    """The upgrade case: a database at the first version, then several newer migrators at once."""
    assert race(empty_dsn, target=1) and recorded(empty_dsn) == [1]
    with connect_sync(empty_dsn) as conn:
        assert schema_version(conn) == 1
    sql(empty_dsn, "INSERT INTO skiplock.jobs (type, payload) VALUES ('kept', '{}')")
    applied = race(empty_dsn)
    assert sorted(name for names in applied for name in names) == ALL[1:], applied
    assert recorded(empty_dsn) == [m.version for m in migrations()]
    assert sql(empty_dsn, "SELECT type FROM skiplock.jobs") == [("kept",)]


def test_concurrent_skiplock_migrate_processes(empty_dsn: str) -> None:
    """The real command, as Helm's Job and a person would run it at the same moment."""
    env = {"DATABASE_URL": empty_dsn, "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-m", "skiplock", "migrate"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(RACERS)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * RACERS, outputs
    said = [out.strip() for out, _ in outputs]
    names = sorted(n for line in said if line.startswith("applied ") for n in line.removeprefix("applied ").split(", "))
    assert names == ALL, said
    assert all(line == "schema is up to date" or line.startswith("applied ") for line in said), said
    assert recorded(empty_dsn) == [m.version for m in migrations()]


@pytest.fixture
def plain_user(pg_admin_dsn: str, dsn: str, empty_dsn: str) -> Iterator[tuple[str, str]]:
    """DSNs of an application role that may use the skiplock schema but not create schemas (the
    default for a role that does not own the database), for a migrated database and an empty one."""
    role = f"skiplock_plain_{secrets.token_hex(4)}"
    sql(pg_admin_dsn, f"CREATE ROLE {role} LOGIN")
    sql(dsn, f"GRANT USAGE ON SCHEMA skiplock TO {role}")
    sql(dsn, f"GRANT SELECT ON ALL TABLES IN SCHEMA skiplock TO {role}")

    def as_role(url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))

    yield as_role(dsn), as_role(empty_dsn)
    sql(dsn, f"DROP OWNED BY {role}")
    sql(pg_admin_dsn, f"DROP ROLE {role}")


def test_a_current_schema_needs_no_rights_to_change_it(plain_user: tuple[str, str]) -> None:
    current, empty = plain_user
    with connect_sync(current) as conn:
        assert migrate(conn) == []  # no lock, no DDL: nothing to do
    with connect_sync(empty) as conn, pytest.raises((SkiplockError, psycopg.Error), match="permission denied"):
        migrate(conn)
