"""Hot reload: SIGHUP or a changed file; an invalid file keeps the old configuration."""

from __future__ import annotations

import copy
import signal
import time

import yaml

from node.worker import Worker
from tests.conftest import REPO
from tests.test_association_control import echoscu


def _wait_for_log(node, text: str, count: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while node.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{node.log()}"
        time.sleep(0.1)


def test_sighup_applies_a_valid_configuration_to_new_associations(node):
    assert echoscu(node, "NEWPEER").returncode != 0
    config = copy.deepcopy(node.config)
    config["peers"].append({"ae_title": "NEWPEER"})
    node.write_config(config)
    node.proc.send_signal(signal.SIGHUP)
    _wait_for_log(node, "configuration reloaded")
    assert echoscu(node, "NEWPEER").returncode == 0


def test_invalid_configuration_is_refused_and_the_old_one_stays(node):
    node.config_path.write_text("peers: [{ae_title: THIS-TITLE-IS-FAR-TOO-LONG}]\n")
    node.proc.send_signal(signal.SIGHUP)
    _wait_for_log(node, "keeping the configuration in force")
    assert "peers[0].ae_title: more than 16 characters" in node.log()
    assert echoscu(node, "ECHOSCU").returncode == 0
    assert node.metrics()['segnode_config_reloads_total{result="refused"}'] >= 1


def test_editing_the_file_reloads_without_a_signal(node):
    config = copy.deepcopy(node.config)
    config["peers"] = [{"ae_title": "ONLYONE"}]
    node.write_config(config)
    _wait_for_log(node, "configuration reloaded")
    assert echoscu(node, "ECHOSCU").returncode != 0
    assert echoscu(node, "ONLYONE").returncode == 0


def test_restart_only_settings_are_kept_with_a_warning(node):
    config = copy.deepcopy(node.config)
    config["node"]["port"] = node.port + 1
    config["peers"].append({"ae_title": "LATER"})
    node.write_config(config)
    _wait_for_log(node, "configuration reloaded")
    assert "node.port changed" in node.log()
    assert echoscu(node, "LATER").returncode == 0  # still on the old port


def test_a_worker_applies_an_edited_pipeline_but_keeps_its_store(tmp_path):
    """Like the node, a worker cannot move its store on a reload: it would
    write results where the queue, index and outbox are not."""
    config = yaml.safe_load((REPO / "config" / "segnode.example.yaml").read_text())
    config["node"]["storage_dir"] = str(tmp_path / "store")
    config_path = tmp_path / "segnode.yaml"
    config_path.write_text(yaml.safe_dump(config))
    worker = Worker(config_path, "worker-test", "cpu")
    edited = copy.deepcopy(config)
    edited["node"]["storage_dir"] = str(tmp_path / "elsewhere")
    edited["node"]["port"] += 1
    (pipeline,) = edited["pipelines"].values()
    pipeline["device"] = "cpu"
    config_path.write_text(yaml.safe_dump(edited))
    worker._reload_if_changed()
    (applied,) = worker.config.pipelines.values()
    assert applied.device == "cpu"
    assert worker.config.node.storage_dir == tmp_path / "store"
    assert worker.config.node.port == config["node"]["port"]
