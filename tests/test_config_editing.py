"""config/editing.py: a section replaced from form data, validated as the node
reads the file, written typed with the file's comments kept; conflicts and
hostile values."""

from __future__ import annotations

import re
import stat
import threading

import pytest
import yaml

from config import load_config, parse_config
from config.editing import (
    ConfigChange,
    ConfigConflictError,
    ConfigEditError,
    FieldError,
    add_user,
    edit_section,
    read_config_text,
    save_change,
)
from config.passwords import hash_password
from tests.certificates import Authority
from tests.conftest import REPO

EXAMPLE = (REPO / "config" / "segnode.example.yaml").read_text()

COMMENTED = """\
# the node
node: {ae_title: SEGNODE, port: 11112}   # plain DICOM
peers:
  # the scanners
  - {ae_title: CT1}   # first CT
  # the MR, known by host
  - ae_title: MR1     # the MR
    host: mr.example.org  # its host
  - {ae_title: PET}   # the PET
destinations:
  # the archive
  PACS: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}  # Orthanc here
pipelines:
  organs: {model: builtin}
routes:
  - name: ct
    match: {modality: CT, series_description: "*"}   # any CT
    pipeline: organs
    send_to: [PACS]
"""

HOSTILE = ("x\nroutes: []", "!!python/object/apply:os.system ['id']", "&a [*a]", "{{7*7}}",
           "<script>alert(1)</script>", "$(rm -rf /); `id`", "on", "yes", "null", "~", "12:30:00", "")


def comment_lines(text: str) -> list[str]:
    return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines()[2:] if line[:1] in "+-"]


def peers(change: ConfigChange) -> list[dict]:
    return yaml.safe_load(change.new_text)["peers"]


def test_an_edit_rewrites_only_what_changed():
    destinations = {"PACS": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": "4243"}}
    change = edit_section(EXAMPLE, "destinations", destinations, source="segnode.yaml")
    assert changed_lines(change.diff) == ["-  PACS: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}",
                       "+  PACS: {ae_title: ORTHANC, host: 127.0.0.1, port: 4243}"]
    assert change.diff.startswith("--- segnode.yaml\n+++ segnode.yaml\n")
    assert comment_lines(change.new_text) == comment_lines(EXAMPLE)
    assert change.old_text == EXAMPLE
    assert change.config.destinations["PACS"].port == 4243
    assert change.config == parse_config(change.new_text)


def test_an_edit_that_changes_nothing_leaves_the_text_as_it_was():
    config = parse_config(COMMENTED)
    for section in ("peers", "destinations", "pipelines", "routes"):
        value = config.model_dump(mode="json", include={section}, exclude_unset=True)[section]
        change = edit_section(COMMENTED, section, value, source="s")
        assert change.new_text == COMMENTED, section
        assert change.diff == ""


def test_form_strings_are_written_typed_with_only_the_keys_given():
    value = {"PACS": {"ae_title": " ORTHANC ", "host": "127.0.0.1", "port": "4242"},
             "TLS": {"ae_title": "SECURE", "host": "pacs.example.org", "port": "2762",
                     "tls": {"verify_hostname": "false", "sha256": "AB:" * 31 + "AB"},
                     "outputs": ["pdf", "overlay"]}}
    change = edit_section(COMMENTED, "destinations", value, source="s")
    written = yaml.safe_load(change.new_text)["destinations"]
    assert written == {
        "PACS": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
        "TLS": {"ae_title": "SECURE", "host": "pacs.example.org", "port": 2762,
                "tls": {"verify_hostname": False, "sha256": "ab" * 32}, "outputs": ["pdf", "overlay"]},
    }
    assert "  PACS: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}  # Orthanc here\n" in change.new_text
    assert comment_lines(change.new_text) == comment_lines(COMMENTED)
    assert "seg_format" not in change.new_text  # a default not given stays unwritten


def test_deleting_and_inserting_entries_keeps_the_others_comments():
    removed = edit_section(COMMENTED, "peers", [{"ae_title": "MR1", "host": "mr.example.org"},
                                                {"ae_title": "PET"}], source="s")
    assert "  - ae_title: MR1     # the MR\n    host: mr.example.org  # its host\n" in removed.new_text
    assert "  - {ae_title: PET}   # the PET\n" in removed.new_text
    assert "CT1" not in removed.new_text and "# first CT" not in removed.new_text

    # A new entry between commented ones, and in a list whose first item has a
    # comment above it: where ruamel.yaml 0.19.1 misplaces a new block mapping.
    inserted = edit_section(COMMENTED, "peers", [{"ae_title": "CT1"}, {"ae_title": "NEW", "tls": "required"},
                                                 {"ae_title": "MR1", "host": "mr.example.org"},
                                                 {"ae_title": "PET"}], source="s")
    assert peers(inserted) == [{"ae_title": "CT1"}, {"ae_title": "NEW", "tls": "required"},
                               {"ae_title": "MR1", "host": "mr.example.org"}, {"ae_title": "PET"}]
    assert comment_lines(inserted.new_text) == comment_lines(COMMENTED)
    assert "  - {ae_title: NEW, tls: required}\n" in inserted.new_text  # as one-line as its neighbours

    route = {"name": "mr", "match": {"modality": "MR"}, "pipeline": "organs", "send_to": ["PACS"]}
    appended = edit_section(COMMENTED, "routes", [*parse_config(COMMENTED).model_dump(
        mode="json", exclude_unset=True)["routes"], route], source="s")
    assert yaml.safe_load(appended.new_text)["routes"][1] == route
    assert comment_lines(appended.new_text) == comment_lines(COMMENTED)


def test_a_section_the_file_lacks_is_added_and_an_empty_file_gets_one():
    change = edit_section("# nothing yet\n", "peers", [{"ae_title": "CT1"}], source="s")
    assert change.new_text.startswith("# nothing yet\n")
    assert yaml.safe_load(change.new_text) == {"peers": [{"ae_title": "CT1"}]}
    assert edit_section("", "routes", [], source="s").new_text == "routes: []\n"


def test_every_error_is_given_with_its_field_path():
    value = [
        {"name": "", "pipeline": "organs", "send_to": ["PACS"], "match": {"modality": ["CT"]}},
        {"name": "late", "pipeline": "organs", "send_to": [], "colour": "red"},
    ]
    with pytest.raises(ConfigEditError) as caught:
        edit_section(COMMENTED, "routes", value, source="s")
    assert [error.path for error in caught.value.errors] == [
        "routes[0].name", "routes[0].match.modality", "routes[1].send_to", "routes[1].colour"]

    with pytest.raises(ConfigEditError) as caught:
        edit_section(COMMENTED, "destinations", {"pacs": {"ae_title": "ABCDEFGHIJKLMNOPQ", "host": "h",
                                                          "port": "70000"}}, source="s")
    assert caught.value.errors == (
        FieldError("destinations.pacs.ae_title", "more than 16 characters"),
        FieldError("destinations.pacs.port", "Input should be less than or equal to 65535"),
    )

    # A reference into another section: the route still sends to the removed PACS.
    with pytest.raises(ConfigEditError) as caught:
        edit_section(COMMENTED, "destinations", {}, source="s")
    assert caught.value.errors == (FieldError("routes[0].send_to", "unknown destination 'PACS'"),)

    with pytest.raises(ConfigEditError) as caught:
        edit_section(COMMENTED, "peers", [{"ae_title": "CT1"}, {"ae_title": "CT1 "}], source="s")
    assert caught.value.errors == (FieldError("peers[1].ae_title", "'CT1' is listed twice"),)


def test_certificate_files_are_read_as_the_node_reads_them(tmp_path):
    authority = Authority(tmp_path / "ca")
    value = {"PACS": {"ae_title": "ORTHANC", "host": "localhost", "port": 2762,
                      "tls": {"ca": str(authority.certificate)}}}
    change = edit_section(COMMENTED, "destinations", value, source="s")
    assert change.config.destinations["PACS"].tls.ca == authority.certificate
    written = yaml.safe_load(change.new_text)["destinations"]["PACS"]["tls"]
    assert written == {"ca": str(authority.certificate)}
    value["PACS"]["tls"]["ca"] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigEditError) as caught:
        edit_section(COMMENTED, "destinations", value, source="s")
    assert caught.value.errors == (
        FieldError("destinations.PACS.tls.ca", f"{tmp_path / 'missing.pem'}: no such file"),)


@pytest.mark.parametrize("text", ["peers: [unclosed\n", "- just\n- a list\n", "'a scalar'\n"])
def test_a_file_that_is_no_yaml_mapping_is_an_error_of_the_whole_file(text):
    with pytest.raises(ConfigEditError) as caught:
        edit_section(text, "peers", [], source="s")
    assert [error.path for error in caught.value.errors] == [""]


def test_an_unknown_section_is_refused():
    with pytest.raises(ValueError, match="'node' is not an editable section"):
        edit_section(COMMENTED, "node", {"port": 104}, source="s")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_stay_data(hostile):
    # A route's series description is any pattern as far as the schema goes: it must read back as typed.
    route = {"name": "ct", "match": {"series_description": hostile}, "pipeline": "organs",
             "send_to": ["PACS"]}
    change = edit_section(COMMENTED, "routes", [route], source="s")
    assert yaml.safe_load(change.new_text).keys() == yaml.safe_load(COMMENTED).keys()
    assert yaml.safe_load(change.new_text)["routes"] == [route]
    assert change.config.routes[0].match.series_description == hostile
    # A destination's name is a mapping key, written as safely.
    value = {hostile: {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}, "PACS": {
        "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}}
    change = edit_section(COMMENTED, "destinations", value, source="s")
    assert yaml.safe_load(change.new_text)["destinations"].keys() == {hostile, "PACS"}


def test_hostile_values_the_schema_refuses_are_refused_by_field():
    value = [{"ae_title": "x\nroutes: []"}, {"ae_title": "!!python/object/apply:os.system ['id']"},
             {"ae_title": "{{7*7}}"}]
    with pytest.raises(ConfigEditError) as caught:
        edit_section(COMMENTED, "peers", value, source="s")
    assert caught.value.errors == (FieldError("peers[0].ae_title", "contains a control character"),
                                   FieldError("peers[1].ae_title", "more than 16 characters"))


def test_save_writes_atomically_keeping_the_mode(tmp_path):
    path = tmp_path / "segnode.yaml"
    path.write_text(COMMENTED)
    path.chmod(0o600)
    change = edit_section(read_config_text(path), "peers", [{"ae_title": "CT9"}], source=str(path))
    save_change(path, change)
    assert path.read_text() == change.new_text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [peer.ae_title for peer in load_config(path).peers] == ["CT9"]
    assert [p.name for p in tmp_path.iterdir()] == ["segnode.yaml"]  # no temporary file left

    link = tmp_path / "link.yaml"
    link.symlink_to(path)
    save_change(link, edit_section(read_config_text(link), "peers", [{"ae_title": "CT8"}], source=str(link)))
    assert link.is_symlink() and [peer.ae_title for peer in load_config(path).peers] == ["CT8"]


def test_an_invalid_edit_leaves_the_file_byte_identical(tmp_path):
    path = tmp_path / "segnode.yaml"
    path.write_bytes(COMMENTED.encode())
    with pytest.raises(ConfigEditError):
        edit_section(read_config_text(path), "routes", [{"name": "r", "pipeline": "missing",
                                                         "send_to": ["PACS"]}], source=str(path))
    assert path.read_bytes() == COMMENTED.encode()


def test_a_change_made_from_an_older_text_is_refused(tmp_path):
    path = tmp_path / "segnode.yaml"
    path.write_text(COMMENTED)
    text = read_config_text(path)
    first = edit_section(text, "peers", [{"ae_title": "FIRST"}], source=str(path))
    second = edit_section(text, "peers", [{"ae_title": "SECOND"}], source=str(path))
    save_change(path, first)
    with pytest.raises(ConfigConflictError, match="changed since it was read"):
        save_change(path, second)
    assert path.read_text() == first.new_text

    # An administrator's editor counts as much as another console.
    path.write_text(COMMENTED + "# edited by hand\n")
    with pytest.raises(ConfigConflictError):
        save_change(path, edit_section(first.new_text, "peers", [], source=str(path)))
    assert path.read_text().endswith("# edited by hand\n")


def test_of_changes_saved_at_once_from_the_same_text_one_wins(tmp_path):
    path = tmp_path / "segnode.yaml"
    path.write_text(COMMENTED)
    changes = [edit_section(COMMENTED, "peers", [{"ae_title": f"CT{n}"}], source="s") for n in range(8)]
    outcomes: list[str] = []

    def save(change: ConfigChange) -> None:
        try:
            save_change(path, change)
            outcomes.append("saved")
        except ConfigConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=save, args=(change,)) for change in changes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["saved"]
    assert path.read_text() in {change.new_text for change in changes}


def test_add_user_adds_or_replaces_keeping_the_others():
    text = COMMENTED.replace("node: {ae_title: SEGNODE, port: 11112}   # plain DICOM\n",
                             "node:\n  console:\n    port: 8080   # the web console\n")
    first, second = hash_password("one"), hash_password("two")
    with_alice = add_user(text, "alice", first, source="s")
    with_bob = add_user(with_alice.new_text, "bob@example.org", second, source="s")
    assert [(u.name, u.password_hash) for u in with_bob.config.node.console.users] == [
        ("alice", first), ("bob@example.org", second)]
    replaced = add_user(with_bob.new_text, "alice", second, source="s")
    assert [(u.name, u.password_hash) for u in replaced.config.node.console.users] == [
        ("alice", second), ("bob@example.org", second)]
    assert comment_lines(replaced.new_text) == comment_lines(text)
    assert changed_lines(replaced.diff) == [f"-        password_hash: {first}",
                                            f"+        password_hash: {second}"]

    with pytest.raises(ConfigEditError) as caught:
        add_user(text, "no spaces", first, source="s")
    assert [error.path for error in caught.value.errors] == ["node.console.users[0].name"]


def test_add_user_without_a_console_says_what_to_add():
    with pytest.raises(ConfigEditError) as caught:
        add_user(COMMENTED, "alice", hash_password("pw"), source="s")
    (error,) = caught.value.errors
    assert error.path == "node.console"
    assert re.search(r"add node\.console\.port", error.message)


def test_the_example_file_is_edited_without_losing_a_comment(tmp_path):
    path = tmp_path / "segnode.yaml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    value = config.model_dump(mode="json", exclude_unset=True)
    value["pipelines"]["lungs"] = {"model": "builtin", "device": "cpu"}
    value["routes"].append({"name": "lungs", "pipeline": "lungs", "send_to": ["PACS"]})
    for section in ("pipelines", "routes"):
        save_change(path, edit_section(read_config_text(path), section, value[section], source=str(path)))
    assert comment_lines(path.read_text()) == comment_lines(EXAMPLE)
    assert [route.name for route in load_config(path).routes] == ["ct-organs", "lu177-dosimetry", "lungs"]

    # Emptied, a section keeps the heading of the next one, which ruamel.yaml files under its last item.
    save_change(path, edit_section(read_config_text(path), "peers", [], source=str(path)))
    assert "peers: []\n\n# What a destination takes" in path.read_text()
    assert comment_lines(path.read_text()) == comment_lines(EXAMPLE)

