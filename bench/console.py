"""The web console's pages with many series, beside ``segnode status --json`` on the same store.

Two stores are filled through the node's own APIs (InstanceIndex,
JobQueue, OutboxStore, AuditLog): ``--series`` series (100,000 by default)
and, for the growth to show, 1,000 of the same shape:

- 3 instances per series (500 KB each, 7 calling AEs, 2 series per
  study), one series a minute up to now; one series in the middle is a
  500-slice CT, the one whose page is timed;
- the newest 1 % still receiving, the rest complete; a segmentation job for
  every 5th complete series: the latest 5 % of them still queued, 0.5 %
  failed, 10 running, the rest done (the timed series' job with its
  measurements and PDF report, the others' results removed by retention,
  as on a node that has run for months);
- 300 files waiting in the outbox for one destination, 2,000 audit entries.

The stores live on tmpfs (/dev/shm) where there is one: the index commits
every instance with fsync, which would make filling 300,000 instances
take minutes on a disk; the pages read the same SQLite files either way.

Each store is served by the real ConsoleServer (uvicorn) in a process of
its own, signed in to with httpx on one keep-alive connection, as a
browser; each page is fetched once to warm up, then the median of REPEATS
requests is shown (each page must hold a text of its own, so that an error
page is never timed), beside /health, which reads nothing. The serving
process's RSS is shown once signed in, after the pages, and at its peak
(the sign-in's argon2 check takes 64 MiB for a moment); most of it is the
node's modules its imports load, which the node's process holds anyway.
The reference, ``segnode status --json``, is a process of its own each run.
The goal: every page under 200 ms at 100,000 series (issue 15: pages fast
with thousands of series).

    python bench/console.py               # 100,000 series, about 90 s on 2 cores
    python bench/console.py --series 20000
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ingest import free_port  # noqa: E402
from config import JobSettings, parse_config  # noqa: E402
from config.passwords import hash_password  # noqa: E402
from dicomio.csv import write_measurements_csv  # noqa: E402
from dicomio.measurements import FlagKind, QualityFlag, StructureMeasurements  # noqa: E402
from node.assemble.completion import Timing, completion  # noqa: E402
from node.console.audit import AuditLog  # noqa: E402
from node.console.context import ConsoleContext  # noqa: E402
from node.console.pages import PER_PAGE  # noqa: E402
from node.console.server import ConsoleServer  # noqa: E402
from node.queue.jobs import JobKind, JobQueue, NewJob  # noqa: E402
from node.queue.results import SegmentResult  # noqa: E402
from node.receive.index import InstanceIndex  # noqa: E402
from node.receive.storage import StoredInstance  # noqa: E402
from node.receive.validation import InstanceIdentity  # noqa: E402
from node.send.outbox import OutboxStore  # noqa: E402

REFERENCE_SERIES = 1000
GOAL_MS = 200.0
REPEATS = 7
STATUS_RUNS = 3
USER, PASSWORD = "admin", "bench console password"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ROOT = "1.2.826.0.1.3680043.10.1137"  # UIDs of realistic length
INSTANCES_PER_SERIES = 3
DETAIL_INSTANCES = 500
PEERS = 7
SERIES_EVERY_SECONDS = 60.0
RUNNING_JOBS = 10
OUTBOX_FILES = 300
AUDIT_ENTRIES = 2000


@dataclass(frozen=True)
class Store:
    storage_dir: Path
    series: int
    detail_uid: str
    build_seconds: float


@dataclass(frozen=True)
class Page:
    name: str  # as printed
    path: str
    shows: str  # text the page must hold, so that an empty or wrong page is not timed


@dataclass(frozen=True)
class Measured:
    milliseconds: dict[str, float]  # page name -> median
    started_rss_bytes: int  # signed in, before the pages
    rss_bytes: int  # after them
    peak_rss_bytes: int


def config_text(storage_dir: Path, port: int, password_hash: str) -> str:
    return f"""
node:
  ae_title: SEGNODE
  storage_dir: {storage_dir}
  console:
    port: {port}
    users: [{{name: {USER}, password_hash: '{password_hash}'}}]
destinations:
  pacs: {{ae_title: PACS, host: 127.0.0.1, port: 11113}}
"""


def series_uid(k: int) -> str:
    return f"{ROOT}.2.{k}"


def build_store(storage_dir: Path, n: int) -> Store:
    """Fill `storage_dir` with `n` series as the module docstring says."""
    started = time.perf_counter()
    now = time.time()
    first = now - n * SERIES_EVERY_SECONDS
    detail = n // 2
    with closing(InstanceIndex(storage_dir)) as index:
        for k in range(n):
            uid, at = series_uid(k), first + k * SERIES_EVERY_SECONDS
            for i in range(DETAIL_INSTANCES if k == detail else INSTANCES_PER_SERIES):
                identity = InstanceIdentity(CT, f"{uid}.{i}", f"{ROOT}.1.{k // 2}", uid, "CT")
                path = storage_dir / "instances" / f"{k}.{i}"
                index.record_instance(StoredInstance(identity, EXPLICIT_LE, path, 500_000 + i,
                                                     f"MODALITY{k % PEERS}", at + i * 0.01))
        receiving = max(1, n // 100)
        timing = Timing(stable_seconds=0, mpps_wait_seconds=math.inf)
        for progress in index.receiving():
            if int(progress.series_instance_uid.rsplit(".", 1)[1]) < n - receiving:
                decided = completion(progress, now, timing, held=False)
                assert decided is not None and index.complete(progress, decided) is not None
    routed = [k for k in range(0, n - receiving, 5) if k != detail]
    with closing(JobQueue(storage_dir)) as queue:
        # The detail series' job due first, so that it is the first claimed.
        for k, due in [(detail, first), *((k, first + k * SERIES_EVERY_SECONDS + 30) for k in routed)]:
            queue.enqueue_series(series_uid(k), [NewJob(JobKind.SEGMENT, "organs", "organs", ("pacs",), "")],
                                 now=due)
        _run_jobs(queue, storage_dir, 1 + len(routed), now)
    _fill_outbox(storage_dir, now)
    with closing(AuditLog(storage_dir)) as audit:
        for k in range(AUDIT_ENTRIES):
            audit.record(USER, "127.0.0.1", "retry job",
                         f"job {k} (segment of series {series_uid(k)}) queued again",
                         now - (AUDIT_ENTRIES - k) * 600)
    return Store(storage_dir, n, series_uid(detail), time.perf_counter() - started)


def _run_jobs(queue: JobQueue, storage_dir: Path, jobs: int, now: float) -> None:
    """Claim the oldest jobs as workers would: the first (the detail series') finishes with its
    measurements and report, then all but the newest 5 % fail (0.5 %), stay running or finish."""
    finishing, failing = jobs - jobs // 20, max(1, jobs // 200)
    settings = JobSettings(max_attempts=1)
    for n in range(finishing):
        job = queue.claim("bench-worker", 3600, now=now)
        assert job is not None, f"no job to claim after {n}"
        out = storage_dir / "results" / str(job.id)
        if n == 0:
            out.mkdir(parents=True)
            write_measurements_csv([StructureMeasurements(
                segment_number=1, name="liver", volume_ml=1534.25, voxel_count=2_400_123, hu_mean=55.25,
                hu_std=12.125, hu_min=-98.0, hu_max=210.0,
                flags=(QualityFlag(FlagKind.VOLUME_OUT_OF_RANGE, "volume 1534 ml outside 900-1500 ml"),))],
                out / "measurements.csv")
            (out / "report.pdf").write_bytes(b"%PDF-1.7\n% the job's report\n")
        if n == 0 or n > failing + RUNNING_JOBS:
            queue.succeed(job.id, "bench-worker", SegmentResult(
                out / "seg.dcm", out / "sr.dcm", out / "measurements.csv", out / "labels.nii.gz", "builtin 1",
                1, False, {"load": 4.5, "segment": 41.0, "measure": 3.25, "write": 1.5}))
        elif n <= failing:
            queue.fail(job.id, "bench-worker", "the model ran out of memory", settings, now=now)


def _fill_outbox(storage_dir: Path, now: float) -> None:
    files = storage_dir / "results" / "outbox"
    files.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(OUTBOX_FILES):
        path = files / f"{k}.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM")
        paths.append(path)
    with closing(OutboxStore(storage_dir)) as outbox:
        for k in range(0, OUTBOX_FILES, 3):
            outbox.enqueue(f"job-{k}", "pacs", paths[k:k + 3], now - (OUTBOX_FILES - k) * 60)


def serve(storage_dir: Path, password_hash: str, pipe: Connection) -> None:
    """In a process of its own: the console over `storage_dir` until told to stop."""
    config = parse_config(config_text(storage_dir, free_port(), password_hash), check_files=False)
    context = ConsoleContext(storage_dir / "segnode.yaml", lambda: config, storage_dir, lambda: (),
                             lambda: None, CollectorRegistry())
    server = ConsoleServer(context, config.node.console)
    server.start()
    pipe.send(server.url)
    pipe.recv()
    server.stop()


def memory(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def median_ms(client: httpx.Client, page: Page) -> float:
    times = []
    for _ in range(REPEATS + 1):  # the first warms up
        started = time.perf_counter()
        answer = client.get(page.path)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200 or page.shows not in answer.text:
            raise RuntimeError(f"GET {page.path}: {answer.status_code} without {page.shows!r}: "
                               f"{answer.text[:300]}")
    return statistics.median(times[1:])


def measure_pages(store: Store, password_hash: str) -> Measured:
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=serve,
                                                            args=(store.storage_dir, password_hash, theirs))
    process.start()
    try:
        url = ours.recv()
        with httpx.Client(base_url=url, follow_redirects=False, timeout=60) as client:
            form = client.get("/login").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
            signed = client.post("/login", data={"user": USER, "password": PASSWORD, "csrf_token": token})
            if signed.status_code != 303:
                raise RuntimeError(f"signing in failed: {signed.status_code} {signed.text[:300]}")
            started_rss, _ = memory(process.pid)
            milliseconds = {page.name: median_ms(client, page) for page in pages(store)}
        rss, peak = memory(process.pid)
        ours.send("stop")
        process.join(30)
    finally:
        if process.is_alive():
            process.terminate()
            process.join(10)
    return Measured(milliseconds, started_rss, rss, peak)


def pages(store: Store) -> tuple[Page, ...]:
    """The pages timed; /health, which reads nothing, shows what HTTP alone costs."""
    last = max(1, math.ceil(store.series / PER_PAGE))
    newest = f"/series/{series_uid(store.series - 1)}"
    return (
        Page("/health (reads nothing)", "/health", "ok"),
        Page("/", "/", newest),
        Page("/overview/live", "/overview/live", newest),
        Page("/series?page=1", "/series?page=1", newest),
        Page("/series?page=<last>", f"/series?page={last}", f"/series/{series_uid(0)}\""),
        Page(f"/series/<uid> ({DETAIL_INSTANCES} instances)", f"/series/{store.detail_uid}", "report.pdf"),
        Page("/audit", "/audit", "queued again"),
    )


def measure_status(store: Store) -> tuple[float, int, int]:
    """Median seconds of ``segnode status --json`` over STATUS_RUNS runs, its output's
    size and its peak RSS."""
    times, peak, size = [], 0, 0
    for _ in range(STATUS_RUNS):
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "node.cli", "status", "--json", "--storage-dir",
                                    str(store.storage_dir)], cwd=REPO, stdout=subprocess.PIPE)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        times.append(time.perf_counter() - started)
        process.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"segnode status exited with {code}")
        peak, size = max(peak, usage.ru_maxrss * 1024), len(output)
    return statistics.median(times), size, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000, help="series in the large store")
    args = parser.parse_args()
    if args.series < 100:  # fewer leave no complete series in the middle to time the page of
        parser.error("--series must be at least 100")

    password_hash = hash_password(PASSWORD)
    workdir = Path(tempfile.mkdtemp(prefix="segnode-bench-console-",
                                    dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        stores = []
        for n in (REFERENCE_SERIES, args.series):
            (workdir / str(n)).mkdir()
            stores.append(build_store(workdir / str(n), n))
            print(f"built {n:,} series ({n * INSTANCES_PER_SERIES + DETAIL_INSTANCES - 3:,} instances) "
                  f"in {stores[-1].build_seconds:.1f} s", flush=True)
        results = [(store, measure_pages(store, password_hash), measure_status(store)) for store in stores]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    mib = 1 << 20
    names = list(results[0][1].milliseconds)
    header = "".join(f"{f'{store.series:,} series':>16}" for store, _, _ in results)
    print(f"\nmedian of {REPEATS} requests, ms{'':<17}{header}")
    for name in names:
        print(f"{name:<40}" + "".join(f"{m.milliseconds[name]:>16.1f}" for _, m, _ in results))
    rss = (f"{m.started_rss_bytes / mib:.0f}/{m.rss_bytes / mib:.0f}/{m.peak_rss_bytes / mib:.0f}"
           for _, m, _ in results)
    print(f"{'console RSS signed in/after/peak, MiB':<40}" + "".join(f"{value:>16}" for value in rss))
    print(f"reference: segnode status --json (median of {STATUS_RUNS} runs)")
    print(f"{'  seconds':<40}" + "".join(f"{s[0]:>16.2f}" for _, _, s in results))
    print(f"{'  output MB':<40}" + "".join(f"{s[1] / 1e6:>16.1f}" for _, _, s in results))
    print(f"{'  peak RSS MiB':<40}" + "".join(f"{s[2] / mib:>16.0f}" for _, _, s in results))
    store, measured, _ = results[-1]
    slowest = max(names, key=measured.milliseconds.get)
    verdict = "met" if measured.milliseconds[slowest] < GOAL_MS else "NOT met"
    print(f"goal, every page under {GOAL_MS:.0f} ms at {store.series:,} series: {verdict} "
          f"(slowest {slowest}, {measured.milliseconds[slowest]:.1f} ms)")
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
