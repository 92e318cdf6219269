"""Never lose an acknowledged image: kill -9, SIGTERM, a full disk, a failing write."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from tests.conftest import rejection, scu
from tests.synthetic import dataset_bytes, write_ct_series

# Real node processes killed, stopped and starved of disk: minutes of the slow stage (.ci/run).
pytestmark = pytest.mark.slow

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


def _assert_nothing_half_stored(node, sender: Sender) -> None:
    acknowledged = sender.acknowledged()
    assert acknowledged, "nothing fitted at all"
    assert_on_disk_and_indexed(node, acknowledged)
    assert len(node.stored_files()) == len(acknowledged)
    # The transfer cut short leaves no spooled part behind.
    deadline = time.monotonic() + 5
    while list((node.storage_dir / "spool").iterdir()):
        assert time.monotonic() < deadline, list((node.storage_dir / "spool").iterdir())
        time.sleep(0.05)


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


def _node_on(node_factory, storage_dir: Path, low_watermark_bytes: int):
    node = node_factory(storage_dir=str(storage_dir))
    node.config["storage"] = {"low_watermark_bytes": low_watermark_bytes}
    node.write_config()
    node.storage_dir = storage_dir
    return node.start()


def test_the_low_watermark_refuses_instances_before_the_disk_is_full(node_factory, tmp_path, small_tmpfs):
    node = _node_on(node_factory, small_tmpfs / "store", low_watermark_bytes=1 << 20)
    # 30 slices of 512 KiB into a 3 MiB file system that keeps 1 MiB free.
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=30, rows=512, columns=512)
    sender = _send_until_full(node, files)
    statuses = list(sender.statuses.values())
    first_refused = statuses.index(0xA700)
    assert statuses[:first_refused] == [0x0000] * first_refused
    # The association stays up; every later instance is refused the same way.
    assert statuses[first_refused:] == [0xA700] * (len(files) - first_refused)
    _assert_nothing_half_stored(node, sender)
    assert node.metrics()['segnode_store_failures_total{reason="low-space"}'] == len(files) - first_refused


def test_a_disk_that_fills_anyway_loses_nothing_and_frees_the_spool(node_factory, tmp_path, small_tmpfs):
    """With no watermark to speak of, the disk fills while an instance is spooled:
    the transfer is aborted (pynetdicom's spooling cannot answer a status), what
    was acknowledged is intact, and the node serves on."""
    node = _node_on(node_factory, small_tmpfs / "store", low_watermark_bytes=1)
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=30, rows=512, columns=512)
    sender = _send_until_full(node, files)
    assert None in sender.statuses.values() or 0xA700 in sender.statuses.values(), sender.statuses
    _assert_nothing_half_stored(node, sender)
    # It answers: while the disk is full, with a transient rejection. (The
    # aborted transfer's spool is freed, and the index may or may not take
    # that space: the test fills what is left.)
    filler = small_tmpfs / "filler"
    with filler.open("wb", buffering=0) as handle, pytest.raises(OSError):
        while True:
            handle.write(b"\0" * 4096)
    assert os.statvfs(small_tmpfs).f_bavail == 0
    assert rejection(scu(), node.port)[0] == 0x02


def test_failing_write_loses_nothing(node_factory, tmp_path):
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
    assert sender.statuses[large[0]] in (None, 0xA700)
    _assert_nothing_half_stored(node, sender)
    assoc = scu().associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
