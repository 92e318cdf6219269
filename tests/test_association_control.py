"""Association control: unknown calling AEs, wrong called AE, peers bound to a host."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import dcmtk, dcmtk_env, rejection, scu


def echoscu(node, calling_ae: str, called_ae: str = "SEGNODE") -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(node.port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )


def test_unknown_calling_ae_is_rejected_with_its_reason_code(node):
    result = echoscu(node, "INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    assert node.metrics()['segnode_associations_rejected_total{reason="calling-ae-not-recognized"}'] == 1
    assert "INTRUDER" in node.log()


def test_wrong_called_ae_is_rejected_with_its_reason_code(node):
    result = echoscu(node, "ECHOSCU", called_ae="OTHERNODE")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr
    assert node.metrics()['segnode_associations_rejected_total{reason="called-ae-not-recognized"}'] == 1


def test_peer_bound_to_a_host_is_rejected_from_another_address(node):
    # TESTSCU is configured with host 127.0.0.1; 127.0.0.2 is another loopback address.
    assert rejection(scu("TESTSCU"), node.port, bind_address=("127.0.0.2", 0))[1:] == (1, 3)
    assoc = scu("TESTSCU").associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_rejection_does_not_stop_the_node_serving_others(node):
    for _ in range(5):
        assert echoscu(node, "INTRUDER").returncode != 0
    assert echoscu(node, "ECHOSCU").returncode == 0
    # Rejected associations never counted as active; the released one no longer is.
    deadline = time.monotonic() + 5
    while node.metrics()["segnode_active_associations"] != 0:
        assert time.monotonic() < deadline, node.metrics()["segnode_active_associations"]
        time.sleep(0.05)


@pytest.mark.parametrize("limit", [2])
def test_max_associations_limits_concurrent_associations(node_factory, limit):
    node = node_factory(max_associations=limit).start()
    held = [scu().associate("127.0.0.1", node.port, ae_title="SEGNODE") for _ in range(limit)]
    assert all(assoc.is_established for assoc in held)
    rejection(scu(), node.port)
    for assoc in held:
        assoc.release()
    assert node.metrics()['segnode_associations_rejected_total{reason="local-limit-exceeded"}'] == 1
