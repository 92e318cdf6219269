"""Broken and hostile peers, byte by byte over real sockets: each is answered
or dropped within its time, costs bounded memory, and never stops a listed
peer from storing. The DICOM TLS port (PS3.15 annex B.9) gets the same, and
the handshake's own: silence, garbage, too many at once, renegotiation and
close_notify in the middle of a PDU."""

from __future__ import annotations

import fcntl
import os
import random
import select
import shutil
import socket
import ssl
import struct
import subprocess
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certificates import Authority, Credential
from tests.conftest import NodeProcess, dcmtk, dcmtk_env, free_port, rss_bytes
from tests.raw_peer import (
    ABORT,
    APPLICATION_CONTEXT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    COMMAND,
    IMPLICIT_LE,
    LAST,
    P_DATA_TF,
    RELEASE_RP,
    Pdu,
    RawPeer,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    client_hello,
    command_set,
    p_data,
    pdu,
    release_rq,
    split_pdus,
    tls_context,
)
from tests.synthetic import write_ct_series
from tests.test_receive import storescu

CT = "1.2.840.10008.5.1.4.1.1.2"
CT_CONTEXT = ((CT, (IMPLICIT_LE,)),)


def wait_for_metric(node, name: str, value: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while node.metrics().get(name, 0.0) != value:
        assert time.monotonic() < deadline, f"{name} is {node.metrics().get(name)}, not {value}"
        time.sleep(0.05)


@pytest.fixture
def slice_file(tmp_path) -> list[Path]:
    return write_ct_series(tmp_path / "ct", "1.2.840.10008.1.2", slices=1, rows=32, columns=32)


def assert_a_listed_peer_stores(node, files: list[Path]) -> None:
    result = storescu(node, files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_silent_connections_never_lock_out_a_listed_peer(node_factory, slice_file):
    """Finding 1: max_associations silent connections used to refuse every scanner."""
    node = node_factory(max_associations=2, max_pending_per_address=3, acse_timeout=20).start()
    # The silent ones come from another address than the listed peer's.
    silent = [RawPeer(node.port, bind="127.0.0.2") for _ in range(6)]
    try:
        # Three wait at the gate; the rest were closed on accepting, at once.
        closed = [peer.closed_within(1.0) for peer in silent]
        assert sum(c is not None for c in closed) == 3, closed
        wait_for_metric(node, "segnode_pending_connections", 3)
        assert node.metrics()['segnode_connections_dropped_total{reason="pending-per-address"}'] == 3
        # None of them counts against max_associations: two associations of
        # a listed peer get in at the same time, and a third is refused.
        from tests.conftest import rejection, scu

        held = [scu().associate("127.0.0.1", node.port, ae_title="SEGNODE") for _ in range(2)]
        assert all(a.is_established for a in held)
        rejection(scu(), node.port)
        for a in held:
            a.release()
        assert_a_listed_peer_stores(node, slice_file)
    finally:
        for peer in silent:
            peer.close()
    # A closed connection is forgotten at once, not after acse_timeout.
    wait_for_metric(node, "segnode_pending_connections", 0, timeout=3)


def test_a_stalled_association_request_is_dropped_after_acse_timeout(node_factory, slice_file):
    """Finding 2, before the association: part of an A-ASSOCIATE-RQ, then silence."""
    node = node_factory(acse_timeout=1.5).start()
    with RawPeer(node.port) as peer:
        peer.send(associate_rq("TESTSCU")[:40])
        closed = peer.closed_within(10)
    assert closed is not None and 1.0 < closed < 4.0, closed
    assert node.metrics()['segnode_connections_dropped_total{reason="request-timeout"}'] == 1
    assert_a_listed_peer_stores(node, slice_file)


def test_a_stalled_pdu_inside_an_association_is_aborted_after_network_timeout(node_factory, slice_file):
    """Finding 2, inside an association: part of a P-DATA-TF, then silence."""
    node = node_factory(network_timeout=1.5).start()
    with RawPeer(node.port) as peer:
        assert peer.associate("TESTSCU", contexts=CT_CONTEXT).type == ASSOCIATE_AC
        whole = p_data((1, COMMAND | LAST, c_store_rq(CT, "1.2.3.4")))
        peer.send(whole[:10])
        start = time.monotonic()
        answer = peer.read_pdu(timeout=10)
        waited = time.monotonic() - start
        assert answer is not None and answer.type == ABORT, answer
        assert answer.abort_source_reason == (0, 0)
        assert 1.0 < waited < 4.0, waited
        assert peer.closed_within(5) is not None
    assert node.metrics()['segnode_connections_dropped_total{reason="stalled"}'] == 1
    assert_a_listed_peer_stores(node, slice_file)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("associated", [False, True])
def test_a_pdu_longer_than_the_bound_is_aborted_before_it_is_read(node_factory, pki, slice_file, associated,
                                                                   tls):
    """Finding 3: a header declaring 256 MiB cost 256 MiB; now it costs
    nothing, inside a TLS session (after a good handshake) as on the plain port."""
    node = start_tls_node(node_factory, pki) if tls else node_factory().start()
    before = rss_bytes(node.proc.pid)
    with RawPeer(node.tls_port, tls=pki.context()) if tls else RawPeer(node.port) as peer:
        if associated:
            assert peer.associate("TESTSCU", contexts=CT_CONTEXT).type == ASSOCIATE_AC
            header = pdu(P_DATA_TF, b"", length=256 * 1024 * 1024)
        else:
            header = pdu(0x01, b"", length=256 * 1024 * 1024)
        peer.send(header)
        sent = 0
        try:
            chunk = bytes(1 << 20)
            while sent < 64 << 20:
                peer.send(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the node closed the connection: what it wanted to say came first
        answer = peer.read_pdu(timeout=5)
    assert answer is not None and answer.type == ABORT
    # In an association: PS3.8 AA-8, service provider, invalid PDU parameter
    # value; before it, AA-1 from the service user.
    assert answer.abort_source_reason == ((2, 6) if associated else (0, 0))
    assert sent < 64 << 20, "the node kept reading"
    assert rss_bytes(node.proc.pid) - before < 16 << 20
    assert node.metrics()['segnode_connections_dropped_total{reason="pdu-too-long"}'] == 1
    if tls:
        assert_unharmed_over_tls(node, pki, slice_file)
    else:
        assert_a_listed_peer_stores(node, slice_file)


def test_a_data_set_larger_than_max_instance_bytes_is_aborted_while_it_arrives(node_factory, slice_file):
    """Valid PDUs, each within the bound, adding up to more than an instance may be."""
    node = node_factory(max_instance_bytes=1 << 20).start()
    before = rss_bytes(node.proc.pid)
    with RawPeer(node.port) as peer:
        assert peer.associate("TESTSCU", contexts=CT_CONTEXT).type == ASSOCIATE_AC
        peer.send(p_data((1, COMMAND | LAST, c_store_rq(CT, "1.2.3.4"))))
        sent = 0
        try:
            fragment = p_data((1, 0, bytes(16000)))
            while sent < 32 << 20:
                peer.send(fragment)
                sent += 16000
        except OSError:
            pass
        answer = peer.read_pdu(timeout=5)
    assert answer is not None and answer.type == ABORT and answer.abort_source_reason == (0, 0)
    assert sent < 16 << 20, "the node kept reading"  # loopback's socket buffers hold a few MiB
    assert rss_bytes(node.proc.pid) - before < 16 << 20
    assert node.metrics()['segnode_connections_dropped_total{reason="instance-too-large"}'] == 1
    # What arrived was spooled, never stored, and the spooled part is gone.
    assert node.stored_files() == []
    deadline = time.monotonic() + 5
    while list((node.storage_dir / "spool").iterdir()):
        assert time.monotonic() < deadline, "the aborted transfer's spooled part stayed"
        time.sleep(0.05)
    assert_a_listed_peer_stores(node, slice_file)


@pytest.mark.parametrize("uid", ["", " ", None])
def test_a_c_store_without_a_usable_sop_instance_uid_is_aborted_not_ignored(node, slice_file, uid):
    """Finding 4: no answer at all, and a hang until the network timeout."""
    with RawPeer(node.port) as peer:
        assert peer.associate("TESTSCU", contexts=CT_CONTEXT).type == ASSOCIATE_AC
        command = c_store_rq(CT, uid) if uid is not None else c_store_without_instance_uid()
        start = time.monotonic()
        peer.send(p_data((1, COMMAND | LAST, command)))
        answer = peer.read_pdu(timeout=10)
        assert time.monotonic() - start < 2
    assert answer is not None and answer.type == ABORT
    assert node.metrics()['segnode_connections_dropped_total{reason="invalid-request"}'] == 1
    assert "AffectedSOPInstanceUID" in node.log()
    assert_a_listed_peer_stores(node, slice_file)


def c_store_without_instance_uid() -> bytes:
    from tests.raw_peer import command_set

    return command_set(AffectedSOPClassUID=CT, CommandField=0x0001, MessageID=7, Priority=0,
                       CommandDataSetType=0x0000)


def test_a_c_echo_without_a_message_id_is_aborted_not_ignored(node):
    from tests.raw_peer import VERIFICATION, command_set

    with RawPeer(node.port) as peer:
        assert peer.associate("TESTSCU").type == ASSOCIATE_AC
        command = command_set(AffectedSOPClassUID=VERIFICATION, CommandField=0x0030,
                              CommandDataSetType=0x0101)
        peer.send(p_data((1, COMMAND | LAST, command)))
        answer = peer.read_pdu(timeout=5)
    assert answer is not None and answer.type == ABORT
    # A well-formed one is answered.
    with RawPeer(node.port) as peer:
        assert peer.associate("TESTSCU").type == ASSOCIATE_AC
        peer.send(p_data((1, COMMAND | LAST, c_echo_rq())))
        answer = peer.read_pdu(timeout=5)
    assert answer.command().Status == 0x0000


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (p_data((1, COMMAND | LAST, c_echo_rq())), "unexpected-pdu"),
        (pdu(0x09, bytes(10)), "unrecognized-pdu"),
        # An application context item whose length runs past the PDU.
        (pdu(0x01, associate_rq("TESTSCU")[6:74] + b"\x10\x00\xff\xff" + bytes(10)), "invalid-pdu"),
    ],
)
def test_anything_but_an_association_request_first_is_aborted(node, first, reason):
    with RawPeer(node.port) as peer:
        peer.send(first)
        answer = peer.read_pdu(timeout=5)
        assert answer is not None and answer.type == ABORT
        assert peer.closed_within(3) is not None
    assert node.metrics()[f'segnode_connections_dropped_total{{reason="{reason}"}}'] == 1


def _context_without_abstract_syntax() -> bytes:
    """Found by the fuzz stage: pynetdicom's negotiation died on it, leaving the
    connection open and unanswered, and the node unable to stop."""
    request = bytearray(associate_rq("TESTSCU"))
    # The presentation context's Abstract Syntax sub-item (type 0x30) made an
    # application context item (0x10): the context has no abstract syntax.
    # Items start after the 68-byte header (PS3.8 table 9-11); the context's
    # sub-item after the application context item and the context's own 8 bytes.
    offset = 6 + 68 + 4 + len(APPLICATION_CONTEXT) + 8
    assert request[offset] == 0x30
    request[offset] = 0x10
    return bytes(request)


@pytest.mark.parametrize(
    ("exchange", "reason"),
    [
        ((_context_without_abstract_syntax(),), "invalid-pdu"),
        # Found by the fuzz stage: a second request before the first is answered.
        ((associate_rq("TESTSCU") + associate_rq("TESTSCU"),), "unexpected-pdu"),
        # In an association: a data set with no command before it; a command
        # without its Command Field; an A-ABORT with a reason PS3.8 does not define.
        ((associate_rq("TESTSCU"), p_data((1, LAST, b"orphan"))), "invalid-pdu"),
        ((associate_rq("TESTSCU"), p_data((1, COMMAND | LAST, command_set(MessageID=3)))), "invalid-request"),
        ((associate_rq("TESTSCU"), pdu(ABORT, bytes([0, 0, 2, 3]))), "invalid-pdu"),
    ],
)
def test_what_pynetdicom_would_die_on_is_answered_and_closed(node, slice_file, exchange, reason):
    with RawPeer(node.port) as peer:
        for step, data in enumerate(exchange):
            peer.send(data)
            if step < len(exchange) - 1:
                assert peer.read_pdu().type == ASSOCIATE_AC
        assert peer.closed_within(3) is not None
    assert node.metrics()[f'segnode_connections_dropped_total{{reason="{reason}"}}'] == 1
    assert "Traceback" not in node.log()
    assert_a_listed_peer_stores(node, slice_file)
    wait_for_metric(node, "segnode_active_associations", 0)
    assert node.terminate(timeout=15) == 0


def test_unknown_peers_are_rejected_at_the_gate_without_taking_a_slot(node_factory, slice_file):
    node = node_factory(max_associations=1).start()
    for _ in range(5):
        with RawPeer(node.port) as peer:
            assert peer.associate("INTRUDER").reject == (1, 1, 3)
    assert node.metrics()['segnode_associations_rejected_total{reason="calling-ae-not-recognized"}'] == 5
    assert_a_listed_peer_stores(node, slice_file)
    with RawPeer(node.port) as peer:
        answer = peer.associate("TESTSCU", called_ae="NOTME")
        assert answer.type == ASSOCIATE_RJ and answer.reject == (1, 1, 7)


# ---------------------------------------------------------------------------
# The DICOM TLS port
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A hospital CA (PEM), the node's certificate and a listed peer's."""

    ca: Path
    node: Credential
    client: Credential

    @classmethod
    def make(cls, folder: Path) -> Pki:
        hospital = Authority(folder)
        return cls(hospital.certificate, hospital.issue("segnode"), hospital.issue("ct1"))

    def context(self) -> ssl.SSLContext:
        """Python's TLS client with the listed peer's certificate."""
        return tls_context(self.client.certificate, self.client.key, self.ca)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


def start_tls_node(node_factory, pki: Pki, **settings) -> NodeProcess:
    """A node with a DICOM TLS port (``node.tls_port``) beside its plain one."""
    node = node_factory(**settings)
    node.tls_port = free_port()
    node.config["node"]["tls"] = {"port": node.tls_port, "certificate": str(pki.node.certificate),
                                  "key": str(pki.node.key), "client_ca": str(pki.ca)}
    node.write_config()
    return node.start()


def storescu_tls(node, pki: Pki, files: list[Path]) -> subprocess.CompletedProcess:
    """dcmtk's storescu, a listed peer, over DICOM TLS with its certificate."""
    return subprocess.run(
        [dcmtk("storescu"), "-aet", "STORESCU", "-aec", "SEGNODE", "+tls", str(pki.client.key),
         str(pki.client.certificate), "+cf", str(pki.ca), "127.0.0.1", str(node.tls_port),
         *map(str, files)],
        capture_output=True, text=True, timeout=60, env=dcmtk_env(), stdin=subprocess.DEVNULL,
    )


def assert_unharmed_over_tls(node, pki: Pki, files: list[Path]) -> None:
    """What a hostile TLS peer must leave behind: a listed peer stores over
    TLS, no connection or association is still counted, no thread died (a
    dying thread's traceback runs through ``_bootstrap_inner``)."""
    result = storescu_tls(node, pki, files)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for_metric(node, "segnode_pending_connections", 0)
    wait_for_metric(node, "segnode_active_associations", 0)
    assert "_bootstrap_inner" not in node.log(), node.log()[-4000:]


def dropped(node, reason: str) -> float:
    return node.metrics().get(f'segnode_connections_dropped_total{{reason="{reason}"}}', 0.0)


@pytest.fixture
def listed_slices(tmp_path) -> list[Path]:
    """Two slices of one series: one to store while a hostile peer waits, one after."""
    return write_ct_series(tmp_path / "listed", "1.2.840.10008.1.2", slices=2, rows=32, columns=32)


@pytest.mark.parametrize("pause", [None, 0.25], ids=["silence", "a-byte-at-a-time"])
def test_a_client_hello_then_silence_is_closed_at_acse_timeout_and_holds_no_slot(node_factory, pki,
                                                                                  listed_slices, pause):
    """The handshake counts against acse_timeout like the request after it,
    and a connection still in it holds no association: with
    max_associations=1 a listed peer stores over TLS while it waits. Sent a
    byte at a time, the handshake gains nothing."""
    node = start_tls_node(node_factory, pki, max_associations=1, acse_timeout=4)
    hello = client_hello(pki.context())
    with RawPeer(node.tls_port) as waiting:
        connected = time.monotonic()
        sender = threading.Thread(target=_trickle, args=(waiting, hello, pause), daemon=True)
        sender.start()
        wait_for_metric(node, "segnode_pending_connections", 1)
        stored = storescu_tls(node, pki, listed_slices[:1])
        assert stored.returncode == 0, stored.stderr
        assert time.monotonic() - connected < 3.5, "storescu took too long to show the slot was free"
        assert waiting.closed_within(10) is not None
        waited = time.monotonic() - connected
        sender.join(5)  # its next byte finds the connection closed
    assert 3.5 < waited < 6, waited
    assert dropped(node, "request-timeout") == 1
    assert_unharmed_over_tls(node, pki, listed_slices[1:])


def _trickle(peer: RawPeer, data: bytes, pause: float | None) -> None:
    """Send `data` at once (`pause` None), or a byte every `pause` seconds until the node closes."""
    pieces = [data] if pause is None else [data[i : i + 1] for i in range(len(data))]
    for piece in pieces:
        try:
            peer.send(piece)
        except OSError:
            return  # closed by the node
        time.sleep(pause or 0)


_NOISE = random.Random(7433).randbytes(4096)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(lambda hello: _NOISE, id="random-bytes"),
        pytest.param(lambda hello: b"GET / HTTP/1.1\r\nHost: segnode\r\n\r\n", id="http-request"),
        # A handshake record header declaring 64 KiB, more than a TLS record may hold (RFC 8446 5.1).
        pytest.param(lambda hello: bytes([0x16, 3, 1, 0xFF, 0xFF]) + bytes(1 << 16), id="record-too-long"),
        pytest.param(lambda hello: hello + bytes([0x16, 3, 3, 0, 64]) + _NOISE[:64], id="hello-then-garbage"),
    ],
)
def test_garbage_instead_of_a_handshake_is_dropped_at_once(node_factory, pki, slice_file, first):
    """What is not TLS fails the handshake as soon as it arrives, long before acse_timeout."""
    node = start_tls_node(node_factory, pki, acse_timeout=10)
    with RawPeer(node.tls_port) as peer:
        peer.send(first(client_hello(pki.context())))
        closed = peer.closed_within(5)
    assert closed is not None and closed < 2, closed
    wait_for_metric(node, 'segnode_connections_dropped_total{reason="tls-handshake"}', 1)
    assert_unharmed_over_tls(node, pki, slice_file)


def test_tls_connections_beyond_the_per_address_bound_are_closed_on_accept(node_factory, pki, listed_slices):
    """The gate counts TLS connections like plain ones, before their handshake."""
    node = start_tls_node(node_factory, pki, max_pending_per_address=3, acse_timeout=6)
    hello = client_hello(pki.context())
    # From another address than the listed peer's.
    peers = [RawPeer(node.tls_port, bind="127.0.0.2") for _ in range(8)]
    try:
        for peer in peers:
            peer.send(hello)
        closed = [peer.closed_within(0.5) for peer in peers]
        assert sum(c is not None for c in closed) == 5, closed
        wait_for_metric(node, "segnode_pending_connections", 3)
        assert dropped(node, "pending-per-address") == 5
        stored = storescu_tls(node, pki, listed_slices[:1])
        assert stored.returncode == 0, stored.stderr
        # The three that wait are closed at acse_timeout, their handshakes unfinished.
        waiting = [peer for peer, c in zip(peers, closed, strict=True) if c is None]
        assert all(peer.closed_within(10) is not None for peer in waiting)
    finally:
        for peer in peers:
            peer.close()
    assert dropped(node, "request-timeout") == 3
    assert_unharmed_over_tls(node, pki, listed_slices[1:])


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_connections_reset_at_once_leave_the_port_listening(node_factory, pki, slice_file, tls):
    """A connection reset as soon as it is made (a load balancer's health
    check, a port scan) may be gone before the node accepts it; the listener
    must go on accepting the next ones."""
    node = start_tls_node(node_factory, pki)
    port = node.tls_port if tls else node.port
    for count in range(30):
        try:
            reset = socket.create_connection(("127.0.0.1", port), timeout=5)
        except TimeoutError:
            pytest.fail(f"the port stopped accepting after {count} connections reset at once:\n"
                        f"{node.log()[-3000:]}")
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        reset.close()
    with RawPeer(port, tls=pki.context() if tls else None) as peer:
        assert peer.associate("TESTSCU").type == ASSOCIATE_AC
    if tls:
        assert_unharmed_over_tls(node, pki, slice_file)
    else:
        assert_a_listed_peer_stores(node, slice_file)


class OpensslClient:
    """``openssl s_client`` as a DICOM TLS peer, for what Python's ssl cannot
    ask for: a renegotiation (a line "R", TLS 1.2) or a key update (a line
    "K", TLS 1.3), openssl-s_client(1), "Connected commands". Everything else
    written to it goes into the TLS session; what the node sends comes out."""

    def __init__(self, port: int, pki: Pki, *options: str):
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail("the openssl command line tool is not installed (Debian package openssl)")
        self.proc = subprocess.Popen(
            [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", "-no_ign_eof",
             "-cert", str(pki.client.certificate), "-key", str(pki.client.key), "-CAfile", str(pki.ca),
             *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.received = b""

    def send(self, data: bytes) -> None:
        """Write `data` and wait until s_client has read it: a command is one
        only at the start of what s_client reads at once."""
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        deadline = time.monotonic() + 5
        while _unread(self.proc.stdin) > 0:
            assert time.monotonic() < deadline, "s_client stopped reading its input"
            time.sleep(0.01)

    def read_pdu(self, timeout: float = 5) -> Pdu:
        """The next PDU from the node."""
        deadline = time.monotonic() + timeout
        while not split_pdus(self.received):
            readable, _, _ = select.select([self.proc.stdout], [], [], max(0, deadline - time.monotonic()))
            assert readable, f"no PDU from the node within {timeout} s"
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, "the node closed the connection instead of answering"
            self.received += chunk
        answer = split_pdus(self.received)[0]
        self.received = self.received[6 + len(answer.body) :]
        return answer

    def finish(self, timeout: float = 5) -> tuple[int, str]:
        """s_client's exit status and messages once the connection ended."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"the TLS connection was still open after {timeout} s") from None
        return self.proc.returncode, err.decode(errors="replace")


def _unread(pipe) -> int:
    """Bytes written to `pipe` and not yet read from it (FIONREAD, pipe(7))."""
    return struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, bytes(4)))[0]


_HALF_REQUEST = associate_rq("TESTSCU")[:20]
_HALF_ECHO = p_data((1, COMMAND | LAST, c_echo_rq()))[:10]


@pytest.mark.parametrize(
    ("associated", "reason"), [(False, "closed"), (True, "tls-error")],
    ids=["at-the-gate", "in-an-association"])
def test_a_renegotiation_mid_pdu_is_refused_and_the_connection_dropped(node_factory, pki, slice_file,
                                                                       associated, reason):
    """BCP 195 (RFC 7525 section 3) leaves renegotiation out; node/tls.py
    turns it off. A client asking for one in the middle of a PDU is refused
    (no_renegotiation) and its connection dropped, holding nothing."""
    node = start_tls_node(node_factory, pki, acse_timeout=10, network_timeout=10)
    client = OpensslClient(node.tls_port, pki, "-tls1_2")
    if associated:
        client.send(associate_rq("TESTSCU"))
        assert client.read_pdu().type == ASSOCIATE_AC
    client.send(_HALF_ECHO if associated else _HALF_REQUEST)
    client.send(b"R\n")
    status, messages = client.finish()
    assert status != 0 and "no renegotiation" in messages, messages
    wait_for_metric(node, f'segnode_connections_dropped_total{{reason="{reason}"}}', 1, timeout=3)
    assert_unharmed_over_tls(node, pki, slice_file)


def test_a_key_update_mid_pdu_is_no_violation(node_factory, pki):
    """TLS 1.3's key update (RFC 8446 section 4.6.3) between two halves of a
    PDU is the TLS layer's business: the C-ECHO is answered."""
    node = start_tls_node(node_factory, pki)
    client = OpensslClient(node.tls_port, pki)
    client.send(associate_rq("TESTSCU"))
    assert client.read_pdu().type == ASSOCIATE_AC
    echo = p_data((1, COMMAND | LAST, c_echo_rq()))
    client.send(echo[:10])
    client.send(b"K\n")  # the node is asked to update its keys too
    client.send(echo[10:])
    assert client.read_pdu().command().Status == 0x0000
    client.send(release_rq())
    assert client.read_pdu().type == RELEASE_RP
    _, messages = client.finish()
    assert "KEYUPDATE" in messages, messages  # s_client did send it


@pytest.mark.parametrize("associated", [False, True], ids=["at-the-gate", "in-an-association"])
def test_a_close_notify_mid_pdu_ends_the_connection_at_once(node_factory, pki, slice_file, associated):
    """close_notify (RFC 8446 section 6.1) half-way through a PDU: the rest
    will never come, so the node closes at once instead of waiting out its timers."""
    node = start_tls_node(node_factory, pki, acse_timeout=10, network_timeout=10)
    with RawPeer(node.tls_port, tls=pki.context()) as peer:
        if associated:
            assert peer.associate("TESTSCU").type == ASSOCIATE_AC
        peer.send(_HALF_ECHO if associated else _HALF_REQUEST)
        started = time.monotonic()
        peer.sock.settimeout(5)
        try:
            peer.sock.unwrap()  # sends close_notify, then waits for the node's or for its close
        except (ssl.SSLEOFError, ConnectionResetError):
            pass  # the node closed without a close_notify of its own
        ended = time.monotonic() - started
    assert ended < 2, ended
    if not associated:
        assert dropped(node, "closed") == 1
    assert_unharmed_over_tls(node, pki, slice_file)
