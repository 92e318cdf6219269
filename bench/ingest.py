"""Ingest benchmark: dcmtk storescu into dcmtk storescp and into segnode, in one run.

One synthetic CT series (512x512, 16-bit, explicit VR little endian) is sent
over loopback by dcmtk's storescu, first into dcmtk's storescp (writing files,
no fsync) and then into ``segnode serve`` (fsync'ed files and SQLite index
before each success status), each over plain TCP and over DICOM TLS (BCP
195, client certificates on both sides). Each is sent ``--repeat`` times,
alternating; the best and median wall times of the storescu runs give MB/s
and the ratio segnode / storescp (higher is better; 1.0 means as fast as
storescp) for plain TCP and for TLS.

Both peers run with TCP_NODELAY=1: Debian's dcmtk 3.6.7 leaves Nagle's
algorithm on otherwise and is ~50x slower, so this compares against dcmtk at
its best.

    python bench/ingest.py --slices 600 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.certificates import Authority  # noqa: E402
from tests.synthetic import write_ct_series  # noqa: E402

DCMTK = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_echo(port: int, called_ae: str, tls: list[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        echo = subprocess.run(
            [DCMTK / "echoscu", *tls, "-aet", "STORESCU", "-aec", called_ae, "127.0.0.1", str(port)],
            capture_output=True,
            env=ENV,
        )
        if echo.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers C-ECHO on port {port}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send(files: list[Path], port: int, called_ae: str, receiver_pid: int,
         tls: list[str]) -> tuple[float, float]:
    """Wall time of one storescu run sending every file on one association,
    and the CPU time the receiver used meanwhile."""
    cpu_before = cpu_seconds(receiver_pid)
    start = time.perf_counter()
    result = subprocess.run(
        [DCMTK / "storescu", *tls, "-aet", "STORESCU", "-aec", called_ae, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        env=ENV,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr}")
    return elapsed, cpu_seconds(receiver_pid) - cpu_before


def start_storescp(workdir: Path, *options: str, name: str = "storescp",
                   client_tls: list[str] = ()) -> tuple[subprocess.Popen, int]:
    """dcmtk's storescp with `options` (TLS ones among them: then `client_tls`
    is what echoscu needs to reach it)."""
    port = free_port()
    out = workdir / name
    out.mkdir()
    proc = subprocess.Popen(
        [DCMTK / "storescp", *options, "-aet", "STORESCP", "-od", str(out), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_echo(port, "STORESCP", list(client_tls))
    return proc, port


def start_segnode(workdir: Path, tls: dict[str, object] | None = None, client_tls: list[str] = (),
                  **node_settings: object) -> tuple[subprocess.Popen, int]:
    """``segnode serve`` on a free port, and on `tls`'s port with DICOM TLS if given."""
    port = free_port()
    config = {
        "node": {
            "ae_title": "SEGNODE",
            "host": "127.0.0.1",
            "port": port,
            "storage_dir": str(workdir / "segnode"),
            "metrics_port": free_port(),
            **({"tls": tls} if tls else {}),
            **node_settings,
        },
        "peers": [{"ae_title": "STORESCU"}],
    }
    config_path = workdir / "segnode.yaml"
    config_path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve", "--config", str(config_path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "segnode.log").open("w"),
    )
    wait_for_echo(port, "SEGNODE", [])
    if tls:
        wait_for_echo(tls["port"], "SEGNODE", list(client_tls))
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="segnode-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = write_ct_series(
        workdir / "series", "1.2.840.10008.1.2.1", slices=args.slices, rows=512, columns=512
    )
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    print(f"series: {len(files)} slices of 512x512, {megabytes:.1f} MB, sent by dcmtk storescu")

    # One CA for both sides; each side presents its certificate and checks the other's.
    hospital = Authority(workdir / "pki")
    server, client = hospital.issue("receiver"), hospital.issue("storescu")
    client_tls = ["+tls", str(client.key), str(client.certificate), "+cf", str(hospital.certificate)]
    server_tls = ["+tls", str(server.key), str(server.certificate), "+cf", str(hospital.certificate),
                  "--require-peer-cert"]
    node_tls = {"port": free_port(), "certificate": str(server.certificate), "key": str(server.key),
                "client_ca": str(hospital.certificate)}

    storescp, storescp_port = start_storescp(workdir)
    storescp_tls, storescp_tls_port = start_storescp(workdir, *server_tls, name="storescp-tls",
                                                     client_tls=client_tls)
    segnode, segnode_port = start_segnode(workdir, node_tls, client_tls)
    segnode_tls_port = node_tls["port"]
    receivers = {
        "dcmtk storescp": (storescp_port, "STORESCP", storescp.pid, []),
        "segnode (fsync)": (segnode_port, "SEGNODE", segnode.pid, []),
        "storescp TLS": (storescp_tls_port, "STORESCP", storescp_tls.pid, client_tls),
        "segnode TLS": (segnode_tls_port, "SEGNODE", segnode.pid, client_tls),
    }
    times: dict[str, list[float]] = {name: [] for name in receivers}
    cpu: dict[str, list[float]] = {name: [] for name in receivers}
    try:
        for _ in range(args.repeat):
            for name, (port, called_ae, pid, tls) in receivers.items():
                wall, used = send(files, port, called_ae, pid, tls)
                times[name].append(wall)
                cpu[name].append(used)
    finally:
        for proc in (storescp, storescp_tls, segnode):
            proc.terminate()
            proc.wait(30)

    print(
        f"{'receiver':<18} {'best s':>8} {'median s':>9} {'best MB/s':>10} {'median MB/s':>12}"
        f" {'CPU ms/slice':>13}"
    )
    for name, runs in times.items():
        best, median = min(runs), statistics.median(runs)
        cpu_per_slice = statistics.median(cpu[name]) / len(files) * 1000
        print(
            f"{name:<18} {best:>8.3f} {median:>9.3f} {megabytes / best:>10.1f}"
            f" {megabytes / median:>12.1f} {cpu_per_slice:>13.2f}"
        )
    for ours, reference, over in (("segnode (fsync)", "dcmtk storescp", "plain TCP"),
                                  ("segnode TLS", "storescp TLS", "DICOM TLS")):
        ratio_best = min(times[reference]) / min(times[ours])
        ratio_median = statistics.median(times[reference]) / statistics.median(times[ours])
        print(f"segnode / storescp throughput ratio over {over}: best {ratio_best:.2f}, "
              f"median {ratio_median:.2f}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
