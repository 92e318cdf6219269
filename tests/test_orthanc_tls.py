"""The loop with Orthanc over DICOM TLS, both ways (PS3.15 annex B.9).

Orthanc 1.10.1 (Orthanc 1.9+'s ``DicomTls*`` options) C-STOREs a CT series
to the node's TLS port, presenting its certificate, and the node sends its
SEG and SR back to Orthanc's DICOM port, which then speaks TLS only and
requires the node's client certificate. The node listens on TLS alone
(``listen_plain: false``) and holds Orthanc's AE to its certificate, so
nothing can come in any other way. tests/test_orthanc.py runs the same loop
in plain DICOM.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certificates import Authority, Credential
from tests.conftest import NodeProcess, free_port, scu
from tests.synthetic import write_ct_series
from tests.test_orthanc import ORTHANC_AE, OrthancProcess, run_the_loop, serve_orthanc, upload_series
from tests.test_tls_receive import wait_for_log

# A real Orthanc and node loop over TLS: the slow stage (.ci/run).
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Pki:
    """The hospital's CA and what it signed, and another CA's certificate."""

    ca: Authority
    node: Credential  # the node's, as server and as client
    orthanc: Credential  # Orthanc's, as server and as client (Orthanc has one for both)
    impostor: Credential  # the hospital CA's, not the one the node binds Orthanc's AE to
    stranger: Credential  # another CA's


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder / "hospital")
    return Pki(ca, ca.issue("segnode"), ca.issue("orthanc"), ca.issue("orthanc-impostor"),
               Authority(folder / "other", "Other CA").issue("orthanc"))


def tls_node(node_factory, pki: Pki) -> NodeProcess:
    """A node listening on DICOM TLS alone, trusting client certificates of the hospital's CA."""
    node = node_factory(listen_plain=False)
    node.tls_port = free_port()
    node.config["node"]["tls"] = {"port": node.tls_port, "certificate": str(pki.node.certificate),
                                  "key": str(pki.node.key), "client_ca": str(pki.ca.certificate)}
    return node


def orthanc_over_tls(workdir: Path, node: NodeProcess, pki: Pki, credential: Credential) -> OrthancProcess:
    """Orthanc with DICOM TLS on its port and towards the node, presenting
    ``credential``, trusting the hospital's CA and requiring a certificate of
    whoever connects."""
    return OrthancProcess(
        workdir, node,
        DicomTlsEnabled=True,
        DicomTlsCertificate=str(credential.certificate),
        DicomTlsPrivateKey=str(credential.key),
        DicomTlsTrustedCertificates=str(pki.ca.certificate),
        DicomTlsRemoteCertificateRequired=True,
        DicomModalities={"segnode": {"AET": node.config["node"]["ae_title"], "Host": "127.0.0.1",
                                     "Port": node.tls_port, "UseDicomTls": True}},
    )  # fmt: skip


@pytest.fixture
def loop_over_tls(node_factory, pki, request, tmp_path):
    """The node, started, and Orthanc presenting ``request.param`` (a Pki field; "orthanc" if none)."""
    node = tls_node(node_factory, pki)
    presenting = getattr(pki, getattr(request, "param", "orthanc"))
    pacs = orthanc_over_tls(tmp_path / "orthanc", node, pki, presenting)
    try:
        serve_orthanc(
            node, pacs,
            peer={"tls": "required", "certificate": {"subject": pki.orthanc.subject}},
            destination={"tls": {"ca": str(pki.ca.certificate), "certificate": str(pki.node.certificate),
                                 "key": str(pki.node.key)}},
        )  # fmt: skip
        yield node, pacs
    finally:
        pacs.stop()


def test_orthanc_and_the_node_make_the_loop_over_tls_both_ways(loop_over_tls, tmp_path):
    node, pacs = loop_over_tls
    run_the_loop(node, pacs, tmp_path)
    log = node.log()
    assert f"listening as SEGNODE on 127.0.0.1:{node.tls_port} (DICOM TLS)" in log
    assert f"on 127.0.0.1:{node.port}" not in log, "the node listens on its TLS port alone"
    # Orthanc's port speaks TLS alone, so that is how the results came.
    plain = scu("SEGNODE").associate("127.0.0.1", pacs.dicom_port, ae_title=ORTHANC_AE)
    assert not plain.is_established


def wait_for_job(pacs: OrthancProcess, job_id: str, timeout: float = 30) -> dict:
    """Orthanc's job, once it has succeeded or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = pacs.get(f"/jobs/{job_id}")
        if job["State"] in ("Success", "Failure"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"Orthanc's job {job_id} did not end in {timeout:g}s: {job}\n{pacs.log()}")


@pytest.mark.parametrize("loop_over_tls, reason", [
    ("stranger", "dropped a connection from 127.0.0.1: TLS handshake failed: "
                 "certificate verify failed: self-signed certificate in certificate chain"),
    ("impostor", f"rejecting association from 127.0.0.1: calling AE {ORTHANC_AE!r} presented certificate "),
], ids=["another CA", "another certificate"], indirect=["loop_over_tls"])
def test_orthanc_with_a_certificate_the_node_does_not_take_is_refused(loop_over_tls, reason, tmp_path):
    node, pacs = loop_over_tls
    ct = upload_series(pacs, write_ct_series(tmp_path / "ct", slices=2, rows=16, columns=16))
    started = pacs.post("/modalities/segnode/store",
                        json.dumps({"Resources": [ct.series_id], "Asynchronous": True}).encode())
    job = wait_for_job(pacs, started["ID"])
    assert (job["State"], job["ErrorDescription"]) == ("Failure", "Error in the network protocol")
    wait_for_log(node, reason)
    assert node.status() == [] and node.stored_files() == []
