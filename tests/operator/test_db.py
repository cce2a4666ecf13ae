"""The operator's shared database pools, against real PostgreSQL servers."""

from __future__ import annotations

import time

import pytest

from skiplock.embedded import LocalPostgres
from skiplock.errors import DatabaseUnavailable
from skiplock.operator.db import Databases, InvalidDsn, digest, redact


async def test_one_pool_per_dsn_shared_by_its_users_and_closed_with_the_last(dsn: str) -> None:
    dbs = Databases(query_timeout=2)
    try:
        a = await dbs.acquire(("ns", "a"), dsn)
        b = await dbs.acquire(("ns", "b"), dsn)
        assert a is b
        assert await dbs.call(a.depth(["default"])) == []
        await dbs.release(("ns", "a"))
        assert await dbs.call(b.depth(["default"])) == []  # still open for b
        await dbs.release(("ns", "b"))
        assert dbs._pools == {}
    finally:
        await dbs.close()


async def test_a_user_moving_to_another_dsn_closes_the_old_pool(dsn: str, pg_admin_dsn: str) -> None:
    dbs = Databases(query_timeout=2)
    try:
        await dbs.acquire("jq", dsn)
        await dbs.acquire("jq", pg_admin_dsn)
        assert set(dbs._pools) == {digest(pg_admin_dsn)}
    finally:
        await dbs.close()


async def test_an_outage_is_a_bounded_wait_and_a_clear_error(own_server: LocalPostgres) -> None:
    dbs = Databases(query_timeout=1)
    try:
        queue = await dbs.acquire("jq", own_server.uri)
        assert await dbs.call(queue.depth(["q"])) == []
        own_server.stop()
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            await dbs.call(queue.depth(["q"]))
        assert time.monotonic() - started < 3
        assert "Connection refused" in await dbs.diagnose(own_server.uri)
        own_server.start()
        assert await dbs.call(queue.depth(["q"])) == []
        assert await dbs.diagnose(own_server.uri) == ""
    finally:
        await dbs.close()


async def test_a_malformed_dsn_is_refused_without_echoing_it() -> None:
    dbs = Databases()
    with pytest.raises(InvalidDsn) as caught:
        await dbs.acquire("jq", "host=x password=hunter2 =oops")
    assert "hunter2" not in str(caught.value)


def test_redact_removes_the_dsn_and_its_password() -> None:
    dsn = "postgresql://app:pa55word@db.example:5432/jobs"
    assert redact(f"failed for {dsn}; auth pa55word", dsn) == "failed for ***; auth ***"
    assert redact("nothing secret", "not a dsn =") == "nothing secret"
    assert redact("no dsn known yet", "") == "no dsn known yet"
