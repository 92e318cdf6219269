"""Series assembly: complete after the stable period; a late instance reopens."""

from __future__ import annotations

import time

import pydicom

from tests.synthetic import write_ct_series
from tests.test_receive import storescu

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_series_completes_only_after_the_stable_period(node_factory, tmp_path):
    node = node_factory(series_stable_seconds=3).start()
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=6, rows=32, columns=32)
    assert storescu(node, files[:3]).returncode == 0
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    time.sleep(1.5)
    assert storescu(node, files[3:]).returncode == 0
    sent_at = time.monotonic()
    [series] = node.status()
    assert series["state"] == "receiving" and series["instances"] == 6
    node.wait_for_series(series_uid, "dispatched", 6, timeout=10)
    assert time.monotonic() - sent_at >= 2.5
    assert node.metrics()['segnode_series_completed_total{signal="stable"}'] == 1


def test_late_instance_reopens_a_completed_series(node, tmp_path):
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=5, rows=32, columns=32)
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert storescu(node, files[:4]).returncode == 0
    node.wait_for_series(series_uid, "dispatched", 4)
    assert storescu(node, files[4:]).returncode == 0
    [series] = node.status()
    assert series["state"] == "receiving" and series["instances"] == 5
    assert "reopens series " + series_uid in node.log()
    node.wait_for_series(series_uid, "dispatched", 5)
    metrics = node.metrics()
    assert metrics['segnode_series_completed_total{signal="stable"}'] == 2
    assert metrics["segnode_series_reopened_total"] == 1


def test_two_series_are_assembled_independently(node, tmp_path):
    first = write_ct_series(tmp_path / "a", EXPLICIT_LE, slices=3, rows=32, columns=32)
    second = write_ct_series(tmp_path / "b", EXPLICIT_LE, slices=4, rows=32, columns=32)
    assert storescu(node, first + second).returncode == 0
    for files in (first, second):
        uid = pydicom.dcmread(files[0]).SeriesInstanceUID
        node.wait_for_series(uid, "dispatched", len(files))
