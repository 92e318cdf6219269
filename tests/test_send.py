"""node/send/sender.py: C-STORE of result files to real peers over loopback.

Destinations are dcmtk's storescp as a subprocess (what arrives is read back
from its output folder) and, where storescp cannot be made to answer a given
status or to stall, a pynetdicom SCP in the test process that answers per
SOP Instance UID as scripted. The SEG and the SR sent are the real thing,
written by dicomio from a synthetic CT series.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider

from config import Destination
from dicomio import sr
from dicomio.codes import structure_code
from dicomio.measurements import StructureMeasurements
from dicomio.seg import AlgorithmIdentity, LabelledStructure, write_seg
from dicomio.series import load_series
from node.send.sender import Outcome, send_files
from tests.conftest import StoreSCP, free_port
from tests.synthetic import dataset_bytes, write_ct_series

CALLING_AE = "SEGNODE"


# Peers ----------------------------------------------------------------------


class ScriptedSCP:
    """A pynetdicom storage SCP in this process that answers per SOP Instance UID as scripted.

    ``answers[uid]`` lists the statuses of successive C-STOREs of that
    instance (the last one repeats); an instance without a script is stored
    with success. ``stall_first`` holds instances whose first C-STORE is
    never answered: the handler blocks its association until :meth:`stop`.
    """

    def __init__(self, sop_classes=(CTImageStorage, SegmentationStorage, Comprehensive3DSRStorage)):
        self.answers: dict[str, list[int | tuple[int, str]]] = {}
        self.stall_first: set[str] = set()
        self.received: dict[str, list[bytes]] = {}
        self.associations = 0
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        ae = AE(ae_title="SCRIPTED")
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
        self.port = free_port()
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_ESTABLISHED, self._on_established)],
        )

    @property
    def destination(self) -> Destination:
        return Destination(ae_title="SCRIPTED", host="127.0.0.1", port=self.port)

    def attempts(self, uid: str) -> int:
        with self._lock:
            return len(self.received.get(uid, []))

    def _on_established(self, event) -> None:
        with self._lock:
            self.associations += 1

    def _on_store(self, event):
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            copies = self.received.setdefault(uid, [])
            copies.append(event.encoded_dataset(include_meta=False))
            attempt = len(copies)
        if uid in self.stall_first and attempt == 1:
            self.stalled.set()
            self._release.wait()
            return 0xA700
        script = self.answers.get(uid)
        if not script:
            return 0x0000
        answer = script[min(attempt, len(script)) - 1]
        if isinstance(answer, int):
            return answer
        status = pydicom.Dataset()
        status.Status, status.ErrorComment = answer
        return status

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()


class Peers:
    """The peers one test started; all stopped when it ends."""

    def __init__(self, workdir: Path):
        self._workdir = workdir
        self._running: list[StoreSCP | ScriptedSCP] = []

    def storescp(self, *extra: str, port: int | None = None) -> StoreSCP:
        self._running.append(StoreSCP(self._workdir, *extra, port=port))
        return self._running[-1]

    def scripted(
        self, sop_classes=(CTImageStorage, SegmentationStorage, Comprehensive3DSRStorage)
    ) -> ScriptedSCP:
        self._running.append(ScriptedSCP(sop_classes))
        return self._running[-1]

    def stop(self) -> None:
        for peer in self._running:
            peer.stop()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    started = Peers(tmp_path)
    yield started
    started.stop()


# Files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def result_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A SEG and its TID 1500 SR, as dicomio writes them, and CT slices in two more transfer syntaxes."""
    folder = tmp_path_factory.mktemp("results")
    ct = write_ct_series(folder / "ct", slices=3, rows=16, columns=16)
    volume = load_series(ct).volume
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in ct]
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[0:2, 4:10, 4:10] = 1
    algorithm = AlgorithmIdentity(name="segnode-test", version="1")
    seg = write_seg(
        volume,
        labels,
        [LabelledStructure(1, structure_code("liver"))],
        algorithm,
        headers,
        series_number=300,
        series_description="Organs",
        device_serial_number="1",
        series_instance_uid=generate_uid(entropy_srcs=["send seg series"]),
        sop_instance_uid=generate_uid(entropy_srcs=["send seg instance"]),
    )
    seg.save_as(folder / "seg.dcm", enforce_file_format=True)
    report = sr.write_measurement_report(
        [StructureMeasurements(1, "liver", 10.5, 1000, 55.0, 10.0, -20.0, 120.0)],
        seg,
        headers,
        algorithm,
        device_uid="1.2.826.0.1.3680043.8.498.1",
        series_number=301,
        series_description="Organ measurements",
    )
    report.save_as(folder / "sr.dcm", enforce_file_format=True)
    jpeg2000 = write_ct_series(folder / "j2k", JPEG2000Lossless, slices=1)
    deflated = write_ct_series(
        folder / "deflated", DeflatedExplicitVRLittleEndian, slices=1, rows=16, columns=16
    )
    return {
        "seg": folder / "seg.dcm",
        "sr": folder / "sr.dcm",
        "ct": ct[0],
        "ct_jpeg2000": jpeg2000[0],
        "ct_deflated": deflated[0],
    }


@pytest.fixture(scope="module")
def small_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("small"), slices=30, rows=8, columns=8, seed=7)


def uid_of(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def send(destination: Destination, files: list[Path], timeout: float = 5.0):
    return send_files(destination, files, calling_ae=CALLING_AE, timeout=timeout)


# Tests ----------------------------------------------------------------------


def test_seg_sr_and_images_arrive_unchanged_in_their_own_transfer_syntax(peers, result_files):
    storescp = peers.storescp()
    files = list(result_files.values())
    results = send(storescp.destination, files)

    assert [r.outcome for r in results] == [Outcome.SUCCESS] * len(files)
    assert [r.path for r in results] == files
    received = storescp.received()
    assert set(received) == {uid_of(path) for path in files}
    for path in files:
        arrived = received[uid_of(path)]
        sent_meta, arrived_meta = read_file_meta_info(path), read_file_meta_info(arrived)
        assert arrived_meta.TransferSyntaxUID == sent_meta.TransferSyntaxUID
        assert arrived_meta.MediaStorageSOPClassUID == sent_meta.MediaStorageSOPClassUID
        assert dataset_bytes(arrived) == dataset_bytes(path), path.name
    classes = {str(read_file_meta_info(path).MediaStorageSOPClassUID) for path in files}
    assert {SegmentationStorage, Comprehensive3DSRStorage} <= classes
    assert ComprehensiveSRStorage not in classes


def test_many_small_instances_go_without_nagle_delays(peers, small_series):
    """With Nagle's algorithm on, each C-STORE waits for a delayed ACK: ~50 ms
    per instance into storescp here (bench/send_stall.py), against ~3 ms."""
    storescp = peers.storescp()
    started = time.monotonic()
    results = send(storescp.destination, small_series)
    elapsed = time.monotonic() - started

    assert all(r.outcome is Outcome.SUCCESS for r in results)
    assert len(storescp.received()) == len(small_series)
    assert elapsed < 0.025 * len(small_series), f"{elapsed:.2f}s for {len(small_series)} instances"


def test_destination_down_fails_every_file_at_once(result_files):
    files = [result_files["seg"], result_files["sr"]]
    started = time.monotonic()
    results = send(Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port()), files)

    assert time.monotonic() - started < 2
    assert [r.outcome for r in results] == [Outcome.CONNECT_FAILED] * 2
    assert all(not r.permanent and not r.delivered for r in results)
    assert "cannot connect to NOBODY@127.0.0.1" in results[0].detail


def test_rejected_association_fails_every_file(peers, result_files):
    refusing = peers.storescp("--refuse")
    results = send(refusing.destination, [result_files["seg"], result_files["sr"]])

    # storescp closes the connection right after its A-ASSOCIATE-RJ; now and
    # then pynetdicom sees the close first and reports an abort. Either way
    # nothing was sent and the files wait for the next attempt.
    assert results[0].outcome in (Outcome.REJECTED, Outcome.ABORTED)
    assert results[1].outcome in (results[0].outcome, Outcome.NOT_ATTEMPTED)
    if results[0].outcome == Outcome.REJECTED:
        assert "rejected the association" in results[0].detail
    assert not any(r.delivered or r.permanent for r in results)
    assert refusing.received() == {}


def test_each_file_gets_its_own_status(peers, tmp_path):
    scripted_scp = peers.scripted()
    files = write_ct_series(tmp_path, slices=4, rows=8, columns=8)
    uids = [uid_of(path) for path in files]
    scripted_scp.answers[uids[0]] = [0xA700]
    scripted_scp.answers[uids[1]] = [(0xC000, "cannot parse the pixel data")]
    scripted_scp.answers[uids[2]] = [0xB000]

    results = send(scripted_scp.destination, files)

    assert [r.outcome for r in results] == [
        Outcome.REFUSED,
        Outcome.REFUSED,
        Outcome.WARNING,
        Outcome.SUCCESS,
    ]
    assert [r.status for r in results] == [0xA700, 0xC000, 0xB000, 0x0000]
    assert [r.permanent for r in results] == [False, True, False, False]
    assert [r.delivered for r in results] == [False, False, True, True]
    assert "0xA700 Refused: Out of Resources" in results[0].detail
    assert "cannot parse the pixel data" in results[1].detail
    assert scripted_scp.associations == 1
    assert all(scripted_scp.attempts(uid) == 1 for uid in uids)
    for path, uid in zip(files, uids, strict=True):
        assert scripted_scp.received[uid][0] == dataset_bytes(path)


def test_unaccepted_sop_class_is_a_permanent_outcome(peers, result_files):
    ct_only = peers.scripted(sop_classes=(CTImageStorage,))
    results = send(ct_only.destination, [result_files["seg"], result_files["ct"]])

    assert [r.outcome for r in results] == [Outcome.NOT_ACCEPTED, Outcome.SUCCESS]
    assert results[0].permanent
    assert SegmentationStorage in results[0].detail


def test_destination_accepting_nothing_we_send(peers, result_files):
    nothing = peers.scripted(sop_classes=(CTImageStorage,))
    results = send(nothing.destination, [result_files["seg"], result_files["sr"]])

    assert [r.outcome for r in results] == [Outcome.NOT_ACCEPTED] * 2
    assert nothing.received == {}


def test_unreadable_files_do_not_stop_the_others(peers, result_files, tmp_path):
    storescp = peers.storescp()
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not a DICOM file")
    missing = tmp_path / "missing.dcm"

    results = send(storescp.destination, [missing, result_files["seg"], not_dicom])

    assert [r.outcome for r in results] == [Outcome.UNREADABLE, Outcome.SUCCESS, Outcome.UNREADABLE]
    assert results[0].permanent and results[2].permanent
    assert str(missing) in results[0].detail
    assert set(storescp.received()) == {uid_of(result_files["seg"])}


def test_a_stalled_c_store_costs_one_timeout_and_ends_the_attempt(peers, tmp_path):
    scripted_scp = peers.scripted()
    files = write_ct_series(tmp_path, slices=3, rows=8, columns=8)
    scripted_scp.stall_first.add(uid_of(files[1]))

    started = time.monotonic()
    results = send(scripted_scp.destination, files, timeout=1.0)
    elapsed = time.monotonic() - started

    assert [r.outcome for r in results] == [Outcome.SUCCESS, Outcome.TIMED_OUT, Outcome.NOT_ATTEMPTED]
    assert "did not answer" in results[1].detail and "within 1s" in results[1].detail
    assert not results[1].permanent
    assert 1.0 <= elapsed < 2.5
    assert scripted_scp.attempts(uid_of(files[2])) == 0

    again = send(scripted_scp.destination, files[1:], timeout=1.0)
    assert [r.outcome for r in again] == [Outcome.SUCCESS, Outcome.SUCCESS]


def test_a_response_lost_inside_pynetdicom_counts_without_waiting(peers, small_series, monkeypatch, caplog):
    """The race node/send/sender.py describes, forced: pynetdicom's association
    reactor takes a C-STORE-RSP off the DIMSE queue before send_c_store can.
    Which thread wins cannot be scheduled from a test, so the response to the
    third request is removed from the queue the moment the DUL puts it there,
    as the reactor does; EVT_DIMSE_RECV has already seen it."""
    taken = []
    receive_primitive = DIMSEServiceProvider.receive_primitive

    def reactor_takes_third_response(self, primitive):
        receive_primitive(self, primitive)
        queued = list(self.msg_queue.queue)
        if not taken and queued and getattr(queued[-1][1], "MessageIDBeingRespondedTo", None) == 3:
            taken.append(self.msg_queue.get_nowait())

    storescp = peers.storescp()
    monkeypatch.setattr(DIMSEServiceProvider, "receive_primitive", reactor_takes_third_response)
    files = small_series[:6]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="node.send.sender"):
        results = send(storescp.destination, files, timeout=30.0)
    elapsed = time.monotonic() - started

    assert len(taken) == 1
    assert [r.outcome for r in results] == [Outcome.SUCCESS] * len(files)
    assert elapsed < 5, f"{elapsed:.1f}s: waited for the timeout instead of the recorded response"
    assert set(storescp.received()) == {uid_of(path) for path in files}
    assert any("lost inside pynetdicom" in record.getMessage() for record in caplog.records)
