"""skiplock: a PostgreSQL job queue that lives natively in Kubernetes.

The names below load on first use (PEP 562), so that ``import skiplock`` and the ``skiplock``
command start without the PostgreSQL driver: when psycopg finds no implementation, the first name
used raises ``MissingDependency`` naming the extra to install, and the command says it in one line.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .extras import MissingDependency, require_driver

if TYPE_CHECKING:
    from .errors import (
        DatabaseUnavailable,
        InvalidJob,
        JobCancelled,
        JobFailed,
        JobNotFound,
        PayloadTooLarge,
        PermanentFailure,
        SchemaMissing,
        SkiplockError,
    )
    from .models import JobRecord, JobSpec, State
    from .queue import Queue
    from .registry import Job, JobRegistry
    from .worker import Worker, WorkerConfig

try:  # pyproject.toml is the one source of the version
    __version__ = metadata.version("skiplock")
except metadata.PackageNotFoundError:  # sources on sys.path without an install
    __version__ = "0+unknown"

_EXPORTS = {
    **dict.fromkeys(("DatabaseUnavailable", "InvalidJob", "JobCancelled", "JobFailed", "JobNotFound",
                     "PayloadTooLarge", "PermanentFailure", "SchemaMissing", "SkiplockError"), "errors"),
    **dict.fromkeys(("JobRecord", "JobSpec", "State"), "models"),
    "Queue": "queue",
    **dict.fromkeys(("Job", "JobRegistry"), "registry"),
    **dict.fromkeys(("Worker", "WorkerConfig"), "worker"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'skiplock' has no attribute {name!r}")
    require_driver()
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


__all__ = [
    "DatabaseUnavailable",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobRecord",
    "JobRegistry",
    "JobSpec",
    "MissingDependency",
    "PayloadTooLarge",
    "PermanentFailure",
    "Queue",
    "SchemaMissing",
    "SkiplockError",
    "State",
    "Worker",
    "WorkerConfig",
    "__version__",
]
