"""The rule that keeps a reload from locking everyone out (config/reload_guard.py),
and the record through which ``segnode status`` learns of a refusal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from config import ConfigError, load_config, parse_config, read_for_reload, reload_refusals
from node.config_record import (
    RECORD_FILENAME,
    ConfigReading,
    ConfigRecord,
    ConfigRecordError,
    in_force_path,
    read_record,
    write_in_force,
    write_record,
)

RUNNING_TEXT = (
    "node: {ae_title: SEGNODE}\n"
    "peers: [{ae_title: SCANNER1}]\n"
    "destinations: {PACS: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}}\n"
    "pipelines: {organs: {model: builtin}}\n"
    "routes: [{name: ct, pipeline: organs, send_to: [PACS]}]\n"
)
RUNNING = parse_config(RUNNING_TEXT)


@pytest.mark.parametrize("text", ["", "   \n\n", "# all commented out\n# peers: []\n", "{}\n", "---\n"])
def test_a_file_that_sets_nothing_is_refused(text):
    (reason,) = reload_refusals(parse_config(text), RUNNING)
    assert reason.startswith("the file sets no key")
    # Even where the running configuration has nothing a lock-out could remove.
    assert reload_refusals(parse_config(text), parse_config("node: {ae_title: SEGNODE}\n"))


def test_a_file_cut_short_loses_its_last_keys_and_is_refused_naming_them():
    cut = RUNNING_TEXT[: RUNNING_TEXT.index("destinations")]
    reasons = reload_refusals(parse_config(cut), RUNNING)
    assert [reason.split(":")[0] for reason in reasons] == ["destinations", "routes"]
    assert "write 'routes: []' to remove them on purpose" in reasons[1]


@pytest.mark.parametrize("key", ["peers", "destinations", "routes"])
def test_each_guarded_key_left_out_is_refused_and_written_empty_is_applied(key):
    lines = [line for line in RUNNING_TEXT.splitlines(keepends=True) if not line.startswith(key)]
    if key == "destinations":  # the route needs its destination: both go
        lines = [line for line in lines if not line.startswith("routes")]
    (first, *_) = reload_refusals(parse_config("".join(lines)), RUNNING)
    assert first.startswith(f"{key}: left out of the file, which would remove the 1 in force")
    empty = {"peers": "peers: []\n", "destinations": "destinations: {}\nroutes: []\n",
             "routes": "routes: []\n"}
    assert reload_refusals(parse_config("".join(lines) + empty[key]), RUNNING) == ()


def test_a_key_left_out_that_was_empty_already_is_no_loss():
    running = parse_config("peers: [{ae_title: SCANNER1}]\n")
    assert reload_refusals(parse_config("peers: [{ae_title: SCANNER2}]\n"), running) == ()


def test_read_for_reload_raises_with_the_digest_of_what_it_read(tmp_path):
    path = tmp_path / "segnode.yaml"
    path.write_text("node: {ae_title: SEGNODE}\n")
    with pytest.raises(ConfigError) as caught:
        read_for_reload(path, RUNNING)
    assert caught.value.source == str(path)
    assert [error.split(":")[0] for error in caught.value.errors] == ["peers", "destinations", "routes"]
    assert caught.value.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(RUNNING_TEXT)
    assert read_for_reload(path, RUNNING).sha256 == hashlib.sha256(RUNNING_TEXT.encode()).hexdigest()


def test_bytes_that_are_not_utf8_are_a_config_error_not_a_crash(tmp_path):
    path = tmp_path / "segnode.yaml"
    path.write_bytes(b"peers: [{ae_title: \xff}]\n")
    with pytest.raises(ConfigError) as caught:
        read_for_reload(path, RUNNING)
    assert caught.value.errors == ["not UTF-8: byte 19"]
    assert caught.value.sha256 is not None


def test_the_record_round_trips_through_its_file(tmp_path):
    record = ConfigRecord(
        Path("/etc/segnode.yaml"),
        ConfigReading(1700000000.5, "ab" * 32),
        ConfigReading(1700000100.0, None, ("/etc/segnode.yaml: cannot read: Permission denied",)),
    )
    assert read_record(tmp_path) is None
    write_record(tmp_path, record)
    assert read_record(tmp_path) == record
    assert [p.name for p in tmp_path.iterdir()] == [RECORD_FILENAME]  # no temporary file left


def test_a_damaged_record_names_the_field(tmp_path):
    (tmp_path / RECORD_FILENAME).write_text(
        '{"config_path": "/etc/segnode.yaml", "in_force": {"read_at": "yesterday", "sha256": null, '
        '"reasons": []}, "refused": null}'
    )
    with pytest.raises(ConfigRecordError, match=r"\.json: in_force\.read_at: missing or not float"):
        read_record(tmp_path)
    (tmp_path / RECORD_FILENAME).write_text("{")
    with pytest.raises(ConfigRecordError, match="not JSON"):
        read_record(tmp_path)


def test_the_workers_copy_is_the_configuration_in_force_with_every_key(tmp_path):
    write_in_force(tmp_path, RUNNING)
    copy = load_config(in_force_path(tmp_path))
    assert copy == RUNNING
    # Every key written: a later copy with no routes is the node's decision, not a cut file.
    assert reload_refusals(copy, RUNNING) == ()
    assert copy.model_fields_set == set(type(RUNNING).model_fields)
