"""Certificate and key files of DICOM TLS: checked when the configuration is
read, with the field that names them; their expiry in the metrics, the log
and ``segnode status``; reloaded with the configuration."""

from __future__ import annotations

import copy
import datetime
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from config import parse_config, reloaded, restart_only_changes
from tests.certificates import Authority, Credential, now
from tests.conftest import REPO, dcmtk, dcmtk_env, free_port
from tests.test_association_control import echoscu
from tests.test_config import check_config
from tests.test_reload import _wait_for_log

_DAY = datetime.timedelta(days=1)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "pki")


def _valid_for(authority: Authority, name: str, days: float) -> Credential:
    return authority.issue(name, valid_until=now() + days * _DAY)


def _node_tls(authority: Authority, credential: Credential, port: int = 2762) -> dict:
    return {"port": port, "certificate": str(credential.certificate), "key": str(credential.key),
            "client_ca": str(authority.certificate)}


def _destination(**tls: Path) -> dict:
    return {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242,
            "tls": {field: str(path) for field, path in tls.items()}}


def _private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_every_certificate_problem_is_refused_naming_the_field(tmp_path, authority):
    good, other = authority.issue("node"), authority.issue("other")
    expired = authority.expired("old")
    future = authority.issue("future", valid_from=now() + _DAY, valid_until=now() + 10 * _DAY)
    missing = tmp_path / "missing.pem"
    not_pem = tmp_path / "not-pem.crt"
    not_pem.write_text("not a certificate\n")
    not_a_key = _private(tmp_path / "not-a-key.key", b"not a key\n")
    world_readable = tmp_path / "world.key"
    world_readable.write_bytes(good.key.read_bytes())
    world_readable.chmod(0o644)
    key = serialization.load_pem_private_key(good.key.read_bytes(), None)
    encrypted = _private(tmp_path / "encrypted.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    # destination name, its tls, the line check-config prints (before the date, for dates)
    cases = [
        ("MISSING", {"ca": missing}, f"destinations.MISSING.tls.ca: {missing}: no such file"),
        ("FOLDER", {"ca": tmp_path}, f"destinations.FOLDER.tls.ca: {tmp_path}: is a folder, not a file"),
        ("NOTPEM", {"ca": not_pem}, f"destinations.NOTPEM.tls.ca: {not_pem}: holds no PEM certificate"),
        ("EXPIRED", {"certificate": expired.certificate, "key": expired.key},
         f"destinations.EXPIRED.tls.certificate: {expired.certificate}: the certificate {expired.subject} "
         "expired on "),
        ("FUTURE", {"certificate": future.certificate, "key": future.key},
         f"destinations.FUTURE.tls.certificate: {future.certificate}: the certificate {future.subject} "
         "is not valid before "),
        ("MISMATCH", {"certificate": good.certificate, "key": other.key},
         "destinations.MISMATCH.tls.key: does not match destinations.MISMATCH.tls.certificate"),
        ("WORLD", {"certificate": good.certificate, "key": world_readable},
         f"destinations.WORLD.tls.key: {world_readable}: readable by every user; chmod 600 or 640"),
        ("ENCRYPTED", {"certificate": good.certificate, "key": encrypted},
         f"destinations.ENCRYPTED.tls.key: {encrypted}: is encrypted; segnode needs it unencrypted, "
         "readable by the service user only"),
        ("NOTAKEY", {"certificate": good.certificate, "key": not_a_key},
         f"destinations.NOTAKEY.tls.key: {not_a_key}: holds no PEM private key segnode can read"),
    ]
    config = {
        "node": {"tls": {"certificate": str(good.certificate), "key": str(other.key),
                         "client_ca": str(authority.certificate)}},
        "destinations": {name: _destination(**tls) for name, tls, _ in cases},
    }
    result = check_config(_write(tmp_path / "segnode.yaml", config))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    expected = ["node.tls.key: does not match node.tls.certificate"] + [line for _, _, line in cases]
    for line in expected:
        assert any(printed.startswith(line) for printed in lines), f"{line!r} not in:\n{result.stderr}"
    assert lines[-1].endswith(f"{len(expected)} error(s)")
    # No key material, even of keys that could not be used.
    body = "".join(good.key.read_text().splitlines()[1:-1])
    assert "PRIVATE KEY" not in result.stderr and body[100:140] not in result.stderr.replace("\n", "")


def test_an_unreadable_file_is_named(tmp_path, authority):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    good = authority.issue("node")
    good.certificate.chmod(0)
    config = {"destinations": {"PACS": _destination(ca=good.certificate)}}
    result = check_config(_write(tmp_path / "segnode.yaml", config))
    assert f"destinations.PACS.tls.ca: {good.certificate}: permission denied" in result.stderr.splitlines()


def test_the_example_s_commented_lines_uncommented_with_usable_files_are_valid(tmp_path, authority):
    node = authority.issue("node")
    research_key = tmp_path / "research.key"
    research_key.write_bytes(bytes(range(32)))
    research_key.chmod(0o600)
    example = (REPO / "config" / "segnode.example.yaml").read_text()
    # Every commented-out key, uncommented, pointing at real files.
    example = re.sub(r"^(\s*)# ( *[A-Za-z_-]+:(?: .*)?)$", r"\1\2", example, flags=re.MULTILINE)
    placeholders = {"tls/node.crt": node.certificate, "tls/node.key": node.key,
                    "tls/clients-ca.pem": authority.certificate, "tls/pacs-ca.pem": authority.certificate,
                    "research.key": research_key}
    for placeholder, path in placeholders.items():
        example = example.replace(f"/etc/segnode/{placeholder}", str(path))
    path = tmp_path / "segnode.yaml"
    path.write_text(example)
    result = check_config(path)
    assert result.returncode == 0, result.stderr + example
    parsed = parse_config(example)
    assert parsed.node.tls is not None and parsed.node.tls.key == node.key
    assert parsed.destinations["PACS-TLS"].tls.certificate == node.certificate


def test_a_reload_keeps_the_tls_port_and_listeners_but_takes_new_files(authority):
    first, second = authority.issue("first"), authority.issue("second")

    def config(node: dict) -> str:
        return yaml.safe_dump({"node": {"port": 11112, **node}})

    running = parse_config(config({"tls": _node_tls(authority, first, port=2762)}))
    new = parse_config(config({"tls": _node_tls(authority, second, port=2763), "listen_plain": False}))
    effective = reloaded(new, running)
    assert effective.node.tls.port == 2762 and effective.node.listen_plain is True
    assert effective.node.tls.certificate == second.certificate and effective.node.tls.key == second.key
    assert {(c.field, c.in_force, c.in_file) for c in restart_only_changes(new, running)} == {
        ("node.tls.port", 2762, 2763), ("node.listen_plain", True, False)}

    plain = parse_config(config({}))
    assert reloaded(plain, running).node.tls == running.node.tls  # the TLS listener stays
    assert reloaded(running, plain).node.tls is None  # and none opens before a restart
    assert [(c.field, c.in_force, c.in_file) for c in restart_only_changes(plain, running)] == [
        ("node.tls", "set", "none")]


def test_serve_refuses_an_expired_certificate(node_factory, authority):
    expired = authority.expired("node")
    node = node_factory(tls=_node_tls(authority, expired, port=free_port()))
    with pytest.raises(RuntimeError, match="exited at start"):
        node.start()
    assert _expired_line(expired) in node.log()


def _expired_line(expired: Credential) -> str:
    return f"node.tls.certificate: {expired.certificate}: the certificate {expired.subject} expired on "


def _status(node) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--storage-dir", str(node.storage_dir), "--json"],
        capture_output=True, text=True, check=True, cwd=node.workdir,
    )


def _tls_echo(node, client: Credential, authority: Authority, port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk("echoscu"), "+tls", str(client.key), str(client.certificate),
         "+cf", str(authority.certificate), "-aet", "ECHOSCU", "-aec", "SEGNODE", "127.0.0.1", str(port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )


def test_expiry_is_watched_and_a_reload_to_an_expired_certificate_is_refused(node_factory, authority):
    soon = _valid_for(authority, "node", 10)
    client = authority.issue("client")
    tls_port = free_port()
    node = node_factory(tls=_node_tls(authority, soon, port=tls_port)).start()
    field = 'segnode_certificate_expiry_days{field="node.tls.certificate"}'
    client_ca = 'segnode_certificate_expiry_days{field="node.tls.client_ca"}'
    metrics = node.metrics()
    assert metrics[field] == pytest.approx(10, abs=0.01)
    assert metrics[client_ca] == pytest.approx(365, abs=0.01)
    warning = f"node.tls.certificate: {soon.certificate} expires in 10 days"
    assert re.search(f"WARNING .*{re.escape(warning)}", node.log())
    certificates = json.loads(_status(node).stdout)["certificates"]
    assert [(c["field"], round(c["days_left"])) for c in certificates] == [
        ("node.tls.certificate", 10), ("node.tls.client_ca", 365)]
    text = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path)],
                          capture_output=True, text=True, check=True).stdout
    until = certificates[0]["not_valid_after"]
    assert f"certificate node.tls.certificate: 10 days left, until {until} ({soon.certificate})" in text
    assert _tls_echo(node, client, authority, tls_port).returncode == 0

    # A renewed certificate is applied; a new TLS port waits for a restart.
    renewed = _valid_for(authority, "renewed", 200)
    config = copy.deepcopy(node.config)
    config["node"]["tls"] = _node_tls(authority, renewed, port=free_port())
    node.write_config(config)
    _wait_for_log(node, "configuration reloaded")
    assert node.metrics()[field] == pytest.approx(200, abs=0.01)
    new_port = config["node"]["tls"]["port"]
    assert f"node.tls.port changed from {tls_port} to {new_port}: takes effect after a restart" in node.log()
    assert _tls_echo(node, client, authority, tls_port).returncode == 0

    # An expired one is refused: the renewed one stays in force.
    expired = authority.expired("expired")
    config["node"]["tls"] = _node_tls(authority, expired, port=tls_port)
    node.write_config(config)
    node.proc.send_signal(signal.SIGHUP)
    _wait_for_log(node, "keeping the configuration in force")
    assert _expired_line(expired) in node.log()
    assert node.metrics()[field] == pytest.approx(200, abs=0.01)
    refused = json.loads(_status(node).stdout)["configuration"]["refused"]
    assert any(reason.startswith("node.tls.certificate: ") for reason in refused["reasons"])
    # status reads the refused file for its storage folder only, and reports the certificates in force.
    text = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path)],
                          capture_output=True, text=True, check=True).stdout
    assert "certificate node.tls.certificate: 200 days left" in text
    assert echoscu(node, "ECHOSCU").returncode == 0
    assert _tls_echo(node, client, authority, tls_port).returncode == 0

