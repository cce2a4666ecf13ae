"""Re-export of tests/fixtures/jobs_fixture.py (worker processes import it as ``jobs_fixture`` from
tests/fixtures, a directory that shadows no standard-library module)."""

from tests.fixtures.jobs_fixture import ensure_table, jobs, record

__all__ = ["ensure_table", "jobs", "record"]
