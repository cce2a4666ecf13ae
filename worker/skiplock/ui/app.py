"""The Starlette application (``create_app``) and the ``skiplock ui`` entry point (``run_ui``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ExceptionHandler

from ..db import connect_sync, resolve_dsn
from ..errors import DatabaseUnavailable, InvalidJob, JobNotFound, SchemaMissing, SkiplockError
from ..migrate import require_current
from ..queue import Queue
from . import actions, views
from .auth import MIN_TOKEN_LENGTH, Auth, AuthMiddleware, is_loopback
from .csrf import CsrfError
from .headers import SecurityHeaders
from .hosts import LOOPBACK_NAMES, HostCheck, default_allowed_hosts
from .pages import HERE, BadRequest, make_templates, render

log = logging.getLogger("skiplock.ui")

ROUTES = [
    Route("/", views.overview),
    Route("/jobs", views.jobs),
    Route("/jobs/retry-dead", actions.retry_dead, methods=["POST"]),
    Route("/jobs/bulk", actions.bulk, methods=["POST"]),
    Route("/jobs/{job_id:int}", views.job_detail),
    Route("/jobs/{job_id:int}/retry", actions.retry, methods=["POST"]),
    Route("/jobs/{job_id:int}/cancel", actions.cancel, methods=["POST"]),
    Route("/schedules/pause", actions.pause_schedule, methods=["POST"]),
    Route("/schedules/resume", actions.resume_schedule, methods=["POST"]),
    Route("/login", actions.login_page, methods=["GET"]),
    Route("/login", actions.login, methods=["POST"]),
    Route("/logout", actions.logout, methods=["POST"]),
    Route("/healthz", views.healthz),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]

STATUS = [(CsrfError, 403), (BadRequest, 400), (JobNotFound, 404), (InvalidJob, 409),
          (DatabaseUnavailable, 503), (SchemaMissing, 503), (SkiplockError, 500)]


async def error_page(request: Request, exc: Exception) -> Response:
    """A page with the one-line reason; never a traceback."""
    if isinstance(exc, HTTPException):
        status, message = exc.status_code, exc.detail
    else:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        message = str(exc)
    return render(request, "error.html", {"status": status, "message": message, "notice": None}, status)


def create_app(dsn: str, token: str | None = None, user: str | None = None, password: str | None = None,
               allowed_hosts: Sequence[str] = LOOPBACK_NAMES) -> Starlette:
    """The job browser for the database at ``dsn``, answering to ``allowed_hosts`` only; with no
    credentials, anyone who can reach it may use it (``run_ui`` allows that on loopback only)."""
    auth = Auth(token, user, password)
    if "*" in allowed_hosts and not auth.enabled:
        raise SkiplockError("--allowed-hosts '*' needs authentication: without it any web page could "
                            "use the UI through DNS rebinding")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Queue(dsn) as queue:
            app.state.queue = queue
            yield

    handlers: dict[Any, ExceptionHandler] = {kind: error_page for kind, _ in STATUS}
    handlers[HTTPException] = error_page
    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers=handlers,
                    middleware=[Middleware(SecurityHeaders), Middleware(HostCheck, allowed=allowed_hosts),
                                Middleware(AuthMiddleware, auth=auth)])
    app.state.auth = auth
    app.state.templates = make_templates()
    return app


def check_exposure(auth: Auth, host: str) -> None:
    """Refuse to serve beyond loopback without credentials, or with a guessable token."""
    if is_loopback(host):
        return
    if not auth.enabled:
        raise SkiplockError(f"refusing to serve the UI on {host} without authentication: set "
                            "SKIPLOCK_UI_TOKEN, or SKIPLOCK_UI_USER and SKIPLOCK_UI_PASSWORD (or use --host 127.0.0.1)")
    if auth.token is not None and len(auth.token) < MIN_TOKEN_LENGTH:
        raise SkiplockError(f"refusing to serve the UI on {host} with a {len(auth.token)}-character "
                            f"SKIPLOCK_UI_TOKEN: off loopback it must have at least {MIN_TOKEN_LENGTH} "
                            "(e.g. openssl rand -hex 24)")


def server_config(app: Starlette, args: argparse.Namespace) -> Any:
    """uvicorn's settings: X-Forwarded-Proto/-For are believed from ``--forwarded-allow-ips`` only."""
    import uvicorn

    forwarded = ",".join(args.forwarded_allow_ips) if getattr(args, "forwarded_allow_ips", None) else None
    return uvicorn.Config(app, host=args.host, port=args.port, log_config=None, server_header=False,
                          log_level=str(args.log_level).lower(), proxy_headers=True,
                          forwarded_allow_ips=forwarded)


def run_ui(args: argparse.Namespace) -> int:
    """Serve the UI until interrupted. Refuses a non-loopback address without credentials."""
    import uvicorn

    auth = Auth.from_env()
    check_exposure(auth, args.host)
    allowed = getattr(args, "allowed_hosts", None) or default_allowed_hosts(args.host)
    dsn = resolve_dsn(args.database_url)
    with connect_sync(dsn, "client") as conn:
        require_current(conn)
    app = create_app(dsn, auth.token, auth.user, auth.password, allowed_hosts=allowed)
    mode = ("token" if auth.token else "") + (" + " if auth.token and auth.basic else "") + \
        ("basic auth" if auth.basic else "")
    log.info("job browser on http://%s:%d/ (auth: %s; hosts: %s)", args.host, args.port,
             mode or "none, loopback only", ", ".join(allowed))
    server = uvicorn.Server(server_config(app, args))
    server.run()
    return 0 if server.started else 1
