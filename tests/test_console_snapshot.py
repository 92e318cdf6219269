"""node/console/snapshot.py: what the console shows, read from a real index,
queue and outbox, and from a real SCP with an association open."""

from __future__ import annotations

import math
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import CTImageStorage

from config import JobSettings, parse_config
from dicomio.csv import MeasurementsCsvError, read_measurements_csv, write_measurements_csv
from dicomio.measurements import BoundingBox, FlagKind, QualityFlag, StructureMeasurements
from node.assemble.completion import Timing, completion
from node.console.context import ConsoleContext
from node.console.snapshot import (
    Delivery,
    DestinationState,
    InstanceRow,
    PeerActivity,
    StructureRow,
    overview,
    series_detail,
    series_page,
)
from node.disk_space import DiskSpace
from node.metrics import NodeMetrics
from node.queue.job_state import JobState
from node.queue.jobs import JobKind, JobQueue, NewJob
from node.queue.results import SegmentResult
from node.receive import index as index_module
from node.receive.index import INDEX_FILENAME, InstanceIndex
from node.receive.scp import OpenAssociation, StorageSCP
from node.receive.series_state import CompletionSignal, SeriesState
from node.receive.storage import InstanceStore, StoredInstance
from node.receive.validation import InstanceIdentity
from node.send.outbox import OutboxStore, RetryPolicy
from node.send.sender import Outcome, SendResult
from tests.conftest import free_port
from tests.synthetic import write_ct_series

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"

LIVER = StructureMeasurements(
    segment_number=1, name="liver", volume_ml=1534.25, voxel_count=2_400_123, hu_mean=55.25, hu_std=12.125,
    hu_min=-98.0, hu_max=210.0, suv_mean=2.0625, suv_max=4.5, suv_peak=3.875, mass_g=1626.305,
    density_g_ml=1.06, hu_median=54.5, component_count=2,
    bounding_box=BoundingBox((3, 40, 41), (250, 300, 301), (-120.5, -80.25, -612.5), (60.0, 95.125, -302.5)),
    sul_mean=1.65, sul_peak=3.1, total_uptake=3164.2, reference_segment_number=7, dice=0.95, jaccard=0.9,
    hausdorff95_mm=2.75, mirror_dice=0.98,
    flags=(QualityFlag(FlagKind.VOLUME_OUT_OF_RANGE, "volume 1534 ml outside 900-1500 ml; check, please"),
           QualityFlag(FlagKind.UNEXPECTED_COMPONENTS, '2 components, "1" expected')),
)
# No PET, no QA, no box; quotes, a comma and non-ASCII in the name.
KIDNEY = StructureMeasurements(
    segment_number=2, name='kidney, left "upper pole" é', volume_ml=0.1 + 0.2, voxel_count=1, hu_mean=-1e-12,
    hu_std=0.0, hu_min=-1024.0, hu_max=3071.0,
)


def receive(index: InstanceIndex, series: str, study: str, at: float, n: int = 1, *,
            calling_ae: str = "SCANNER", syntax: str = EXPLICIT_LE, size: int = 1000) -> None:
    for k in range(n):
        identity = InstanceIdentity(CT, f"{series}.{k}", study, series, "CT")
        index.record_instance(StoredInstance(identity, syntax, Path(f"/x/{series}.{k}"), size + k, calling_ae,
                                             at + k))


def complete(index: InstanceIndex, series: set[str], at: float) -> None:
    """Complete `series` as the stable period would at `at`."""
    for progress in index.receiving():
        if progress.series_instance_uid in series:
            timing = Timing(stable_seconds=0, mpps_wait_seconds=math.inf)
            decided = completion(progress, at, timing, held=False)
            assert decided is not None
            assert index.complete(progress, decided) is not None


def segment_job(route: str = "organs") -> NewJob:
    return NewJob(JobKind.SEGMENT, route, "organs", ("PACS", "ARCHIVE"), subject="")


# Series pages -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_series(tmp_path_factory) -> Path:
    """3,000 series, the k-th last received at 10,000 + k; every third complete,
    every ninth of those (from the start) dispatched."""
    storage = tmp_path_factory.mktemp("many")
    index = InstanceIndex(storage)
    for k in range(3000):
        receive(index, f"2.{k}", f"1.{k // 2}", at=10_000.0 + k, calling_ae=f"AE{k % 7}")
    complete(index, {f"2.{k}" for k in range(0, 3000, 3)}, at=20_000.0)
    queue = JobQueue(storage)
    for k in range(0, 3000, 9):
        queue.enqueue_series(f"2.{k}", [segment_job()], now=20_001.0)
    queue.close()
    index.close()
    return storage


def test_series_pages_are_newest_first_and_clamped(many_series):
    first = series_page(many_series, 1)
    assert (first.page, first.pages, first.total, first.per_page, first.state) == (1, 60, 3000, 50, None)
    assert [row.series_instance_uid for row in first.rows] == [f"2.{k}" for k in range(2999, 2949, -1)]
    row = first.rows[0]  # 2.2999: 2999 % 3 != 0, still receiving
    assert (row.study_instance_uid, row.modality, row.calling_ae, row.instances, row.state) == (
        "1.1499", "CT", f"AE{2999 % 7}", 1, SeriesState.RECEIVING)
    assert (row.first_received, row.last_received, row.completed_by, row.completion_note) == (
        12_999.0, 12_999.0, None, None)

    last = series_page(many_series, 60)
    assert [row.series_instance_uid for row in last.rows] == [f"2.{k}" for k in range(49, -1, -1)]
    assert series_page(many_series, 61).page == series_page(many_series, 10**6).page == 60
    assert series_page(many_series, 0).rows == series_page(many_series, -5).rows == first.rows

    complete_page = series_page(many_series, 2, per_page=100, state="complete")
    complete_uids = [f"2.{k}" for k in range(2997, -1, -3) if k % 9]
    assert (complete_page.total, complete_page.pages, complete_page.page) == (666, 7, 2)
    assert [row.series_instance_uid for row in complete_page.rows] == complete_uids[100:200]
    assert {(row.state, row.completed_by) for row in complete_page.rows} == {
        (SeriesState.COMPLETE, CompletionSignal.STABLE)}
    assert series_page(many_series, 1, state="dispatched").total == 334
    assert series_page(many_series, 1, state="removed") == series_page(many_series, 1, state="removed")
    empty = series_page(many_series, 3, state="removed")
    assert (empty.rows, empty.page, empty.pages, empty.total) == ((), 1, 1, 0)


def test_a_state_or_page_size_out_of_range_is_refused(many_series):
    with pytest.raises(ValueError, match="sent"):
        series_page(many_series, 1, state="sent")
    with pytest.raises(ValueError, match="per_page"):
        series_page(many_series, 1, per_page=0)
    with pytest.raises(ValueError, match="per_page"):
        series_page(many_series, 1, per_page=10_000)


def _plan(storage: Path, sql: str, parameters: tuple) -> list[str]:
    with sqlite3.connect(storage / INDEX_FILENAME) as db:
        return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", parameters)]


def test_the_page_queries_walk_an_index_and_sort_nothing(many_series):
    everything = _plan(many_series, index_module.NEWEST_SERIES_SQL, (50, 2950))
    assert everything[0] == "SCAN s USING INDEX series_by_last_received"
    in_state = _plan(many_series, index_module.NEWEST_SERIES_IN_STATE_SQL, ("complete", 50, 0))
    assert in_state[0] == "SEARCH s USING INDEX series_by_state (state=?)"
    peers = _plan(many_series, index_module.PEER_ACTIVITY_SQL, (12_000.0,))
    # Seeks from one calling AE to the next, never a scan of the instances.
    assert not any(step.startswith("SCAN instances") for step in peers), peers
    assert sum("USING COVERING INDEX instances_by_calling_ae" in step for step in peers) == 4, peers
    for plan in (everything, in_state):
        assert not any("TEMP B-TREE" in step for step in plan), plan
        # The count and calling AE of each listed series: one index probe each.
        assert [step for step in plan if step.startswith("SEARCH i")] == [
            "SEARCH i USING COVERING INDEX instances_by_series (series_instance_uid=?)",
            "SEARCH i USING INDEX instances_by_series (series_instance_uid=?)",
        ]


def test_a_store_made_before_the_console_gains_its_indexes(tmp_path):
    index = InstanceIndex(tmp_path)
    receive(index, "2.1", "1.1", at=100.0)
    index.close()
    with sqlite3.connect(tmp_path / INDEX_FILENAME) as db:
        db.execute("DROP INDEX series_by_last_received")
        db.execute("DROP INDEX instances_by_calling_ae")
    InstanceIndex(tmp_path).close()  # as the node opens it at start
    with sqlite3.connect(tmp_path / INDEX_FILENAME) as db:
        names = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"series_by_last_received", "instances_by_calling_ae"} <= names
    assert [row.series_instance_uid for row in series_page(tmp_path, 1).rows] == ["2.1"]


# A series in detail ------------------------------------------------------------------------


@pytest.fixture
def segmented(tmp_path) -> tuple[Path, int, int, Path]:
    """Series 2.1 (3 instances from CT1) segmented twice (the second run is the
    one shown), with a QA job about it; its files half delivered."""
    storage = tmp_path / "store"
    index = InstanceIndex(storage)
    queue = JobQueue(storage)
    outbox = OutboxStore(storage)
    receive(index, "2.1", "1.1", at=100.0, n=3, calling_ae="CT1", syntax=JPEG2000_LOSSLESS)
    receive(index, "2.2", "1.1", at=100.0, calling_ae="CT1")  # another series of the study
    complete(index, {"2.1", "2.2"}, at=200.0)
    first_id, job_id = queue.enqueue_series("2.1", [segment_job("first"), segment_job()], now=300.0)
    assert (first_id, job_id) == (1, 2)
    queue.enqueue_series("2.2", [NewJob(JobKind.QA, "organs", "organs", ("PACS",), "2.1")], now=300.0)
    storage_results = storage / "results" / "2.1"
    for route, measured in (("first", [KIDNEY]), ("organs", [LIVER, KIDNEY])):
        out = storage_results / f"segment-{route}"
        out.mkdir(parents=True)
        write_measurements_csv(measured, out / "measurements.csv")
        (out / "report.pdf").write_bytes(b"%PDF-1.7\n")
        claimed = queue.claim("w1", 60, now=301.0)
        assert claimed is not None and claimed.route == route
        queue.succeed(claimed.id, "w1", SegmentResult(
            out / "seg.dcm", out / "sr.dcm", out / "measurements.csv", out / "labels.nii.gz", "builtin 1", 2,
            True, {"load": 0.5, "segment": 2.25, "measure": 0.125}))
        time.sleep(0.01)  # the second finishes later
    results = storage_results / "segment-organs"
    seg, sr = results / "seg.dcm", results / "sr.dcm"
    for path in (seg, sr):
        path.write_bytes(b"DICM")
    outbox.enqueue(f"{job_id}/1.2.3", "PACS", [seg], now=400.0)
    outbox.enqueue(f"{job_id}/1.2.4", "PACS", [sr], now=400.0)
    outbox.enqueue(f"{job_id}/1.2.3", "ARCHIVE", [seg], now=400.0)
    outbox.enqueue(f"{job_id}0/1.2.3", "PACS", [seg], now=400.0)  # job 20's, not job 2's
    items = {(item.job_id, item.destination): item for name in ("PACS", "ARCHIVE")
             for item in outbox.due(name, 500.0, 10)}
    outbox.record(
        [items[f"{job_id}/1.2.3", "PACS"], items[f"{job_id}/1.2.4", "PACS"],
         items[f"{job_id}/1.2.3", "ARCHIVE"]],
        [SendResult(seg, Outcome.SUCCESS, 0), SendResult(sr, Outcome.REFUSED, 0xC000, "cannot understand"),
         SendResult(seg, Outcome.CONNECT_FAILED, None, "connection refused")],
        now=500.0, policy=RetryPolicy(max_refusals=1),
    )
    for closable in (outbox, queue, index):
        closable.close()
    return storage, first_id, job_id, results / "measurements.csv"


def test_series_detail_shows_instances_jobs_deliveries_and_the_latest_measurements(segmented):
    storage, first_id, job_id, csv = segmented
    detail = series_detail(storage, "2.1")
    assert detail is not None
    assert (detail.series.series_instance_uid, detail.series.instances, detail.series.calling_ae,
            detail.series.state) == ("2.1", 3, "CT1", SeriesState.DISPATCHED)
    assert detail.instances == tuple(
        InstanceRow(f"2.1.{k}", CT, JPEG2000_LOSSLESS, 1000 + k, "CT1", 100.0 + k) for k in range(3))

    jobs = {job.id: job for job in detail.jobs}
    assert len(jobs) == 3  # both segmentations, and the QA job whose subject the series is
    qa = next(job for job in detail.jobs if job.kind == JobKind.QA)
    assert (qa.state, qa.stages, qa.deliveries, qa.next_attempt_at) == (JobState.QUEUED, (), (), 300.0)
    shown = jobs[job_id]
    assert (shown.kind, shown.state, shown.route, shown.pipeline, shown.attempts, shown.error) == (
        JobKind.SEGMENT, JobState.DONE, "organs", "organs", 1, None)
    assert shown.created_at == 300.0 and shown.updated_at > 300.0 and shown.next_attempt_at is None
    assert shown.stages == (("load", 0.5), ("segment", 2.25), ("measure", 0.125))
    assert shown.deliveries == (
        Delivery("ARCHIVE", 0, 1, 0, None, "connect-failed: connection refused"),
        Delivery("PACS", 1, 0, 1, 500.0, "refused: cannot understand"),
    )
    assert jobs[first_id].deliveries == ()

    assert detail.measurements_job == job_id and detail.measurements_problem is None
    liver, kidney = detail.measurements
    assert liver == StructureRow(1, "liver", 1534.25, 1626.305, 55.25, 12.125, 2.0625, 4.5, 3.875, 0.98,
                                 LIVER.flags)
    assert kidney == StructureRow(2, KIDNEY.name, 0.1 + 0.2, None, -1e-12, 0.0, None, None, None, None, ())
    assert detail.report_pdf == csv.parent / "report.pdf"


def test_results_removed_since_show_why_and_no_report(segmented):
    storage, _, job_id, csv = segmented
    csv.unlink()
    (csv.parent / "report.pdf").unlink()
    detail = series_detail(storage, "2.1")
    assert detail is not None
    assert (detail.measurements, detail.measurements_job, detail.report_pdf) == ((), job_id, None)
    assert detail.measurements_problem is not None and str(csv) in detail.measurements_problem

    csv.write_text("an older export\n")
    problem = series_detail(storage, "2.1").measurements_problem
    assert problem is not None and "not a measurements CSV" in problem


def test_a_series_never_segmented_or_unknown(segmented):
    storage = segmented[0]
    detail = series_detail(storage, "2.2")
    assert detail is not None
    assert (detail.measurements, detail.measurements_job, detail.measurements_problem, detail.report_pdf) == (
        (), None, None, None)
    assert [job.kind for job in detail.jobs] == [JobKind.QA]  # the QA job reads series 2.2
    assert series_detail(storage, "9.9") is None


def test_the_measurements_csv_reads_back_exactly_what_was_written(tmp_path):
    path = write_measurements_csv([LIVER, KIDNEY], tmp_path / "m.csv")
    assert read_measurements_csv(path) == (LIVER, KIDNEY)
    text = path.read_bytes()
    path.write_bytes(text.replace(b"volume_out_of_range: ", b"volume out of range "))
    with pytest.raises(MeasurementsCsvError, match=r"m\.csv, line 2"):
        read_measurements_csv(path)
    path.write_bytes(text.replace(b"\r\n2,", b"\r\nsecond,"))
    with pytest.raises(MeasurementsCsvError, match="line 4"):  # the flags cell spans lines 2-3
        read_measurements_csv(path)


# The overview, with a real SCP ------------------------------------------------------------------


@pytest.fixture
def scp(tmp_path, monkeypatch):
    """A StorageSCP listening in this process, on a store of its own. Its
    start sets process-wide settings (pynetdicom's chunked receiving, the
    temporary folder, the thread-failure hook) that are put back after it,
    so that later tests' own pynetdicom peers receive as they expect."""
    chunked = pynetdicom_config.STORE_RECV_CHUNKED_DATASET
    monkeypatch.setattr(pynetdicom_config, "STORE_RECV_CHUNKED_DATASET", chunked)
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    storage = tmp_path / "store"
    port = free_port()
    config = parse_config(
        f"""
node: {{ae_title: SEGNODE, host: 127.0.0.1, port: {port}, storage_dir: {storage}}}
storage: {{low_watermark_bytes: 1048576}}
peers: [{{ae_title: MODALITY1}}]
destinations:
  PACS: {{ae_title: ORTHANC, host: 127.0.0.1, port: 4242}}
  ARCHIVE: {{ae_title: ARCHIVE, host: 127.0.0.1, port: 4243}}
""",
        check_files=False,
    )
    metrics = NodeMetrics(CollectorRegistry())
    index = InstanceIndex(storage)
    disk = DiskSpace(storage, config.storage.low_watermark_bytes)
    server = StorageSCP(config, InstanceStore(storage), index, metrics, disk, lambda at: None)
    server.start()
    yield server, config, metrics, port
    server.shutdown()
    index.close()


def test_overview_of_a_node_receiving(scp, tmp_path):
    server, config, metrics, port = scp
    storage = config.node.storage_dir
    queue = JobQueue(storage)
    outbox = OutboxStore(storage)
    index = InstanceIndex(storage)
    receive(index, "2.1", "1.1", at=100.0, n=2, calling_ae="OLDSCANNER")
    complete(index, {"2.1"}, at=200.0)
    started = time.time()
    receive(index, "2.3", "1.3", at=started - 86400 - 60, calling_ae="NIGHTLY")  # before the last day
    receive(index, "2.4", "1.4", at=started - 3600, calling_ae="NIGHTLY")
    (job_id,) = queue.enqueue_series("2.1", [segment_job()], now=300.0)
    claimed = queue.claim("w1", 60, now=301.0)
    queue.fail(claimed.id, "w1", "no GPU", JobSettings(max_attempts=1), now=302.0)
    (tmp_path / "seg.dcm").write_bytes(b"DICM")
    outbox.enqueue(f"{job_id}/1.2.3", "GONE", [tmp_path / "seg.dcm"], now=time.time() - 60)
    outbox.enqueue(f"{job_id}/1.2.3", "PACS", [tmp_path / "seg.dcm"], now=time.time() - 30)
    metrics.storage_bytes.labels("instances").set(12345)
    metrics.storage_bytes.labels("results").set(678)

    context = ConsoleContext(
        config_path=tmp_path / "segnode.yaml", current_config=lambda: config, storage_dir=storage,
        open_associations=server.open_associations, request_reload=lambda: None, registry=metrics.registry,
    )
    files = write_ct_series(tmp_path / "ct", slices=3)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    before = time.time()
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGNODE")
    assert assoc.is_established
    try:
        assert [a.instances for a in server.open_associations()] == [0]
        for path in files[:2]:
            assert assoc.send_c_store(path).Status == 0x0000
        now = time.time()
        view = overview(context, now)
    finally:
        assoc.release()

    (association,) = view.associations
    assert (association.calling_ae, association.instances) == ("MODALITY1", 2)
    assert association.address.startswith("127.0.0.1:") and int(association.address.split(":")[1]) != port
    assert before <= association.since <= now
    assert (view.series_receiving, view.series_complete) == (3, 1)  # 2.1 is complete, and dispatched
    assert [row.series_instance_uid for row in view.recent_series][1:] == ["2.4", "2.3", "2.1"]
    assert view.recent_series[0].calling_ae == "MODALITY1" and view.recent_series[0].instances == 2
    assert view.jobs_by_state == ((JobState.QUEUED, 0), (JobState.RUNNING, 0), (JobState.DONE, 0),
                                  (JobState.FAILED, 1))
    pacs, archive, gone = view.destinations
    assert (pacs.name, pacs.configured, pacs.pending, pacs.failed) == ("PACS", True, 1, 0)
    assert pacs.last_error is None
    assert pacs.oldest_pending_since == pytest.approx(now - 30, abs=1)
    assert archive == DestinationState("ARCHIVE", True, 0, 0, None, None, None)
    assert (gone.name, gone.configured, gone.pending) == ("GONE", False, 1)
    assert (view.disk.instances_bytes, view.disk.results_bytes, view.disk.low_watermark_bytes) == (
        12345, 678, 1048576)
    assert 0 < view.disk.free_bytes
    latest, nightly, old = view.peers
    assert (latest.calling_ae, latest.instances) == ("MODALITY1", 2) and before <= latest.last_instance_at
    assert nightly == PeerActivity("NIGHTLY", started - 3600, 1)
    assert old == PeerActivity("OLDSCANNER", 101.0, 0)

    deadline = time.monotonic() + 5
    while server.open_associations() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.open_associations() == ()
    for closable in (outbox, queue, index):
        closable.close()


def test_open_associations_are_snapshots(scp):
    server, _, _, port = scp
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    first, second = (ae.associate("127.0.0.1", port, ae_title="SEGNODE") for _ in range(2))
    try:
        listed = server.open_associations()
        assert [a.calling_ae for a in listed] == ["MODALITY1", "MODALITY1"]
        assert listed[0].since <= listed[1].since and listed[0].address != listed[1].address
        assert all(isinstance(a, OpenAssociation) and a.instances == 0 for a in listed)
    finally:
        first.release()
        second.abort()
    deadline = time.monotonic() + 5
    while server.open_associations() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.open_associations() == ()
