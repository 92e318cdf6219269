"""A DICOM peer that speaks the Upper Layer protocol byte by byte.

Real senders (dcmtk, pynetdicom) only send well-formed PDUs; a broken or
hostile device sends whatever it likes. This peer builds PDUs from their
definitions in PS3.8 section 9.3 so that tests can send half of one, one
that lies about its length, or data before any association, and read back
exactly what the node answers. Over DICOM TLS (PS3.15 annex B.9) it does
the same inside a TLS session, or sends the handshake's first flight alone.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 annex A.2.1
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

# PDU types, PS3.8 table 9-11.
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
RELEASE_RQ, RELEASE_RP, ABORT = 0x05, 0x06, 0x07

# Message Control Header bits, PS3.8 annex E.2.
COMMAND, LAST = 0x01, 0x02


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """A PDU; `length` overrides the true body length (to lie about it)."""
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


def associate_rq(
    calling_ae: str,
    called_ae: str = "SEGNODE",
    contexts: tuple[tuple[str, tuple[str, ...]], ...] = ((VERIFICATION, (IMPLICIT_LE,)),),
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 section 9.3.2) proposing `contexts`
    with ids 1, 3, 5..."""
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for index, (abstract, transfer_syntaxes) in enumerate(contexts):
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in transfer_syntaxes)
        items += _item(0x20, struct.pack(">BBBB", 2 * index + 1, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433.99")
    items += _item(0x50, user)
    header = struct.pack(">HH", 1, 0) + called_ae.ljust(16).encode() + calling_ae.ljust(16).encode()
    return pdu(ASSOCIATE_RQ, header + bytes(32) + items)


def p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context id, message control header, bytes) values."""
    body = b"".join(
        struct.pack(">LBB", len(data) + 2, context, control) + data for context, control, data in pdvs
    )
    return pdu(P_DATA_TF, body)


def store_pdus(context: int, command: bytes, dataset: bytes, fragment: int = 16384) -> bytes:
    """A whole C-STORE request as P-DATA-TFs: the command in one PDV, then the
    data set in PDVs of at most `fragment` bytes, the last one flagged LAST
    (PS3.8 annex E.2), one PDV per PDU."""
    pdus = [p_data((context, COMMAND | LAST, command))]
    starts = range(0, max(len(dataset), 1), fragment)
    for start in starts:
        last = LAST if start == starts[-1] else 0
        pdus.append(p_data((context, last, dataset[start : start + fragment])))
    return b"".join(pdus)


def split_pdus(data: bytes) -> list[Pdu]:
    """The whole PDUs at the start of `data`; a PDU cut short is left out."""
    pdus, offset = [], 0
    while offset + 6 <= len(data):
        pdu_type, _, length = struct.unpack_from(">BBL", data, offset)
        if offset + 6 + length > len(data):
            break
        pdus.append(Pdu(pdu_type, data[offset + 6 : offset + 6 + length]))
        offset += 6 + length
    return pdus


def release_rq() -> bytes:
    return pdu(RELEASE_RQ, bytes(4))


def abort() -> bytes:
    return pdu(ABORT, bytes(4))


def command_set(**elements) -> bytes:
    """A command set in implicit VR little endian with its group length (PS3.7 section 6.3.1)."""
    command = Dataset()
    for keyword, value in elements.items():
        setattr(command, keyword, value)
    body = BytesIO()
    write_dataset(_writable(body), command)
    group = Dataset()
    group.CommandGroupLength = len(body.getvalue())
    head = BytesIO()
    write_dataset(_writable(head), group)
    return head.getvalue() + body.getvalue()


def _writable(buffer: BytesIO):
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(buffer)
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    return fp


def c_echo_rq(message_id: int = 1) -> bytes:
    return command_set(AffectedSOPClassUID=VERIFICATION, CommandField=0x0030, MessageID=message_id,
                       CommandDataSetType=0x0101)


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    return command_set(AffectedSOPClassUID=sop_class, CommandField=0x0001, MessageID=message_id,
                       Priority=0, CommandDataSetType=0x0000, AffectedSOPInstanceUID=sop_instance)


def decode_command(data: bytes) -> Dataset:
    from pydicom.filereader import read_dataset

    return read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)


@dataclass(frozen=True)
class Pdu:
    type: int
    body: bytes

    @property
    def abort_source_reason(self) -> tuple[int, int]:
        """(source, reason/diagnostic) of an A-ABORT, PS3.8 section 9.3.8."""
        assert self.type == ABORT, self
        return self.body[2], self.body[3]

    @property
    def reject(self) -> tuple[int, int, int]:
        """(result, source, diagnostic) of an A-ASSOCIATE-RJ, PS3.8 section 9.3.4."""
        assert self.type == ASSOCIATE_RJ, self
        return self.body[1], self.body[2], self.body[3]

    def command(self) -> Dataset:
        """The command set of a P-DATA-TF holding one whole command PDV."""
        assert self.type == P_DATA_TF, self
        length, _, control = struct.unpack(">LBB", self.body[:6])
        assert control & COMMAND and control & LAST, control
        return decode_command(self.body[6 : 4 + length])


@dataclass(frozen=True)
class Drained:
    """What :meth:`RawPeer.drain` read: the bytes, and the seconds until the
    node closed the connection (None if it was still open)."""

    data: bytes
    closed_after: float | None

    @property
    def pdus(self) -> list[Pdu]:
        return split_pdus(self.data)


def tls_context(certificate: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """A TLS client presenting `certificate` and trusting servers that chain to `ca`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(certificate, key)
    return context


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight of a TLS handshake (a ClientHello record) as `context` sends it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        session.do_handshake()
    except ssl.SSLWantReadError:  # waiting for the ServerHello, which never comes here
        pass
    return outgoing.read()


class RawPeer:
    """One TCP connection to the node, driven byte by byte; with `tls`, a
    whole TLS handshake first and the bytes inside the session."""

    def __init__(self, port: int, host: str = "127.0.0.1", bind: str | None = None,
                 tls: ssl.SSLContext | None = None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if bind is not None:
            sock.bind((bind, 0))
        sock.settimeout(10)
        sock.connect((host, port))
        self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname="localhost")

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self, timeout: float = 10) -> Pdu | None:
        """The next PDU, or None when the node closed the connection first."""
        self.sock.settimeout(timeout)
        header = self._read(6)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBL", header)
        body = self._read(length)
        assert body is not None, f"connection closed inside a PDU of type {pdu_type:#x}"
        return Pdu(pdu_type, body)

    def associate(self, calling_ae: str = "TESTSCU", **kwargs) -> Pdu:
        self.send(associate_rq(calling_ae, **kwargs))
        answer = self.read_pdu()
        assert answer is not None, "the node closed the connection instead of answering"
        return answer

    def closed_within(self, seconds: float) -> float | None:
        """Seconds until the node closed the connection (reading and dropping
        whatever it sends first), or None if it was still open after `seconds`."""
        start = time.monotonic()
        deadline = start + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(65536):
                    return time.monotonic() - start
            except TimeoutError:
                return None
            except ConnectionResetError:
                return time.monotonic() - start

    def drain(self, seconds: float) -> Drained:
        """Everything the node sends until it closes the connection, or until
        `seconds` have passed with the connection still open."""
        start = time.monotonic()
        data = bytearray()
        while (remaining := start + seconds - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:  # reset: the node closed with our bytes unread
                chunk = b""
            if not chunk:
                return Drained(bytes(data), time.monotonic() - start)
            data += chunk
        return Drained(bytes(data), None)

    def _read(self, count: int) -> bytes | None:
        data = bytearray()
        while len(data) < count:
            try:
                chunk = self.sock.recv(count - len(data))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None if not data else bytes(data)
            data += chunk
        return bytes(data)

    def close(self) -> None:
        self.sock.close()
