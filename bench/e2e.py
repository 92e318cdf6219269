"""End-to-end latency: from a series' last success status to the destination acknowledging SEG and SR.

One synthetic CT (phantom/anatomy.py, 512x512x300 by default) is sent, as a
scanner sends it, into ``segnode serve`` (the built-in segmenter on the CPU,
one destination), in two cases measured in the same run, one series of
each in turn: a scanner whose series complete when its association is
released (``peers[].completion: association``, the default 1 s grace
period), and one whose series complete after the stable period
(``series_stable_seconds`` 2), the reference. The clock starts when the
success status of the series' last instance arrives at the scanner, and stops
when the destination has returned success for both the SEG and the SR. Both
ends of the clock live in this process, so they are exact: the scanner is a
pynetdicom SCU whose EVT_DIMSE_RECV handler timestamps each C-STORE response
as it is decoded, and the destination is a pynetdicom Storage SCP that
timestamps each success it returns (a dcmtk storescp logs no time for its
responses). Both set TCP_NODELAY, as segnode's sender does.

The latency is cut into parts that add up to it exactly, from the node's
records of the same run:

- association end: the release, as the scanner saw it return, then the
  grace period and the assembler's lag to the "series complete" log line;
- or, for the stable timer: from the last success status to the last
  arrival plus ``series_stable_seconds`` (the index's arrival time is taken
  before the instance is stored, so this is a little under the setting),
  then the assembler's poll lag to the "series complete" log line;
- routing + queueing: to the job's ``queued_at``;
- worker claims the job: to the worker's "attempt" log line;
- each stage the pipeline times (the job's result: load, segment, quantify,
  qa, encode, write), and the worker's untimed work in between (the file
  list, re-reading the headers for the SEG's references, planning segments,
  loading the model on the first job), up to the outbox rows' ``enqueued``;
- outbox pickup: to the destination seeing the connection open;
- sending the first and the second result: to each success the destination
  returns (the first includes the association's negotiation).

One node serves all ``--repeat`` runs, each with a series of its own (a new
seed, so new UIDs), as a node that has been up a while would; the first run
includes the worker's first job (the model's loading, highdicom reading its
tables of the standard). A table per case gives each part in each run, its
best and median, the total and how busy the machine was; the two medians
close it, association end's against the 12 s goal.

    .venv/bin/python bench/e2e.py                  # 512x512x300, 3 runs of each case
    .venv/bin/python bench/e2e.py --slices 40 --repeat 1   # a quick check

Measured on the shared 2-core build machine (1-minute load 0.7 to 1.0),
``--repeat 3``, issue 13's code: median 11.2 s with association end and
13.1 s with the stable timer (27.9 s before issue 13, the stable timer then
alone). By median, with association end: segment 5.3 s, encode 1.4 s, write
1.1 s, load 0.7 s, quantify 0.5 s, qa 0.4 s, the worker's untimed work
0.3 s; the grace period 1.0 s; polls 0.2 s; sending both results 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from bench.ingest import cpu_seconds  # noqa: E402
from node.queue.job_state import JobState  # noqa: E402
from node.queue.jobs import Job, JobQueue  # noqa: E402
from node.queue.results import SegmentResult  # noqa: E402
from node.receive.index import InstanceIndex  # noqa: E402
from node.send.outbox import OUTBOX_FILENAME  # noqa: E402
from phantom.anatomy import CT_GRID, AxialGrid  # noqa: E402
from phantom.study import write_study  # noqa: E402

#: Issue 13's goal for the median with association end.
GOAL_SECONDS = 12.0
STABLE_SECONDS = 2.0
GRACE_SECONDS = 1.0
NODE_AE = "SEGNODE"
DESTINATION_AE = "RESULTS"
#: How long one run may take from the last instance to both results.
RESULT_TIMEOUT_SECONDS = 600.0
#: A response pynetdicom loses (see node/send/sender.py) surfaces after this long.
SCANNER_DIMSE_TIMEOUT_SECONDS = 5.0

# asctime of the node's and the workers' log lines (node/cli.py, node/work/worker.py).
_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
_COMPLETE_LINE = _STAMP + r" \w+ node\.assemble\.assembly: series (\S+) complete \([\w-]+\):"
_CLAIM_LINE = _STAMP + r" \w+ \S+ segnode\.worker: job (\d+) \(segment of series (\S+), route"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def phantom_grid(slices: int) -> AxialGrid:
    """The clinical grid (512x512, 0.98 mm, 2 mm slices), cut to the middle
    `slices` slices for quick runs: per-slice costs stay those of the full scan."""
    return AxialGrid((slices, *CT_GRID.shape[1:]), CT_GRID.spacing)


def _nodelay(event) -> None:
    # pynetdicom leaves Nagle's algorithm on; delayed ACKs would add tens of ms per message.
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Case(Enum):
    """How the scanner's series complete: its calling AE title, configured so."""

    ASSOCIATION = "SCANNER-ASSOC"
    STABLE = "SCANNER-STABLE"

    @property
    def completion(self) -> str:
        return "association" if self is Case.ASSOCIATION else "stable"


@dataclass(frozen=True)
class SentSeries:
    """A series as the scanner sent it: when its last success status arrived,
    and when the release of its association returned."""

    last_success: float
    released: float
    lost_responses: int


def send_series(files: Sequence[Path], port: int, calling_ae: str) -> SentSeries:
    """C-STORE `files` in order on one association, as a scanner does.

    Each response is timestamped in the DUL thread as it is decoded
    (EVT_DIMSE_RECV). pynetdicom sometimes loses a fast response after that
    (node/send/sender.py explains the race); the status recorded here still counts,
    and the rest go on a new association once pynetdicom has given up.
    """
    answered: dict[int, tuple[float, int]] = {}

    def on_message(event) -> None:
        command = event.message.command_set
        if "MessageIDBeingRespondedTo" in command:
            answered[int(command.MessageIDBeingRespondedTo)] = (time.time(), int(command.Status))

    ae = AE(calling_ae)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.dimse_timeout = SCANNER_DIMSE_TIMEOUT_SECONDS
    handlers = [(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_DIMSE_RECV, on_message)]
    lost = 0
    sent = 0
    while sent < len(files):
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE, evt_handlers=handlers)
        if not assoc.is_established:
            raise RuntimeError(f"segnode on port {port} did not accept an association from {calling_ae}")
        try:
            while sent < len(files):
                message_id = sent + 1
                status = assoc.send_c_store(files[sent], msg_id=message_id)
                answer = answered.get(message_id)
                if answer is None:
                    raise RuntimeError(f"segnode did not answer the C-STORE of {files[sent]}")
                if answer[1] != 0x0000:
                    raise RuntimeError(f"segnode answered 0x{answer[1]:04X} to the C-STORE of {files[sent]}")
                sent += 1
                if "Status" not in status:  # lost inside pynetdicom, which aborted the association
                    lost += 1
                    break
        finally:
            if assoc.is_established:
                assoc.release()
    return SentSeries(answered[len(files)][0], time.time(), lost)


@dataclass(frozen=True)
class Acknowledgement:
    """A success status the destination returned, and when."""

    sop_instance_uid: str
    at: float


class ResultsDestination:
    """A Storage SCP for every storage SOP class and transfer syntax that
    records when each connection opened and when each success went back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[float] = []
        self._acknowledgements: list[Acknowledgement] = []
        ae = AE(DESTINATION_AE)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_CONN_OPEN, self._on_connection), (evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        self._server.shutdown()

    def connections_since(self, since: float) -> list[float]:
        with self._lock:
            return [at for at in self._connections if at >= since]

    def acknowledged(self, sop_instance_uid: str) -> float | None:
        """When the first success for `sop_instance_uid` went back, if it has."""
        with self._lock:
            times = [a.at for a in self._acknowledgements if a.sop_instance_uid == sop_instance_uid]
        return times[0] if times else None

    def _on_connection(self, event) -> None:
        _nodelay(event)
        with self._lock:
            self._connections.append(time.time())

    def _on_store(self, event) -> int:
        acknowledgement = Acknowledgement(str(event.request.AffectedSOPInstanceUID), time.time())
        with self._lock:
            self._acknowledgements.append(acknowledgement)
        return 0x0000


class BenchNode:
    """``segnode serve`` as a subprocess, with its configuration, storage and log."""

    def __init__(self, workdir: Path, destination_port: int):
        self.port = free_port()
        self.queue: JobQueue | None = None
        self.storage_dir = workdir / "store"
        self.log_path = workdir / "segnode.log"
        config = {
            "node": {
                "ae_title": NODE_AE, "host": "127.0.0.1", "port": self.port,
                "storage_dir": str(self.storage_dir), "series_stable_seconds": STABLE_SECONDS,
                "association_grace_seconds": GRACE_SECONDS, "metrics_port": free_port(),
            },
            "peers": [{"ae_title": case.value, "host": "127.0.0.1", "completion": case.completion}
                      for case in Case],
            "destinations": {
                "PACS": {"ae_title": DESTINATION_AE, "host": "127.0.0.1", "port": destination_port},
            },
            "pipelines": {"organs": {"model": "builtin", "device": "cpu"}},
            "routes": [
                {"name": "ct", "match": {"modality": "CT"}, "pipeline": "organs", "send_to": ["PACS"]},
            ],
        }
        config_path = workdir / "segnode.yaml"
        config_path.write_text(yaml.safe_dump(config))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "serve", "--config", str(config_path)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while "segnode ready" not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"segnode did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        self.queue = JobQueue(self.storage_dir)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_cpu_seconds(self) -> float:
        """CPU time the node's worker processes (its only children) have used so far."""
        tasks = Path(f"/proc/{self.process.pid}/task").glob("*/children")
        return sum(cpu_seconds(int(pid)) for task in tasks for pid in task.read_text().split())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def job_of(self, series_instance_uid: str) -> Job | None:
        return next((j for j in self.queue.jobs() if j.series_instance_uid == series_instance_uid), None)

    def last_received(self, study_instance_uid: str, series_instance_uid: str) -> float:
        index = InstanceIndex(self.storage_dir, read_only=True)
        try:
            (record,) = [s for s in index.series_of_study(study_instance_uid)
                         if s.series_instance_uid == series_instance_uid]
        finally:
            index.close()
        return record.last_received

    def enqueued(self, paths: Sequence[Path]) -> float:
        """When the worker put the result files into the outbox."""
        db = sqlite3.connect(f"file:{self.storage_dir / OUTBOX_FILENAME}?mode=ro", uri=True)
        try:
            marks = ", ".join("?" * len(paths))
            (at,) = db.execute(f"SELECT MIN(enqueued) FROM outbox WHERE path IN ({marks})",
                               [str(p.resolve()) for p in paths]).fetchone()
        finally:
            db.close()
        if at is None:
            raise RuntimeError(f"the outbox holds none of {', '.join(map(str, paths))}")
        return at

    def logged_at(self, pattern: str, *groups: str) -> float:
        """The time of the last log line matching `pattern` whose groups are `groups`."""
        matches = re.finditer(pattern, self.log(), re.MULTILINE)
        stamps = [m.group(1) for m in matches if m.groups()[1:] == groups]
        if not stamps:
            raise RuntimeError(f"no log line {pattern!r} for {groups}:\n{self.log_tail()}")
        return datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    def stop(self) -> None:
        """SIGTERM (the node stops its workers), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.queue is not None:
            self.queue.close()


class Kind(Enum):
    """Where a part's time goes."""

    WAITING = "waiting: completion and polls"
    BOOKKEEPING = "routing and queueing"
    COMPUTING = "the worker computing"
    SENDING = "sending the results"


@dataclass(frozen=True)
class Part:
    name: str
    kind: Kind
    seconds: float


@dataclass(frozen=True)
class Run:
    """One series' latency and its parts, in the order they happen (they add up to the total)."""

    total: float
    parts: tuple[Part, ...]
    sent_first: str
    seg_megabytes: float
    sr_kilobytes: float
    lost_responses: int
    load_before: float
    worker_cpu: float
    worker_busy: float


def wait_for_job(node: BenchNode, series_uid: str) -> Job:
    """The series' job once it is done; an error if it fails, is retried, or the node dies."""
    deadline = time.monotonic() + RESULT_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"segnode exited with {node.process.returncode}:\n{node.log_tail()}")
        job = node.job_of(series_uid)
        if job is not None and job.error:
            # A retried job's times would mislead as much as a failed one's.
            raise RuntimeError(f"job {job.id} failed an attempt ({job.error}):\n{node.log_tail()}")
        if job is not None and job.state == JobState.DONE:
            return job
        time.sleep(0.2)
    raise RuntimeError(f"no finished job for series {series_uid} within {RESULT_TIMEOUT_SECONDS:g} s:\n"
                       f"{node.log_tail()}")


def wait_for_acknowledgement(node: BenchNode, destination: ResultsDestination, path: Path) -> float:
    """When the destination acknowledged the object stored at `path`."""
    uid = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
    deadline = time.monotonic() + RESULT_TIMEOUT_SECONDS
    while (at := destination.acknowledged(uid)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the destination never acknowledged {path} ({uid}):\n{node.log_tail()}")
        time.sleep(0.1)
    return at


def measure(
    node: BenchNode, destination: ResultsDestination, workdir: Path, grid: AxialGrid, seed: int, case: Case
) -> Run:
    """Send one phantom series (its own seed, so its own UIDs) and take its latency apart."""
    # Others' work on the shared machine slows the worker: say how busy it was.
    load_before = os.getloadavg()[0]
    study = write_study(workdir / f"study-{seed}", grid, seed=seed, with_pet=False)
    series_uid = study.ct.series_instance_uid
    sent = send_series(study.ct.files, node.port, case.value)
    start = sent.last_success
    cpu_before = node.worker_cpu_seconds()
    job = wait_for_job(node, series_uid)
    worker_cpu = node.worker_cpu_seconds() - cpu_before
    assert isinstance(job.result, SegmentResult)
    seg_path, sr_path = job.result.seg, job.result.sr
    acknowledged = {name: wait_for_acknowledgement(node, destination, path)
                    for name, path in (("SEG", seg_path), ("SR", sr_path))}
    (first, first_at), (second, second_at) = sorted(acknowledged.items(), key=lambda item: item[1])
    connected = max(at for at in destination.connections_since(start) if at <= first_at)

    completed = node.logged_at(_COMPLETE_LINE, series_uid)
    if case is Case.ASSOCIATION:
        completion = (
            Part("association release", Kind.WAITING, sent.released - start),
            # From the scanner's release returning: the node heard it a little before.
            Part(f"grace period ({GRACE_SECONDS:g} s) + assembler lag", Kind.WAITING,
                 completed - sent.released),
        )
    else:
        stable_end = node.last_received(study.study_instance_uid, series_uid) + STABLE_SECONDS
        completion = (
            Part(f"stable period ({STABLE_SECONDS:g} s from the last arrival)", Kind.WAITING,
                 stable_end - start),
            Part("assembler poll lag", Kind.WAITING, completed - stable_end),
        )
    claimed = node.logged_at(_CLAIM_LINE, str(job.id), series_uid)
    enqueued = node.enqueued((seg_path, sr_path))
    stages = [Part(f"pipeline: {stage}", Kind.COMPUTING, seconds)
              for stage, seconds in job.result.seconds.items()]
    parts = (
        *completion,
        Part("routing + queueing the job", Kind.BOOKKEEPING, job.queued_at - completed),
        Part("worker claims the job (poll)", Kind.WAITING, claimed - job.queued_at),
        *stages,
        Part("worker, outside the timed stages", Kind.COMPUTING,
             enqueued - claimed - sum(stage.seconds for stage in stages)),
        Part("outbox picks the results up (poll)", Kind.WAITING, connected - enqueued),
        Part("send the first (association + C-STORE)", Kind.SENDING, first_at - connected),
        Part("send the second (C-STORE)", Kind.SENDING, second_at - first_at),
    )
    shutil.rmtree(workdir / f"study-{seed}")
    return Run(second_at - start, parts, first, seg_path.stat().st_size / 1e6, sr_path.stat().st_size / 1e3,
               sent.lost_responses, load_before, worker_cpu, enqueued - claimed)


def report(runs: list[Run], grid: AxialGrid, case: Case) -> float:
    """Print one case's table; returns its median."""
    totals = [run.total for run in runs]
    best, median = min(totals), statistics.median(totals)
    completion = (f"association end, {GRACE_SECONDS:g} s grace" if case is Case.ASSOCIATION
                  else f"the stable timer, series_stable_seconds {STABLE_SECONDS:g}")
    print(f"\n== completed by {completion}: CT {grid.shape[1]}x{grid.shape[2]}x{grid.shape[0]}, "
          f"built-in segmenter on the CPU, {len(runs)} run(s)")
    print(f"SEG {runs[0].seg_megabytes:.1f} MB, SR {runs[0].sr_kilobytes:.0f} kB, sent first: "
          + ", ".join(run.sent_first for run in runs)
          + f"; responses pynetdicom lost at the scanner: {sum(run.lost_responses for run in runs)}")
    names = [part.name for part in runs[0].parts]
    kinds = {part.name: part.kind for part in runs[0].parts}
    seconds = {name: [next(p.seconds for p in run.parts if p.name == name) for run in runs] for name in names}
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    total_label = "total: last success status -> both acknowledged"
    width = max(map(len, [*names, total_label])) + 2
    runs_header = "".join(f"{f'run {i}':>8}" for i in range(1, len(runs) + 1))
    print(f"\n{'part (seconds)':<{width}}{runs_header}{'best':>8}{'median':>8}{'share':>7}")
    for name in names:
        each = "".join(f"{value:>8.3f}" for value in seconds[name])
        share = medians[name] / median
        print(f"{name:<{width}}{each}{min(seconds[name]):>8.3f}{medians[name]:>8.3f}{share:>7.0%}")
    each = "".join(f"{total:>8.3f}" for total in totals)
    print(f"{total_label:<{width}}{each}{best:>8.3f}{median:>8.3f}")
    each = "".join(f"{run.load_before:>8.2f}" for run in runs)
    print(f"{'1-minute load average before the run':<{width}}{each}")
    # Below 100 %, the worker waited: for a core (others' work), the disk, or a lock.
    each = "".join(f"{run.worker_cpu / run.worker_busy:>8.0%}" for run in runs)
    print(f"{'worker CPU time / its busy time':<{width}}{each}")
    print(f"\nmedian {median:.2f} s (best {best:.2f} s); by median, the time goes to:")
    for kind in Kind:
        share = sum(medians[name] for name in names if kinds[name] is kind)
        print(f"  {kind.value}: {share:.2f} s ({share / median:.0%})")
    largest = sorted(names, key=medians.__getitem__, reverse=True)[:3]
    print("largest parts: " + "; ".join(f"{name} {medians[name]:.2f} s" for name in largest))
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=CT_GRID.shape[0],
                        help=f"slices of 512x512 (2 to {CT_GRID.shape[0]}, default {CT_GRID.shape[0]})")
    parser.add_argument("--repeat", type=int, default=3, help="series to send, one after another (default 3)")
    args = parser.parse_args()
    if not 2 <= args.slices <= CT_GRID.shape[0]:
        parser.error(f"--slices must be between 2 and {CT_GRID.shape[0]}, not {args.slices}")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, not {args.repeat}")
    grid = phantom_grid(args.slices)

    workdir = Path(tempfile.mkdtemp(prefix="segnode-e2e-"))
    destination = ResultsDestination()
    node = None
    runs: dict[Case, list[Run]] = {case: [] for case in Case}
    try:
        node = BenchNode(workdir, destination.port)
        for repeat in range(args.repeat):
            for number, case in enumerate(Case):
                runs[case].append(measure(node, destination, workdir, grid, 2 * repeat + number, case))
                print(f"run {repeat + 1}, {case.completion}: {runs[case][-1].total:.2f} s", flush=True)
    finally:
        if node is not None:
            node.stop()
        destination.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {case: report(runs[case], grid, case) for case in Case}
    ours, reference = medians[Case.ASSOCIATION], medians[Case.STABLE]
    verdict = "within" if ours <= GOAL_SECONDS else "OVER"
    print(f"\nmedian with association end {ours:.2f} s, with the stable timer {reference:.2f} s; "
          f"association end is {verdict} the {GOAL_SECONDS:g} s goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
