"""Shared test machinery: a real ``segnode serve`` subprocess and real peers.

dcmtk's tools are called by absolute path: pynetdicom installs console
scripts of the same names (``storescu``...) that would shadow them on PATH.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ

from config import Destination
from tests.synthetic import STORESCP_FLAGS

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DCMTK_BIN = Path("/usr/bin")


def dcmtk(tool: str) -> str:
    """Path of a dcmtk tool; .ci/run installs dcmtk, so its absence is an error."""
    path = DCMTK_BIN / tool
    if not path.exists():
        pytest.fail(f"dcmtk's {tool} is not installed at {path}: run ./install.sh --test")
    return str(path)


def dcmtk_env() -> dict[str, str]:
    # dcmtk 3.6.7 leaves Nagle's algorithm on unless told otherwise (~50x slower).
    return {**os.environ, "TCP_NODELAY": "1"}


def rss_bytes(pid: int) -> int:
    """A process's resident memory (VmRSS, /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range: a port the kernel
    hands out for binding to 0 may be taken by an outgoing connection (the
    tests open hundreds) before the process it was meant for binds it."""
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    while True:
        port = random.randrange(10000, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class NodeProcess:
    """A ``segnode serve`` subprocess with its config file and storage folder."""

    def __init__(self, workdir: Path, **node_settings):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "segnode.yaml"
        self.log_path = workdir / "segnode.log"
        self.storage_dir = workdir / "store"
        self.port = free_port()
        self.metrics_port = free_port()
        self.config = {
            "node": {
                "ae_title": "SEGNODE",
                "host": "127.0.0.1",
                "port": self.port,
                "storage_dir": str(self.storage_dir),
                "series_stable_seconds": 1.5,
                "metrics_port": self.metrics_port,
                **node_settings,
            },
            "peers": [
                {"ae_title": "STORESCU"},
                {"ae_title": "ECHOSCU"},
                {"ae_title": "TESTSCU", "host": "127.0.0.1"},
            ],
        }
        self.write_config()
        self.proc: subprocess.Popen | None = None

    def write_config(self, config: dict | None = None) -> None:
        text = yaml.safe_dump(config if config is not None else self.config)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def start(self, preexec_fn=None) -> NodeProcess:
        already_logged = len(self.log())
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=preexec_fn,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"segnode exited at start:\n{self.log()}")
            if "segnode ready" in self.log()[already_logged:]:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"segnode did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def status(self) -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-m", "node.cli", "status", "--config", str(self.config_path), "--json"],
            capture_output=True,
            text=True,
            check=True,
            cwd=self.workdir,
        )
        return json.loads(out.stdout)["series"]

    def status_jobs(self) -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-m", "node.cli", "status", "--config", str(self.config_path), "--json"],
            capture_output=True, text=True, check=True, cwd=self.workdir,
        )
        return json.loads(out.stdout)["jobs"]

    def wait_for_series(self, series_uid: str, state: str, instances: int, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        seen: dict = {}
        while time.monotonic() < deadline:
            for series in self.status():
                if series["series_instance_uid"] == series_uid:
                    seen = series
                    if series["state"] == state and series["instances"] == instances:
                        return series
            time.sleep(0.2)
        raise AssertionError(f"series {series_uid} never became {state} with {instances}: {seen}")

    def metrics(self) -> dict[str, float]:
        """Sample name with labels -> value, from the Prometheus endpoint."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("segnode_"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stored_files(self) -> list[Path]:
        return sorted((self.storage_dir / "instances").rglob("*.dcm"))

    def partial_files(self) -> list[Path]:
        """What was being received and is neither kept nor refused (node/receive/storage.py's spool)."""
        return sorted((self.storage_dir / "spool").glob("*"))


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    nodes: list[NodeProcess] = []

    def make(**node_settings) -> NodeProcess:
        node = NodeProcess(tmp_path / f"node{len(nodes)}", **node_settings)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()


@pytest.fixture
def node(node_factory) -> NodeProcess:
    return node_factory().start()


def scu(ae_title: str = "TESTSCU") -> AE:
    """A pynetdicom SCU proposing CT storage and verification in explicit and implicit VR."""
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

    ae = AE(ae_title=ae_title)
    for sop_class in (CTImageStorage, MRImageStorage, Verification):
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    return ae


def rejection(ae: AE, port: int, **associate) -> tuple[int, int, int]:
    """(result, source, diagnostic) of the A-ASSOCIATE-RJ that `ae` received from the node on `port`.

    Read from the PDU as it arrived, not from the association: pynetdicom 3.0's
    requestor checks its socket only after connecting, and when the rejection
    comes fast enough that its reader has already acted on it and closed the
    socket, it reports a failed connection instead.
    """
    received = []
    handler = (evt.EVT_PDU_RECV, lambda event: received.append(event.pdu))
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGNODE", evt_handlers=[handler], **associate)
    assert not assoc.is_established, "the association was accepted"
    answers = [pdu for pdu in received if isinstance(pdu, A_ASSOCIATE_RJ)]
    assert answers, f"no A-ASSOCIATE-RJ came back, only {[type(pdu).__name__ for pdu in received]}"
    return answers[0].result, answers[0].source, answers[0].reason_diagnostic


class StoreSCP:
    """dcmtk's storescp on a free port, writing what it receives to ``out``."""

    def __init__(self, workdir: Path, *extra: str, port: int | None = None):
        self.port = port or free_port()
        self.out = workdir / f"storescp-{self.port}"
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"storescp-{self.port}.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [dcmtk("storescp"), *STORESCP_FLAGS, *extra, "-aet", "STORESCP", "-od", str(self.out)]
                + [str(self.port)],
                env=dcmtk_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.proc)

    @property
    def destination(self) -> Destination:
        return self.destination_at(self.port)

    @staticmethod
    def destination_at(port: int) -> Destination:
        """Where a StoreSCP on ``port`` is, whether or not one runs there."""
        return Destination(ae_title="STORESCP", host="127.0.0.1", port=port)

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> the file storescp wrote for it."""
        return {uid: path for uid, path in self._written()}

    def received_counts(self) -> Counter:
        """How many files arrived per SOP Instance UID (storescp +uf keeps every copy)."""
        return Counter(uid for uid, _ in self._written())

    def _written(self) -> Iterator[tuple[str, Path]]:
        """Each file storescp has finished writing, with its SOP Instance UID: one it
        is still writing has no whole file meta yet and is left for the next look."""
        for path in self.out.iterdir():
            if not path.is_file():
                continue
            try:
                yield str(read_file_meta_info(path).MediaStorageSOPInstanceUID), path
            except (InvalidDicomError, EOFError):
                continue

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the peer on port {port} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")
