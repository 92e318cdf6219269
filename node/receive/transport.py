"""The transport under the SCP: what a connection may cost before and after it
becomes an association.

pynetdicom gives every TCP connection an association thread that counts
against ``maximum_associations`` before a single byte has arrived, reads a
PDU's body from a socket without a timeout, and buffers a PDU of whatever
length its header declares. So a handful of silent connections locked out
every scanner, a peer that stopped half-way through a PDU held its slot for
ever, and one header claiming 256 MiB cost 256 MiB. Two pieces fix this
below pynetdicom, without changing it:

- :class:`ConnectionGate` owns a connection until its A-ASSOCIATE-RQ has
  arrived whole (ARTIM, PS3.8 section 9.1.5: ``acse_timeout`` from the
  connection) and names a listed peer and this node. Only then does
  pynetdicom see it, so unfinished and unknown connections never count
  against ``max_associations``; they are bounded per source address and in
  all, and one that closes is forgotten at once. The gate reads the request
  with ``MSG_PEEK``, so pynetdicom later reads the same bytes from the
  kernel untouched. On the DICOM TLS port the TLS handshake comes first,
  within the same deadline, and the request is read and replayed
  (:class:`GuardedTlsSocket`); the client's certificate goes to the
  admission with the AE titles.
- :class:`GuardedSocket` is the socket pynetdicom reads and writes. It
  follows the byte stream PDU by PDU (:class:`PduStream`): a PDU longer than
  its bound, one of an unknown type, a message larger than
  ``max_instance_bytes`` or a PDU not finished within ``network_timeout`` is
  answered with an A-ABORT and the connection is closed before anything is
  buffered; sends have the same deadline.

What we would propose upstream (pynetdicom 3.0.4): check the PDU length
against the negotiated maximum in ``DULServiceProvider._read_pdu_data``
before reading the body, put a deadline on the body read, count
associations from ``EVT_ESTABLISHED`` rather than from live threads, and end
the acceptor's wait for the A-ASSOCIATE-RQ when the transport closes.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Protocol

from pydicom.filereader import read_dataset
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.sop_class import ModalityPerformedProcedureStep, Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from config import NodeSettings
from node.metrics import NodeMetrics
from node.receive.peers import Rejection, normalise_address
from node.tls import PeerCertificate, peer_certificate, tls_failure

LOG = logging.getLogger(__name__)

# PDU types, PS3.8 table 9-11.
_ASSOCIATE_RQ = 0x01
_P_DATA_TF = 0x04
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))

#: The longest A-ASSOCIATE-RQ (and any PDU but P-DATA-TF) accepted. 128
#: presentation contexts (the most PS3.8 allows: odd ids 1-255) of one
#: abstract and three transfer syntaxes, each a full 64-character UID, come
#: to about 36 KiB.
REQUEST_BOUND = 64 * 1024
#: A command set is a few hundred bytes (PS3.7 section 9.3).
_COMMAND_BOUND = 64 * 1024
#: A C-STORE-RQ's data set is spooled to disk; any other message's data set
#: is held in memory by pynetdicom, so it stays small: an MPPS step's may list
#: up to 10,000 instances (node/receive/mpps.py) of at most 114 bytes each, a
#: C-ECHO has none.
STEP_DATASET_BOUND = 2 * 1024 * 1024
_OTHER_DATASET_BOUND = 64 * 1024
_C_STORE_RQ = 0x0001
_C_ECHO_RQ = 0x0030
_N_SET_RQ = 0x0120
_N_CREATE_RQ = 0x0140
# Command Field, Command Data Set Type and its "no data set" value, PS3.7 section 9.3.
_COMMAND_FIELD = 0x0100
_COMMAND_DATA_SET_TYPE = 0x0800
_NO_DATA_SET = 0x0101
_ABORT = 0x07
_ABORT_REASONS = frozenset((0, 1, 2, 4, 5, 6))

# A-ABORT (source, reason), PS3.8 section 9.3.8 and the state table's AA-1 and AA-8.
ABORT_BY_USER = (0x00, 0x00)
ABORT_UNRECOGNIZED_PDU = (0x02, 0x01)
ABORT_INVALID_PARAMETER = (0x02, 0x06)

#: How often a gate that has part of a request looks for the rest: soon at
#: first, then, while nothing more comes, less often (each look copies what
#: has arrived, and a trickling peer must not make the gate spin).
_PEEK_INTERVAL_SECONDS = 0.01
_PEEK_INTERVAL_MAX_SECONDS = 0.25
#: How long a rejected peer is given to read the rejection and close.
_LINGER_SECONDS = 1.0


def abort_pdu(source: int, reason: int) -> bytes:
    """An A-ABORT PDU (PS3.8 section 9.3.8)."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, source, reason)


def reject_pdu(result: int, source: int, diagnostic: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 section 9.3.4)."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, diagnostic)


@dataclass(frozen=True)
class Limits:
    """What one connection may cost; taken from the configuration when it is accepted."""

    acse_timeout: float
    network_timeout: float
    max_pdu_size: int
    max_instance_bytes: int
    max_pending_per_address: int
    max_pending_connections: int

    @classmethod
    def from_settings(cls, node: NodeSettings) -> Limits:
        return cls(node.acse_timeout, node.network_timeout, node.max_pdu_size, node.max_instance_bytes,
                   node.max_pending_per_address, node.max_pending_connections)


@dataclass(frozen=True)
class Violation:
    """Why a connection is dropped: a metric label, a log line, and the
    A-ABORT (source, reason) to send first, or None to just close."""

    reason: str
    detail: str
    abort: tuple[int, int] | None


class PduStream:
    """Follows the bytes a peer sends, PDU by PDU and PDV by PDV (PS3.8
    section 9.3 and annex E), and says when they break a bound.

    It holds no data beyond the current command set, so following a stream
    costs the same whatever the peer sends.
    """

    def __init__(self, limits: Limits, check_command: Callable[[int, bytes], Violation | None]):
        self._limits = limits
        self._check_command = check_command
        self._header = bytearray()
        self._type = 0
        self._body_left = 0
        self.started: float | None = None  # when the PDU being read began
        self._item_header = bytearray()
        self._item_left = 0
        self._item_context = 0
        self._item_is_command = False
        self._item_is_last = False
        self._command = bytearray()
        self._dataset_bytes = 0
        self._dataset_bound = _OTHER_DATASET_BOUND
        self._expect_dataset = False
        self._abort_body = bytearray()

    def feed(self, data: bytes) -> Violation | None:
        view = memoryview(data)
        while view:
            if self._body_left == 0:
                take = 6 - len(self._header)
                if self.started is None:
                    self.started = time.monotonic()
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == 6:
                    violation = self._begin_pdu()
                    if violation is not None:
                        return violation
                continue
            take = min(len(view), self._body_left)
            if self._type == _P_DATA_TF:
                violation = self._items(view[:take])
                if violation is not None:
                    return violation
            elif self._type == _ABORT:
                self._abort_body += view[:take]
            self._body_left -= take
            view = view[take:]
            if self._body_left == 0:
                violation = self._end_pdu()
                if violation is not None:
                    return violation
        return None

    def _begin_pdu(self) -> Violation | None:
        self._type, _, length = struct.unpack(">BBL", self._header)
        self._header.clear()
        if self._type not in _KNOWN_PDU_TYPES:
            return Violation("unrecognized-pdu", f"PDU type {self._type:#04x} is not DICOM",
                             ABORT_UNRECOGNIZED_PDU)
        bound = self._limits.max_pdu_size if self._type == _P_DATA_TF else REQUEST_BOUND
        if length > bound:
            return Violation("pdu-too-long", f"a PDU of type {self._type:#04x} declares {length} bytes, "
                             f"more than the {bound} accepted", ABORT_INVALID_PARAMETER)
        self._body_left = length
        if length == 0:
            return self._end_pdu()
        return None

    def _end_pdu(self) -> Violation | None:
        self.started = None
        if self._item_left or self._item_header:
            # A PDV item cut by the end of its PDU; pynetdicom rejects the
            # PDU (PS3.8 table 9-22), and the next PDU starts afresh.
            self._item_header.clear()
            self._item_left = 0
        if self._type == _ABORT:
            body, self._abort_body = bytes(self._abort_body), bytearray()
            # Source 0 or 2, and from the provider a defined reason (PS3.8
            # section 9.3.8): pynetdicom's reader fails on anything else.
            if len(body) != 4 or body[2] not in (0, 2) or (body[2] == 2 and body[3] not in _ABORT_REASONS):
                return Violation("invalid-pdu", f"an A-ABORT with source and reason {body[2:4].hex()}", None)
        return None

    def _items(self, body: memoryview) -> Violation | None:
        """Presentation-data-value items of a P-DATA-TF (PS3.8 section 9.3.5.1)."""
        while body:
            if self._item_left == 0:
                take = 6 - len(self._item_header)
                self._item_header += body[:take]
                body = body[take:]
                if len(self._item_header) < 6:
                    continue
                length, self._item_context, control = struct.unpack(">LBB", self._item_header)
                self._item_header.clear()
                if length < 2:
                    return Violation("invalid-pdu", f"a PDV item declares length {length}",
                                     ABORT_INVALID_PARAMETER)
                self._item_left = length - 2
                self._item_is_command = bool(control & 0x01)
                self._item_is_last = bool(control & 0x02)
                if self._item_left == 0:
                    violation = self._end_item()
                    if violation is not None:
                        return violation
                continue
            take = min(len(body), self._item_left)
            violation = self._fragment(body[:take])
            if violation is not None:
                return violation
            self._item_left -= take
            body = body[take:]
            if self._item_left == 0:
                violation = self._end_item()
                if violation is not None:
                    return violation
        return None

    def _fragment(self, data: memoryview) -> Violation | None:
        if self._item_is_command:
            self._command += data
            if len(self._command) > _COMMAND_BOUND:
                return Violation("invalid-pdu", f"a command set longer than {_COMMAND_BOUND} bytes",
                                 ABORT_INVALID_PARAMETER)
            return None
        if not self._expect_dataset:
            # PS3.7 section 6.3.1 / PS3.8 annex E: a message's data set follows its command.
            return Violation("invalid-pdu", "a data set fragment without a command announcing it",
                             ABORT_BY_USER)
        self._dataset_bytes += len(data)
        if self._dataset_bytes > self._dataset_bound:
            return Violation(
                "instance-too-large",
                f"a data set longer than {self._dataset_bound} bytes (node.max_instance_bytes for C-STORE)",
                ABORT_BY_USER,
            )
        return None

    def _end_item(self) -> Violation | None:
        if not self._item_is_last:
            return None
        self._dataset_bytes = 0
        if not self._item_is_command:
            self._expect_dataset = False
            return None
        command = bytes(self._command)
        self._command.clear()
        field = command_value(command, _COMMAND_FIELD)
        if field == _C_STORE_RQ:
            self._dataset_bound = self._limits.max_instance_bytes
        elif field in (_N_CREATE_RQ, _N_SET_RQ):
            self._dataset_bound = STEP_DATASET_BOUND
        else:
            self._dataset_bound = _OTHER_DATASET_BOUND
        self._expect_dataset = command_value(command, _COMMAND_DATA_SET_TYPE) not in (None, _NO_DATA_SET)
        return self._check_command(self._item_context, command)


def command_value(command: bytes, element: int) -> int | None:
    """An US element of group 0000 in an implicit VR little endian command set
    (PS3.7 section 6.3.1), or None if it has none."""
    offset = 0
    while offset + 8 <= len(command):
        group, number, length = struct.unpack_from("<HHL", command, offset)
        offset += 8
        if (group, number) == (0x0000, element) and length == 2 and offset + 2 <= len(command):
            return struct.unpack_from("<H", command, offset)[0]
        offset += length
    return None


#: What a request of the services served here must carry, PS3.7 tables
#: 9.1-1 (C-STORE-RQ), 9.3-12 (C-ECHO-RQ), 10.3-3 (N-SET-RQ) and 10.3-5
#: (N-CREATE-RQ, whose SOP Instance UID is the MPPS handler's to check).
_REQUIRED = {
    _C_STORE_RQ: ("AffectedSOPClassUID", "MessageID", "Priority", "AffectedSOPInstanceUID"),
    _C_ECHO_RQ: ("AffectedSOPClassUID", "MessageID"),
    _N_SET_RQ: ("RequestedSOPClassUID", "MessageID", "RequestedSOPInstanceUID"),
    _N_CREATE_RQ: ("AffectedSOPClassUID", "MessageID"),
}
#: Where the SOP Class UID of each request served here is.
_SOP_CLASS = {_C_STORE_RQ: "AffectedSOPClassUID", _C_ECHO_RQ: "AffectedSOPClassUID",
              _N_SET_RQ: "RequestedSOPClassUID", _N_CREATE_RQ: "AffectedSOPClassUID"}
_NOT_STORAGE = frozenset((Verification, ModalityPerformedProcedureStep))


def _serves(field: int, abstract_syntax: str) -> bool:
    """Whether a request of `field` belongs to the service of `abstract_syntax`."""
    if field == _C_ECHO_RQ:
        return abstract_syntax == Verification
    if field in (_N_CREATE_RQ, _N_SET_RQ):
        return abstract_syntax == ModalityPerformedProcedureStep
    return abstract_syntax not in _NOT_STORAGE  # C-STORE: every storage SOP class


def request_problem(command: bytes, context_id: int, accepted: Mapping[int, str]) -> str | None:
    """What makes a request of the services served here unservable, or None;
    `accepted` maps the association's accepted contexts to their abstract syntaxes.

    pynetdicom drops such a request without an answer (a missing
    parameter), or, spooling a C-STORE's data set, fails inside its reader
    thread (a blank SOP Instance UID, an unaccepted context) and closes the
    connection without an A-ABORT. It picks the handler by the command's SOP
    class, not its context's: an N-SET naming CT Image Storage reached the
    C-STORE handler, a C-STORE of an MPPS step failed after spooling it. So
    both the request's SOP class and its context's must be of the service the
    command asks for. A storage SOP class that differs from its context's, or
    a UID that is there but malformed, is the handlers' to refuse with a
    status (node/receive/validation.py, node/receive/mpps.py). Other commands
    are pynetdicom's to answer.
    """
    try:
        dataset = read_dataset(BytesIO(command), is_implicit_VR=True, is_little_endian=True)
        field = dataset.get("CommandField")
        required = ("CommandField", "CommandDataSetType", *_REQUIRED.get(field, ()))
        missing = [k for k in required if dataset.get(k) is None or str(dataset[k].value).strip() == ""]
    except Exception as exc:  # whatever the bytes provoke in pydicom's reader
        return f"a command set that cannot be decoded: {exc}"
    if missing:
        return f"command {field or 0:#06x} without {', '.join(missing)}"
    if field == _C_STORE_RQ and dataset.get("CommandDataSetType") == _NO_DATA_SET:
        return "a C-STORE request without a data set"
    if context_id not in accepted:
        return f"command {field:#06x} on presentation context {context_id}, which was not accepted"
    if field in _SOP_CLASS:
        sop_class = str(dataset[_SOP_CLASS[field]].value).strip()
        if not (_serves(field, sop_class) and _serves(field, accepted[context_id])):
            return (f"command {field:#06x} for SOP class {sop_class[:64]!r} on presentation context "
                    f"{context_id}, which is for {accepted[context_id]}")
    return None


class ConnectionWatcher(Protocol):
    """What the SCP hears from the transport."""

    def dropped(self, violation: Violation, peer: str) -> None:
        """A connection broke a bound and is being aborted or closed."""

    def closed(self, sock: _Guard) -> None:
        """A connection's socket was closed, for whatever reason."""


class _Guard:
    """Deadlines on every read and send of a connection, and the bounds of
    :class:`PduStream` on what is read; the same for a plain and a TLS socket.

    pynetdicom reads it through ``select`` and ``recv``; a connection that
    breaks a bound is sent an A-ABORT and shut down, and pynetdicom then
    reads the end of the stream, as if the peer had closed it.
    """

    peer: str
    limits: Limits
    watcher: ConnectionWatcher
    #: Set once pynetdicom has made the association (its accepted contexts).
    association: Association | None
    #: False until :meth:`_guard`: ``ssl`` reads and closes a socket while
    #: making it (a peer that reset the connection before it was accepted).
    _guarded = False

    def _guard(self, peer: str, limits: Limits, watcher: ConnectionWatcher) -> None:
        self._guarded = True
        self.peer = peer
        self.limits = limits
        self.watcher = watcher
        self.association = None
        self._closed_once = threading.Lock()
        self._stream = PduStream(limits, self._check_command)
        self._dropped = False

    def _receive(self, bufsize: int) -> bytes:
        """The next bytes of the DICOM stream (decrypted, on a TLS socket)."""
        raise NotImplementedError

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if flags & socket.MSG_PEEK or not self._guarded:
            return super().recv(bufsize, flags)
        if self._dropped:
            return b""
        started = self._stream.started
        timeout = self.limits.network_timeout
        if started is not None:
            timeout = started + timeout - time.monotonic()
        try:
            if timeout <= 0:
                raise TimeoutError
            super().settimeout(timeout)
            data = self._receive(bufsize)
        except TimeoutError:
            self.drop(Violation("stalled", f"no complete PDU within {self.limits.network_timeout:g} s "
                                "(node.network_timeout)", ABORT_BY_USER))
            return b""
        violation = self._stream.feed(data) if data else None
        if violation is not None:
            self.drop(violation)
            return b""
        return data

    def _check_command(self, context_id: int, command: bytes) -> Violation | None:
        accepted: dict[int, str] = {}
        if self.association is not None:
            accepted = {cx.context_id: cx.abstract_syntax for cx in self.association.accepted_contexts}
        problem = request_problem(command, context_id, accepted)
        return None if problem is None else Violation("invalid-request", problem, ABORT_BY_USER)

    def close(self) -> None:
        """Close, and tell the watcher once: however an association ended
        (pynetdicom skips its end events when its reader thread fails), its
        socket is closed."""
        super().close()
        if self._guarded and self._closed_once.acquire(blocking=False):
            self.watcher.closed(self)

    def send(self, data, flags: int = 0) -> int:
        super().settimeout(self.limits.network_timeout)
        return super().send(data, flags)

    def sendall(self, data, flags: int = 0) -> None:
        super().settimeout(self.limits.network_timeout)
        super().sendall(data, flags)

    def drop(self, violation: Violation) -> None:
        """Send the violation's A-ABORT (if any) and shut the connection down."""
        self._dropped = True
        self.watcher.dropped(violation, self.peer)
        try:
            if violation.abort is not None:
                super().settimeout(_LINGER_SECONDS)
                super().sendall(abort_pdu(*violation.abort))
            self.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass  # the peer is gone already, or the TLS session never began


class GuardedSocket(_Guard, socket.socket):
    """A plain TCP connection; the gate peeks at its request, which
    pynetdicom then reads from the kernel untouched."""

    @classmethod
    def adopt(cls, conn: socket.socket, peer: str, limits: Limits,
              watcher: ConnectionWatcher) -> GuardedSocket:
        guarded = cls(conn.family, conn.type, conn.proto, fileno=conn.detach())
        guarded._guard(peer, limits, watcher)
        guarded.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return guarded

    def _receive(self, bufsize: int) -> bytes:
        return socket.socket.recv(self, bufsize)

    def take_request(self, request: Request) -> None:
        """Read the request the gate peeked at off the socket (before answering it here)."""
        remaining = len(request.pdu)
        while remaining > 0:
            chunk = socket.socket.recv(self, min(remaining, 65536))
            if not chunk:
                break
            remaining -= len(chunk)


class GuardedTlsSocket(_Guard, ssl.SSLSocket):
    """A DICOM TLS connection (PS3.15 annex B.9). A TLS socket cannot be
    peeked at, so the gate reads the request off it after the handshake and
    the socket hands those bytes to pynetdicom before any others; pynetdicom
    sees them as the socket's :meth:`pending` data."""

    #: The client certificate, once the handshake is done.
    certificate: PeerCertificate | None

    @classmethod
    def wrap(cls, context: ssl.SSLContext, conn: socket.socket, peer: str, limits: Limits,
             watcher: ConnectionWatcher) -> GuardedTlsSocket:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        guarded = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        assert isinstance(guarded, cls)
        guarded._guard(peer, limits, watcher)
        guarded._replay = b""
        guarded.certificate = None
        return guarded

    def handshake(self, deadline: float) -> Violation | None:
        """The TLS handshake, within the gate's deadline; the client must
        present a certificate that chains to ``node.tls.client_ca``."""
        try:
            ssl.SSLSocket.settimeout(self, max(0.001, deadline - time.monotonic()))
            self.do_handshake()
        except TimeoutError:
            return Violation("request-timeout", f"no TLS handshake within {self.limits.acse_timeout:g} s "
                             "(node.acse_timeout)", None)
        except ssl.SSLError as exc:
            return Violation("tls-handshake", f"TLS handshake failed: {tls_failure(exc, 'the client')}", None)
        except OSError as exc:
            return Violation("closed", f"connection failed during the TLS handshake: {exc}", None)
        self.certificate = peer_certificate(self)
        return None

    def read_request(self, deadline: float) -> Request | Violation:
        """Read the A-ASSOCIATE-RQ, to be replayed to pynetdicom."""
        data = b""
        while True:
            outcome = examine_request(data)
            if isinstance(outcome, Violation):
                return outcome
            if isinstance(outcome, Request):
                if ssl.SSLSocket.pending(self):
                    return _DATA_BEFORE_ANSWER
                self._replay = outcome.pdu
                return outcome
            wanted = 6 - len(data) if len(data) < 6 else 6 + struct.unpack_from(">L", data, 2)[0] - len(data)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _request_timeout(self.limits)
            try:
                ssl.SSLSocket.settimeout(self, remaining)
                chunk = ssl.SSLSocket.recv(self, min(wanted, 65536))
            except TimeoutError:
                return _request_timeout(self.limits)
            except (ssl.SSLError, OSError) as exc:
                return Violation("closed", f"connection failed before its request: {exc}", None)
            if not chunk:
                return Violation("closed", "closed before sending a request", None)
            data += chunk

    def take_request(self, request: Request) -> None:
        """The request was read already (:meth:`read_request`); it is not replayed."""
        self._replay = b""

    def pending(self) -> int:
        return len(self._replay) + super().pending()

    def _receive(self, bufsize: int) -> bytes:
        if self._replay:
            data, self._replay = self._replay[:bufsize], self._replay[bufsize:]
            return data
        try:
            return ssl.SSLSocket.recv(self, bufsize)
        except ssl.SSLError as exc:
            self.drop(Violation("tls-error", f"TLS: {tls_failure(exc, 'the client')}", None))
            return b""


def _request_timeout(limits: Limits) -> Violation:
    # ARTIM expiry in Sta2 closes without an A-ABORT (AA-2).
    return Violation("request-timeout", f"no A-ASSOCIATE-RQ within {limits.acse_timeout:g} s "
                     "(node.acse_timeout)", None)


# The requestor waits for the answer (Sta5, PS3.8 section 9.2); pynetdicom
# fails in its state machine when more arrives before it has answered.
_DATA_BEFORE_ANSWER = Violation("unexpected-pdu", "data after the A-ASSOCIATE-RQ before its answer",
                                ABORT_BY_USER)


@dataclass(frozen=True)
class Request:
    """A whole A-ASSOCIATE-RQ: still unread in the kernel's buffer (plain), or
    read and kept to be replayed to pynetdicom (TLS)."""

    pdu: bytes
    calling_ae_title: str
    called_ae_title: str


#: (calling AE, called AE, address, client certificate or None on a plain
#: connection) -> why the request is rejected, or None to go on.
Admission = Callable[[str, str, str, PeerCertificate | None], Rejection | None]


class ConnectionGate:
    """Connections that have not yet become associations: how many, from
    where, and whether each may go on to pynetdicom.

    ``enter`` and ``leave`` run on the accepting thread and the connection's
    own thread; ``admit`` holds the connection's thread until its
    A-ASSOCIATE-RQ is whole, at most ``acse_timeout``; ``admission``
    then says whether it may go on.
    """

    def __init__(self, limits: Limits, admission: Admission,
                 metrics: NodeMetrics):
        self.limits = limits
        self._admission = admission
        self._metrics = metrics
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()

    def enter(self, address: str) -> Violation | None:
        """Count a new connection from `address`, or say why it is refused."""
        with self._lock:
            if sum(self._pending.values()) >= self.limits.max_pending_connections:
                return Violation("pending-limit", f"{self.limits.max_pending_connections} connections are "
                                 "already waiting to associate (node.max_pending_connections)", None)
            if self._pending[address] >= self.limits.max_pending_per_address:
                return Violation("pending-per-address", f"{self._pending[address]} connections from "
                                 f"{address} are already waiting to associate (node.max_pending_per_address)",
                                 None)
            self._pending[address] += 1
            self._metrics.pending_connections.inc()
        return None

    def leave(self, address: str) -> None:
        with self._lock:
            self._pending[address] -= 1
            if self._pending[address] <= 0:
                del self._pending[address]
            self._metrics.pending_connections.dec()

    def admit(self, sock: GuardedSocket | GuardedTlsSocket, address: str) -> bool:
        """Wait for the connection's A-ASSOCIATE-RQ (after the TLS handshake
        on a TLS port) and decide: True hands it to pynetdicom; False means
        it was answered (or closed) here."""
        deadline = time.monotonic() + self.limits.acse_timeout
        if isinstance(sock, GuardedTlsSocket):
            request = sock.handshake(deadline) or sock.read_request(deadline)
            certificate = sock.certificate
        else:
            request, certificate = self._peek_request(sock, deadline), None
        if isinstance(request, Violation):
            sock.drop(request)
            return False
        verdict = self._admission(request.calling_ae_title, request.called_ae_title, address, certificate)
        if verdict is None:
            return True
        (result, source, diagnostic), reason = verdict
        LOG.warning("rejecting association from %s: %s", address, reason)
        self.reject(sock, request, (result, source, diagnostic))
        return False

    def reject(self, sock: GuardedSocket | GuardedTlsSocket, request: Request,
               parameters: tuple[int, int, int]) -> None:
        """Answer A-ASSOCIATE-RJ, give the peer a moment to read it, close.

        The request is read off the socket first: closing a socket with
        unread data sends a reset, which can destroy the rejection before
        the peer has read it.
        """
        self._metrics.associations_rejected.labels(reject_reason(*parameters[1:])).inc()
        try:
            sock.settimeout(_LINGER_SECONDS)
            sock.take_request(request)
            sock.sendall(reject_pdu(*parameters))
            # Sta13 (PS3.8 section 9.2, AE-8): the requestor closes once it has
            # read the rejection; closing first can reach a requestor before it
            # has acted on the rejection (pynetdicom then reports no answer).
            # No longer than the linger: a peer that keeps sending must not
            # keep its place at the gate.
            deadline = time.monotonic() + _LINGER_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not socket.socket.recv(sock, 4096):
                    break
        except OSError:
            pass  # the peer closed first, or never read

    def _peek_request(self, sock: GuardedSocket, deadline: float) -> Request | Violation:
        """Peek until a whole A-ASSOCIATE-RQ is in the buffer (state Sta2, PS3.8 section 9.2)."""
        interval, seen = _PEEK_INTERVAL_SECONDS, 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _request_timeout(self.limits)
            try:
                readable, _, _ = select.select([sock], [], [], remaining)
                if not readable:
                    continue
                data = sock.recv(6 + REQUEST_BOUND, socket.MSG_PEEK)
            except OSError as exc:
                return Violation("closed", f"connection failed before its request: {exc}", None)
            if not data:
                return Violation("closed", "closed before sending a request", None)
            outcome = examine_request(data)
            if outcome is not None:
                return outcome
            grew = len(data) > seen
            interval = _PEEK_INTERVAL_SECONDS if grew else min(2 * interval, _PEEK_INTERVAL_MAX_SECONDS)
            seen = len(data)
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def examine_request(data: bytes) -> Request | Violation | None:
    """What a connection's first bytes say: a whole A-ASSOCIATE-RQ, why the
    connection is dropped, or None while more must come."""
    if len(data) < 6:
        return None
    pdu_type, _, length = struct.unpack_from(">BBL", data)
    if pdu_type != _ASSOCIATE_RQ:
        # Any other PDU in Sta2 is AA-1: an A-ABORT from the service user.
        kind = "unexpected-pdu" if pdu_type in _KNOWN_PDU_TYPES else "unrecognized-pdu"
        return Violation(kind, f"PDU type {pdu_type:#04x} before an A-ASSOCIATE-RQ", ABORT_BY_USER)
    if length > REQUEST_BOUND:
        return Violation("pdu-too-long", f"an A-ASSOCIATE-RQ of {length} bytes, more than the "
                         f"{REQUEST_BOUND} accepted", ABORT_BY_USER)
    if len(data) > 6 + length:
        return _DATA_BEFORE_ANSWER
    if len(data) == 6 + length:
        return _decode_request(data)
    return None


def _decode_request(data: bytes) -> Request | Violation:
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(data)
        calling, called = pdu.calling_ae_title, pdu.called_ae_title
        contexts = pdu.to_primitive().presentation_context_definition_list
    except Exception as exc:  # pynetdicom's decoder raises whatever the bytes provoke
        return Violation("invalid-pdu", f"an A-ASSOCIATE-RQ that cannot be decoded: {exc}", ABORT_BY_USER)
    for context in contexts:
        # pynetdicom's negotiation fails in its acceptor thread on these,
        # leaving the connection open and unanswered.
        if context.abstract_syntax is None or not context.transfer_syntax:
            return Violation("invalid-pdu", f"presentation context {context.context_id} without an "
                             "abstract syntax or transfer syntaxes", ABORT_BY_USER)
    return Request(data, calling, called)


_REJECT_REASONS = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-not-supported",
    (1, 3): "calling-ae-not-recognized",
    (1, 7): "called-ae-not-recognized",
    (2, 1): "acse-no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}


def reject_reason(source: int, diagnostic: int) -> str:
    """A-ASSOCIATE-RJ (source, diagnostic) as a metric label, PS3.8 section 9.3.4."""
    return _REJECT_REASONS.get((source, diagnostic), f"source-{source}-diagnostic-{diagnostic}")


class GatedRequestHandler(RequestHandler):
    """pynetdicom's handler, run only for connections the gate admits."""

    server: GatedAssociationServer

    def handle(self) -> None:
        try:
            admitted = self.server.gate.admit(self.request, self.request.peer)
        finally:
            self.server.gate.leave(self.request.peer)
        if admitted:
            super().handle()
        else:
            # Answered or dropped by the gate; pynetdicom's server closes a
            # request only when its handler raises.
            self.request.close()

    def _create_association(self) -> Association:
        association = super()._create_association()
        self.request.association = association
        return association


class GatedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a :class:`ConnectionGate` in front.

    A connection over the gate's limits is closed on the accepting thread,
    before a thread is spent on it.
    """

    daemon_threads = True
    # Connections still at the gate must not hold up shutdown.
    block_on_close = False

    def __init__(self, *args, gate: ConnectionGate, watcher: ConnectionWatcher,
                 tls: ssl.SSLContext | None, **kwargs):
        self.gate = gate
        self._watcher = watcher
        self.tls = tls
        # The kernel's backlog as deep as the gate: with socketserver's 5, a
        # burst of scanners waits a second for the SYN to be sent again.
        self.request_queue_size = gate.limits.max_pending_connections
        super().__init__(*args, request_handler=GatedRequestHandler, **kwargs)

    @property
    def tls(self) -> ssl.SSLContext | None:
        """DICOM TLS on this port; replaced on a reload, for connections accepted after it."""
        return self._tls

    @tls.setter
    def tls(self, context: ssl.SSLContext | None) -> None:
        if context is not None:
            # The context is this listener's own (node/tls.py makes one per load).
            context.sslsocket_class = GuardedTlsSocket
        self._tls = context

    def get_request(self) -> tuple[GuardedSocket | GuardedTlsSocket, tuple[str, int]]:
        conn, address = self.socket.accept()
        peer = normalise_address(str(address[0]))
        try:
            if self.tls is None:
                return GuardedSocket.adopt(conn, peer, self.gate.limits, self._watcher), address
            return GuardedTlsSocket.wrap(self.tls, conn, peer, self.gate.limits, self._watcher), address
        except OSError:
            conn.close()
            raise  # socketserver skips the connection
        except Exception as exc:
            # Anything else would end serve_forever: one connection must never stop the listener.
            LOG.exception("cannot take the connection from %s", peer)
            conn.close()
            raise OSError(f"the connection from {peer} was not taken: {exc}") from exc

    def process_request(self, request: GuardedSocket | GuardedTlsSocket, client_address) -> None:
        refusal = self.gate.enter(request.peer)
        if refusal is not None:
            request.drop(refusal)
            request.close()
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            # No thread to leave the gate (one cannot be started): a count
            # never taken back would end by refusing every connection.
            self.gate.leave(request.peer)
            raise


def contain_thread_failures() -> None:
    """End the connection of a pynetdicom thread that dies of an exception.

    pynetdicom's association and reader threads run its state machine; a
    local event arriving in a state the machine has left (the peer aborted
    while the node was answering, PS3.8 section 9.2) raises
    ``InvalidEventError`` and ends the thread, leaving the other one and the
    connection behind, unanswered. This hook (Python's
    :func:`threading.excepthook`, installed once by the node) aborts such a
    connection and stops what is left of it; other threads' failures go to
    the previous hook.
    """
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        thread = args.thread
        if isinstance(thread, Association):
            association, dul_socket = thread, thread.dul.socket
        elif isinstance(thread, DULServiceProvider):
            association, dul_socket = thread.assoc, thread.socket
        else:
            previous(args)
            return
        sock = getattr(dul_socket, "socket", None)
        if not isinstance(sock, _Guard):
            previous(args)
            return
        LOG.debug("pynetdicom's %s failed", thread.name,
                  exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        sock.drop(Violation("internal-failure", f"pynetdicom's {type(thread).__name__} thread failed: "
                            f"{args.exc_type.__name__}: {args.exc_value}", ABORT_BY_USER))
        if thread is association:
            # The reader thread would otherwise run on, and nothing would close
            # the socket; it is closed only once the reader has stopped, so
            # that its descriptor cannot be reused under it.
            association.dul.kill_dul()
            association.dul.join(_LINGER_SECONDS)
            if not association.dul.is_alive():
                sock.close()
        # A failed reader: the association thread sees it and closes the socket.

    threading.excepthook = hook
