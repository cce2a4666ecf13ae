"""Connections: where the DSN comes from, and the pool every long-running component uses."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from .errors import SkiplockError, wrap_db_errors

APP_NAME = "skiplock"


LIBPQ_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
"""libpq's own variables that name a server: with none of the URLs, they alone say where to connect."""


def resolve_dsn(explicit: str | None = None) -> str:
    """The DSN from the argument, ``SKIPLOCK_DATABASE_URL`` or ``DATABASE_URL``, in that order; else
    ``""`` (libpq reads PGHOST, PGDATABASE, PGUSER, PGPASSWORD...) when one of libpq's variables is set."""
    dsn = explicit or os.environ.get("SKIPLOCK_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if dsn:
        return dsn
    if any(os.environ.get(v) for v in LIBPQ_VARIABLES):
        return ""
    raise SkiplockError("no database: set DATABASE_URL or libpq's PGHOST/PGDATABASE... (or pass --database-url)")


_URI = re.compile(r"^\s*[a-z][a-z0-9+.-]*://(?P<userinfo>[^/?#]*)@", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"\bpassword\s*=\s*(?:'(?P<quoted>(?:\\.|[^'\\])*)'|(?P<bare>[^\s']+))", re.IGNORECASE)


def dsn_secrets(dsn: str | None) -> list[str]:
    """The DSN and every form of its password, read leniently: a DSN that libpq refuses (and whose
    error message echoes it) still has its password found."""
    if not dsn:
        return []
    found = [dsn]
    uri = _URI.match(dsn)
    if uri and ":" in uri["userinfo"]:
        password = uri["userinfo"].split(":", 1)[1]
        found += [password, unquote(password)]
    found += [m["quoted"] if m["quoted"] is not None else m["bare"] for m in _KV_PASSWORD.finditer(dsn)]
    with contextlib.suppress(psycopg.Error):
        found.append(str(conninfo_to_dict(dsn).get("password") or ""))
    return sorted({f for f in found if f}, key=len, reverse=True)  # longest first: no partial leftovers


def redact(text: str, dsn: str | None) -> str:
    """``text`` with the DSN and its password replaced by ``***``."""
    for secret in dsn_secrets(dsn):
        text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """Scrubs a DSN's password from every log record that passes a handler (the driver and the
    pool log connection errors, and libpq echoes a malformed DSN in them)."""

    def __init__(self, dsn: str | None) -> None:
        super().__init__()
        self.dsn = dsn

    def filter(self, record: logging.LogRecord) -> bool:
        if self.dsn:
            message = record.getMessage()
            clean = redact(message, self.dsn)
            if record.exc_info and record.exc_info[1] is not None:
                clean += "\n" + redact(logging.Formatter().formatException(record.exc_info), self.dsn)
                record.exc_info, record.exc_text = None, None
            record.msg, record.args = clean, None
        return True


def conn_kwargs(role: str = "client") -> dict[str, Any]:
    """Connection settings shared by every connection skiplock opens."""
    return {
        "autocommit": True,
        "row_factory": dict_row,
        "application_name": f"{APP_NAME}-{role}",
        "connect_timeout": int(os.environ.get("SKIPLOCK_CONNECT_TIMEOUT", "10")),
        # No server-side prepared statements: a transaction pooler (PgBouncer in transaction mode)
        # hands each transaction any server connection, where a statement prepared on another is unknown.
        "prepare_threshold": None,
    }


async def connect(dsn: str, role: str = "client") -> psycopg.AsyncConnection[dict[str, Any]]:
    """One async autocommit connection with dict rows."""
    with wrap_db_errors():
        return await psycopg.AsyncConnection.connect(dsn, **conn_kwargs(role))


def connect_sync(dsn: str, role: str = "client", **settings: Any) -> psycopg.Connection[dict[str, Any]]:
    """One sync autocommit connection with dict rows (CLI, migrations); ``settings`` are more
    connection parameters (e.g. ``options="-c lock_timeout=30s"``)."""
    with wrap_db_errors():
        return psycopg.Connection.connect(dsn, **{**conn_kwargs(role), **settings})


_raw_decode = json.JSONDecoder().raw_decode


def _loads(data: str | bytes) -> Any:
    """jsonb text to Python: ``json.loads`` without its encoding detection and whitespace scans
    (PostgreSQL writes jsonb as UTF-8 with no leading or trailing space); ``{}`` (no labels, no
    payload) without a parse."""
    if data == b"{}":
        return {}
    return _raw_decode(data.decode() if isinstance(data, bytes) else data)[0]


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    set_json_loads(_loads, conn)


async def check_cheaply(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's checkout check without a round trip when the connection is quiet: an idle
    connection's socket has nothing to read unless the server wrote to it - closed it, or sent a
    termination notice after a restart - and only then is the full check (a query) run."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    quiet = select.poll()  # poll, not select: any file descriptor number
    quiet.register(conn.pgconn.socket, select.POLLIN | select.POLLPRI)
    if quiet.poll(0):
        await AsyncConnectionPool.check_connection(conn)


def make_pool(dsn: str, max_size: int, role: str) -> AsyncConnectionPool[Any]:
    """An unopened pool of at most ``max_size`` connections that checks them on checkout, so a
    restarted server (or pooler) costs one error, not a pool of dead connections (``check_cheaply``:
    no extra round trip per statement). It opens one connection and grows only under load."""
    kwargs = conn_kwargs(role)
    kwargs.pop("connect_timeout")
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        kwargs=kwargs,
        open=False,
        check=check_cheaply,
        configure=_configure,
        reconnect_timeout=float(os.environ.get("SKIPLOCK_RECONNECT_TIMEOUT", "3600")),
        timeout=float(os.environ.get("SKIPLOCK_POOL_TIMEOUT", "30")),
        name=role,
    )
