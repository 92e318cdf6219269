"""The console against a hostile network: odd numbers, paths, cookies and
headers through Starlette's TestClient on a real app, and slow or surplus
connections against a real uvicorn server (ConsoleServer) and a real node,
whose DICOM port must keep serving while its console is flooded."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.testclient import TestClient

from config import parse_config
from config.passwords import hash_password
from node.console import connections
from node.console.app import SESSION_COOKIE, console_app
from node.console.login_limit import FAILURES
from node.console.server import ConsoleServer
from node.queue.job_state import JobState
from node.queue.jobs import JobQueue
from node.receive.index import InstanceIndex
from node.send.outbox import OutboxStore
from tests.conftest import free_port, scu
from tests.test_console_http import (
    PASSWORD,
    SERIES,
    Console,
    config_text,
    failed_job,
    job_state,
    receive,
    sign_in,
    token,
)


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def console(tmp_path, password_hash) -> Console:
    storage = tmp_path / "store"
    storage.mkdir()
    InstanceIndex(storage).close()
    JobQueue(storage).close()
    OutboxStore(storage).close()
    text = config_text(storage, {"admin": password_hash}, free_port())
    (storage / "segnode.yaml").write_text(text)
    return Console(storage, parse_config(text, check_files=False))


@pytest.fixture
def client(console) -> Iterator[TestClient]:
    app = console_app(console.context(), os.urandom(32))
    with TestClient(app, base_url="https://console.test", follow_redirects=False) as client:
        yield client
    app.state.console.audit.close()


@pytest.fixture
def signed_in(client) -> TestClient:
    assert sign_in(client).status_code == 303
    return client


@pytest.fixture
def server(console) -> Iterator[ConsoleServer]:
    server = ConsoleServer(console.context(), console.config.node.console)
    server.start()
    yield server
    server.stop()


# Numbers and paths from the request ----------------------------------------------------------


@pytest.mark.parametrize("query", ["page=%C2%B2", "page=" + "9" * 5000, "page=-1", "page=%EF%BC%91"])
@pytest.mark.parametrize("path", ["/series", "/audit", f"/series/{SERIES}"])
def test_a_page_number_not_in_ascii_digits_or_too_long_is_answered_400(signed_in, console, path, query):
    receive(console.storage_dir, SERIES)
    query = query.replace("page=", "instances=") if path.startswith("/series/") else query
    answer = signed_in.get(f"{path}?{query}")
    assert answer.status_code == 400 and "must be a page number" in answer.text


def test_a_page_far_past_the_end_shows_the_last(signed_in, console):
    receive(console.storage_dir, SERIES)
    answer = signed_in.get("/series?page=" + "9" * 18)
    assert answer.status_code == 200 and SERIES in answer.text


@pytest.mark.parametrize("job", ["99999999999999999999", "9" * 400, "%C2%B2"])
def test_a_job_id_sqlite_cannot_hold_is_no_job_and_changes_nothing(signed_in, console, job):
    job_id = failed_job(console.storage_dir)
    answer = signed_in.post(f"/jobs/{job}/retry", data={"csrf_token": token(signed_in.get("/").text)})
    assert answer.status_code == 404 and "There is no job" in answer.text
    assert job_state(console.storage_dir, job_id) == JobState.FAILED


@pytest.mark.parametrize("entry", ["\u00b2", "9" * 5000, "-1"])
def test_a_config_entry_that_is_no_position_is_answered_404_and_changes_nothing(signed_in, console, entry):
    path = console.storage_dir / "segnode.yaml"
    before = path.read_bytes()
    base = re.search(r'name="base" value="([^"]+)"', signed_in.get("/config").text)
    assert base is not None and base.group(1) == hashlib.sha256(before).hexdigest()
    answer = signed_in.post("/config/peers/remove", data={
        "csrf_token": token(signed_in.get("/").text), "base": base.group(1), "entry": entry})
    assert answer.status_code == 404 and "The file has no peer" in answer.text
    assert path.read_bytes() == before and console.reloads == 0


@pytest.mark.parametrize("path", ["/static/..%2Fapp.py", "/static/%2e%2e/app.py",
                                  "/static/%2e%2e%2fserver.py", "/series/..%2F..%2Fsegnode.yaml/report.pdf",
                                  f"/series/{SERIES}%2F..%2F..%2Fsegnode.yaml/report.pdf"])
def test_no_path_reaches_outside_the_static_folder_or_a_series_report(signed_in, console, path):
    receive(console.storage_dir, SERIES)
    answer = signed_in.get(path)
    assert answer.status_code == 404
    assert b"storage_dir" not in answer.content and b"import" not in answer.content


def test_made_up_methods_add_no_metric_series(client, console):
    for k in range(50):
        assert client.request(f"PROBE{k}", "/health").status_code == 405
        assert client.request(f"PROBE{k}", f"/nothing/{k}").status_code == 404
    series = {sample.labels["method"] for metric in console.registry.collect()
              if metric.name == "segnode_console_requests" for sample in metric.samples}
    assert series == {"other"}
    assert console.sample("segnode_console_requests_total", method="other", route="/health",
                          status="405") == 50


# Sessions and sign-in -------------------------------------------------------------------------


def test_the_cookie_from_before_sign_in_opens_no_session(client):
    """A cookie planted before sign-in (session fixation) is not the one signed in."""
    client.get("/login")
    planted = client.cookies[SESSION_COOKIE]
    assert sign_in(client).status_code == 303
    assert client.cookies[SESSION_COOKIE] != planted
    with TestClient(client.app, base_url="https://console.test", follow_redirects=False) as other:
        other.cookies.set(SESSION_COOKIE, planted)
        assert other.get("/").headers["location"] == "/login"


def test_a_tampered_session_cookie_is_refused(signed_in):
    cookie = signed_in.cookies[SESSION_COOKIE]
    payload, rest = cookie.split(".", 1)
    for forged in (payload[:-2] + "AA." + rest, cookie + "x", "e30=.AAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAA"):
        signed_in.cookies.set(SESSION_COOKIE, forged)
        assert signed_in.get("/").headers["location"] == "/login"


def test_forwarded_for_headers_do_not_reset_the_failed_log_in_count(server):
    """The limiter keys on the socket's address: every try below comes from 127.0.0.1."""
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=10) as http:
        answers = []
        for k in range(6):
            spoof = {"X-Forwarded-For": f"203.0.113.{k}", "X-Real-IP": f"203.0.113.{k}",
                     "Forwarded": f"for=203.0.113.{k}"}
            form = http.get("/login")
            answers.append(http.post("/login", headers=spoof, data={
                "user": f"guess{k}", "password": "wrong", "csrf_token": token(form.text)}).status_code)
    assert answers == [403] * 5 + [429]


def test_log_ins_sent_at_once_are_counted_before_any_is_checked(server):
    """Twelve wrong passwords sent at once from one address: only FAILURES of them are checked."""
    def try_once(k: int) -> int:
        with httpx.Client(base_url=server.url, follow_redirects=False, timeout=60) as http:
            form = http.get("/login")
            ready.wait()
            return http.post("/login", data={"user": f"guess{k}", "password": "wrong",
                                             "csrf_token": token(form.text)}).status_code

    ready = threading.Barrier(12)
    with ThreadPoolExecutor(12) as pool:
        answers = sorted(pool.map(try_once, range(12)))
    assert answers == [403] * FAILURES + [429] * (12 - FAILURES)


def test_a_huge_user_name_is_cut_short_in_the_log(client, caplog):
    name = "A" * 60_000
    for _ in range(FAILURES + 1):
        assert sign_in(client, user=name, password="wrong").status_code in (403, 429)
    logged = [record.getMessage() for record in caplog.records if record.name == "node.console.sign_in"]
    assert len(logged) == FAILURES + 1 and all(len(message) < 400 for message in logged)


# Connections ------------------------------------------------------------------------------------


#: A log-in form's head and the first 2 of its 100 bytes.
PART_OF_A_FORM = (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\n\r\na=")


def _half_open(port: int, head: bytes = b"GET /health HTTP/1.1\r\nHost: x\r\n") -> socket.socket:
    """A connection that sent part of a request head and nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (after any answer it sends)."""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def test_connections_past_the_bound_are_closed_and_slow_requests_time_out(console, monkeypatch):
    monkeypatch.setattr(connections, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(connections, "REQUEST_SECONDS", 1.0)
    server = ConsoleServer(console.context(), console.config.node.console)
    server.start()
    try:
        slow = [_half_open(server.port) for _ in range(3)]
        slow_body = _half_open(server.port, PART_OF_A_FORM)
        time.sleep(0.3)
        surplus = _half_open(server.port)
        assert _closed_by_server(surplus, within=0.8)
        started = time.monotonic()
        assert [_closed_by_server(sock, within=5) for sock in [*slow, slow_body]] == [True] * 4
        assert time.monotonic() - started < 3
        with urllib.request.urlopen(f"{server.url}health", timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.stop()


def test_a_client_leaving_mid_body_is_no_failure_in_the_log(server, caplog):
    sock = _half_open(server.port, PART_OF_A_FORM)
    time.sleep(0.3)
    sock.close()
    time.sleep(0.5)
    with urllib.request.urlopen(f"{server.url}health", timeout=10) as answer:
        assert answer.status == 200
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_the_nodes_dicom_port_serves_while_its_console_is_flooded(node_factory, password_hash):
    port = free_port()
    node = node_factory(console={"port": port, "users": [{"name": "admin", "password_hash": password_hash}]})
    node.start()
    flood = [_half_open(port) for _ in range(connections.MAX_CONNECTIONS + 40)]
    try:
        assoc = scu("TESTSCU").associate("127.0.0.1", node.port, ae_title="SEGNODE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert all(_closed_by_server(sock, within=2) for sock in flood[-40:])
    finally:
        for sock in flood:
            sock.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
        assert answer.status == 200
    assert node.terminate() == 0
