"""skiplock's own exceptions; driver errors become these at the boundary (``wrap_db_errors``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


class SkiplockError(Exception):
    """Base of every error skiplock raises on purpose."""


class InvalidJob(SkiplockError, ValueError):
    """A job or one of its options failed validation."""


class PayloadTooLarge(InvalidJob):
    """The JSON payload exceeds the configured limit."""


class JobNotFound(SkiplockError, LookupError):
    """No job with that id (in the hot table or the history)."""


class UnknownDependency(JobNotFound):
    """A job's ``depends_on`` names ids that are in neither table (``ids``)."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(f"depends_on names unknown job ids: {ids[:10]}")
        self.ids = ids


class DatabaseUnavailable(SkiplockError, ConnectionError):
    """PostgreSQL could not be reached, or the connection broke mid-statement."""


class SchemaMissing(SkiplockError):
    """The skiplock schema is absent or older than this version: run ``skiplock migrate``."""


class JobFailed(SkiplockError):
    """A job a producer waited for ended dead or cancelled."""

    def __init__(self, job_id: int, state: str, error: str | None) -> None:
        super().__init__(f"job {job_id} ended {state}: {error or 'no error recorded'}")
        self.job_id, self.state, self.error = job_id, state, error


class JobCancelled(SkiplockError):
    """Raised by a handler (``job.raise_if_cancelled()``) to stop after a cancel request."""


class PermanentFailure(SkiplockError):
    """Raised by a handler to dead-letter the job at once, without further retries."""


@contextmanager
def wrap_db_errors() -> Iterator[None]:
    """Turn connection-level driver errors into ``DatabaseUnavailable`` and a missing schema into
    ``SchemaMissing``; other database errors (constraint violations...) pass through."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise SchemaMissing("skiplock schema not found: run `skiplock migrate`") from exc
    except psycopg.errors.InvalidParameterValue as exc:  # the SQL API refused a value: its one line
        raise InvalidJob(_first_line(exc)) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise DatabaseUnavailable(_first_line(exc)) from exc
    except OSError as exc:
        raise DatabaseUnavailable(str(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
