"""The Starlette application (``create_app``) and the ``skiplock ui`` entry point (``run_ui``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
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
from .auth import Auth, AuthMiddleware, is_loopback
from .csrf import CsrfError
from .headers import SecurityHeaders
from .pages import HERE, BadRequest, make_templates, render

log = logging.getLogger("skiplock.ui")

ROUTES = [
    Route("/", views.overview),
    Route("/jobs", views.jobs),
    Route("/jobs/retry-dead", actions.retry_dead, methods=["POST"]),
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
    return render(request, "error.html", {"status": status, "message": message}, status)


def create_app(dsn: str, token: str | None = None, user: str | None = None,
               password: str | None = None) -> Starlette:
    """The job browser for the database at ``dsn``; with no credentials, anyone who can reach
    it may use it (``run_ui`` allows that on loopback only)."""
    auth = Auth(token, user, password)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Queue(dsn) as queue:
            app.state.queue = queue
            yield

    handlers: dict[Any, ExceptionHandler] = {kind: error_page for kind, _ in STATUS}
    handlers[HTTPException] = error_page
    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers=handlers,
                    middleware=[Middleware(SecurityHeaders), Middleware(AuthMiddleware, auth=auth)])
    app.state.auth = auth
    app.state.templates = make_templates()
    return app


def run_ui(args: argparse.Namespace) -> int:
    """Serve the UI until interrupted. Refuses a non-loopback address without credentials."""
    import uvicorn

    auth = Auth.from_env()
    if not auth.enabled and not is_loopback(args.host):
        raise SkiplockError(f"refusing to serve the UI on {args.host} without authentication: set "
                            "SKIPLOCK_UI_TOKEN, or SKIPLOCK_UI_USER and SKIPLOCK_UI_PASSWORD (or use --host 127.0.0.1)")
    dsn = resolve_dsn(args.database_url)
    with connect_sync(dsn, "client") as conn:
        require_current(conn)
    app = create_app(dsn, auth.token, auth.user, auth.password)
    mode = ("token" if auth.token else "") + (" + " if auth.token and auth.basic else "") + \
        ("basic auth" if auth.basic else "")
    log.info("job browser on http://%s:%d/ (auth: %s)", args.host, args.port, mode or "none, loopback only")
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, server_header=False,
                            log_level=str(args.log_level).lower())
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
