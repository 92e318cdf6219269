"""Series completion by association end (peers[].completion: association), with
the stable period as the fallback; MPPS has tests/test_mpps.py."""

from __future__ import annotations

import time

import pydicom
import pytest

from tests.conftest import scu
from tests.synthetic import write_ct_series
from tests.test_receive import storescu

# The node's end-to-end loops: the slow stage of .ci/run (README, Tests).
pytestmark = pytest.mark.slow

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def ending_node(node_factory, **settings):
    """A node whose two test peers end their series by releasing the association."""
    node = node_factory(**settings)
    node.config["peers"] = [
        {"ae_title": "STORESCU", "completion": "association"},
        {"ae_title": "TESTSCU", "completion": "association"},
    ]
    node.write_config()
    return node.start()


def series_of(files) -> str:
    return pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID


def completed(node, signal: str) -> float:
    return node.metrics().get(f'segnode_series_completed_total{{signal="{signal}"}}', 0)


def open_association(node):
    assoc = scu().associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    return assoc


def store(assoc, files) -> None:
    for path in files:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000


def test_storescu_in_one_association_completes_without_the_stable_wait(node_factory, tmp_path):
    node = ending_node(node_factory, series_stable_seconds=60, association_grace_seconds=0.5)
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=6, rows=32, columns=32)
    assert storescu(node, files).returncode == 0
    released = time.monotonic()
    series = node.wait_for_series(series_of(files), "dispatched", 6, timeout=10)
    assert time.monotonic() - released < 5
    assert series["completed_by"] == "association" and series["completion_note"] is None
    assert completed(node, "association") == 1 and completed(node, "stable") == 0


def test_a_series_split_over_two_associations_within_the_grace_period_completes_once(node_factory, tmp_path):
    node = ending_node(node_factory, series_stable_seconds=60, association_grace_seconds=3)
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=6, rows=32, columns=32)
    assert storescu(node, files[:3]).returncode == 0
    assert storescu(node, files[3:]).returncode == 0
    series = node.wait_for_series(series_of(files), "dispatched", 6, timeout=15)
    assert series["completed_by"] == "association"
    metrics = node.metrics()
    assert completed(node, "association") == 1
    assert metrics["segnode_series_reopened_total"] == 0


def test_an_aborted_association_falls_back_to_the_stable_period(node_factory, tmp_path):
    node = ending_node(node_factory, series_stable_seconds=3, association_grace_seconds=0.2)
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=3, rows=32, columns=32)
    assoc = open_association(node)
    store(assoc, files)
    assoc.abort()
    aborted = time.monotonic()
    time.sleep(1.5)
    [series] = node.status()
    assert series["state"] == "receiving"
    series = node.wait_for_series(series_of(files), "dispatched", 3, timeout=15)
    assert time.monotonic() - aborted >= 2.5
    assert series["completed_by"] == "stable"
    assert completed(node, "association") == 0


def test_an_open_association_holds_its_series_past_the_stable_period(node_factory, tmp_path):
    """A sender that pauses with its association open is not cut in two;
    its release completes the series."""
    node = ending_node(node_factory, series_stable_seconds=1, association_grace_seconds=0.2)
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=4, rows=32, columns=32)
    assoc = open_association(node)
    store(assoc, files[:2])
    time.sleep(3)
    [series] = node.status()
    assert series["state"] == "receiving"
    store(assoc, files[2:])
    assoc.release()
    series = node.wait_for_series(series_of(files), "dispatched", 4, timeout=10)
    assert series["completed_by"] == "association"
    assert node.metrics()["segnode_series_reopened_total"] == 0


def test_a_release_leaves_a_series_that_another_open_association_is_sending(node_factory, tmp_path):
    node = ending_node(node_factory, series_stable_seconds=60, association_grace_seconds=0.2)
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=4, rows=32, columns=32)
    first, second = open_association(node), open_association(node)
    store(first, files[:2])
    store(second, files[2:3])
    first.release()
    time.sleep(1.5)
    [series] = node.status()
    assert series["state"] == "receiving"
    store(second, files[3:])
    second.release()
    series = node.wait_for_series(series_of(files), "dispatched", 4, timeout=10)
    assert series["completed_by"] == "association"
    assert completed(node, "association") == 1


def test_a_peer_without_association_completion_waits_for_the_stable_period(node_factory, tmp_path):
    node = node_factory(series_stable_seconds=3).start()
    files = write_ct_series(tmp_path / "ct", EXPLICIT_LE, slices=3, rows=32, columns=32)
    assert storescu(node, files).returncode == 0
    released = time.monotonic()
    series = node.wait_for_series(series_of(files), "dispatched", 3, timeout=15)
    assert time.monotonic() - released >= 2.5
    assert series["completed_by"] == "stable"
