"""The console's configuration forms and test buttons, over HTTP to a real app
whose configuration is a real file, and to real peers (dcmtk's storescp)."""

from __future__ import annotations

import html
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from config import SegnodeConfig, load_config
from node.config_record import ConfigReading, ConfigRecord, write_record
from node.console.app import console_app
from node.console.context import ConsoleContext
from tests.conftest import StoreSCP, free_port

PASSWORD = "correct horse battery staple"
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def password_hash() -> str:
    # An argon2id hash made cheap to check: every test signs in.
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)


def config_text(storage_dir: Path, password_hash: str, scp_port: int, closed_port: int) -> str:
    return f"""\
# The node under test.
node:
  ae_title: SEGNODE
  storage_dir: {storage_dir}
  console:
    port: 8080
    users:
      - {{name: admin, password_hash: '{password_hash}'}}

# Who may send.
peers:
  - {{ae_title: SCANNER1, host: 127.0.0.1}}   # the CT
  - {{ae_title: MR1, tls: optional}}

destinations:
  scp: {{ae_title: STORESCP, host: 127.0.0.1, port: {scp_port}}}   # a real storescp
  closed: {{ae_title: NOBODY, host: 127.0.0.1, port: {closed_port}}}

pipelines:
  organs:
    model: builtin
    densities: {{liver: 1.05}}   # set in the file only

# Tried in order.
routes:
  - name: first
    match: {{modality: CT}}
    pipeline: organs
    send_to: [scp]
  - name: second
    pipeline: organs
    send_to: [scp, closed]

sending: {{timeout_seconds: 3}}
"""


@dataclass
class Console:
    """A console app over a real file; the configuration in force is the file's,
    as if every reload it asks for were applied at once."""

    config_path: Path
    storage_dir: Path
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    reloads: int = 0

    def in_force(self) -> SegnodeConfig:
        return load_config(self.config_path, check_files=False)

    def context(self) -> ConsoleContext:
        def reload() -> None:
            self.reloads += 1

        return ConsoleContext(self.config_path, self.in_force, self.storage_dir, lambda: (), reload,
                              self.registry)


@pytest.fixture
def console(tmp_path, password_hash) -> Console:
    storage = tmp_path / "store"
    storage.mkdir()
    path = tmp_path / "segnode.yaml"
    path.write_text(config_text(storage, password_hash, free_port(), free_port()))
    return Console(path, storage)


@pytest.fixture
def app(console):
    app = console_app(console.context(), os.urandom(32))
    yield app
    app.state.console.audit.close()


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, base_url="https://console.test", follow_redirects=False) as client:
        form = client.get("/login")
        answer = client.post("/login", data={"user": "admin", "password": PASSWORD,
                                             "csrf_token": hidden(form.text, "csrf_token")})
        assert answer.status_code == 303
        yield client


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no {name} field in {page[:500]}"
    return found.group(1)


def post_form(client: TestClient, url: str, **fields: str | list[str]) -> httpx.Response:
    """Post `fields` as the configuration page's forms do, with its token and the file's digest."""
    shown = client.get("/config").text
    return client.post(url, data={"csrf_token": hidden(shown, "csrf_token"), "base": hidden(shown, "base"),
                                  **fields})


def field_block(page: str, input_name: str, value: str) -> str:
    """The form field holding input `input_name` with `value`, with its errors."""
    for block in re.findall(r'<div class="field[^"]*">(.*?)</div>', page, re.S):
        if f'name="{input_name}" value="{html.escape(value)}"' in block:
            return block
    raise AssertionError(f"no field {input_name}={value!r} in the page")


PEER = {"ae_title": "CT2", "host": "10.0.0.5", "tls": "required", "completion": "association"}


def test_an_added_peer_is_written_keeping_the_files_comments_and_audited(client, app, console):
    before = console.config_path.read_text()
    answer = post_form(client, "/config/peers/add", **PEER)
    assert answer.status_code == 303 and answer.headers["location"] == "/config"
    text = console.config_path.read_text()
    for comment in ("# The node under test.", "# the CT", "# a real storescp", "# Tried in order."):
        assert comment in text
    peer = load_config(console.config_path, check_files=False).peers[-1]
    assert (peer.ae_title, peer.host, peer.tls, peer.completion) == tuple(PEER.values())
    assert console.reloads == 1
    entry = app.state.console.audit.page(1).entries[0]
    assert entry.user == "admin" and entry.action == "config.peers.add"
    assert "+" in entry.detail and "CT2" in entry.detail
    shown = client.get("/config").text
    assert "Added peer &#39;CT2&#39;." in shown
    assert "Added peer" not in client.get("/config").text, "the notice is shown once"
    # The untouched entries are as they were, byte for byte.
    assert text.startswith(before.split("  - {ae_title: MR1")[0])


def test_an_ae_title_too_long_is_refused_beside_its_field_and_changes_nothing(client, console):
    before = console.config_path.read_bytes()
    answer = post_form(client, "/config/peers/edit", entry="1", ae_title="A" * 17, tls="optional",
                       completion="stable")
    assert answer.status_code == 400
    assert "more than 16 characters" in field_block(answer.text, "ae_title", "A" * 17)
    assert "more than 16 characters" not in field_block(answer.text, "ae_title", "SCANNER1")
    assert console.config_path.read_bytes() == before
    assert console.reloads == 0


def test_a_default_the_file_leaves_out_is_not_written(client, console):
    answer = post_form(client, "/config/peers/edit", entry="0", ae_title="SCANNER1", host="127.0.0.2",
                       tls="optional", completion="stable")
    assert answer.status_code == 303
    assert "- {ae_title: SCANNER1, host: 127.0.0.2}   # the CT" in console.config_path.read_text()


def test_shell_metacharacters_and_script_tags_are_kept_as_text_and_escaped(client, console, tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a shell would create the file
    hostile = f"$(touch pwned); `touch pwned` | {SCRIPT}"
    # Free text (a route's pattern) is written as it is and shown escaped.
    answer = post_form(client, "/config/routes/edit", entry="0", name="first", pipeline="organs",
                       send_to=["closed"], **{"match.series_description": hostile})
    assert answer.status_code == 303
    assert load_config(console.config_path, check_files=False).routes[0].match.series_description == hostile
    shown = client.get("/config").text
    assert SCRIPT not in shown and html.escape(SCRIPT) in shown
    # A host name is refused beside its field, and shown escaped there.
    before = console.config_path.read_bytes()
    refused = post_form(client, "/config/destinations/edit", entry="closed", name="closed", ae_title="NOBODY",
                        host=hostile, port="104", outputs=["seg", "sr"], seg_format="binary")
    assert refused.status_code == 400 and SCRIPT not in refused.text
    assert "not an IP address or a host name" in field_block(refused.text, "host", hostile)
    assert console.config_path.read_bytes() == before
    # What a probe says comes back escaped: an AE title may hold markup.
    answer = post_form(client, "/config/destinations/edit", entry="closed", name="closed",
                       ae_title="<i>NOBODY</i>", host="127.0.0.1", port="104", outputs=["seg", "sr"],
                       seg_format="binary")
    assert answer.status_code == 303
    shown = client.get("/config").text
    probe = client.post("/destinations/closed/echo", data={"csrf_token": hidden(shown, "csrf_token")},
                        headers={"X-Console-Fragment": "1"})
    assert probe.status_code == 200 and "Failed" in probe.text
    assert "<i>NOBODY</i>" not in probe.text and html.escape("<i>NOBODY</i>") in probe.text
    assert not (tmp_path / "pwned").exists()


def test_yaml_injection_stays_a_string_and_changes_no_other_key(client, console):
    routes = load_config(console.config_path, check_files=False).routes
    answer = post_form(client, "/config/routes/add", name="third", pipeline="organs", send_to=["closed"],
                       **{"match.series_description": "x\nroutes: []"})
    assert answer.status_code == 303
    config = load_config(console.config_path, check_files=False)
    assert config.routes[-1].match.series_description == "x\nroutes: []"
    assert config.routes[:-1] == routes
    # In an AE title it is a control character; in a host or a name, not one.
    before = console.config_path.read_bytes()
    refused = post_form(client, "/config/peers/add", ae_title="X\nroutes: []", tls="optional",
                        completion="stable")
    assert refused.status_code == 400 and "contains a control character" in refused.text
    refused = post_form(client, "/config/peers/add", ae_title="CT3", host="x\nroutes: []", tls="optional",
                        completion="stable")
    assert refused.status_code == 400 and "not an IP address or a host name" in refused.text
    refused = post_form(client, "/config/pipelines/add", name="p\nroutes: []", model="builtin", device="cpu")
    assert refused.status_code == 400
    assert "1 to 64 of" in field_block(refused.text, "name", "p\nroutes: []")
    assert console.config_path.read_bytes() == before


def test_a_change_made_from_a_page_shown_before_the_file_changed_is_refused(client, console):
    shown = client.get("/config").text
    edited = console.config_path.read_text() + "# edited by hand meanwhile\n"
    console.config_path.write_text(edited)
    answer = client.post("/config/peers/add", data={"csrf_token": hidden(shown, "csrf_token"),
                                                     "base": hidden(shown, "base"), **PEER})
    assert answer.status_code == 409 and "The file changed since this page was shown" in answer.text
    assert console.config_path.read_text() == edited
    assert console.reloads == 0


def test_routes_move_and_are_removed_in_the_file(client, console):
    answer = post_form(client, "/config/routes/move", entry="1", direction="up")
    assert answer.status_code == 303
    assert [route.name for route in load_config(console.config_path).routes] == ["second", "first"]
    assert post_form(client, "/config/routes/move", entry="0", direction="up").status_code == 400
    answer = post_form(client, "/config/routes/remove", entry="0")
    assert answer.status_code == 303
    text = console.config_path.read_text()
    assert [route.name for route in load_config(console.config_path).routes] == ["first"]
    assert "# Tried in order." in text and "# The node under test." in text
    assert "Removed route &#39;second&#39;." in client.get("/config").text


def test_renaming_a_destination_that_routes_use_is_refused_by_the_schema(client, console):
    before = console.config_path.read_bytes()
    answer = post_form(client, "/config/destinations/edit", entry="scp", name="renamed", ae_title="STORESCP",
                       host="127.0.0.1", port="11112", outputs=["seg"], seg_format="binary")
    assert answer.status_code == 400
    assert "routes[0].send_to: unknown destination &#39;scp&#39;" in answer.text
    assert 'name="name" value="renamed"' in answer.text, "the user's values are kept"
    assert console.config_path.read_bytes() == before


def test_a_routes_fields_keep_what_only_the_file_sets(client, console):
    answer = post_form(client, "/config/pipelines/edit", entry="organs", name="organs", model="builtin",
                       device="cpu", **{"qa.plausibility": "on"})
    assert answer.status_code == 303
    pipeline = load_config(console.config_path).pipelines["organs"]
    assert pipeline.device == "cpu" and pipeline.densities == {"liver": 1.05}
    assert pipeline.qa.plausibility and not pipeline.qa.mirror_consistency
    assert "changed only there: densities" in client.get("/config").text
    answer = post_form(client, "/config/routes/edit", entry="0", name="first", pipeline="organs",
                       send_to=["closed"], **{"match.modality": "MR"})
    assert answer.status_code == 303
    route = load_config(console.config_path).routes[0]
    assert route.match.modality == "MR" and route.send_to == ["closed"]


def test_the_page_warns_when_the_running_node_refused_the_file(client, console):
    assert "refused the file" not in client.get("/config").text
    write_record(console.storage_dir, ConfigRecord(
        console.config_path, ConfigReading(time.time() - 60, "a" * 64),
        ConfigReading(time.time(), "b" * 64, ("peers[0].ae_title: more than 16 characters",))))
    shown = client.get("/config").text
    assert "refused the file" in shown and "peers[0].ae_title: more than 16 characters" in shown


def test_probes_reach_a_real_storescp_and_say_why_a_closed_port_fails(client, app, console, tmp_path):
    port = load_config(console.config_path).destinations["scp"].port
    scp = StoreSCP(tmp_path, port=port)
    try:
        listing = client.get("/probes").text
        assert 'action="/destinations/scp/echo"' in listing
        assert 'action="/destinations/closed/test-object"' in listing
        token = hidden(listing, "csrf_token")
        fragment = {"X-Console-Fragment": "1"}
        echo = client.post("/destinations/scp/echo", data={"csrf_token": token}, headers=fragment)
        assert echo.status_code == 200 and "<strong>OK</strong>" in echo.text and "C-ECHO to scp" in echo.text
        assert "<html" not in echo.text
        stored = client.post("/destinations/scp/test-object", data={"csrf_token": token}, headers=fragment)
        assert stored.status_code == 200 and "<strong>OK</strong>" in stored.text
        assert len(scp.received()) == 1
        assert next(iter(scp.received())) in stored.text
    finally:
        scp.stop()
    closed = client.post("/destinations/closed/echo", data={"csrf_token": token}, headers=fragment)
    assert closed.status_code == 200 and "<strong>Failed</strong>" in closed.text
    assert "cannot connect" in closed.text
    actions = [entry.action for entry in app.state.console.audit.page(1).entries]
    assert actions[:3] == ["probe.echo", "probe.test_object", "probe.echo"]
    assert client.post("/destinations/nowhere/echo", data={"csrf_token": token}).status_code == 404


def test_probes_beyond_two_at_once_are_answered_busy(client, console):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever answers
    text = console.config_path.read_text()
    port = load_config(console.config_path).destinations["closed"].port
    console.config_path.write_text(text.replace(f"port: {port}", f"port: {silent.getsockname()[1]}"))
    token = hidden(client.get("/config").text, "csrf_token")
    answers: list[int] = []

    def probe() -> None:
        answers.append(client.post("/destinations/closed/echo", data={"csrf_token": token}).status_code)

    threads = [threading.Thread(target=probe) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1)
        busy = client.post("/destinations/closed/echo", data={"csrf_token": token})
        assert busy.status_code == 429 and "Busy: 2 tests are already running" in busy.text
    finally:
        for thread in threads:
            thread.join(10)
        silent.close()
    assert answers == [200, 200]


@pytest.mark.parametrize("url", [
    "/config/peers/add", "/config/peers/edit", "/config/destinations/remove", "/config/routes/move",
    "/destinations/scp/echo", "/destinations/scp/test-object",
])
def test_every_post_without_the_csrf_token_is_refused(client, console, url):
    before = console.config_path.read_bytes()
    base = hidden(client.get("/config").text, "base")
    answer = client.post(url, data={"base": base, "entry": "0", "direction": "down", **PEER})
    assert answer.status_code == 403
    assert console.config_path.read_bytes() == before and console.reloads == 0
