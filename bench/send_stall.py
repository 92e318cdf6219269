"""Send-stall diagnostic: pynetdicom's C-STORE SCU, and segnode's sender, into dcmtk's storescp.

One synthetic CT series (small slices: the stall needs fast round trips, not
bytes) is sent ``--runs`` times over loopback into ``/usr/bin/storescp
--ignore`` (TCP_NODELAY=1), one association per run, in three ways:

``nagle``
    ``Association.send_c_store`` as pynetdicom 3.0 sets it up: Nagle's
    algorithm on. Prints the time per instance.
``nodelay``
    the same with TCP_NODELAY set from an EVT_CONN_OPEN handler. A run stalls
    when ``send_c_store`` gets no response within ``--dimse-timeout``. For
    each stall it prints whether EVT_DIMSE_RECV (DUL thread) had decoded the
    response to that Message ID, and which thread logged "Received unexpected
    C-STORE service message": the association's reactor thread took the
    response off the DIMSE queue (see node/send/sender.py).
``segnode``
    node.send.sender.send_files: every file must come back delivered, each lost
    response counted and recovered without waiting for a timeout.

    python bench/send_stall.py --slices 300 --runs 10

Measured here (300 slices of 32x32, shared 2-core machine): Nagle on 45-50
ms per instance, TCP_NODELAY 3.5 ms; plain ``send_c_store`` with TCP_NODELAY
stalled 11 times in about 14,000 C-STOREs (from 1 in 350 to none in 6,000,
with the load); segnode's sender delivered all of 75,000, recovering 22 lost
responses.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pydicom import dcmread  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from config import Destination  # noqa: E402
from node.send.sender import send_files  # noqa: E402
from tests.synthetic import write_ct_series  # noqa: E402

STORESCP = "/usr/bin/storescp"


class _Warnings(logging.Handler):
    """Warnings of a logger, with the name of the thread that logged each."""

    def __init__(self, logger: str):
        super().__init__(logging.WARNING)
        self.records: list[tuple[str, str]] = []
        logging.getLogger(logger).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.threadName, record.getMessage()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_storescp(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [STORESCP, "--ignore", "-aet", "STORESCP", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    raise RuntimeError("storescp did not start")


def plain_runs(files: list[Path], port: int, runs: int, nodelay: bool, dimse_timeout: float) -> None:
    """send_c_store of every file, one association per run; report stalls with their evidence."""
    datasets = [dcmread(path) for path in files]
    ae = AE("BENCH")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.dimse_timeout = dimse_timeout
    pynetdicom_warnings = _Warnings("pynetdicom")
    responses: dict[int, str] = {}

    def on_open(event) -> None:
        if nodelay:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_message(event) -> None:
        command = event.message.command_set
        if "MessageIDBeingRespondedTo" in command:
            responses[int(command.MessageIDBeingRespondedTo)] = threading.current_thread().name

    label = "nodelay" if nodelay else "nagle"
    stalls = sent = 0
    elapsed_total = 0.0
    for run in range(runs):
        responses.clear()
        pynetdicom_warnings.records.clear()
        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="STORESCP",
            evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_DIMSE_RECV, on_message)],
        )
        assert assoc.is_established
        start = time.perf_counter()
        for index, dataset in enumerate(datasets):
            status = assoc.send_c_store(dataset, msg_id=index + 1)
            if "Status" not in status:
                stalls += 1
                print(
                    f"{label} run {run}: stall at instance {index}: response decoded by "
                    f"{responses.get(index + 1, 'nobody')}; pynetdicom warnings: "
                    f"{pynetdicom_warnings.records}"
                )
                break
            sent += 1
        elapsed = time.perf_counter() - start
        elapsed_total += elapsed
        if assoc.is_established:
            assoc.release()
    print(
        f"{label}: {sent} C-STOREs in {runs} runs, {stalls} stalls, "
        f"{1000 * elapsed_total / max(sent, 1):.2f} ms per instance (stall waits included)"
    )


def segnode_runs(files: list[Path], port: int, runs: int, timeout: float) -> None:
    """node.send.sender.send_files; every file must be delivered; lost responses are counted."""
    send_warnings = _Warnings("node.send.sender")
    destination = Destination(ae_title="STORESCP", host="127.0.0.1", port=port)
    lost = undelivered = 0
    slowest = 0.0
    elapsed_total = 0.0
    for run in range(runs):
        send_warnings.records.clear()
        start = time.perf_counter()
        results = send_files(destination, files, calling_ae="BENCH", timeout=timeout)
        elapsed = time.perf_counter() - start
        elapsed_total += elapsed
        slowest = max(slowest, elapsed)
        undelivered += sum(not result.delivered for result in results)
        lost_now = sum("lost inside pynetdicom" in message for _, message in send_warnings.records)
        lost += lost_now
        if lost_now:
            print(f"segnode run {run}: {lost_now} lost responses recovered, run took {elapsed:.2f}s")
    print(
        f"segnode: {runs * len(files)} C-STOREs in {runs} runs, {undelivered} not delivered, "
        f"{lost} lost responses recovered, slowest run {slowest:.2f}s, "
        f"{1000 * elapsed_total / (runs * len(files)):.2f} ms per instance"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=32, help="rows and columns of each slice")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--nagle-slices", type=int, default=50, help="slices for the (slow) Nagle run")
    parser.add_argument("--dimse-timeout", type=float, default=3.0)
    parser.add_argument(
        "--modes", nargs="+", choices=("nagle", "nodelay", "segnode"), default=["nagle", "nodelay", "segnode"]
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="segnode-send-stall-"))
    files = write_ct_series(workdir / "series", slices=args.slices, rows=args.size, columns=args.size)
    print(f"{len(files)} slices of {args.size}x{args.size}, {files[0].stat().st_size} bytes each")
    port = free_port()
    storescp = start_storescp(port)
    try:
        if "nagle" in args.modes:
            plain_runs(files[: args.nagle_slices], port, 1, nodelay=False, dimse_timeout=args.dimse_timeout)
        if "nodelay" in args.modes:
            plain_runs(files, port, args.runs, nodelay=True, dimse_timeout=args.dimse_timeout)
        if "segnode" in args.modes:
            segnode_runs(files, port, args.runs, timeout=args.dimse_timeout)
    finally:
        storescp.terminate()
        storescp.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
