"""The send stage: C-STORE of stored result files to one destination.

Its :class:`Session` also carries the console's probes (node/send/probe.py):
a C-ECHO, and a test object sent through :func:`send_files`.

Each file goes out exactly as it is stored: its dataset bytes after the file
meta, in its own transfer syntax (pynetdicom's chunked file sending, which
never decodes or re-encodes), on a presentation context proposed for its SOP
class and transfer syntax alone. The outcome of every file is returned, typed,
for the outbox to mark delivered, retry or give up.

Two pynetdicom 3.0 behaviours shape this module:

* It leaves Nagle's algorithm on. A C-STORE request is a small command PDU
  then the data PDUs; with Nagle, delayed ACKs make each request wait tens of
  milliseconds (bench/send_stall.py measures it). TCP_NODELAY is set on the
  socket from the EVT_CONN_OPEN handler, before the A-ASSOCIATE-RQ goes out.
* With TCP_NODELAY, responses come back fast enough to lose a race inside
  pynetdicom: ``send_c_store`` pauses the association's reactor thread by
  clearing ``_reactor_checkpoint`` and waiting for ``_is_paused``, but the
  reactor sets ``_is_paused`` *before* ``_reactor_checkpoint.wait()``. A
  reactor that has just passed ``wait()`` (the previous request set the
  checkpoint again) still reads "paused"; it then takes the next C-STORE-RSP
  off ``dimse.msg_queue``, logs "Received unexpected C-STORE service message"
  and drops it, and ``send_c_store`` waits for a response that will never
  come (the symptom of pynetdicom issue 875, there with C-FIND). The request
  did reach the peer and the peer did answer. Into storescp over loopback on
  a shared 2-core machine: 11 such stalls in about 14,000 C-STOREs, between
  1 in 350 and none in 6,000 depending on the load (bench/send_stall.py).

So responses are also taken where pynetdicom cannot lose them: the
EVT_DIMSE_RECV handler, which runs in the DUL thread as each message is
decoded, records each response by Message ID. A watchdog thread ends the
association when a recorded response has not come out of ``send_c_store``
within half a second, or when the peer has been silent for ``timeout``
seconds (a short DIMSE timeout that counts from the last byte sent, not from
the start of a large file). A lost response still counts: the file is
delivered, and the rest go on a new association, about 0.6 s later. 22
responses were lost and recovered in 75,000 C-STOREs, none undelivered.

A destination with ``tls`` is sent to over DICOM TLS (PS3.15 annex B.9), with
node.tls's client context. pynetdicom takes every TLS error for a failed or
closed connection and keeps no reason, so its sockets are made here
(:class:`_TlsSocket`): they record why TLS failed, for a ``TLS_FAILED``
result that says it, and check a pinned certificate right after the
handshake, before any DICOM byte is sent.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import Verification
from pynetdicom.status import (
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    VERIFICATION_SERVICE_CLASS_STATUS,
)

from config import Destination
from node.tls import client_context, peer_certificate, tls_failure

LOG = logging.getLogger(__name__)

# send_c_store(path) then sends the file's own dataset bytes, unconverted, and
# only on a context with the file's transfer syntax. segnode sends nothing else.
_config.STORE_SEND_CHUNKED_DATASET = True

# How long a response recorded by EVT_DIMSE_RECV may take to come out of
# send_c_store before it counts as lost: that hand-over is in-process and
# takes microseconds; a false alarm costs only a new association.
_LOST_RESPONSE_GRACE_SECONDS = 0.5
_WATCHDOG_POLL_SECONDS = 0.05
# Transient refusals, PS3.4 B.2.3 and PS3.7 C: the same instance may be
# stored later. Every other failure status refuses the instance itself.
_OUT_OF_RESOURCES = range(0xA700, 0xA800)
_TRANSIENT_STATUSES = frozenset({0x0110, 0x0213})  # processing failure, resource limitation


class Outcome(Enum):
    """What became of one file."""

    SUCCESS = "success"
    WARNING = "warning"  # stored, with a warning status (coercion, elements discarded)
    REFUSED = "refused"  # a failure status
    NOT_ACCEPTED = "not-accepted"  # no presentation context for its SOP class and transfer syntax
    UNREADABLE = "unreadable"  # missing, or not a DICOM Part 10 file
    CONNECT_FAILED = "connect-failed"
    TLS_FAILED = "tls"  # handshake, certificate or pin refused, or the TLS files unreadable
    REJECTED = "rejected"  # A-ASSOCIATE-RJ
    ABORTED = "aborted"  # the association ended before a response
    TIMED_OUT = "timed-out"  # the peer went silent for longer than the timeout
    NOT_ATTEMPTED = "not-attempted"  # an earlier file's association broke; never sent


@dataclass(frozen=True)
class SendResult:
    """The outcome of sending one file, with the destination's status if it answered."""

    path: Path
    outcome: Outcome
    status: int | None = None
    detail: str = ""

    @property
    def delivered(self) -> bool:
        return self.outcome in (Outcome.SUCCESS, Outcome.WARNING)

    @property
    def permanent(self) -> bool:
        """Whether sending the same file again cannot succeed without someone changing something."""
        if self.outcome in (Outcome.NOT_ACCEPTED, Outcome.UNREADABLE):
            return True
        if self.outcome is Outcome.REFUSED:
            assert self.status is not None
            return self.status not in _OUT_OF_RESOURCES and self.status not in _TRANSIENT_STATUSES
        return False


@dataclass(frozen=True)
class _OutgoingFile:
    index: int
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _read_outgoing(index: int, path: Path) -> _OutgoingFile:
    meta = read_file_meta_info(path)
    missing = [
        keyword
        for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
        if keyword not in meta
    ]
    if missing:
        raise InvalidDicomError(f"file meta information lacks {', '.join(missing)}")
    return _OutgoingFile(
        index,
        path,
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )


@dataclass(frozen=True)
class Reply:
    """What came of one DIMSE request: the destination's status, or why none came."""

    outcome: Outcome
    status: int | None = None
    detail: str = ""


def _reply_from_status(status: int, comment: str, meanings: dict[int, tuple[str, str]]) -> Reply:
    category, description = meanings.get(status, ("Unknown", "unknown status"))
    detail = f"0x{status:04X} {description}" + (f": {comment}" if comment else "")
    if category == STATUS_SUCCESS:
        return Reply(Outcome.SUCCESS, status)
    if category == STATUS_WARNING:
        return Reply(Outcome.WARNING, status, detail)
    return Reply(Outcome.REFUSED, status, detail)


class _Watchdog:
    """One association's responses, as EVT_DIMSE_RECV sees them, and its guard thread.

    The guard ends the association when the request in flight has had its
    response recorded but ``send_c_store`` has not returned it (pynetdicom
    lost it), or when nothing has moved for ``timeout`` seconds: activity is
    each PDU written to the socket and each message received, so a large
    file on a slow link is not cut off while its bytes still flow. Past
    ``deadline`` (``time.monotonic()``), if one is given, it ends the
    association whatever it is doing, negotiation and release included.

    Ending does not rely on pynetdicom's threads: the TCP shutdown frees a DUL
    thread blocked in ``send`` and makes it close the association, and the
    ``(None, None)`` put on the DIMSE queue, which is what pynetdicom's own
    abort actions put there, wakes ``send_c_store`` even if the DUL thread is
    gone. pynetdicom's ``is_established`` lags behind (its reactor thread
    clears it later), so callers ask :attr:`ended` too.
    """

    def __init__(self, timeout: float, name: str, deadline: float | None):
        self._timeout = timeout
        self._deadline = deadline
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._assoc: Association | None = None
        self._responses: dict[int, tuple[float, int, str]] = {}
        self._in_flight: int | None = None
        self._last_activity = time.monotonic()
        self._ended = False
        self.rejection: A_ASSOCIATE_RJ | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._guard, name=f"send-watchdog-{name}", daemon=True)
        self.handlers = [
            (evt.EVT_CONN_OPEN, self._on_connected),
            (evt.EVT_DATA_SENT, self._on_data_sent),
            (evt.EVT_DIMSE_RECV, self._on_message),
            (evt.EVT_PDU_RECV, self._on_pdu),
        ]

    @property
    def connected(self) -> bool:
        return self._socket is not None

    @property
    def ended(self) -> bool:
        with self._lock:
            return self._ended

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def begin(self, message_id: int) -> None:
        with self._lock:
            self._in_flight = message_id
            self._responses.pop(message_id, None)  # Message IDs wrap around at 65535
            self._last_activity = time.monotonic()

    def finish(self) -> bool:
        """End the request in flight; whether the guard ended the association."""
        with self._lock:
            self._in_flight = None
            return self._ended

    def response(self, message_id: int) -> tuple[int, str] | None:
        with self._lock:
            recorded = self._responses.get(message_id)
        return None if recorded is None else recorded[1:]

    def _on_connected(self, event: Event) -> None:
        sock = event.assoc.dul.socket.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._assoc = event.assoc
        self._socket = sock

    def _on_data_sent(self, event: Event) -> None:
        self._last_activity = time.monotonic()

    def _on_pdu(self, event: Event) -> None:
        # pynetdicom reports an abort when the peer closes the connection
        # right after its A-ASSOCIATE-RJ, before it has checked that the
        # connection opened: the rejection is kept here as it arrives.
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            self.rejection = event.pdu

    def _on_message(self, event: Event) -> None:
        command = event.message.command_set
        if "MessageIDBeingRespondedTo" not in command:
            return
        now = time.monotonic()
        with self._lock:
            self._responses[int(command.MessageIDBeingRespondedTo)] = (
                now,
                int(command.Status),
                str(command.get("ErrorComment", "")),
            )
            self._last_activity = now

    def _guard(self) -> None:
        while not self._stopped.wait(_WATCHDOG_POLL_SECONDS):
            with self._lock:
                now = time.monotonic()
                if self._ended or self._socket is None:
                    continue
                if self._deadline is not None and now > self._deadline:
                    self._end()
                    continue
                if self._in_flight is None:
                    continue
                answered = self._responses.get(self._in_flight)
                if answered is not None:
                    lost = now - answered[0] > _LOST_RESPONSE_GRACE_SECONDS
                else:
                    lost = now - self._last_activity > self._timeout
                if lost:
                    self._end()

    def _end(self) -> None:
        self._ended = True
        assert self._socket is not None and self._assoc is not None
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # pynetdicom closed it already
        self._assoc.dimse.msg_queue.put((None, None))


class _TlsFailed(ConnectionError):
    """A TLS failure, as pynetdicom is handed it: any OSError from connecting
    is a failed connection to it, and this one it logs in a line where an
    ``ssl.SSLError`` gets a traceback."""


def _not_speaking_tls(exc: OSError) -> bool:
    """Whether a handshake ended as one with a peer without TLS ends: the
    connection closed or reset, or a DICOM PDU where a TLS record should be."""
    if isinstance(exc, ssl.SSLError):
        return isinstance(exc, ssl.SSLEOFError) or exc.reason == "WRONG_VERSION_NUMBER"
    return True


class _TlsSocket(ssl.SSLSocket):
    """The TLS socket of one association, which reports to its :class:`_TlsAttempt`.

    pynetdicom handshakes inside ``connect`` and reads with ``recv``, and
    takes their errors for a closed connection, reason unsaid.
    """

    attempt: _TlsAttempt  # set by _TlsAttempt.wrap_socket, before connect

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as exc:
            hint = " during the handshake: is that port TLS?" if _not_speaking_tls(exc) else ""
            raise self.attempt.failed(exc, hint) from None
        self.attempt.check_pin(self)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            # A TLS 1.3 client's handshake ends before the server has judged
            # its certificate: a refusal (none sent, unknown CA) is the first read.
            raise self.attempt.failed(exc) from None


class _TlsAttempt:
    """TLS for one association, passed to pynetdicom as the context of
    ``tls_args`` (it only calls ``wrap_socket``).

    It keeps why TLS failed, for the result, and refuses a certificate other
    than the pinned one right after the handshake: the connection fails
    before any DICOM byte, the A-ASSOCIATE-RQ included, is sent.
    """

    def __init__(self, context: ssl.SSLContext, pin: str | None, where: str):
        self._context = context
        self._pin = pin
        self._where = where
        self.failure: str | None = None

    def wrap_socket(self, sock: socket.socket, server_side: bool, server_hostname: str) -> _TlsSocket:
        wrapped = self._context.wrap_socket(sock, server_side=server_side, server_hostname=server_hostname)
        assert isinstance(wrapped, _TlsSocket)
        wrapped.attempt = self
        return wrapped

    def failed(self, exc: OSError, hint: str = "") -> _TlsFailed:
        if self.failure is None:  # the cause, not what followed from it
            self.failure = f"TLS with {self._where} failed: {tls_failure(exc, 'the destination')}{hint}"
        return _TlsFailed(self.failure)

    def check_pin(self, sock: ssl.SSLSocket) -> None:
        if self._pin is None:
            return
        presented = peer_certificate(sock)
        if presented is not None and presented.sha256 == self._pin:
            return
        self.failure = (
            f"TLS with {self._where} failed: the destination presented "
            f"{presented.describe() if presented else 'no certificate'}, "
            f"not the pinned certificate (sha256 {self._pin})"
        )
        raise _TlsFailed(self.failure)


class TlsFilesUnreadable(Exception):
    """A destination's TLS files cannot be loaded; the message says which and why."""


def destination_tls(destination: Destination, name: str) -> ssl.SSLContext | None:
    """node.tls's client context for ``destination``, making :class:`_TlsSocket`
    sockets; None if it is sent to without TLS. Read each time, so that
    renewed certificates are taken up.

    Raises
    ------
    TlsFilesUnreadable
        If its CA, certificate or key cannot be read or used.
    """
    if destination.tls is None:
        return None
    try:
        context = client_context(destination.tls)
    except OSError as exc:  # ssl.SSLError included
        files_read = ", ".join(
            str(path)
            for path in (destination.tls.ca, destination.tls.certificate, destination.tls.key)
            if path is not None
        )
        raise TlsFilesUnreadable(f"cannot load the TLS files of {name} ({files_read}): {exc}") from exc
    context.sslsocket_class = _TlsSocket
    return context


class Session:
    """One association to the destination, carrying one request at a time.

    If it could not be opened, :attr:`failure` says why (and the outcome
    that every request would have had). Without a ``deadline`` each step is
    bounded by ``timeout`` of silence; with one, the association ends at the
    deadline whatever it is doing (the console's probes).
    """

    def __init__(
        self,
        ae: AE,
        destination: Destination,
        name: str,
        timeout: float,
        tls: ssl.SSLContext | None,
        deadline: float | None = None,
    ):
        self._name = name
        self._timeout = timeout
        self._watchdog = _Watchdog(timeout, name, deadline)
        self._next_message_id = 1
        self.failure: tuple[Outcome, str] | None = None
        where = f"{destination.ae_title}@{destination.host}:{destination.port}"
        attempt = None
        if tls is not None:
            assert destination.tls is not None
            attempt = _TlsAttempt(tls, destination.tls.sha256, where)
        self._assoc: Association | None = None
        self._watchdog.start()
        opened = time.monotonic()
        try:
            self._assoc = ae.associate(
                destination.host,
                destination.port,
                ae_title=destination.ae_title,
                evt_handlers=self._watchdog.handlers,
                tls_args=None if attempt is None else (attempt, destination.host),
            )
        except OSError as exc:  # pynetdicom resolves the host name outside its own error handling
            self.failure = (Outcome.CONNECT_FAILED, f"cannot connect to {where}: {exc.strerror or exc}")
            self.close()
            return
        self._accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in self._assoc.accepted_contexts
        }
        # pynetdicom aborts an association on which the peer accepted no context.
        if self._assoc.is_established or self._assoc.rejected_contexts:
            return
        if attempt is not None and attempt.failure is not None:
            self.failure = (Outcome.TLS_FAILED, attempt.failure)
        elif not self._watchdog.connected:
            self.failure = (Outcome.CONNECT_FAILED, f"cannot connect to {where}")
        elif self._watchdog.rejection is not None:
            rejection = self._watchdog.rejection
            self.failure = (
                Outcome.REJECTED,
                f"{where} rejected the association: {rejection.result_str}, "
                f"{rejection.source_str}, {rejection.reason_str}",
            )
        elif self._watchdog.ended or time.monotonic() - opened >= timeout:
            self.failure = (Outcome.ABORTED, f"{where} did not accept the association within {timeout:g}s")
        else:
            self.failure = (
                Outcome.ABORTED,
                f"{where} ended the connection before accepting the association",
            )
        self.close()

    @property
    def alive(self) -> bool:
        return self._assoc is not None and self._assoc.is_established and not self._watchdog.ended

    def store(self, outgoing: _OutgoingFile) -> SendResult:
        assert self._assoc is not None, self.failure
        assoc, path = self._assoc, outgoing.path
        if (outgoing.sop_class_uid, outgoing.transfer_syntax_uid) not in self._accepted:
            return SendResult(
                path,
                Outcome.NOT_ACCEPTED,
                detail=f"{self._name} accepted no context for SOP class {outgoing.sop_class_uid} "
                f"in transfer syntax {outgoing.transfer_syntax_uid}",
            )
        try:
            reply = self._request(
                lambda message_id: assoc.send_c_store(path, msg_id=message_id),
                f"the C-STORE of {outgoing.sop_instance_uid}",
                STORAGE_SERVICE_CLASS_STATUS,
            )
        except OSError as exc:
            return SendResult(path, Outcome.UNREADABLE, detail=f"cannot read {path}: {exc}")
        return SendResult(path, reply.outcome, reply.status, reply.detail)

    def echo(self) -> Reply:
        """C-ECHO (the Verification service, PS3.4 annex A)."""
        assert self._assoc is not None, self.failure
        assoc = self._assoc
        if not any(sop_class == Verification for sop_class, _ in self._accepted):
            return Reply(Outcome.NOT_ACCEPTED, detail=f"{self._name} accepted no context for Verification")
        return self._request(
            lambda message_id: assoc.send_c_echo(msg_id=message_id),
            "the C-ECHO",
            VERIFICATION_SERVICE_CLASS_STATUS,
        )

    def _request(
        self, send: Callable[[int], Dataset], what: str, meanings: dict[int, tuple[str, str]]
    ) -> Reply:
        """Send one request with ``send(message_id)`` and read its response, wherever it came out."""
        message_id = self._next_message_id
        self._next_message_id = message_id % 0xFFFF + 1
        self._watchdog.begin(message_id)
        try:
            status = send(message_id)
        except RuntimeError:  # pynetdicom: the association is no longer established
            return Reply(Outcome.ABORTED, detail=f"{self._name} ended the association")
        finally:
            ended_by_watchdog = self._watchdog.finish()
        if "Status" in status:
            return _reply_from_status(int(status.Status), str(status.get("ErrorComment", "")), meanings)
        recorded = self._watchdog.response(message_id)
        if recorded is not None:
            LOG.warning(
                "the response of %s to %s (0x%04X) was lost inside pynetdicom; "
                "sending the rest on a new association",
                self._name,
                what,
                recorded[0],
            )
            return _reply_from_status(*recorded, meanings)
        if ended_by_watchdog:
            return Reply(
                Outcome.TIMED_OUT, detail=f"{self._name} did not answer {what} within {self._timeout:g}s"
            )
        return Reply(Outcome.ABORTED, detail=f"the association with {self._name} ended during {what}")

    def close(self) -> None:
        if self.alive:
            self._assoc.release()
        self._watchdog.stop()


def application_entity(calling_ae: str, contexts: Iterable[tuple[str, str]], timeout: float) -> AE:
    """The requesting AE for one destination, proposing each (SOP class,
    transfer syntax) pair on a context of its own, so that the peer can
    accept each pair on its own."""
    ae = AE(ae_title=calling_ae)
    for sop_class, transfer_syntax in dict.fromkeys(contexts):
        ae.add_requested_context(sop_class, transfer_syntax)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    # The watchdog bounds each request by silence, not by total time.
    ae.dimse_timeout = None
    return ae


def send_files(
    destination: Destination,
    files: Sequence[Path],
    *,
    calling_ae: str,
    timeout: float,
    name: str | None = None,
    deadline: float | None = None,
) -> list[SendResult]:
    """C-STORE ``files`` to ``destination``, in order; one result per file, in the same order.

    Parameters
    ----------
    destination : config.Destination
        AE title, host and port of the C-STORE SCP.
    files : sequence of pathlib.Path
        DICOM Part 10 files; each is sent in the transfer syntax it is stored in.
    calling_ae : str
        The AE title to call from.
    timeout : float
        Seconds the destination may stay silent: to accept the TCP connection
        and the association, and to answer a C-STORE once its request is sent.
    name : str, optional
        What to call the destination in results and logs (the configuration
        key); ``AE@host:port`` by default.
    deadline : float, optional
        A ``time.monotonic()`` at which the attempt ends whatever the
        destination is doing, for a caller that must answer in bounded time.

    Notes
    -----
    One association carries all the files. A file whose association breaks
    (aborted, timed out) ends the attempt: the files after it are
    ``NOT_ATTEMPTED``, for a later retry, so a stalled peer costs one timeout
    and not one per file. When the destination cannot be reached or rejects
    the association, every file carries that outcome.
    """
    if not files:
        return []
    name = name or f"{destination.ae_title}@{destination.host}:{destination.port}"
    results: dict[int, SendResult] = {}
    readable = []
    for index, path in enumerate(files):
        path = Path(path)
        try:
            readable.append(_read_outgoing(index, path))
        except (OSError, InvalidDicomError) as exc:
            results[index] = SendResult(path, Outcome.UNREADABLE, detail=f"cannot read {path}: {exc}")
    if readable:
        _send_readable(destination, readable, calling_ae, timeout, name, deadline, results)
    delivered = sum(result.delivered for result in results.values())
    LOG.info("sent %d of %d files to %s", delivered, len(files), name)
    return [results[index] for index in range(len(files))]


def _send_readable(
    destination: Destination,
    files: list[_OutgoingFile],
    calling_ae: str,
    timeout: float,
    name: str,
    deadline: float | None,
    results: dict[int, SendResult],
) -> None:
    ae = application_entity(calling_ae, ((f.sop_class_uid, f.transfer_syntax_uid) for f in files), timeout)
    try:
        tls = destination_tls(destination, name)
    except TlsFilesUnreadable as exc:
        LOG.warning("cannot send to %s: %s", name, exc)
        for outgoing in files:
            results[outgoing.index] = SendResult(outgoing.path, Outcome.TLS_FAILED, detail=str(exc))
        return
    waiting = list(files)
    while waiting:
        session = Session(ae, destination, name, timeout, tls, deadline)
        if session.failure is not None:
            outcome, detail = session.failure
            LOG.warning("cannot send to %s: %s", name, detail)
            for outgoing in waiting:
                results[outgoing.index] = SendResult(outgoing.path, outcome, detail=detail)
            return
        broken: SendResult | None = None
        try:
            while waiting and broken is None:
                outgoing = waiting.pop(0)
                result = session.store(outgoing)
                results[outgoing.index] = result
                if result.outcome in (Outcome.ABORTED, Outcome.TIMED_OUT):
                    broken = result
                elif not result.delivered:
                    LOG.warning("%s: %s", outgoing.path, result.detail)
                if not session.alive and result.outcome is not Outcome.NOT_ACCEPTED:
                    break  # the rest go on a new association
        finally:
            session.close()
        if broken is not None:
            LOG.warning("%s", broken.detail)
            for outgoing in waiting:
                results[outgoing.index] = SendResult(
                    outgoing.path, Outcome.NOT_ATTEMPTED, detail=f"not sent: {broken.detail}"
                )
            return
