"""Storage lifecycle in a running ``segnode serve``, through real sockets: the
low watermark refuses associations and C-STOREs, retention removes a
settled series, and the metrics say so."""

from __future__ import annotations

import copy

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import rejection
from tests.synthetic import write_ct_series
from tests.test_e2e import (  # noqa: F401 (ct_series and destination are fixtures)
    configure,
    ct_series,
    destination,
    results,
    storescu,
    wait_for,
)
from tests.test_reload import _wait_for_log

LOW_SPACE = 0xA700


def _scu() -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    return ae


def test_below_the_low_watermark_stores_are_refused_and_associations_rejected_as_transient(
    node_factory, tmp_path
):
    files = write_ct_series(tmp_path / "ct", slices=2, rows=16, columns=16)
    node = node_factory()
    node.config["storage"] = {"low_watermark_bytes": 1 << 20}
    node.write_config()
    node.start()
    assoc = _scu().associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(files[0]).Status == 0x0000
        # More than any file system here has free: the disk is now "full".
        config = copy.deepcopy(node.config)
        config["storage"]["low_watermark_bytes"] = 1 << 62
        node.write_config(config)
        _wait_for_log(node, "configuration reloaded")
        status = assoc.send_c_store(files[1])
        assert status.Status == LOW_SPACE
        assert status.ErrorComment == "storage below its low watermark; send again later"
    finally:
        assoc.release()

    assert rejection(_scu(), node.port) == (2, 3, 1)
    metrics = wait_for(lambda: (m := node.metrics())['segnode_storage_low_space'] == 1 and m, 10,
                       "the low-space gauge")
    assert metrics['segnode_store_failures_total{reason="low-space"}'] == 1
    assert metrics['segnode_associations_rejected_total{reason="temporary-congestion"}'] == 1
    assert 0 < metrics["segnode_storage_free_bytes"] < 1 << 62
    # The stored one had no route, so nothing needs it: it went early, long
    # before its 72 hours, to make room.
    (series,) = node.status()
    node.wait_for_series(series["series_instance_uid"], "removed", 0)
    assert "(low-space)" in node.log()

    node.write_config()  # back above the watermark: accepted again
    _wait_for_log(node, "configuration reloaded", count=2)
    assoc = _scu().associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    assoc.release()


def test_retention_removes_a_series_without_a_route_in_a_running_node(node_factory, tmp_path):
    files = write_ct_series(tmp_path / "ct", slices=3, rows=16, columns=16)
    node = node_factory()
    # Two seconds after the series was routed (to nothing), checked every half second.
    node.config["storage"] = {"retention": {"instances_hours": 2 / 3600}, "low_watermark_bytes": 1 << 20}
    node.write_config()
    node.start()
    storescu(node, files)
    (series,) = node.status()
    node.wait_for_series(series["series_instance_uid"], "removed", 0, timeout=30)
    assert node.stored_files() == []
    metrics = wait_for(lambda: (m := node.metrics())['segnode_storage_bytes{kind="instances"}'] == 0 and m,
                       10, "the instance bytes gauge")
    sent = sum(path.stat().st_size for path in files)
    assert metrics['segnode_storage_freed_bytes_total{kind="instances"}'] >= sent * 0.9
    assert metrics["segnode_storage_seconds_to_full"] == float("inf")  # under a minute of samples
    assert "removed the instances of series" in node.log() and "(no-route)" in node.log()


def test_retention_removes_a_delivered_series_and_its_results(node_factory, destination, ct_series):  # noqa: F811
    node = node_factory()
    configure(node, destination.port)
    node.config["storage"] = {"retention": {"instances_hours": 3 / 3600, "results_hours": 3 / 3600},
                              "low_watermark_bytes": 1 << 20}
    node.write_config()
    node.start()
    storescu(node, ct_series)
    wait_for(lambda: (r := results(destination)).get("SEG") and r.get("SR"), 90, "the SEG and SR")
    (series,) = node.status()
    uid = series["series_instance_uid"]
    node.wait_for_series(uid, "removed", 0, timeout=60)
    assert node.stored_files() == [] and not (node.storage_dir / "results" / uid).exists()
    log = node.log()
    delivered_at = log.index("removed the instances")
    assert "(delivered)" in log[delivered_at:] and "removed the results of series" in log
    assert node.metrics()['segnode_storage_freed_bytes_total{kind="results"}'] > 0
