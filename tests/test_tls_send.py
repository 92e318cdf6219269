"""Sending over DICOM TLS (node/send/sender.py, node/send/outbox.py) to dcmtk's storescp.

storescp runs with ``+tls`` and ``--require-peer-cert``: it verifies the
node's client certificate against the test CA, as a hospital's PACS would.
Certificates are made per module by tests/certificates.py.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass

import pytest
from pynetdicom.transport import AssociationSocket

from config import Destination, DestinationTls
from node.send.sender import Outcome, send_files
from tests import test_outbox
from tests.certificates import Authority, Credential
from tests.synthetic import dataset_bytes
from tests.test_outbox import config_for, pending, sample, wait_until
from tests.test_send import CALLING_AE, Peers, StoreSCP, uid_of

# tests/test_outbox.py's fixtures: its peers, result files and outbox (fast retries).
peers, files, make_outbox = test_outbox.peers, test_outbox.files, test_outbox.make_outbox


@dataclass(frozen=True)
class Pki:
    """The hospital's CA and what it signed, and a CA the node does not trust."""

    ca: Authority
    pacs: Credential  # the destination's certificate, for 127.0.0.1 and localhost
    node: Credential  # the node's client certificate
    elsewhere: Credential  # the hospital's CA's, for another host only
    expired: Credential
    stranger: Credential  # another CA's, for 127.0.0.1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder / "hospital")
    return Pki(
        ca,
        ca.issue("pacs"),
        ca.issue("segnode"),
        ca.issue("elsewhere", hosts=("pacs.elsewhere.example",)),
        ca.expired("old pacs"),
        Authority(folder / "other", "Other CA").issue("stranger"),
    )


def tls_storescp(peers: Peers, pki: Pki, credential: Credential) -> StoreSCP:
    """storescp on TLS with ``credential``, requiring a client certificate from the hospital's CA."""
    return peers.storescp(
        "+tls", str(credential.key), str(credential.certificate),
        "+cf", str(pki.ca.certificate), "--require-peer-cert",
    )  # fmt: skip


def over_tls(scp: StoreSCP, pki: Pki, **tls) -> Destination:
    """``scp`` as a destination over TLS with the node's client certificate."""
    settings = {"ca": pki.ca.certificate, "certificate": pki.node.certificate, "key": pki.node.key, **tls}
    return scp.destination.model_copy(update={"tls": DestinationTls(**settings)})


def sender_lines(caplog: pytest.LogCaptureFixture, destination: str) -> list[str]:
    """What node.send.sender said of failed attempts to send to ``destination``."""
    prefix = f"cannot send to {destination}: "
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "node.send.sender" and record.getMessage().startswith(prefix)
    ]


def tls_failures(metrics, destination: str) -> float:
    return sample(metrics, "segnode_send_failures_total", destination=destination, outcome="tls")


def test_delivered_over_tls_with_the_client_certificate(peers, pki, files, make_outbox):
    storescp = tls_storescp(peers, pki, pki.pacs)
    outbox, metrics = make_outbox(config_for(pacs=over_tls(storescp, pki)))

    outbox.enqueue("job-1", "pacs", files)
    wait_until(lambda: len(storescp.received()) == 3, 10, "three files at storescp")
    wait_until(lambda: outbox.store.backlog(time.time()) == [], 5, "an empty backlog")

    received = storescp.received()
    for path in files:
        assert dataset_bytes(received[uid_of(path)]) == dataset_bytes(path)
    assert sample(metrics, "segnode_instances_sent_total", destination="pacs") == 3
    assert tls_failures(metrics, "pacs") == 0


def test_a_certificate_from_another_ca_is_refused_each_attempt_and_retried(
    peers, pki, files, make_outbox, caplog
):
    caplog.set_level(logging.WARNING)
    storescp = tls_storescp(peers, pki, pki.stranger)
    outbox, metrics = make_outbox(config_for(pacs=over_tls(storescp, pki)))

    outbox.enqueue("job-1", "pacs", files)
    wait_until(lambda: tls_failures(metrics, "pacs") >= 3 * 3, 10, "three failed rounds")

    assert storescp.received() == {}
    (backlog,) = outbox.store.backlog(time.time())
    assert (backlog.pending, backlog.failed) == (3, 0), "a TLS failure is retried, never given up on"
    assert backlog.last_error.startswith("tls: TLS with STORESCP@127.0.0.1:")
    outbox.stop()  # no round between the lines and the counter
    lines = sender_lines(caplog, "pacs")
    assert len(lines) * 3 == tls_failures(metrics, "pacs"), "one line per attempt"
    assert all(
        f"TLS with STORESCP@127.0.0.1:{storescp.port} failed: certificate verify failed: " in line
        for line in lines
    ), lines


def test_a_certificate_for_another_host_is_refused_unless_verify_hostname_is_false(
    peers, pki, files, make_outbox, caplog
):
    caplog.set_level(logging.WARNING)
    strict_scp, lenient_scp = tls_storescp(peers, pki, pki.elsewhere), tls_storescp(peers, pki, pki.elsewhere)
    config = config_for(
        strict=over_tls(strict_scp, pki), lenient=over_tls(lenient_scp, pki, verify_hostname=False)
    )
    outbox, metrics = make_outbox(config)
    warning = (
        "destinations.lenient.tls: verify_hostname is false and no sha256 pin: "
        "any certificate its CA signed is accepted"
    )
    assert caplog.messages.count(warning) == 1
    outbox.apply(config)
    assert caplog.messages.count(warning) == 2, "said again on reload"
    assert not any("destinations.strict" in message for message in caplog.messages)

    outbox.enqueue("job-1", "strict", files)
    outbox.enqueue("job-1", "lenient", files)
    wait_until(lambda: len(lenient_scp.received()) == 3, 10, "delivery despite the host name")
    wait_until(lambda: tls_failures(metrics, "strict") >= 3, 10, "a failed round")
    assert strict_scp.received() == {} and pending(outbox, "strict") == 3
    assert "certificate verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'" in (
        sender_lines(caplog, "strict")[0]
    )


def test_a_pinned_certificate_is_sent_to_and_another_is_not(peers, pki, files, make_outbox, caplog):
    caplog.set_level(logging.WARNING)
    pinned_scp, mispinned_scp = tls_storescp(peers, pki, pki.elsewhere), tls_storescp(peers, pki, pki.pacs)
    outbox, metrics = make_outbox(
        config_for(
            # A pin stands in for the host name the certificate lacks: no warning.
            pinned=over_tls(pinned_scp, pki, verify_hostname=False, sha256=pki.elsewhere.sha256),
            mispinned=over_tls(mispinned_scp, pki, sha256=pki.elsewhere.sha256),
        )
    )
    assert not any("verify_hostname is false" in message for message in caplog.messages)

    outbox.enqueue("job-1", "pinned", files)
    outbox.enqueue("job-1", "mispinned", files)
    wait_until(lambda: len(pinned_scp.received()) == 3, 10, "delivery to the pinned destination")
    wait_until(lambda: tls_failures(metrics, "mispinned") >= 3, 10, "a failed round")
    assert mispinned_scp.received() == {} and pending(outbox, "mispinned") == 3
    assert sender_lines(caplog, "mispinned")[0] == (
        f"cannot send to mispinned: TLS with STORESCP@127.0.0.1:{mispinned_scp.port} failed: "
        f"the destination presented {pki.pacs.subject} (sha256 {pki.pacs.sha256}), "
        f"not the pinned certificate (sha256 {pki.elsewhere.sha256})"
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "certificate verify failed: certificate has expired"),
        ("no client certificate", "the destination sent tlsv13 alert certificate required"),
        ("client certificate of another CA", "the destination sent tlsv1 alert unknown ca"),
        ("plain storescp", "during the handshake: is that port TLS?"),
    ],
)
def test_a_tls_failure_says_why(peers, pki, files, case, reason):
    if case == "expired":
        destination = over_tls(tls_storescp(peers, pki, pki.expired), pki)
    elif case == "no client certificate":
        destination = over_tls(tls_storescp(peers, pki, pki.pacs), pki, certificate=None, key=None)
    elif case == "client certificate of another CA":
        stranger = {"certificate": pki.stranger.certificate, "key": pki.stranger.key}
        destination = over_tls(tls_storescp(peers, pki, pki.pacs), pki, **stranger)
    else:
        destination = over_tls(peers.storescp(), pki)

    results = send_files(destination, files, calling_ae=CALLING_AE, timeout=5.0, name="pacs")

    assert [result.outcome for result in results] == [Outcome.TLS_FAILED] * 3
    assert not any(result.permanent for result in results)
    assert results[0].detail.startswith(f"TLS with STORESCP@127.0.0.1:{destination.port} failed: ")
    assert reason in results[0].detail


def test_tls_files_gone_since_the_start_fail_the_round_naming_them(peers, pki, files, tmp_path):
    ca = tmp_path / "gone.pem"
    ca.write_bytes(pki.ca.certificate.read_bytes())
    destination = over_tls(tls_storescp(peers, pki, pki.pacs), pki, ca=ca)
    ca.unlink()

    results = send_files(destination, files, calling_ae=CALLING_AE, timeout=5.0, name="pacs")

    assert [result.outcome for result in results] == [Outcome.TLS_FAILED] * 3
    assert results[0].detail.startswith(f"cannot load the TLS files of pacs ({ca}, ")
    assert "BEGIN" not in results[0].detail


def test_the_tls_seams_exist():
    # node/send/sender.py's _TlsAttempt stands in for the SSLContext: pynetdicom
    # only calls its wrap_socket, handshakes in connect() and takes any OSError
    # from it for a failed connection.
    connect = inspect.getsource(AssociationSocket.connect)
    assert "context.wrap_socket(" in connect and "self.socket.connect(" in connect
    assert "except OSError" in connect
