"""Versioned, idempotent schema migrations (``skiplock migrate``)."""

from __future__ import annotations

from typing import Any

import psycopg

from .errors import SchemaMissing, wrap_db_errors
from .sql import API_STATEMENTS, migrations, numbered

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
        if wanted and schema_version(conn) >= wanted[-1].version and statements_current(conn):
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
        if _has_statements(conn) and not statements_current(conn):
            with conn.transaction():
                conn.execute(_LOCK)
                install_statements(conn)
    return applied


def _has_statements(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('skiplock.statements') IS NOT NULL AS present").fetchone()
    return bool(row and _first(row))


def _statements() -> list[tuple[str, list[str], str]]:
    return [(name, list(params), numbered(name)) for name, params in API_STATEMENTS.items()]


def install_statements(conn: psycopg.Connection[Any]) -> None:
    """Write the statements the SQL API runs (``skiplock.sql.API_STATEMENTS``) as this version has them."""
    for name, params, body in _statements():
        conn.execute("INSERT INTO skiplock.statements (name, params, body) VALUES (%s, %s, %s) "
                     "ON CONFLICT (name) DO UPDATE SET params = excluded.params, body = excluded.body "
                     "WHERE (skiplock.statements.params, skiplock.statements.body) "
                     "IS DISTINCT FROM (excluded.params, excluded.body)", (name, params, body))


def statements_current(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``skiplock.statements`` holds this version's statements (False before it exists)."""
    with wrap_db_errors():
        if not _has_statements(conn):
            return False
        rows = conn.execute("SELECT name, params, body FROM skiplock.statements").fetchall()
    found = {(r["name"], tuple(r["params"]), r["body"]) if isinstance(r, dict) else (r[0], tuple(r[1]), r[2])
             for r in rows}
    return {(n, tuple(p), b) for n, p, b in _statements()} <= found


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
    """Raise ``SchemaMissing`` unless every shipped migration was applied and the SQL API's
    statements are this version's."""
    if schema_version(conn) < migrations()[-1].version or not statements_current(conn):
        raise SchemaMissing("the skiplock schema is missing or out of date: run `skiplock migrate`")


def _first(row: Any) -> Any:
    return next(iter(row.values())) if isinstance(row, dict) else row[0]
