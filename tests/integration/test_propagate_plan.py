"""Guard on the ``propagate`` plan: it runs after every finish batch, so it must read the batch by
primary key however stale the table's statistics are (never walk every finished job)."""

from __future__ import annotations

import json

import psycopg

from skiplock.sql import QUERIES


def test_propagate_reads_the_batch_by_primary_key_with_stale_statistics(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO skiplock.jobs (type, state) SELECT 't', 'pending' FROM generate_series(1, 60000)")
        conn.execute("ANALYZE skiplock.jobs")  # statistics taken while nothing has finished yet...
        conn.execute("UPDATE skiplock.jobs SET state = 'completed', finished_at = now() WHERE id <= 50000")
        ids = [row[0] for row in conn.execute("SELECT id FROM skiplock.jobs WHERE id > 50000 ORDER BY id LIMIT 100")]
        with conn.transaction(force_rollback=True):  # ...then a batch finishes, as in the worker's transaction
            conn.execute("UPDATE skiplock.jobs SET state = 'completed', finished_at = now() WHERE id = ANY(%s)", (ids,))
            cur = conn.execute("EXPLAIN (FORMAT JSON) " + QUERIES["propagate"], {"ids": ids})
            plan = json.dumps(cur.fetchone()[0])  # type: ignore[index]
    assert '"Index Name": "jobs_pkey"' in plan
    assert "jobs_finished_idx" not in plan and '"Seq Scan"' not in plan
