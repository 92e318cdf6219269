"""The console's Starlette application: its routes, and what wraps every
request (security headers, metrics, a bounded body, the signed session
cookie, error pages).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.console.audit import AuditLog
from node.console.config_pages import config_routes
from node.console.context import ConsoleContext
from node.console.login_limit import LoginLimiter
from node.console.pages import state_routes
from node.console.probe_pages import probe_routes
from node.console.sessions import SessionTable
from node.console.sign_in import sign_in_routes
from node.console.templating import console_templates
from node.console.web import FORM_BYTES, ConsoleState, NotSignedIn, page, whole_number
from node.metrics import ConsoleMetrics

LOG = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "segnode_console"

#: On every response. No inline script or style may run (console.js and console.css are files),
#: no other site may frame a page, forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class _SecurityHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.update(SECURITY_HEADERS)
                if not scope["path"].startswith("/static/"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: The methods the console's routes answer; any other is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST"})


class _Measured:
    """segnode_console_requests_total and _request_seconds; the route label is the
    matched route's path template and the method one of _METHODS or "other", so that a
    scan of odd paths or made-up methods adds no series (each would take memory for good)."""

    def __init__(self, app: ASGIApp, metrics: ConsoleMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_seconds.observe(time.perf_counter() - started)


_TOO_LARGE = f"The request is larger than the console accepts ({FORM_BYTES} bytes)."


class _BodyLimit:
    """Refuses a request body over FORM_BYTES (413) as the endpoint reads it, whether
    its Content-Length says so or it only turns out longer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            size = None if declared is None else whole_number(declared)
            if declared is not None and (size is None or size > FORM_BYTES):
                raise HTTPException(413, _TOO_LARGE)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > FORM_BYTES:
                    raise HTTPException(413, _TOO_LARGE)
            return message

        await self.app(scope, bounded_receive, send)


class _Failures:
    """A page that fails is logged and answered with the 500 page; the node goes on. A client
    that leaves mid-request is no failure (else anyone could fill the log with tracebacks)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        responded = False

        async def send_noting_start(message: Message) -> None:
            nonlocal responded
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except ClientDisconnect:  # gone mid-request: no one to answer, and nothing failed
            LOG.debug("console: %s %s: the client left", scope["method"], scope["path"])
        except Exception:
            LOG.exception("console: %s %s failed", scope["method"], scope["path"])
            if responded:
                raise
            response = page(Request(scope), "error.html", {
                "status": 500, "message": "This page failed; the node's log says why."}, 500)
            await response(scope, receive, send)


def _not_signed_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NotSignedIn)
    # After signing in, a page comes back; a form posted with an ended session is not sent again.
    target = exc.path if request.method == "GET" else "/"
    return RedirectResponse("/login" if target == "/" else f"/login?{urlencode({'next': target})}", 303)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    values = {"status": exc.status_code, "message": exc.detail}
    response = page(request, "error.html", values, exc.status_code)
    response.headers.update(exc.headers or {})
    return response


def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def console_routes(context: ConsoleContext) -> list[BaseRoute]:
    """Every route of the console; all but /health, /login and /static need a signed-in user."""
    return [
        Route("/health", _health, methods=["GET"]),
        *sign_in_routes(),
        *state_routes(),
        *config_routes(context),
        *probe_routes(context),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def console_app(context: ConsoleContext, secret: bytes) -> Starlette:
    """The console of the node `context` describes; `secret` signs its session cookies."""
    console = context.current_config().node.console
    if console is None:
        raise ValueError("the configuration has no node.console")
    metrics = ConsoleMetrics(context.registry)
    app = Starlette(
        routes=console_routes(context),
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(_Measured, metrics=metrics),
            Middleware(_BodyLimit),
            Middleware(SessionMiddleware, secret_key=secret.hex(), session_cookie=SESSION_COOKIE,
                       max_age=None, same_site="strict", https_only=console.certificate is not None),
            Middleware(_Failures),
        ],
        exception_handlers={NotSignedIn: _not_signed_in, HTTPException: _http_error},
    )
    app.state.console = ConsoleState(context, SessionTable(), LoginLimiter(), AuditLog(context.storage_dir),
                                     metrics, console_templates())
    return app
