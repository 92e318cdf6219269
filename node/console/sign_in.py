"""Signing in to the console and out of it.

A wrong password and an unknown user get the same answer after the same
work (the password is checked against a dummy hash when the user is
unknown), so that neither the page nor its timing says which names exist.
Failures are limited per address and per name (node/console/login_limit.py).
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from config import ConsoleUser
from config.passwords import hash_password, verify_password
from node.console.csrf import CSRF_FIELD, token_matches
from node.console.login_limit import limit_keys
from node.console.web import (
    begin_session,
    checked_form,
    client_address,
    console_state,
    current_session,
    end_session,
    login_token,
    page,
    read_form,
    record_change,
)

LOG = logging.getLogger(__name__)

#: The part of a user name that the failure counts are kept under (bounds their memory).
_NAME_KEY_CHARS = 128


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def credentials_valid(users: Sequence[ConsoleUser], name: str, password: str) -> bool:
    """Whether `name` is one of `users` and `password` is theirs; as slow when it is not."""
    user = next((user for user in users if user.name == name), None)
    matches = verify_password(user.password_hash if user is not None else _dummy_hash(), password)
    return matches and user is not None


def same_site_path(target: object) -> str:
    """`target` if it is a path on this site (the ``next`` of a log-in), else ``/``:
    a link to the log-in page must not send a user on to another site."""
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or any(ord(ch) < 0x20 for ch in target):
        return "/"
    return target


async def login_page(request: Request) -> Response:
    target = same_site_path(request.query_params.get("next"))
    if current_session(request) is not None:
        return RedirectResponse(target, 303)
    return page(request, "login.html", {"next": target, "error": None})


async def log_in(request: Request) -> Response:
    form = await read_form(request)
    if not token_matches(login_token(request), form.get(CSRF_FIELD)):
        raise HTTPException(403, "The log-in form is out of date: load the page again.")
    state = console_state(request)
    name, password = str(form.get("user", "")), str(form.get("password", ""))
    target = same_site_path(form.get("next"))
    address = client_address(request)
    shown = name[:_NAME_KEY_CHARS]  # in keys and logs: a name of 60 KiB must not fill either
    keys = limit_keys(address, shown)
    console = state.context.current_config().node.console
    users = console.users if console is not None else ()
    # One log-in checked at a time: else tries sent at once would all pass the count before any
    # failed, and each argon2 check takes 64 MiB.
    async with state.password_check:
        now = time.time()
        wait = state.limiter.retry_after(keys, now)
        valid = wait == 0 and await run_in_threadpool(credentials_valid, users, name, password)
        if wait == 0 and not valid:
            state.limiter.failed(keys, now)
    if wait > 0:
        state.metrics.failed_logins.inc()
        LOG.warning("console: log-in as %r from %s refused: too many failures", shown, address)
        minutes = math.ceil(wait / 60)
        response = page(request, "login.html", {
            "next": target, "error": f"Too many failed log-ins: try again in {minutes} minutes."}, 429)
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    if not valid:
        state.metrics.failed_logins.inc()
        LOG.warning("console: failed log-in as %r from %s", shown, address)
        return page(request, "login.html", {"next": target, "error": "Wrong user name or password."}, 403)
    begin_session(request, name)
    record_change(request, "sign-in", f"signed in from {address}")
    return RedirectResponse(target, 303)


async def log_out(request: Request) -> Response:
    await checked_form(request)
    record_change(request, "sign-out", "signed out")
    end_session(request)
    return RedirectResponse("/login", 303)


def sign_in_routes() -> list[Route]:
    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", log_in, methods=["POST"]),
        Route("/logout", log_out, methods=["POST"]),
    ]
