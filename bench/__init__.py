"""skiplock's benchmarks (issue #6): ``python -m bench all [--quick]``.

Queue throughput and latency against PgQueuer and procrastinate on one embedded PostgreSQL, the
SQL floor (pgbench running skiplock's own statements), scale of history, lease overhead, and the
operator's autoscaling policy against a KEDA model in a trace-driven simulator. See README.md.
"""
