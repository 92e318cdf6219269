"""DICOM TLS into the node (PS3.15 annex B.9), with real peers: dcmtk's
echoscu and storescu with +tls, and pynetdicom as a TLS requestor.

The node's TLS port asks every client for a certificate chaining to
``node.tls.client_ca``; peers may be held to TLS (``tls: required``) or to
one certificate (``certificate``). Every refusal is logged and counted like
any other.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.certificates import Authority, Credential
from tests.conftest import dcmtk, dcmtk_env, free_port, rejection, scu
from tests.synthetic import write_ct_series


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Credential | Authority]:
    hospital = Authority(tmp_path / "pki")
    return {
        "ca": hospital,
        "node": hospital.issue("segnode"),
        "ct1": hospital.issue("ct1"),
        "ct2": hospital.issue("ct2"),
        "expired": hospital.expired("old-scanner"),
        "rogue": Authority(tmp_path / "rogue", "Rogue CA").issue("ct1"),
    }


@pytest.fixture
def tls_node(node_factory, pki):
    node = node_factory(acse_timeout=2)
    node.tls_port = free_port()
    node.config["node"]["tls"] = {
        "port": node.tls_port,
        "certificate": str(pki["node"].certificate),
        "key": str(pki["node"].key),
        "client_ca": str(pki["ca"].certificate),
    }
    node.config["peers"] += [
        {"ae_title": "TLSONLY", "tls": "required"},
        {"ae_title": "BOUND", "certificate": {"sha256": pki["ct1"].sha256}},
        {"ae_title": "BOUNDNAME", "certificate": {"subject": pki["ct1"].subject}},
    ]
    node.write_config()
    return node.start()


def echoscu(node, credential: Credential, ca: Authority, calling: str = "ECHOSCU"):
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", calling, "-aec", "SEGNODE", "+tls", str(credential.key),
         str(credential.certificate), "+cf", str(ca.certificate), "127.0.0.1", str(node.tls_port)],
        capture_output=True, text=True, timeout=30, env=dcmtk_env(), stdin=subprocess.DEVNULL,
    )


def tls_args(credential: Credential, ca: Authority) -> tuple[ssl.SSLContext, str]:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.certificate))
    context.load_cert_chain(credential.certificate, credential.key)
    return context, "localhost"


def tls_association(node, credential: Credential, ca: Authority, calling: str):
    return scu(calling).associate("127.0.0.1", node.tls_port, ae_title="SEGNODE",
                                  tls_args=tls_args(credential, ca))


def wait_for_log(node, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in node.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{node.log()[-3000:]}"
        time.sleep(0.05)


def test_storescu_over_tls_stores_and_the_node_says_where_it_listens(tls_node, pki, tmp_path):
    files = write_ct_series(tmp_path / "ct", ExplicitVRLittleEndian, slices=3, rows=32, columns=32)
    sent = subprocess.run(
        [dcmtk("storescu"), "-aet", "STORESCU", "-aec", "SEGNODE", "+tls", str(pki["ct1"].key),
         str(pki["ct1"].certificate), "+cf", str(pki["ca"].certificate), "127.0.0.1",
         str(tls_node.tls_port), *map(str, files)],
        capture_output=True, text=True, timeout=60, env=dcmtk_env(), stdin=subprocess.DEVNULL,
    )
    assert sent.returncode == 0, sent.stderr
    assert len(tls_node.stored_files()) == 3
    assert f"DICOM TLS 127.0.0.1:{tls_node.tls_port}" in tls_node.log()
    assert echoscu(tls_node, pki["ct1"], pki["ca"]).returncode == 0
    # The plain port serves on beside it.
    assoc = scu().associate("127.0.0.1", tls_node.port, ae_title="SEGNODE")
    assert assoc.is_established
    assoc.release()


@pytest.mark.parametrize("client, reason", [
    ("rogue", "certificate verify failed: self-signed certificate in certificate chain"),
    ("expired", "certificate verify failed: certificate has expired"),
])
def test_a_client_certificate_the_node_cannot_trust_is_dropped_at_the_handshake(
        tls_node, pki, client, reason):
    refused = echoscu(tls_node, pki[client], pki["ca"])
    assert refused.returncode != 0
    wait_for_log(tls_node, f"dropped a connection from 127.0.0.1: TLS handshake failed: {reason}")
    assert tls_node.metrics()['segnode_connections_dropped_total{reason="tls-handshake"}'] >= 1
    assert echoscu(tls_node, pki["ct1"], pki["ca"]).returncode == 0


def test_plain_dicom_on_the_tls_port_is_dropped_and_costs_no_slot(tls_node):
    assoc = scu().associate("127.0.0.1", tls_node.tls_port, ae_title="SEGNODE")
    assert not assoc.is_established
    wait_for_log(tls_node, "TLS handshake failed")
    # A silent connection waits at the gate no longer than acse_timeout (2 s here).
    with socket.create_connection(("127.0.0.1", tls_node.tls_port)) as silent:
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1024) == b""
        assert time.monotonic() - started < 5
    wait_for_log(tls_node, "no TLS handshake within 2 s (node.acse_timeout)")


def test_a_peer_held_to_tls_is_rejected_over_plain_tcp_and_served_over_tls(tls_node, pki):
    result, _, diagnostic = rejection(scu("TLSONLY"), tls_node.port)
    assert (result, diagnostic) == (0x01, 0x03)
    wait_for_log(tls_node, "calling AE 'TLSONLY' must use DICOM TLS")
    assert tls_node.metrics()[
        'segnode_associations_rejected_total{reason="calling-ae-not-recognized"}'] >= 1
    over_tls = tls_association(tls_node, pki["ct2"], pki["ca"], "TLSONLY")
    assert over_tls.is_established
    over_tls.release()


@pytest.mark.parametrize("calling", ["BOUND", "BOUNDNAME"])
def test_a_peer_bound_to_a_certificate_needs_that_one(tls_node, pki, calling):
    assert rejection(scu(calling), tls_node.tls_port, tls_args=tls_args(pki["ct2"], pki["ca"])) == (1, 1, 3)
    wait_for_log(tls_node, f"calling AE {calling!r} presented certificate {pki['ct2'].subject}")
    bound = tls_association(tls_node, pki["ct1"], pki["ca"], calling)
    assert bound.is_established
    assert bound.send_c_echo().Status == 0x0000
    bound.release()
    # The AE title alone, without TLS, never gets in.
    assert rejection(scu(calling), tls_node.port) == (1, 1, 3)
    wait_for_log(tls_node, f"calling AE {calling!r} must use DICOM TLS")


def test_a_node_can_listen_on_tls_alone(node_factory, pki):
    node = node_factory(listen_plain=False)
    node.tls_port = free_port()
    node.config["node"]["tls"] = {"port": node.tls_port, "certificate": str(pki["node"].certificate),
                                  "key": str(pki["node"].key), "client_ca": str(pki["ca"].certificate)}
    node.write_config()
    node.start()
    assert echoscu(node, pki["ct1"], pki["ca"]).returncode == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", node.port), timeout=5)


def test_the_gate_holds_a_tls_connection_to_its_deadlines_and_bounds(tls_node, pki):
    """After the handshake the same rules as on the plain port: a request
    that never finishes is closed at acse_timeout, and another PDU first is
    answered with an A-ABORT, inside the TLS session."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"].certificate))
    context.load_cert_chain(pki["ct1"].certificate, pki["ct1"].key)

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", tls_node.tls_port), timeout=10)
        return context.wrap_socket(raw, server_hostname="localhost")

    with connect() as stalled:
        stalled.sendall(b"\x01\x00\x00\x00")  # the first bytes of a request, then nothing
        started = time.monotonic()
        assert stalled.recv(1024) == b""
        assert time.monotonic() - started < 5
    with connect() as wrong:
        wrong.sendall(bytes([0x04, 0, 0, 0, 0, 6, 0, 0, 0, 2, 1, 3]))  # a P-DATA-TF first
        assert wrong.recv(1024) == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # A-ABORT, AA-1
    wait_for_log(tls_node, "PDU type 0x04 before an A-ASSOCIATE-RQ")
    assert echoscu(tls_node, pki["ct1"], pki["ca"]).returncode == 0
