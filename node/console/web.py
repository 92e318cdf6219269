"""What every console page uses: who is signed in, checked forms, rendering,
the audit log. The configuration and test pages (config_pages.py,
probe_pages.py) build on these names and nothing else of the app's.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from jinja2 import Environment
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse

from node.console.audit import AuditLog
from node.console.context import ConsoleContext
from node.console.csrf import CSRF_FIELD, new_token, token_matches
from node.console.login_limit import LoginLimiter
from node.console.sessions import Session, SessionTable
from node.metrics import ConsoleMetrics

#: The largest request body the console reads (its forms are a few KiB).
FORM_BYTES = 64 * 1024
#: Fields a form may have; the routing forms have a few dozen.
FORM_FIELDS = 512
#: The most digits a number from a request may have: SQLite's integers (and so job ids and
#: page offsets) hold 18 digits, and int() refuses a few thousand.
NUMBER_DIGITS = 18
#: The header with which console.js asks for a page's "content" block only.
FRAGMENT_HEADER = "X-Console-Fragment"

#: The session cookie's keys: the session's id, and the log-in form's token before there is one.
_SESSION_ID = "sid"
_LOGIN_TOKEN = "login_csrf"


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str


NAV = (
    NavItem("Overview", "/"),
    NavItem("Series", "/series"),
    NavItem("Configuration", "/config"),
    NavItem("Tests", "/probes"),
    NavItem("Audit", "/audit"),
)


@dataclass(frozen=True)
class ConsoleState:
    """What the app keeps for its requests (``app.state.console``)."""

    context: ConsoleContext
    sessions: SessionTable
    limiter: LoginLimiter
    audit: AuditLog
    metrics: ConsoleMetrics
    templates: Environment
    #: Held while a log-in is checked (node/console/sign_in.py).
    password_check: asyncio.Lock = field(default_factory=asyncio.Lock)


class NotSignedIn(Exception):
    """The request needs a session it does not have; the app answers with the log-in page,
    which comes back to `path` afterwards."""

    def __init__(self, path: str):
        super().__init__(f"{path} needs a signed-in user")
        self.path = path


def whole_number(text: str) -> int | None:
    """`text` as a number if it is 1 to NUMBER_DIGITS ASCII digits, else None. (str.isdigit
    also takes "²", which int() refuses, and any length.)"""
    return int(text) if re.fullmatch(rf"[0-9]{{1,{NUMBER_DIGITS}}}", text) else None


def console_state(request: Request) -> ConsoleState:
    return request.app.state.console


def console_context(request: Request) -> ConsoleContext:
    return console_state(request).context


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def current_session(request: Request) -> Session | None:
    """The request's session if it is open, not expired and its user still configured."""
    session_id = request.session.get(_SESSION_ID)
    if not isinstance(session_id, str):
        return None
    state = console_state(request)
    console = state.context.current_config().node.console
    if console is None:
        return None
    users = {user.name for user in console.users}
    return state.sessions.find(session_id, time.time(), console.session_minutes * 60, users)


def begin_session(request: Request, user: str) -> Session:
    """A new session for `user`, under an id the browser did not choose (no fixation)."""
    session = console_state(request).sessions.open(user, new_token(), time.time())
    request.session.clear()
    request.session[_SESSION_ID] = session.id
    return session


def end_session(request: Request) -> None:
    session_id = request.session.get(_SESSION_ID)
    if isinstance(session_id, str):
        console_state(request).sessions.end(session_id)
    request.session.clear()


def login_token(request: Request) -> str:
    """The log-in form's token, kept in the signed cookie until there is a session."""
    token = request.session.get(_LOGIN_TOKEN)
    if not isinstance(token, str):
        token = request.session[_LOGIN_TOKEN] = new_token()
    return token


def _required_session(request: Request) -> Session:
    session = current_session(request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise NotSignedIn(target)
    return session


def signed_in_user(request: Request) -> str:
    return _required_session(request).user


async def read_form(request: Request) -> FormData:
    """The request's form; its body is bounded by the app (BodyLimit in node/console/app.py)."""
    return await request.form(max_files=0, max_fields=FORM_FIELDS, max_part_size=FORM_BYTES)


async def checked_form(request: Request) -> tuple[str, FormData]:
    """The signed-in user and the form they posted, whose CSRF token is their session's."""
    session = _required_session(request)
    form = await read_form(request)
    if not token_matches(session.csrf_token, form.get(CSRF_FIELD)):
        raise HTTPException(403, "The form's security token is missing or out of date: reload the page "
                                 "and send it again.")
    return session.user, form


def page(request: Request, template: str, values: Mapping[str, object],
         status_code: int = 200) -> HTMLResponse:
    """`template` (which extends base.html) with `values`, and what base.html shows of the
    session; only its "content" block when console.js asks for a fragment."""
    session = current_session(request)
    compiled = console_state(request).templates.get_template(template)
    context = {
        **values,
        "user": session.user if session is not None else None,
        "csrf_token": session.csrf_token if session is not None else login_token(request),
        "nav": NAV,
        "path": request.url.path,
    }
    if request.headers.get(FRAGMENT_HEADER) == "1":
        html = "".join(compiled.blocks["content"](compiled.new_context(context)))
    else:
        html = compiled.render(context)
    return HTMLResponse(html, status_code)


def record_change(request: Request, action: str, detail: str) -> None:
    """Write a change to the audit log: the signed-in user, now, the client's address."""
    console_state(request).audit.record(signed_in_user(request), client_address(request), action, detail,
                                        time.time())
