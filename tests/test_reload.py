"""Hot reload: SIGHUP or a changed file; an invalid file keeps the old configuration."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from config import load_config
from node.config_record import in_force_path
from node.work.worker import Worker
from tests.conftest import REPO, free_port
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
    edited["pipelines"]["organs"]["device"] = "cpu"
    config_path.write_text(yaml.safe_dump(edited))
    worker.followed.current()
    assert worker.config.pipelines["organs"].device == "cpu"
    assert worker.config.node.storage_dir == tmp_path / "store"
    assert worker.config.node.port == config["node"]["port"]


def _guarded_node(node_factory):
    """A running node whose configuration has peers, a destination and a route."""
    node = node_factory()
    node.config["destinations"] = {"PACS": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": free_port()}}
    node.config["pipelines"] = {"organs": {"model": "builtin", "device": "cpu"}}
    node.config["routes"] = [{"name": "ct-organs", "match": {"modality": "CT"}, "pipeline": "organs",
                              "send_to": ["PACS"]}]
    node.write_config()
    return node.start()


def _status_of_storage(node) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--storage-dir", str(node.storage_dir), "--json"],
        capture_output=True, text=True, cwd=node.workdir,
    )


def _wait_for_refusals(node, count: int, timeout: float = 10) -> None:
    """The node's own count: its workers log their refusals to the same file."""
    deadline = time.monotonic() + timeout
    while node.metrics().get('segnode_config_reloads_total{result="refused"}', 0) < count:
        assert time.monotonic() < deadline, f"{count} refusal(s) not counted:\n{node.log()}"
        time.sleep(0.1)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_emptied_file_is_refused_until_a_good_one_replaces_it(node_factory):
    node = _guarded_node(node_factory)
    in_force = _sha256(node.config_path)
    with node.config_path.open("w"):  # what `> segnode.yaml` does: truncate in place
        pass
    _wait_for_refusals(node, 1)
    assert f"configuration reload refused: {node.config_path}: the file sets no key" in node.log()
    # The workers run the node's copy of the configuration in force, not the file,
    # so one started after the refusal cannot read the emptied file either.
    worker_pid = re.search(r"started worker-0:(\d+)", node.log()).group(1)
    worker_args = Path(f"/proc/{worker_pid}/cmdline").read_bytes().split(b"\0")
    assert worker_args[worker_args.index(b"--config") + 1] == bytes(in_force_path(node.storage_dir))
    workers_config = load_config(in_force_path(node.storage_dir))
    assert [route.name for route in workers_config.routes] == ["ct-organs"]
    assert "reloaded" not in node.log() and "worker-0 segnode.worker: keeping" not in node.log()
    for peer in ("STORESCU", "ECHOSCU", "TESTSCU"):
        assert echoscu(node, peer).returncode == 0, peer
    metrics = node.metrics()
    assert metrics['segnode_config_reloads_total{result="refused"}'] == 1
    assert metrics["segnode_config_refused"] == 1

    status = _status_of_storage(node)
    assert status.returncode == 0, status.stderr
    configuration = json.loads(status.stdout)["configuration"]
    assert configuration["file"] == str(node.config_path)
    assert configuration["in_force"]["sha256"] == in_force
    refused = configuration["refused"]
    assert refused["sha256"] == hashlib.sha256(b"").hexdigest()
    assert refused["reasons"][0].startswith("the file sets no key")
    assert refused["read_at"] > configuration["in_force"]["read_at"]
    # Through the emptied file, status cannot find the store: it says so instead of reporting another.
    by_file = subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path)],
        capture_output=True, text=True, cwd=node.workdir,
    )
    assert by_file.returncode == 1 and "sets no key" in by_file.stderr and "--storage-dir" in by_file.stderr
    text = subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--storage-dir", str(node.storage_dir)],
        capture_output=True, text=True, check=True,
    ).stdout
    assert f"configuration {node.config_path} in force" in text
    assert "configuration file REFUSED" in text and "  the file sets no key" in text

    node.config["peers"].append({"ae_title": "NEWPEER"})
    node.write_config()
    _wait_for_log(node, "configuration reloaded")
    assert echoscu(node, "NEWPEER").returncode == 0
    assert node.metrics()["segnode_config_refused"] == 0
    assert "NEWPEER" in [peer.ae_title for peer in load_config(in_force_path(node.storage_dir)).peers]
    configuration = json.loads(_status_of_storage(node).stdout)["configuration"]
    assert configuration["refused"] is None
    assert configuration["in_force"]["sha256"] == _sha256(node.config_path)


def test_a_file_that_leaves_out_a_guarded_key_is_refused_naming_it(node_factory):
    node = _guarded_node(node_factory)
    for count, left_out in enumerate((["peers"], ["routes"], ["destinations", "routes"]), start=1):
        config = {key: value for key, value in node.config.items() if key not in left_out}
        node.write_config(config)
        _wait_for_refusals(node, count)
        assert f"{node.config_path}: {left_out[0]}: left out of the file" in node.log()
    assert echoscu(node, "ECHOSCU").returncode == 0
    assert node.metrics()['segnode_config_reloads_total{result="refused"}'] == 3
    reasons = json.loads(_status_of_storage(node).stdout)["configuration"]["refused"]["reasons"]
    assert [reason.split(":")[0] for reason in reasons] == ["destinations", "routes"]


def test_peers_written_empty_is_applied_and_refuses_everyone(node_factory):
    node = _guarded_node(node_factory)
    node.write_config({**node.config, "peers": []})
    _wait_for_log(node, "configuration reloaded")
    assert echoscu(node, "ECHOSCU").returncode != 0
    assert node.metrics()["segnode_config_refused"] == 0


def test_truncating_then_rewriting_in_place_ends_with_the_new_file_applied(node_factory):
    """An editor that saves in place truncates, then writes: whichever of the
    two the watcher sees, the node ends up running the written file."""
    node = _guarded_node(node_factory)
    config = copy.deepcopy(node.config)
    config["peers"].append({"ae_title": "NEWPEER"})
    with node.config_path.open("r+") as handle:
        handle.truncate(0)
        time.sleep(0.5)
        handle.write(yaml.safe_dump(config))
    _wait_for_log(node, "configuration reloaded")
    assert echoscu(node, "NEWPEER").returncode == 0
    assert node.metrics()["segnode_config_refused"] == 0


def test_a_worker_refuses_what_the_node_refuses(tmp_path):
    config = yaml.safe_load((REPO / "config" / "segnode.example.yaml").read_text())
    config["node"]["storage_dir"] = str(tmp_path / "store")
    config_path = tmp_path / "segnode.yaml"
    config_path.write_text(yaml.safe_dump(config))
    worker = Worker(config_path, "worker-test", "cpu")
    in_force = worker.config
    config_path.write_text("")
    worker.followed.current()
    assert worker.config is in_force
    config_path.write_text(yaml.safe_dump({key: value for key, value in config.items() if key != "routes"}))
    worker.followed.current()
    assert worker.config is in_force
    config_path.write_text(yaml.safe_dump({**config, "routes": []}))
    worker.followed.current()
    assert worker.config.routes == [] and worker.config.pipelines == in_force.pipelines
