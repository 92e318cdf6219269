"""Broken and hostile peers, byte by byte over real sockets: each is answered
or dropped within its time, costs bounded memory, and never stops a listed
peer from storing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import rss_bytes
from tests.raw_peer import (
    ABORT,
    APPLICATION_CONTEXT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    COMMAND,
    IMPLICIT_LE,
    LAST,
    P_DATA_TF,
    RawPeer,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    command_set,
    p_data,
    pdu,
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
        from tests.conftest import scu

        held = [scu().associate("127.0.0.1", node.port, ae_title="SEGNODE") for _ in range(2)]
        assert all(a.is_established for a in held)
        assert scu().associate("127.0.0.1", node.port, ae_title="SEGNODE").is_rejected
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


@pytest.mark.parametrize("associated", [False, True])
def test_a_pdu_longer_than_the_bound_is_aborted_before_it_is_read(node_factory, slice_file, associated):
    """Finding 3: a header declaring 256 MiB cost 256 MiB; now it costs nothing."""
    node = node_factory().start()
    before = rss_bytes(node.proc.pid)
    with RawPeer(node.port) as peer:
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
