"""skiplock: a PostgreSQL job queue that lives natively in Kubernetes."""

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

__version__ = "0.1.0"

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
