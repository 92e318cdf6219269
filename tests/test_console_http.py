"""The console over HTTP: sign-in, sessions, CSRF, limits and escaping,
through Starlette's TestClient on a real app over a real storage folder, and
through a real ``segnode serve`` whose console listens on a port."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import itsdangerous
import pytest
from prometheus_client import CollectorRegistry
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from config import JobSettings, SegnodeConfig, parse_config
from config.passwords import hash_password
from dicomio.csv import write_measurements_csv
from dicomio.measurements import FlagKind, QualityFlag, StructureMeasurements
from node.assemble.completion import Timing, completion
from node.console.app import SESSION_COOKIE, console_app
from node.console.audit import AuditLog
from node.console.context import ConsoleContext
from node.console.login_limit import FAILURES
from node.console.server import ConsoleServer
from node.console.session_key import SessionKeyError, read_or_create_session_key, session_key_path
from node.console.sessions import SessionTable
from node.queue.job_state import JobState
from node.queue.jobs import JobKind, JobQueue, NewJob
from node.queue.results import SegmentResult
from node.receive.index import INDEX_FILENAME, InstanceIndex
from node.receive.scp import OpenAssociation
from node.receive.storage import StoredInstance
from node.receive.validation import InstanceIdentity
from node.send.outbox import OutboxStore
from tests.certificates import Authority
from tests.conftest import free_port

PASSWORD = "correct horse battery staple"
SCRIPT = "<script>alert(1)</script>"
CT = "1.2.840.10008.5.1.4.1.1.2"
SERIES = "1.2.3.4.2"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


def config_text(storage_dir: Path, users: dict[str, str], console_port: int = 8080) -> str:
    listed = "".join(f"\n      - {{name: {name}, password_hash: '{hashed}'}}"
                     for name, hashed in users.items())
    return f"""
node:
  ae_title: SEGNODE
  port: 11112
  storage_dir: {storage_dir}
  console:
    port: {console_port}
    users: {listed or "[]"}
destinations:
  pacs: {{ae_title: PACS, host: 127.0.0.1, port: 11113}}
"""


@dataclass
class Console:
    """A console app over a real storage folder; `config` is what the node has in force."""

    storage_dir: Path
    config: SegnodeConfig
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    associations: tuple[OpenAssociation, ...] = ()
    reloads: int = 0

    def context(self) -> ConsoleContext:
        def reload() -> None:
            self.reloads += 1

        return ConsoleContext(self.storage_dir / "segnode.yaml", lambda: self.config, self.storage_dir,
                              lambda: self.associations, reload, self.registry)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def console(tmp_path, password_hash) -> Console:
    storage = tmp_path / "store"
    storage.mkdir()
    InstanceIndex(storage).close()
    JobQueue(storage).close()
    OutboxStore(storage).close()
    return Console(storage, parse_config(config_text(storage, {"admin": password_hash}), check_files=False))


@pytest.fixture
def app(console):
    app = console_app(console.context(), os.urandom(32))
    yield app
    app.state.console.audit.close()


@pytest.fixture
def client(app) -> TestClient:
    with TestClient(app, base_url="https://console.test", follow_redirects=False) as client:
        yield client


def token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, f"no CSRF field in {html[:500]}"
    return found.group(1)


def sign_in(client: TestClient | httpx.Client, user: str = "admin", password: str = PASSWORD,
            **extra: str) -> httpx.Response:
    form = client.get("/login")
    return client.post("/login", data={"user": user, "password": password, "csrf_token": token(form.text),
                                       **extra})


@pytest.fixture
def signed_in(client) -> TestClient:
    answer = sign_in(client)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    return client


def receive(storage: Path, series: str, calling_ae: str = "SCANNER", n: int = 1) -> None:
    index = InstanceIndex(storage)
    try:
        for k in range(n):
            identity = InstanceIdentity(CT, f"{series}.{k}", "1.2.3.4", series, "CT")
            index.record_instance(StoredInstance(identity, "1.2.840.10008.1.2.1", storage / f"{k}.dcm", 1000,
                                                 calling_ae, time.time()))
    finally:
        index.close()


def failed_job(storage: Path, error: str = "the model ran out of memory") -> int:
    """A segmentation job of SERIES that failed its only attempt."""
    receive(storage, SERIES)
    index = InstanceIndex(storage)
    try:
        [progress] = [p for p in index.receiving() if p.series_instance_uid == SERIES]
        decided = completion(progress, time.time(), Timing(stable_seconds=0, mpps_wait_seconds=math.inf),
                             held=False)
        assert decided is not None and index.complete(progress, decided) is not None
    finally:
        index.close()
    queue = JobQueue(storage)
    try:
        [job_id] = queue.enqueue_series(SERIES, [NewJob(JobKind.SEGMENT, "ct", "organs", ("pacs",), SERIES)])
        assert queue.claim("worker-1", 60) is not None
        settings = JobSettings(max_attempts=1)
        assert queue.fail(job_id, "worker-1", error, settings).state == JobState.FAILED
        return job_id
    finally:
        queue.close()


def job_state(storage: Path, job_id: int) -> JobState:
    queue = JobQueue(storage)
    try:
        return queue.get(job_id).state
    finally:
        queue.close()


def audit_actions(storage: Path) -> list[str]:
    log = AuditLog(storage)
    try:
        return [entry.action for entry in log.page(1, 1000).entries]
    finally:
        log.close()


# Sign-in ------------------------------------------------------------------------------------


def test_health_needs_no_sign_in_and_every_answer_has_the_security_headers(client):
    answer = client.get("/health")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    for page in ("/health", "/login", "/"):
        headers = client.get(page).headers
        assert headers["content-security-policy"].startswith("default-src 'self'")
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
        assert headers["cache-control"] == "no-store"


#: Path parameters that name something real, so that a route's own checks of them pass.
EXAMPLE_PARAMETERS = {"uid": SERIES, "job_id": "1", "section": "peers", "action": "add", "name": "pacs"}


def _example_path(path: str) -> str:
    return re.sub(r"\{([^}:]+)(:[a-z]+)?\}", lambda m: EXAMPLE_PARAMETERS.get(m.group(1), "x"), path)


def _routes(routes, prefix: str = ""):
    for route in routes:
        if isinstance(route, Mount):
            if route.path != "/static":
                yield from _routes(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path, route.methods or {"GET"}


def test_every_route_but_health_login_and_static_refuses_a_visitor_not_signed_in(app, client, console):
    failed_job(console.storage_dir)
    checked = 0
    for path, methods in _routes(app.routes):
        if path in ("/health", "/login"):
            continue
        for method in methods - {"HEAD"}:
            answer = client.request(method, _example_path(path), data={"x": "1"})
            assert answer.status_code == 303, f"{method} {path}: {answer.status_code}"
            assert answer.headers["location"].startswith("/login"), f"{method} {path}"
            checked += 1
    assert checked >= 7  # the state pages at least; the config and test pages add theirs
    assert job_state(console.storage_dir, 1) == JobState.FAILED
    assert client.get("/static/console.css").status_code == 200


def test_sign_in_opens_the_overview_and_comes_back_to_the_page_asked_for(client):
    answer = client.get("/series?page=2")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Fseries%3Fpage%3D2"
    login = client.get(answer.headers["location"])
    assert 'value="/series?page=2"' in login.text
    answer = client.post("/login", data={"user": "admin", "password": PASSWORD,
                                         "csrf_token": token(login.text), "next": "/series?page=2"})
    assert (answer.status_code, answer.headers["location"]) == (303, "/series?page=2")
    cookie = answer.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    overview = client.get("/")
    assert overview.status_code == 200
    assert "admin" in overview.text and "open associations" in overview.text


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example",
                                    "javascript:x"])
def test_sign_in_never_sends_on_to_another_site(client, target):
    answer = sign_in(client, next=target)
    assert (answer.status_code, answer.headers["location"]) == (303, "/")


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(client, console):
    wrong = sign_in(client, password="not it")
    unknown = sign_in(client, user="nobody")
    assert wrong.status_code == unknown.status_code == 403
    assert "Wrong user name or password." in wrong.text and "Wrong user name or password." in unknown.text
    assert client.get("/").status_code == 303
    assert console.sample("segnode_console_failed_logins_total") == 2


def test_failed_log_ins_are_limited_per_user_name_and_per_address(client, console):
    for _ in range(FAILURES):
        assert sign_in(client, password="guess").status_code == 403
    blocked = sign_in(client)  # the right password: refused all the same, unchecked
    assert blocked.status_code == 429
    assert 800 < int(blocked.headers["retry-after"]) <= 900
    assert "Too many failed log-ins" in blocked.text
    # The address is blocked too, whatever name it tries next.
    assert sign_in(client, user="other").status_code == 429
    assert console.sample("segnode_console_failed_logins_total") == FAILURES + 2


def test_sign_in_needs_the_login_forms_token(client):
    client.get("/login")
    answer = client.post("/login", data={"user": "admin", "password": PASSWORD})
    assert answer.status_code == 403
    assert client.get("/").status_code == 303


def test_signing_out_revokes_the_session_cookie(signed_in):
    cookie = signed_in.cookies[SESSION_COOKIE]
    overview = signed_in.get("/")
    answer = signed_in.post("/logout", data={"csrf_token": token(overview.text)})
    assert (answer.status_code, answer.headers["location"]) == (303, "/login")
    signed_in.cookies.set(SESSION_COOKIE, cookie)  # replayed, as someone who copied it would
    assert signed_in.get("/").status_code == 303


def test_a_cookie_signed_with_another_key_is_refused(signed_in):
    signed = signed_in.cookies[SESSION_COOKIE]
    payload = base64.b64decode(signed.split(".")[0])
    assert "sid" in json.loads(payload)
    forged = itsdangerous.TimestampSigner(os.urandom(32).hex()).sign(base64.b64encode(payload)).decode()
    signed_in.cookies.set(SESSION_COOKIE, forged)
    assert signed_in.get("/").status_code == 303
    signed_in.cookies.set(SESSION_COOKIE, signed)
    assert signed_in.get("/").status_code == 200


def test_a_user_removed_from_the_configuration_is_signed_out(signed_in, console):
    assert signed_in.get("/").status_code == 200
    console.config = parse_config(config_text(console.storage_dir, {}), check_files=False)
    assert signed_in.get("/").status_code == 303


def test_sessions_expire_after_their_lifetime():
    table = SessionTable()
    session = table.open("admin", "token", now=1000.0)
    assert table.find(session.id, 1000.0 + 299, 300, {"admin"}) == session
    assert table.find(session.id, 1000.0 + 300, 300, {"admin"}) is None
    assert table.find(session.id, 1000.0, 300, {"admin"}) is None  # ended, not only expired


def test_the_session_key_is_made_once_and_refused_when_others_may_read_it(tmp_path):
    key = read_or_create_session_key(tmp_path)
    path = session_key_path(tmp_path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert read_or_create_session_key(tmp_path) == key
    path.chmod(0o644)
    with pytest.raises(SessionKeyError, match="others than its owner may read it"):
        read_or_create_session_key(tmp_path)


# Forms --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [None, "wrong", ""])
def test_a_form_without_its_sessions_token_changes_nothing(signed_in, console, sent):
    job_id = failed_job(console.storage_dir)
    data = {} if sent is None else {"csrf_token": sent}
    answer = signed_in.post(f"/jobs/{job_id}/retry", data=data)
    assert answer.status_code == 403
    assert "security token" in answer.text
    assert job_state(console.storage_dir, job_id) == JobState.FAILED
    assert "retry job" not in audit_actions(console.storage_dir)


def test_a_failed_job_is_retried_from_its_series_page_and_audited(signed_in, console):
    job_id = failed_job(console.storage_dir, error=f"worker said {SCRIPT}")
    page = signed_in.get(f"/series/{SERIES}")
    assert page.status_code == 200
    assert f'action="/jobs/{job_id}/retry"' in page.text
    assert SCRIPT not in page.text and "worker said &lt;script&gt;" in page.text
    answer = signed_in.post(f"/jobs/{job_id}/retry", data={"csrf_token": token(page.text)})
    assert (answer.status_code, answer.headers["location"]) == (303, f"/series/{SERIES}")
    assert job_state(console.storage_dir, job_id) == JobState.QUEUED
    queue = JobQueue(console.storage_dir)
    assert queue.claim("worker-2", 60) is not None
    queue.close()
    running = signed_in.post(f"/jobs/{job_id}/retry", data={"csrf_token": token(page.text)})
    assert running.status_code == 409 and "is not allowed" in running.text
    audit = signed_in.get("/audit")
    assert "retry job" in audit.text and f"job {job_id} (segment of series {SERIES}" in audit.text
    assert audit_actions(console.storage_dir).count("sign-in") == 1


def test_a_body_over_the_bound_is_refused(signed_in, console):
    job_id = failed_job(console.storage_dir)
    csrf = token(signed_in.get("/").text)
    large = {"csrf_token": csrf, "filler": "x" * (70 * 1024)}
    assert signed_in.post(f"/jobs/{job_id}/retry", data=large).status_code == 413

    def chunks():  # no Content-Length: found too long while reading
        yield f"csrf_token={csrf}&filler=".encode()
        for _ in range(80):
            yield b"x" * 1024

    answer = signed_in.post(f"/jobs/{job_id}/retry", content=chunks(),
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 413
    assert job_state(console.storage_dir, job_id) == JobState.FAILED


# Pages --------------------------------------------------------------------------------------


def test_what_scanners_send_is_escaped_on_every_page(signed_in, console):
    receive(console.storage_dir, SERIES, calling_ae=SCRIPT)
    console.associations = (OpenAssociation(SCRIPT, "127.0.0.1:40000", time.time(), 3),)
    for path in ("/", "/overview/live", "/series", f"/series/{SERIES}"):
        page = signed_in.get(path)
        assert page.status_code == 200, path
        assert SCRIPT not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path


def test_the_live_fragment_and_fragment_requests_have_no_page_around_them(signed_in):
    live = signed_in.get("/overview/live")
    assert "<html" not in live.text and "open associations" in live.text
    fragment = signed_in.get("/series", headers={"X-Console-Fragment": "1"})
    assert "<html" not in fragment.text and "<h1>Series</h1>" in fragment.text
    assert "<html" in signed_in.get("/series").text


def test_series_pages_are_paginated_and_filtered(signed_in, console):
    for k in range(60):
        receive(console.storage_dir, f"1.2.3.{k}.9")
    first = signed_in.get("/series")
    assert "60 series." in first.text and "page 1 of 2" in first.text
    assert 'href="/series?page=2"' in first.text
    assert "page 2 of 2" in signed_in.get("/series?page=2").text
    assert "0 series complete." in signed_in.get("/series?state=complete").text
    assert signed_in.get("/series?state=%3Cb%3E").status_code == 400
    assert signed_in.get("/series?page=x").status_code == 400
    assert signed_in.get("/series/9.9.9").status_code == 404
    assert signed_in.get(f"/series/{SERIES}/report.pdf").status_code == 404


def test_a_finished_series_shows_its_stage_times_measurements_flags_and_report(signed_in, console):
    storage = console.storage_dir
    job_id = failed_job(storage)
    out = storage / "results" / SERIES / "segment-ct"
    out.mkdir(parents=True)
    liver = StructureMeasurements(
        segment_number=1, name="liver", volume_ml=2534.25, voxel_count=2_400_123, hu_mean=55.25, hu_std=12.5,
        hu_min=-98.0, hu_max=210.0,
        flags=(QualityFlag(FlagKind.VOLUME_OUT_OF_RANGE, f"volume 2534 ml outside 900-2500 ml {SCRIPT}"),))
    write_measurements_csv([liver], out / "measurements.csv")
    (out / "report.pdf").write_bytes(b"%PDF-1.7\n% the job's report\n")
    queue = JobQueue(storage)
    try:
        queue.retry(job_id)
        assert queue.claim("worker-1", 60) is not None
        queue.succeed(job_id, "worker-1", SegmentResult(
            out / "seg.dcm", out / "sr.dcm", out / "measurements.csv", out / "labels.nii.gz", "builtin 1", 1,
            False, {"segment": 2.25, "measure": 75.0}))
    finally:
        queue.close()
    page = signed_in.get(f"/series/{SERIES}")
    assert "segment 2.2 s" in page.text and "measure 1 min 15 s" in page.text
    assert "liver" in page.text and "2534.2" in page.text
    assert "volume-out-of-range" in page.text.replace("_", "-").lower()
    assert SCRIPT not in page.text
    assert f'href="/series/{SERIES}/report.pdf"' in page.text
    report = signed_in.get(f"/series/{SERIES}/report.pdf")
    assert report.status_code == 200 and report.headers["content-type"] == "application/pdf"
    assert report.content == (out / "report.pdf").read_bytes()


def test_a_failing_page_answers_500_and_the_console_goes_on(signed_in, console, caplog):
    (console.storage_dir / INDEX_FILENAME).rename(console.storage_dir / "moved")
    with TestClient(signed_in.app, base_url="https://console.test", follow_redirects=False,
                    raise_server_exceptions=False, cookies=signed_in.cookies) as other:
        answer = other.get("/")
        assert answer.status_code == 500
        assert "This page failed" in answer.text
        assert answer.headers["x-frame-options"] == "DENY"
        assert other.get("/health").status_code == 200
    assert "console: GET / failed" in caplog.text


def test_requests_are_counted_by_route_template(signed_in, console):
    receive(console.storage_dir, SERIES)
    signed_in.get(f"/series/{SERIES}")
    signed_in.get("/no/such/page")
    assert console.sample("segnode_console_requests_total", method="GET", route="/series/{uid}",
                          status="200") == 1
    assert console.sample("segnode_console_requests_total", method="GET", route="unmatched",
                          status="404") == 1
    assert console.sample("segnode_console_request_seconds_count") >= 4


# The node ------------------------------------------------------------------------------------


def test_the_console_server_serves_https_with_secure_cookies_and_names_a_busy_address(tmp_path, console,
                                                                                   password_hash):
    credential = Authority(tmp_path / "ca").issue("console")
    port = free_port()
    https = f"""
    certificate: {credential.certificate}
    private_key: {credential.key}
"""
    text = config_text(console.storage_dir, {"admin": password_hash}, port).replace(
        f"    port: {port}\n", f"    port: {port}\n{https}")
    console.config = parse_config(text)
    server = ConsoleServer(console.context(), console.config.node.console)
    server.start()
    url = server.url
    try:
        assert url == f"https://127.0.0.1:{port}/"
        trust = ssl.create_default_context(cafile=credential.certificate)
        with httpx.Client(base_url=url, verify=trust, timeout=10) as http:
            login = http.get("/login")
            assert login.status_code == 200
            assert "secure" in login.headers["set-cookie"].lower()
        busy = ConsoleServer(console.context(), console.config.node.console)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            busy.start()
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}health", verify=False, timeout=5)


def test_segnode_serve_serves_the_console(node_factory, password_hash):
    port = free_port()
    node = node_factory(console={"port": port, "users": [{"name": "admin", "password_hash": password_hash}]})
    node.start()
    assert f"console http://127.0.0.1:{port}/" in node.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
        assert json.load(answer) == {"status": "ok"}
    assert session_key_path(node.storage_dir).stat().st_mode & 0o777 == 0o600
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=False, timeout=10) as http:
        answer = sign_in(http)
        assert answer.status_code == 303
        assert http.get("/").status_code == 200
    assert node.terminate() == 0
    assert "segnode stopped" in node.log()
