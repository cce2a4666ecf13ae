"""The operator brings each JobQueue's database schema up to date before scaling its pools (real
PostgreSQL, fake Kubernetes API): a fresh database just works, a migration that cannot run is a
condition naming why (never the DSN), tried again later, and ``--no-migrate`` leaves it alone."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from skiplock.migrate import require_current
from skiplock.operator import reconcile
from skiplock.operator.runtime import Runtime
from skiplock.operator.schema import Schemas
from skiplock.sql import migrations
from tests.conftest import drop_database, fresh_database
from tests.helpers import sql

from .fakes import FakeKube
from .support import NS, Events, index, jobqueue, runtime, spec

ALL = [f"{m.version:04d}_{m.name}" for m in migrations()]


@pytest.fixture
def empty_dsn(pg_admin_dsn: str) -> Iterator[str]:
    url = fresh_database(pg_admin_dsn, template="template0")
    yield url
    drop_database(pg_admin_dsn, url)


@pytest.fixture
def empty_kube(empty_dsn: str) -> FakeKube:
    fake = FakeKube()
    fake.add_secret(NS, "db", "DATABASE_URL", empty_dsn)
    return fake


async def poll(rt: Runtime, kube: FakeKube) -> dict[str, Any]:
    body = jobqueue(spec())
    await reconcile.poll(rt, rt.jobqueue(NS, "jq"), body, index(kube))
    return kube.statuses.get((NS, "jq"), {})


def reasons(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["reason"] for c in status["conditions"]}


async def test_a_fresh_database_is_migrated_before_the_pools_scale(empty_kube: FakeKube, events: Events,
                                                                   empty_dsn: str) -> None:
    rt = runtime(empty_kube, events)
    try:
        status = await poll(rt, empty_kube)
        assert ("Normal", "SchemaMigrated", f"database schema migrated: {', '.join(ALL)}") in events
        assert reasons(status)["Ready"] != "DatabaseSchemaMissing", status
        assert status["pending"] == 0 and (NS, "jq-cpu") in empty_kube.deploys
        with psycopg.connect(empty_dsn) as conn:
            require_current(conn)
        await poll(rt, empty_kube)  # once per database: nothing more to say
        assert events.reasons().count("SchemaMigrated") == 1
    finally:
        await rt.close()


async def test_no_migrate_reports_the_missing_schema(empty_kube: FakeKube, events: Events, empty_dsn: str) -> None:
    rt = runtime(empty_kube, events)
    rt.schemas = Schemas(enabled=False)
    try:
        status = await poll(rt, empty_kube)
    finally:
        await rt.close()
    assert reasons(status)["Ready"] == "DatabaseSchemaMissing", status
    assert "SchemaMigrated" not in events.reasons()
    assert sql(empty_dsn, "SELECT to_regclass('skiplock.jobs')") == [(None,)]


async def test_a_migration_held_up_by_another_is_reported_then_retried(empty_kube: FakeKube, events: Events,
                                                                       empty_dsn: str) -> None:
    """Another migrator holds the lock past the operator's lock_timeout: a condition, no attempt on
    every poll, and once the lock is free the next attempt (after retry_after) migrates."""
    rt = runtime(empty_kube, events)
    rt.schemas = Schemas(lock_timeout=0.5, retry_after=3600)
    holder = psycopg.connect(empty_dsn)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext('skiplock.migrate'))")
        status = await poll(rt, empty_kube)
        (condition,) = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert condition["reason"] == "DatabaseSchemaMissing" and "lock timeout" in condition["message"], condition
        assert "run `skiplock migrate`" in condition["message"]
        holder.rollback()  # the other migrator is done
        await poll(rt, empty_kube)  # within retry_after: the same report, no new attempt
        assert sql(empty_dsn, "SELECT to_regclass('skiplock.jobs')") == [(None,)]
        rt.schemas.retry_after = 0
        status = await poll(rt, empty_kube)
        assert reasons(status)["Ready"] != "DatabaseSchemaMissing", status
        assert "SchemaMigrated" in events.reasons()
    finally:
        holder.close()
        await rt.close()


@pytest.fixture
def plain_role(pg_admin_dsn: str, dsn: str) -> Iterator[str]:
    """An application role: uses the skiplock schema of ``dsn``, may not create schemas."""
    role = f"skiplock_app_{secrets.token_hex(4)}"
    sql(pg_admin_dsn, f"CREATE ROLE {role} LOGIN PASSWORD 's3cret-pw'")
    sql(dsn, f"GRANT USAGE ON SCHEMA skiplock TO {role}")
    sql(dsn, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA skiplock TO {role}")
    sql(dsn, f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA skiplock TO {role}")
    yield role
    sql(dsn, f"DROP OWNED BY {role}")
    sql(pg_admin_dsn, f"DROP ROLE {role}")


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}:s3cret-pw@{parts.hostname}:{parts.port}"))


async def test_an_application_role_is_fine_on_a_current_schema_and_told_why_on_an_empty_one(
        events: Events, plain_role: str, dsn: str, empty_dsn: str) -> None:
    for url, migrated in ((dsn, True), (empty_dsn, False)):
        kube = FakeKube()
        kube.add_secret(NS, "db", "DATABASE_URL", as_role(url, plain_role))
        rt = runtime(kube, events)
        try:
            status = await poll(rt, kube)
        finally:
            await rt.close()
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        if migrated:
            assert ready["reason"] != "DatabaseSchemaMissing", ready
        else:
            assert ready["reason"] == "DatabaseSchemaMissing" and "permission denied" in ready["message"], ready
            assert "s3cret-pw" not in str(status) and "s3cret-pw" not in str(events)
    assert "SchemaMigrated" not in events.reasons()
