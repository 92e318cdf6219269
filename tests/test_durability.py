"""Never lose an acknowledged image: kill -9, SIGTERM, a full disk, a failing write."""

from __future__ import annotations

import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import scu
from tests.synthetic import dataset_bytes, write_ct_series

EXPLICIT_LE = "1.2.840.10008.1.2.1"


class Sender:
    """Sends files one C-STORE at a time on one association, recording each status."""

    def __init__(self, node, files: list[Path]):
        self.node = node
        self.files = files
        self.statuses: dict[Path, int | None] = {}
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        ae = scu()
        ae.dimse_timeout = 5
        assoc = ae.associate("127.0.0.1", self.node.port, ae_title="SEGNODE")
        if not assoc.is_established:
            return
        for path in self.files:
            if not assoc.is_established:
                break
            response = assoc.send_c_store(path)
            self.statuses[path] = response.Status if "Status" in response else None
        if assoc.is_established:
            assoc.release()

    def acknowledged(self) -> list[Path]:
        return [path for path, status in self.statuses.items() if status == 0x0000]

    def wait_until_acknowledged(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged()) < count:
            assert time.monotonic() < deadline, "sender made no progress"
            time.sleep(0.01)


def assert_on_disk_and_indexed(node, files: list[Path]) -> None:
    stored = {p.stem: p for p in node.stored_files()}
    series = {s["series_instance_uid"]: s for s in node.status()}
    for path in files:
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        assert sent.SOPInstanceUID in stored, f"acknowledged {path.name} is not on disk"
        assert dataset_bytes(stored[sent.SOPInstanceUID]) == dataset_bytes(path)
    if files:
        series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
        assert series[series_uid]["instances"] >= len(files)


def test_kill_9_mid_series_loses_no_acknowledged_instance(node_factory, tmp_path):
    node = node_factory().start()
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=60, rows=256, columns=256)
    sender = Sender(node, files)
    sender.thread.start()
    sender.wait_until_acknowledged(15)
    node.kill()
    sender.thread.join(60)
    acknowledged = sender.acknowledged()
    assert 15 <= len(acknowledged) < len(files)

    node.start()
    assert node.partial_files() == []
    assert_on_disk_and_indexed(node, acknowledged)
    rest = Sender(node, [p for p in files if p not in acknowledged])
    rest.thread.run()
    assert len(rest.acknowledged()) == len(files) - len(acknowledged)
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    node.wait_for_series(series_uid, "dispatched", len(files))
    assert node.terminate() == 0


def test_series_interrupted_by_a_restart_completes_afterwards(node_factory, tmp_path):
    node = node_factory(series_stable_seconds=3).start()
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=5, rows=32, columns=32)
    sender = Sender(node, files)
    sender.thread.run()
    assert node.terminate() == 0
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert [s["state"] for s in node.status()] == ["receiving"]
    node.start()
    node.wait_for_series(series_uid, "dispatched", len(files))


def test_sigterm_finishes_in_flight_stores_and_exits_zero(node_factory, tmp_path):
    node = node_factory().start()
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=80, rows=256, columns=256)
    sender = Sender(node, files)
    sender.thread.start()
    sender.wait_until_acknowledged(10)
    assert node.terminate(timeout=30) == 0
    sender.thread.join(60)
    acknowledged = sender.acknowledged()
    assert 10 <= len(acknowledged) < len(files)
    # Success for what is stored; then "out of resources" for what came during
    # shutdown, or no answer once the association was aborted.
    statuses = list(sender.statuses.values())
    first_failure = statuses.index(next(s for s in statuses if s != 0x0000))
    assert all(status in (0xA700, None) for status in statuses[first_failure:])
    assert node.partial_files() == []
    assert_on_disk_and_indexed(node, acknowledged)
    assert len(node.stored_files()) == len(acknowledged)
    assert "segnode stopped" in node.log()
    # Nothing listens any more.
    assoc = scu().associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert not assoc.is_established


def _send_until_full(node, files: list[Path]) -> Sender:
    sender = Sender(node, files)
    sender.thread.run()
    return sender


def _assert_full_disk_handled(node, sender: Sender) -> None:
    acknowledged = sender.acknowledged()
    refused = [p for p, status in sender.statuses.items() if status == 0xA700]
    assert acknowledged, "nothing fitted at all"
    assert refused, "the disk never filled up"
    assert node.partial_files() == []
    assert_on_disk_and_indexed(node, acknowledged)
    assert len(node.stored_files()) == len(acknowledged)
    metrics = node.metrics()
    assert metrics['segnode_store_failures_total{reason="out-of-resources"}'] == len(refused)
    # The node keeps serving: a C-ECHO still works.
    assoc = scu().associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


@pytest.fixture
def small_tmpfs(tmp_path) -> Path:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_answers_out_of_resources_with_nothing_half_written(node_factory, tmp_path, small_tmpfs):
    node = node_factory(storage_dir=str(small_tmpfs / "store")).start()
    node.storage_dir = small_tmpfs / "store"
    # 30 slices of 512 KiB into a 3 MiB filesystem.
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=30, rows=512, columns=512)
    _assert_full_disk_handled(node, _send_until_full(node, files))


def test_failing_write_answers_out_of_resources(node_factory, tmp_path):
    """RLIMIT_FSIZE makes the kernel fail a write part-way (EFBIG), as a full disk would."""
    node = node_factory()
    limit = 400 * 1024

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    node.start(preexec_fn=limit_file_size)
    small = write_ct_series(tmp_path / "small", EXPLICIT_LE, slices=3, rows=256, columns=256)
    large = write_ct_series(tmp_path / "large", EXPLICIT_LE, slices=2, rows=512, columns=512)
    sender = _send_until_full(node, small + large)
    assert [sender.statuses[p] for p in small] == [0x0000] * 3
    assert [sender.statuses[p] for p in large] == [0xA700] * 2
    _assert_full_disk_handled(node, sender)
