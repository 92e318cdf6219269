"""uvicorn's HTTP/1.1 protocol with the bounds it lacks against a hostile network.

uvicorn keeps every connection it accepts for as long as the client likes:
one that sends half a request head, or a body a byte a minute, is never
closed, and its limit_concurrency only answers 503 once a request is whole.
A few thousand such sockets would take the node's file descriptors, which
its DICOM port and stores need too. So at most :data:`MAX_CONNECTIONS` are
kept open (more are closed as they come), and each request must arrive
whole within :data:`REQUEST_SECONDS` of its connection or of the answer
before it (a browser sends one in milliseconds).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Connections kept open at once; each holds a file descriptor of the node's process.
MAX_CONNECTIONS = 256
#: Time a client has to send a whole request (head and body).
REQUEST_SECONDS = 20.0


class BoundedH11Protocol(H11Protocol):
    _overdue: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            transport.close()
            return
        self._await_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._overdue is not None:
            self._overdue.cancel()
        super().connection_lost(exc)

    def _await_request(self) -> None:
        if self._overdue is not None:
            self._overdue.cancel()
        self._overdue = self.loop.call_later(REQUEST_SECONDS, self._close_if_incomplete)

    def _close_if_incomplete(self) -> None:
        # IDLE: the head is not whole yet (or no request came); SEND_BODY: the body is not.
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()
