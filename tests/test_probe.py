"""The console's test buttons (node/send/probe.py) against real peers over loopback,
and the test object they send (dicomio/test_object.py).

Peers: dcmtk's storescp (receiving, over TLS too), dcmtk's dcmqrscp (it
refuses a called AE title it does not know, logs the calling AE title, and
refuses a store over its quota with a DIMSE status), a closed port, and a
socket that accepts and never answers.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from config import Destination, NodeSettings, SegnodeConfig
from dicomio.test_object import connectivity_test_object
from node.send.probe import ProbeResult, echo, send_test_object
from tests.conftest import dcmtk, dcmtk_env, free_port, wait_for_port
from tests.test_seg import dciodvfy
from tests.test_send import peers  # noqa: F401  (fixture)
from tests.test_tls_send import over_tls, pki, tls_storescp  # noqa: F401  (pki: fixture)

NODE_AE = "SEGNODE_PROBE"
CONFIG = SegnodeConfig(node=NodeSettings(ae_title=NODE_AE))
TIMEOUT = 5.0


def send_probe(name: str, destination: Destination, timeout: float = TIMEOUT) -> ProbeResult:
    return send_test_object(name, destination, CONFIG, timeout, time.time())


def echo_probe(name: str, destination: Destination, timeout: float = TIMEOUT) -> ProbeResult:
    return echo(name, destination, CONFIG, timeout)


PROBES = [pytest.param(echo_probe, id="echo"), pytest.param(send_probe, id="test-object")]


def assert_summary(result: ProbeResult, action: str, name: str, destination: Destination, verdict: str):
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    pattern = rf"{re.escape(action)} to {name} \({re.escape(where)}\): {verdict} in [0-9.]+ (ms|s)"
    assert re.fullmatch(pattern, result.summary), result.summary


ACTIONS = {echo_probe: "C-ECHO", send_probe: "C-STORE of a test object"}


# Peers ----------------------------------------------------------------------


class Archive:
    """dcmtk's dcmqrscp as AE title ARCHIVE, which rejects other called AE
    titles, with room for one study of `study_size`."""

    def __init__(self, workdir: Path, study_size: str = "64mb"):
        self.port = free_port()
        folder = workdir / f"dcmqrscp-{self.port}"
        (folder / "db").mkdir(parents=True)
        config = folder / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 4\n"
            "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\nARCHIVE {folder / 'db'} RW (1, {study_size}) ANY\nAETable END\n"
        )
        self.log = folder / "dcmqrscp.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [dcmtk("dcmqrscp"), "-v", "-c", str(config), str(self.port)],
                env=dcmtk_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.proc)
        self.destination = Destination(ae_title="ARCHIVE", host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    started = Archive(tmp_path)
    yield started
    started.stop()


class SilentPeer:
    """Accepts TCP connections and reads what comes, never answering."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed by stop()
                return
            self.connections += 1
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    @staticmethod
    def _read(connection: socket.socket) -> None:
        with connection:
            while connection.recv(65536):
                pass

    def stop(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() alone does not
        self._listener.close()
        self._thread.join(5)
        assert not self._thread.is_alive()


class SlowPeer:
    """A pynetdicom SCP that accepts an association after `accept_after`
    seconds, then never answers a C-ECHO (until stopped)."""

    def __init__(self, accept_after: float):
        self._release = threading.Event()
        ae = AE(ae_title="SLOW")
        ae.add_supported_context(Verification)
        self.port = free_port()
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_REQUESTED, lambda event: time.sleep(accept_after)),
                (evt.EVT_C_ECHO, lambda event: self._release.wait(10) and 0x0000),
            ],
        )
        self.destination = Destination(ae_title="SLOW", host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()


# The test object -------------------------------------------------------------


def test_the_test_object_is_a_valid_recognisable_secondary_capture(tmp_path):
    created = datetime(2026, 3, 14, 9, 26, 53, 589793)
    first, second = (
        connectivity_test_object("SEGNODE1", created),
        connectivity_test_object("SEGNODE1", created),
    )
    path = tmp_path / "test.dcm"
    first.save_as(path, enforce_file_format=True)

    dciodvfy(path)
    read = pydicom.dcmread(path)
    assert read.SOPClassUID == SecondaryCaptureImageStorage
    assert (str(read.PatientName), read.PatientID) == ("SEGNODE^TEST", "SEGNODE-TEST")
    assert read.SeriesDescription == "segnode connectivity test"
    assert read.StationName == "SEGNODE1"
    assert (read.Rows, read.Columns, read.PhotometricInterpretation) == (64, 64, "MONOCHROME2")
    assert len(set(read.pixel_array.ravel().tolist())) > 1, "a pattern, not a blank image"
    assert (read.StudyDate, read.ContentDate, read.DateOfSecondaryCapture) == ("20260314",) * 3
    assert read.ContentTime.startswith("092653")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert first.get(keyword) != second.get(keyword), f"{keyword} is not fresh"


# Success ------------------------------------------------------------------------


def test_echo_succeeds_from_the_node_ae_title(archive):
    result = echo_probe("archive", archive.destination)

    assert result.ok and result.detail == ""
    assert_summary(result, "C-ECHO", "archive", archive.destination, "success")
    assert 0 < result.seconds < TIMEOUT
    assert f"Association Received (localhost:{NODE_AE} -> ARCHIVE)" in archive.log.read_text()


def test_echo_and_test_object_to_storescp(peers):  # noqa: F811
    storescp = peers.storescp()

    echoed = echo_probe("pacs", storescp.destination)
    sent = send_probe("pacs", storescp.destination)

    assert echoed.ok, echoed
    assert_summary(echoed, "C-ECHO", "pacs", storescp.destination, "success")
    assert sent.ok, sent
    assert_summary(sent, "C-STORE of a test object", "pacs", storescp.destination, "success")
    ((uid, path),) = storescp.received().items()
    stored = pydicom.dcmread(path)
    assert stored.SOPClassUID == SecondaryCaptureImageStorage
    assert (str(stored.PatientName), stored.StationName) == ("SEGNODE^TEST", NODE_AE)
    assert (
        f"stored SOP Instance UID {uid} (Secondary Capture), study {stored.StudyInstanceUID}" in sent.detail
    )


def test_over_tls_with_the_destination_tls_settings(peers, pki):  # noqa: F811
    storescp = tls_storescp(peers, pki, pki.pacs)
    destination = over_tls(storescp, pki)

    echoed, sent = echo_probe("pacs", destination), send_probe("pacs", destination)

    assert echoed.ok and sent.ok, (echoed, sent)
    assert len(storescp.received()) == 1


@pytest.mark.parametrize("probe", PROBES)
def test_a_refused_tls_certificate_says_why(peers, pki, probe):  # noqa: F811
    destination = over_tls(tls_storescp(peers, pki, pki.stranger), pki)

    result = probe("pacs", destination)

    assert not result.ok
    assert_summary(result, ACTIONS[probe], "pacs", destination, "TLS failed")
    assert result.detail.startswith(
        f"TLS with STORESCP@127.0.0.1:{destination.port} failed: certificate verify failed: "
    ), result.detail


# Failures -----------------------------------------------------------------------


@pytest.mark.parametrize("probe", PROBES)
def test_a_wrong_called_ae_title_is_rejected_in_words(archive, probe):
    destination = archive.destination.model_copy(update={"ae_title": "NOTARCHIVE"})

    result = probe("archive", destination)

    assert not result.ok
    assert_summary(result, ACTIONS[probe], "archive", destination, "association rejected")
    assert result.detail == (
        f"NOTARCHIVE@127.0.0.1:{archive.port} rejected the association: "
        "Rejected (Permanent), DUL service-user, Called AE title not recognised"
    )


def test_a_refused_store_gives_its_status_in_hex_and_words(tmp_path):
    # One study of at most 1 KB: the 4 KB test object is over dcmqrscp's quota.
    archive = Archive(tmp_path, study_size="1kb")
    try:
        result = send_probe("archive", archive.destination)
    finally:
        archive.stop()

    assert not result.ok
    assert_summary(
        result, "C-STORE of a test object", "archive", archive.destination, "refused with status 0xA700"
    )
    assert result.detail == "0xA700 Refused: Out of Resources"


@pytest.mark.parametrize("probe", PROBES)
def test_a_closed_port_says_connection_refused(probe):
    destination = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())

    result = probe("gone", destination)

    assert not result.ok and result.seconds < 2
    assert_summary(result, ACTIONS[probe], "gone", destination, "cannot connect")
    assert result.detail == f"cannot connect to NOBODY@127.0.0.1:{destination.port}: Connection refused"


def test_an_unknown_host_says_so():
    host = "no-such-host.invalid"  # names the IDNA codec would refuse never pass the schema
    destination = Destination(ae_title="NOBODY", host=host, port=104)

    result = echo_probe("gone", destination)

    assert not result.ok
    assert_summary(result, "C-ECHO", "gone", destination, "cannot connect")
    # The resolver's words: "Name or service not known", or without DNS "Temporary failure ...".
    assert re.fullmatch(rf"cannot connect to NOBODY@{re.escape(host)}:104: \w.*", result.detail)


@pytest.mark.parametrize("probe", PROBES)
def test_a_silent_peer_times_out_within_the_bound(probe):
    silent = SilentPeer()
    destination = Destination(ae_title="SILENT", host="127.0.0.1", port=silent.port)
    try:
        started = time.monotonic()
        result = probe("silent", destination, timeout=1.0)
        elapsed = time.monotonic() - started
    finally:
        silent.stop()

    assert silent.connections == 1
    assert not result.ok
    assert 1.0 <= result.seconds <= elapsed < 1.5
    assert_summary(result, ACTIONS[probe], "silent", destination, "timed out")
    assert result.detail == f"SILENT@127.0.0.1:{silent.port} did not accept the association within 1s"


def test_the_bound_covers_association_and_request_together():
    """Each step within the timeout, the whole over it: cut off at the bound."""
    slow = SlowPeer(accept_after=0.7)
    try:
        result = echo_probe("slow", slow.destination, timeout=1.0)
    finally:
        slow.stop()

    assert not result.ok
    assert 1.0 <= result.seconds < 1.4
    assert_summary(result, "C-ECHO", "slow", slow.destination, "timed out")
    assert result.detail == "slow did not answer the C-ECHO within 1s"
