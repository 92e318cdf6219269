"""``segnode check-config``: every error with its path, or a summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, parse_config
from tests.conftest import REPO


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
    )


def test_example_config_is_valid_and_summarised():
    result = check_config(REPO / "config" / "segnode.example.yaml")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "SEGNODE on 127.0.0.1:11112" in result.stdout
    assert "ct-organs" in result.stdout


def test_every_error_is_reported_with_its_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "node: {ae_title: SEGNODE, port: 70000, series_stable_seconds: -1}\n"
        "peers:\n"
        "  - {ae_title: SCANNER1}\n"
        "  - {ae_title: ABCDEFGHIJKLMNOPQ}\n"
        "  - {ae_title: 'BAD\\\\AE'}\n"
        "  - {ae_title: \"TAB\\tAE\"}\n"
        "destinations: {PACS: {ae_title: ORTHANC, host: 127.0.0.1}}\n"
    )
    result = check_config(bad)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "peers[1].ae_title: more than 16 characters" in lines
    assert "peers[2].ae_title: contains a backslash" in lines
    assert "peers[3].ae_title: contains a control character" in lines
    assert any(line.startswith("node.port:") for line in lines)
    assert any(line.startswith("node.series_stable_seconds:") for line in lines)
    assert any(line.startswith("destinations.PACS.port:") for line in lines)


def test_unknown_keys_and_dangling_routes_are_errors():
    with pytest.raises(ConfigError) as caught:
        parse_config("node: {ae_titel: X}\n")
    assert caught.value.errors == ["node.ae_titel: Extra inputs are not permitted"]
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "destinations: {PACS: {ae_title: ORTHANC, host: h, port: 4242}}\n"
            "routes: [{name: r, match: {modality: CT}, pipeline: organs, send_to: [PACS, NOPE]}]\n"
        )
    assert caught.value.errors == [
        "routes[0].pipeline: unknown pipeline 'organs'",
        "routes[0].send_to: unknown destination 'NOPE'",
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config("pipelines: {organs: {model: builtin, densities: {liver: 0}, qa: {mirror: true}}}\n")
    assert caught.value.errors == [
        "pipelines.organs.densities.liver: Input should be greater than 0",
        "pipelines.organs.qa.mirror: Extra inputs are not permitted",
    ]


def test_yaml_syntax_error_and_missing_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("node: {ae_title: [\n")
    result = check_config(broken)
    assert result.returncode == 1 and "not valid YAML" in result.stderr
    result = check_config(tmp_path / "absent.yaml")
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_ae_titles_are_stripped_of_padding():
    config = parse_config("node: {ae_title: ' SEGNODE  '}\npeers: [{ae_title: 'A '}]\n")
    assert config.node.ae_title == "SEGNODE"
    assert config.peers[0].ae_title == "A"


def test_a_file_a_running_node_would_refuse_is_flagged(tmp_path):
    """check-config runs before a file is put in place: it warns of what a
    reload would refuse (config/reload_guard.py) though the file is valid."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("# peers: [{ae_title: SCANNER1}]\n")
    result = check_config(empty)
    assert result.returncode == 0
    assert "warning: the file sets no key; a running node refuses it as a reload" in result.stdout
    partial = tmp_path / "partial.yaml"
    partial.write_text("peers: [{ae_title: SCANNER1}]\ndestinations: {}\n")
    warnings = [line for line in check_config(partial).stdout.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("  warning: no 'routes' key;")
    example = check_config(REPO / "config" / "segnode.example.yaml")
    assert "warning" not in example.stdout


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("max_pending_per_address", 0, "greater than or equal to 1"),
        ("max_pending_connections", -5, "greater than or equal to 1"),
        ("max_instance_bytes", 1000, "greater than or equal to 1048576"),
        ("max_instance_bytes", "a lot", "valid integer"),
        ("association_grace_seconds", -1, "greater than or equal to 0"),
        ("association_grace_seconds", "soon", "valid number"),
        ("mpps_wait_seconds", 0, "greater than 0"),
    ],
)
def test_connection_and_instance_bounds_are_checked_with_their_names(setting, value, message):
    """A bound that would let any connection or instance through (or none) is refused, named."""
    with pytest.raises(ConfigError) as refused:
        parse_config(f"node: {{{setting}: {value!r}}}\n")
    assert any(error.startswith(f"node.{setting}:") and message in error for error in refused.value.errors), (
        refused.value.errors
    )


def test_models_dir_is_a_path_as_storage_dir_is_with_its_default_from_the_environment(monkeypatch):
    """A relative models_dir is taken from the working directory, as storage_dir is; ``~`` is the
    home folder; what is no path is refused, named. Unset, $SEGNODE_MODELS, else the user's folder."""
    assert parse_config("node: {models_dir: models}\n").node.models_dir == Path("models")
    assert parse_config("node: {models_dir: ~/models}\n").node.models_dir == Path.home() / "models"
    for value in ("[a, b]", "7", "null"):
        with pytest.raises(ConfigError) as refused:
            parse_config(f"node: {{models_dir: {value}, storage_dir: {value}}}\n")
        named = [error.split(":")[0] for error in refused.value.errors]
        assert named == ["node.storage_dir", "node.models_dir"], refused.value.errors
    monkeypatch.setenv("SEGNODE_MODELS", "/srv/models")
    assert parse_config("peers: []\n").node.models_dir == Path("/srv/models")
    monkeypatch.delenv("SEGNODE_MODELS")
    default = Path.home() / ".local" / "share" / "segnode" / "models"
    assert parse_config("peers: []\n").node.models_dir == default


def test_the_research_key_file_is_read_only_when_files_are_checked(tmp_path):
    """``segnode status`` and the workers read shape only: a key they may not read
    must not stop them; check-config, start and reload read it."""
    text = f"research: {{key_file: {tmp_path / 'absent.key'}}}\n"
    assert parse_config(text, check_files=False).research.key_file == tmp_path / "absent.key"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.errors == [f"research.key_file: {tmp_path / 'absent.key'}: no such file"]


def test_a_peer_completion_other_than_stable_or_association_is_refused_named():
    with pytest.raises(ConfigError) as refused:
        parse_config("peers: [{ae_title: CT1}, {ae_title: CT2, completion: mpps}]\n")
    [error] = refused.value.errors
    assert error.startswith("peers[1].completion:") and "'stable' or 'association'" in error, error


@pytest.mark.parametrize("host", ["pacs", "pacs.radiology.example.org", "pacs-2.local.", "ct_01.intra",
                                  "10.0.0.7", "::1", "fe80::1", "0.0.0.0", "x" * 63 + ".example"])
def test_host_names_and_addresses_are_accepted(host):
    config = parse_config(f"peers: [{{ae_title: CT, host: {host!r}}}]\n")
    assert config.peers[0].host == host


@pytest.mark.parametrize("host", ["", "pacs\x00", "pacs com", "x\nroutes: []", "$(id)", "<b>pacs</b>",
                                  "x" * 64 + ".example", ".".join(["abcdefgh"] * 30), "pacs..org", "-pacs"])
def test_anything_else_as_a_host_is_refused_naming_the_field(host):
    for text in (f"peers: [{{ae_title: CT, host: {host!r}}}]\n",
                 f"destinations: {{pacs: {{ae_title: P, host: {host!r}, port: 104}}}}\n",
                 f"node: {{host: {host!r}}}\n"):
        with pytest.raises(ConfigError) as caught:
            parse_config(text)
        assert "not an IP address or a host name" in str(caught.value), caught.value


def test_dosimetry_settings_are_checked_naming_the_field():
    config = parse_config("pipelines: {lu177: {dosimetry: {neighbours: [spleen], fit: {kidney_left: bi}}}}\n")
    dosimetry = config.pipelines["lu177"].dosimetry
    assert dosimetry.organs == ["kidney_left", "kidney_right"]
    assert (dosimetry.time_points, dosimetry.sigma_mm, dosimetry.fit) == (4, {}, {"kidney_left": "bi"})
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "pipelines: {lu177: {dosimetry: {organs: [kidney_left, '<kidny>'], neighbours: [kidney_left],\n"
            "  time_points: 1, sigma_mm: {liver: -3}, fit: {spleen: cubic}, spect_fwhm_mm: 0}}}\n"
        )
    errors = caught.value.errors
    named = "pipelines.lu177.dosimetry."
    assert f"{named}organs[1]: unknown structure '<kidny>' (dicomio/codes.py names them)" in errors
    for field in ("time_points", "sigma_mm.liver", "fit.spleen", "spect_fwhm_mm"):
        assert any(error.startswith(f"{named}{field}:") for error in errors), (field, errors)
    with pytest.raises(ConfigError) as caught:
        parse_config("pipelines: {lu177: {dosimetry: {neighbours: [kidney_right]}}}\n")
    assert caught.value.errors == [
        "pipelines.lu177.dosimetry: kidney_right named twice among organs and neighbours"]


@pytest.mark.parametrize(("text", "field"), [
    ("jobs: {celery: {broker_url: 'http://redis:6379/0'}}", "jobs.celery.broker_url"),
    ("jobs: {celery: {broker_url: \"redis://h:6379/0\\nroutes: []\"}}", "jobs.celery.broker_url"),
    ("jobs: {celery: {broker_url: 'redis://h/0 $(id)'}}", "jobs.celery.broker_url"),
    ("jobs: {celery: {broker_url: " + "'redis://" + "h" * 1000 + "/0'}}", "jobs.celery.broker_url"),
    ("jobs: {celery: {broker_url: 'amqp://rabbit:5672//'}}", "jobs"),
    ("jobs: {celery: {queue: '<script>'}}", "jobs.celery.queue"),
    ("jobs: {celery: {visibility_timeout_seconds: 0}}", "jobs.celery.visibility_timeout_seconds"),
    ("jobs: {backend: kubernetes}", "jobs.backend"),
    ("worker: {devices: ['gpu0']}", "worker.devices"),
    ("worker: {metrics_port: 70000}", "worker.metrics_port"),
    ("worker: {metrics_host: 'host; rm -rf /'}", "worker.metrics_host"),
])
def test_hostile_celery_and_worker_settings_are_refused_naming_the_field(text, field):
    with pytest.raises(ConfigError) as caught:
        parse_config(text + "\n")
    assert any(error.startswith(f"{field}") for error in caught.value.errors), caught.value.errors


def test_celery_settings_a_site_writes_are_taken():
    config = parse_config("jobs: {backend: celery, celery: {broker_url: 'rediss://:secret@redis:6380/2', "
                          "queue: ct.gpu, visibility_timeout_seconds: 14400}}\n"
                          "worker: {devices: [cuda:0, cuda:1], metrics_host: 0.0.0.0}\n")
    assert config.jobs.celery.queue == "ct.gpu" and config.worker.devices == ["cuda:0", "cuda:1"]
    amqp = parse_config("jobs: {celery: {broker_url: 'amqp://rabbit:5672//', result_backend: 'redis://r/1'}}\n")
    assert amqp.jobs.celery.result_backend == "redis://r/1"
