"""The schema of each JobQueue's database: brought up to date (``skiplock migrate``) before the
operator scales its pools, once per database and operator start, so that a JobQueue applied with
``kubectl apply`` next to a fresh database just works.

Safe with several operators, Helm's migration Job and a ``skiplock migrate`` all at once: every
migration runs in its own transaction under one advisory lock, and is skipped when already
applied. A current schema costs one query and no lock (a database user that may not change the
schema is fine as long as nobody needs to). A migration that fails is reported, and tried again
after ``retry_after`` seconds, not on every poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import conninfo_to_dict

from skiplock.db import connect_sync, redact
from skiplock.errors import DatabaseUnavailable, SchemaMissing, SkiplockError
from skiplock.migrate import migrate

from .db import digest

log = logging.getLogger("skiplock.operator.schema")


def bring_up_to_date(dsn: str, lock_timeout: float, connect_timeout: float) -> list[str]:
    """Apply the migrations ``dsn``'s schema lacks (``migrate``: one query when it is current); the
    names applied. Blocking."""
    # No statement timeout (a migration may rewrite a big table), but a bounded wait for locks: the
    # advisory lock another migrator holds, and the table locks of the workers' transactions.
    options = f"{conninfo_to_dict(dsn).get('options') or ''} -c lock_timeout={int(lock_timeout * 1000)}".strip()
    with connect_sync(dsn, "operator-migrate", options=options, connect_timeout=max(1, round(connect_timeout))) as conn:
        try:
            return migrate(conn)
        except DatabaseUnavailable as exc:
            if conn.broken or conn.closed:  # the database went away: unreachable, not a failed migration
                raise
            raise SkiplockError(str(exc)) from exc  # e.g. a lock timeout: the migration failed


@dataclass
class Schemas:
    """Which databases this operator has found or made current, by DSN digest."""

    enabled: bool = True
    retry_after: float = 30.0
    lock_timeout: float = 30.0
    connect_timeout: float = 5.0
    _current: set[str] = field(default_factory=set)
    _failed: dict[str, tuple[float, str]] = field(default_factory=dict)  # digest -> (when, why)

    async def ensure(self, dsn: str) -> list[str]:
        """Make ``dsn``'s schema current; returns the migrations applied now. Raises ``SchemaMissing``
        (scrubbed of the DSN) when the migration failed, now or within ``retry_after``;
        ``DatabaseUnavailable`` when the database cannot be reached (tried again next time)."""
        key = digest(dsn)
        if not self.enabled or key in self._current:
            return []
        failed = self._failed.get(key)
        if failed and time.monotonic() - failed[0] < self.retry_after:
            raise SchemaMissing(failed[1])
        try:
            applied = await asyncio.to_thread(bring_up_to_date, dsn, self.lock_timeout, self.connect_timeout)
        except DatabaseUnavailable:
            raise
        except (SkiplockError, psycopg.Error) as exc:
            lines = str(exc).strip().splitlines()
            why = redact(f"the schema could not be migrated: {lines[0] if lines else type(exc).__name__}; "
                         "run `skiplock migrate` as a user that may change it", dsn)
            self._failed[key] = (time.monotonic(), why)
            raise SchemaMissing(why) from None
        self._failed.pop(key, None)
        self._current.add(key)
        if applied:
            log.info("database %s: applied migrations %s", key, ", ".join(applied))
        return applied

    def forget(self, dsn: str) -> None:
        """Check ``dsn`` again on its next use (its schema went missing after all)."""
        self._current.discard(digest(dsn))
