"""Versioned, idempotent schema migrations (``skiplock migrate``)."""

from __future__ import annotations

from typing import Any

import psycopg

from .errors import SchemaMissing, wrap_db_errors
from .sql import migrations

_LOCK = "SELECT pg_advisory_xact_lock(hashtext('skiplock.migrate'))"
_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS skiplock;
CREATE TABLE IF NOT EXISTS skiplock.schema_migrations (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
"""


def migrate(conn: psycopg.Connection[Any], target: int | None = None) -> list[str]:
    """Apply every migration not yet applied (up to version ``target``, default all), each in its own
    transaction under an advisory lock: concurrent migrators (replicas, Helm's hook Job, the
    operator) never interleave, and each migration is applied once. A current schema is left alone
    without the lock or any DDL, so a user that may not change the schema can run this too.
    Returns the names applied."""
    wanted = [m for m in migrations() if target is None or m.version <= target]
    applied: list[str] = []
    with wrap_db_errors():
        if wanted and schema_version(conn) >= wanted[-1].version:
            return applied
        for m in wanted:
            with conn.transaction():
                conn.execute(_LOCK)
                conn.execute(_BOOTSTRAP)
                cur = conn.execute("SELECT 1 FROM skiplock.schema_migrations WHERE version = %s", (m.version,))
                if cur.fetchone():
                    continue
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO skiplock.schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name)
                )
                applied.append(f"{m.version:04d}_{m.name}")
    return applied


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The newest applied migration, 0 when the schema is absent."""
    with wrap_db_errors():
        cur = conn.execute("SELECT to_regclass('skiplock.schema_migrations') IS NOT NULL AS present")
        row = cur.fetchone()
        if not row or not _first(row):
            return 0
        cur = conn.execute("SELECT coalesce(max(version), 0) FROM skiplock.schema_migrations")
        found = cur.fetchone()
        return int(_first(found)) if found else 0


def require_current(conn: psycopg.Connection[Any]) -> None:
    """Raise ``SchemaMissing`` unless every shipped migration was applied."""
    if schema_version(conn) < migrations()[-1].version:
        raise SchemaMissing("the skiplock schema is missing or out of date: run `skiplock migrate`")


def _first(row: Any) -> Any:
    return next(iter(row.values())) if isinstance(row, dict) else row[0]
