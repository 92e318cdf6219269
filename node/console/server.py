"""Serving the console from the node's process: uvicorn on a daemon thread.

The node owns the signals (uvicorn installs none off the main thread) and
the life of the server: its socket is bound in :meth:`ConsoleServer.start`,
so that a port in use stops the node at start with the address named, and
:meth:`ConsoleServer.stop` ends it within a bounded time.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from config import NodeConsole
from node.console.app import console_app
from node.console.connections import BoundedH11Protocol
from node.console.context import ConsoleContext
from node.console.session_key import read_or_create_session_key
from node.console.web import ConsoleState

LOG = logging.getLogger(__name__)

#: Requests served at once; more are answered 503 (an administrators' console has a few users).
MAX_CONCURRENT = 64
KEEP_ALIVE_SECONDS = 5
#: The largest request head (request line and headers) read.
MAX_HEAD_BYTES = 16 * 1024
_START_SECONDS = 10.0
_STOP_SECONDS = 5


class ConsoleServer:
    def __init__(self, context: ConsoleContext, console: NodeConsole):
        self._context = context
        self._console = console
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._state: ConsoleState | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the console server is not started")
        return self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "https" if self._console.certificate is not None else "http"
        host = f"[{self._console.host}]" if ":" in self._console.host else self._console.host
        return f"{scheme}://{host}:{self.port}/"

    def start(self) -> None:
        """Bind, and serve on a daemon thread.

        Raises
        ------
        OSError
            If the address cannot be bound (naming it), the session key cannot be read
            or made, or the certificate or key cannot be loaded.
        """
        address = f"{self._console.host}:{self._console.port}"
        try:
            family = socket.getaddrinfo(self._console.host, self._console.port, type=socket.SOCK_STREAM)[0][0]
            self._socket = socket.create_server((self._console.host, self._console.port), family=family)
        except OSError as exc:
            raise OSError(f"the console cannot listen on {address}: {exc.strerror or exc}") from exc
        # asyncio disables Nagle only on sockets it makes with IPPROTO_TCP; accepted
        # sockets inherit this, else each keep-alive answer waits ~40 ms for a delayed ACK.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            app = console_app(self._context, read_or_create_session_key(self._context.storage_dir))
            self._state = app.state.console
            config = uvicorn.Config(
                app,
                http=BoundedH11Protocol,  # closes slow and surplus connections
                ws="none",
                lifespan="off",
                log_config=None,
                access_log=False,
                proxy_headers=False,
                server_header=False,
                limit_concurrency=MAX_CONCURRENT,
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
                timeout_graceful_shutdown=_STOP_SECONDS,
                h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                ssl_certfile=self._console.certificate,
                ssl_keyfile=self._console.private_key,
            )
            config.load()  # here, so that a certificate that cannot be loaded stops the start
        except BaseException:
            self.stop()
            raise
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the console did not start on {address} (see the log)")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving: open requests get up to _STOP_SECONDS to finish."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(_STOP_SECONDS + 2)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(2)
        if self._state is not None:
            self._state.audit.close()
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._state = self._socket = None
