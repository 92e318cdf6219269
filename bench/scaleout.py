"""Scale-out through Celery: series per hour with one worker on one core against two workers on two cores.

Issue 17's benchmark. The same synthetic CTs (phantom/anatomy.py, 512x512
cut to 150 slices, one seed each, so each its own UIDs) go through the whole
Celery path twice, in one run: ``segnode serve`` with ``jobs.backend:
celery``, Debian's redis-server as broker and result backend, the built-in
segmenter on the CPU, and a dcmtk storescp as the route's destination. The
two cases are a one-core machine and a two-core one (``taskset``): one
``segnode worker`` on core 0 with the node, Redis and storescp on the same
core, against two workers pinned to cores 0 and 1, each a host of its own
with its own configuration file, as on two machines sharing the storage,
with the node, Redis and storescp on both cores. The workers read the
instances from, and write their results into, the node's storage
directory, the shared-storage backend as NFS would serve it.

Each case starts from an idle node: every series is sent (storescu, one
association a series) and every job is waiting in the broker before the
workers start, so that receiving does not run beside them. The clock starts
when the first task starts on a worker and stops when storescp has written
the last result file (2 SEGs and the SR a series): series per hour is the
number of series over that span.

Where the time goes, a series at a time: the workers' core-seconds over
the span (workers x span / series) are cut into parts that add up to them
exactly, so that the two cases can be set side by side:

- each stage the pipeline times (the job's result in the node's record;
  ``load`` is reading the instances from the shared storage);
- the rest of each task on the worker: the spec, the file list, the
  outcome;
- broker round trips: on each worker, from a task's end to the start of
  its next (the acknowledgement, the next message's fetch, the pool's
  hand-over);
- ramp and tail: a worker that started later than the first, or ran out of
  jobs before the last ended, and the node's recording and sending after
  the last task.

Then the two-worker ratio is 2 x (one worker's cost) / (two workers' cost),
and the difference of each part says where the rest of the ideal 2.0 goes.
The CPU time the node, Redis and storescp used in each span is given
beside: it is taken from the workers' cores in both cases. The reference is
the same jobs on the executor alone (node/work/execution.py, no node, broker
or destination), one process on core 0 against two on cores 0 and 1: what
the machine itself gives this work.

    .venv/bin/python bench/scaleout.py                       # 16 series, 512x512x150
    .venv/bin/python bench/scaleout.py --series 4 --slices 30  # a quick check
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.e2e import phantom_grid  # noqa: E402
from bench.ingest import ENV, cpu_seconds, free_port, start_storescp  # noqa: E402
from config import SegnodeConfig, load_config  # noqa: E402
from node.queue.broker import celery_app, queue_depth  # noqa: E402
from node.queue.job_state import JobState  # noqa: E402
from node.queue.jobs import JobKind, JobQueue  # noqa: E402
from node.work.execution import Executor  # noqa: E402
from node.work.job_spec import JobSpec  # noqa: E402
from phantom.anatomy import CT_GRID  # noqa: E402
from phantom.study import write_study  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

#: Issue 17's goal for two workers on two cores against one on one.
GOAL_RATIO = 1.9
NODE_AE = "SEGNODE"
SCANNER_AE = "SCANNER"
#: Result files a series makes at a destination that takes SEG and SR: the
#: organs' SEG, the body's SEG and the SR.
FILES_PER_SERIES = 3
#: How long one case may take, from the first series sent to the last result.
CASE_TIMEOUT_SECONDS = 3600.0

# Celery's worker log lines start "[2026-12-07 06:40:01,123: INFO/ForkPoolWorker-1]";
# node/work/celery_worker.py's JobRunner logs a task's start and end.
_STAMP = r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]+\] "
_TASK_START = re.compile(_STAMP + r"task (\S+): job (\d+) \(", re.MULTILINE)
_TASK_END = re.compile(_STAMP + r"task (\S+): job (\d+) done in ", re.MULTILINE)


@dataclass(frozen=True)
class Task:
    """One task as a worker ran it: its job and when it started and ended (epoch seconds)."""

    job_id: int
    worker: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class CaseResult:
    """One case's span, its tasks, the pipeline's stage seconds by job, and the
    CPU seconds the node, Redis and storescp used within the span."""

    workers: int
    series: int
    first_start: float
    last_result: float
    tasks: tuple[Task, ...]
    stages: dict[int, dict[str, float]]
    beside_cpu: dict[str, float]

    @property
    def span(self) -> float:
        return self.last_result - self.first_start

    @property
    def per_hour(self) -> float:
        return self.series * 3600.0 / self.span

    def parts(self) -> dict[str, float]:
        """Worker core-seconds a series, cut into parts that add up to workers x span / series."""
        names = sorted({name for seconds in self.stages.values() for name in seconds})
        parts = {f"stage {name}": sum(s.get(name, 0.0) for s in self.stages.values()) for name in names}
        timed = sum(parts.values())
        parts["rest of the task"] = sum(t.seconds for t in self.tasks) - timed
        gaps = 0.0
        for worker in range(self.workers):
            mine = sorted((t for t in self.tasks if t.worker == worker), key=lambda t: t.start)
            gaps += sum(later.start - earlier.end for earlier, later in itertools.pairwise(mine))
        parts["broker round trips"] = gaps
        parts["ramp and tail"] = self.workers * self.span - sum(t.seconds for t in self.tasks) - gaps
        return {name: value / self.series for name, value in parts.items()}


def write_series(directory: Path, count: int, slices: int) -> list[list[Path]]:
    """`count` CT series of the phantom, each with its own seed (and so its own UIDs)."""
    series = []
    for seed in range(1, count + 1):
        study = write_study(directory / f"series-{seed}", phantom_grid(slices), seed=seed, with_pet=False)
        series.append(list(study.ct.files))
    return series


def node_config(workdir: Path, destination_port: int) -> dict:
    """The node's configuration, its jobs still embedded (a case sends them through Celery)."""
    return {
        "node": {
            "ae_title": NODE_AE, "host": "127.0.0.1", "port": free_port(),
            "storage_dir": str(workdir / "store"), "metrics_port": free_port(),
        },
        "peers": [{"ae_title": SCANNER_AE, "host": "127.0.0.1", "completion": "association"}],
        "destinations": {"RESULTS": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": destination_port}},
        "pipelines": {"organs": {"model": "builtin", "device": "cpu"}},
        "routes": [{"name": "ct", "match": {"modality": "CT"}, "pipeline": "organs", "send_to": ["RESULTS"]}],
        "worker": {"devices": ["cpu"], "metrics_port": free_port()},
    }


class Case:
    """A node, its broker and destination, and `workers` worker hosts, each pinned to a core."""

    def __init__(self, workdir: Path, workers: int):
        self.workdir = workdir
        self.workers = workers
        self.cores = ",".join(str(core) for core in range(workers))
        self.redis = RedisServer(workdir / "redis")
        self.storescp: subprocess.Popen | None = None
        self.node: subprocess.Popen | None = None
        self.worker_procs: list[subprocess.Popen] = []
        self.results_dir = workdir / "storescp"
        self.config_path = workdir / "segnode.yaml"
        self.node_log = workdir / "segnode.log"

    def start(self) -> None:
        """Redis, storescp and the node, all on the case's cores."""
        self.redis.start()
        self.storescp, destination_port = start_storescp(self.workdir)
        for pid in (self.redis.proc.pid, self.storescp.pid):  # and each thread of theirs
            subprocess.run(["taskset", "-a", "-p", "-c", self.cores, str(pid)], check=True,
                           capture_output=True)
        self.config = node_config(self.workdir, destination_port)
        self.config["jobs"] = {"backend": "celery",
                               "celery": {"broker_url": self.redis.url, "visibility_timeout_seconds": 3600}}
        self.config_path.write_text(yaml.safe_dump(self.config))
        with self.node_log.open("wb") as log:
            self.node = subprocess.Popen(
                ["taskset", "-c", self.cores, sys.executable, "-m", "node.cli", "serve", "--config",
                 str(self.config_path)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self._wait(lambda: "segnode ready" in self.node_log.read_text(errors="replace"), "the node to start")

    def send(self, series: Sequence[Sequence[Path]]) -> None:
        for files in series:
            subprocess.run(["/usr/bin/storescu", "-aet", SCANNER_AE, "-aec", NODE_AE, "127.0.0.1",
                            str(self.config["node"]["port"]), *map(str, files)], check=True, env=ENV,
                           capture_output=True)

    def wait_for_tasks(self, count: int) -> None:
        """Until the broker holds a task for each series: nothing is left to receive."""
        settings = load_config(self.config_path, check_files=False).jobs.celery
        app = celery_app(settings)
        try:
            self._wait(lambda: queue_depth(app, settings.queue) >= count, f"{count} tasks in the broker")
        finally:
            app.close()

    def start_workers(self) -> None:
        for core in range(self.workers):
            config = {**self.config, "worker": {**self.config["worker"], "metrics_port": free_port()}}
            path = self.workdir / f"worker-{core}.yaml"
            path.write_text(yaml.safe_dump(config))
            with (self.workdir / f"worker-{core}.log").open("wb") as log:
                self.worker_procs.append(subprocess.Popen(
                    ["taskset", "-c", str(core), sys.executable, "-m", "node.cli", "worker", "--config",
                     str(path), "--host", f"bench-{core}"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))

    def wait_for_results(self, count: int) -> None:
        queue = JobQueue(Path(self.config["node"]["storage_dir"]))
        try:
            def done() -> bool:
                failed = [j for j in queue.jobs() if j.state is JobState.FAILED or j.error]
                if failed:  # a benchmark of failing jobs measures nothing
                    raise RuntimeError(f"job {failed[0].id} failed: {failed[0].error}")
                return len(self.result_files()) >= count * FILES_PER_SERIES
            self._wait(done, f"{count * FILES_PER_SERIES} result files at storescp")
        finally:
            queue.close()

    def result_files(self) -> list[Path]:
        return [p for p in self.results_dir.iterdir() if p.is_file()]

    def cpu_beside(self) -> dict[str, float]:
        """CPU seconds used so far by the processes beside the workers."""
        return {"node": cpu_seconds(self.node.pid), "redis": cpu_seconds(self.redis.proc.pid),
                "storescp": cpu_seconds(self.storescp.pid)}

    def tasks(self) -> tuple[Task, ...]:
        tasks = []
        for worker in range(self.workers):
            log = (self.workdir / f"worker-{worker}.log").read_text(errors="replace")
            starts = {m.group(2): (int(m.group(3)), _epoch(m.group(1))) for m in _TASK_START.finditer(log)}
            for m in _TASK_END.finditer(log):
                job_id, start = starts[m.group(2)]
                tasks.append(Task(job_id, worker, start, _epoch(m.group(1))))
        return tuple(tasks)

    def stages(self) -> dict[int, dict[str, float]]:
        queue = JobQueue(Path(self.config["node"]["storage_dir"]))
        try:
            return {job.id: dict(job.result.seconds) for job in queue.jobs() if job.result is not None}
        finally:
            queue.close()

    def stop(self) -> None:
        """Whatever was started, also by a start that failed half-way."""
        started = [proc for proc in (*self.worker_procs, self.node) if proc is not None]
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.storescp is not None:
            self.storescp.terminate()
            self.storescp.wait()
        self.redis.stop()

    def _wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + CASE_TIMEOUT_SECONDS
        while not condition():
            for proc in [self.node, *self.worker_procs]:
                if proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(map(str, proc.args[:6]))} exited with {proc.returncode} "
                                       f"while waiting for {what}; logs in {self.workdir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {CASE_TIMEOUT_SECONDS:.0f} s; logs in {self.workdir}")
            time.sleep(0.1)


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_case(workdir: Path, series: list[list[Path]], workers: int) -> CaseResult:
    workdir.mkdir()
    case = Case(workdir, workers)
    try:
        case.start()
        case.send(series)
        case.wait_for_tasks(len(series))
        before = case.cpu_beside()
        case.start_workers()
        case.wait_for_results(len(series))
        after = case.cpu_beside()
        tasks = case.tasks()
        last_result = max(p.stat().st_mtime for p in case.result_files())
        return CaseResult(workers=workers, series=len(series), first_start=min(t.start for t in tasks),
                          last_result=last_result, tasks=tasks, stages=case.stages(),
                          beside_cpu={name: after[name] - before[name] for name in after})
    finally:
        case.stop()


def _executor_child(core: int, config: SegnodeConfig, series: list[list[Path]], out: Path, times) -> None:
    """The reference's worker: the same executor on `core`, its share of the series one after another."""
    os.sched_setaffinity(0, {core})
    executor = Executor("cpu", "2.25.1")
    for number, files in enumerate(series):
        spec = JobSpec(job_id=number, kind=JobKind.SEGMENT, series_instance_uid=f"series-{number}",
                       route="ct", pipeline="organs", destinations=("RESULTS",), created=time.time(),
                       results=out / f"{core}-{number}", inputs=tuple(files))
        start = time.time()
        executor.execute(spec, config)
        times.append((core, start, time.time()))


def run_reference(workdir: Path, series: list[list[Path]], workers: int) -> float:
    """Seconds the jobs take on the executor alone, `workers` processes pinned a core each and the
    series dealt between them: what the machine itself gives, with no node, broker or destination."""
    config = SegnodeConfig(**node_config(workdir, free_port()))  # no destination: what it takes is read
    context = multiprocessing.get_context("fork")
    times = context.Manager().list()
    children = [context.Process(target=_executor_child,
                                args=(core, config, series[core::workers], workdir / "reference", times))
                for core in range(workers)]
    for child in children:
        child.start()
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the reference's worker on core {children.index(child)} failed")
    return max(end for _, _, end in times) - min(start for _, start, _ in times)


def report(one: CaseResult, two: CaseResult, reference: tuple[float, float], slices: int) -> float:
    ratio = two.per_hour / one.per_hour
    print(f"\n{one.series} series of 512x512x{slices}, built-in segmenter on the CPU, Redis broker")
    print(f"{'':30} {'1 worker, 1 core':>18} {'2 workers, 2 cores':>20}")
    print(f"{'span (s)':30} {one.span:18.1f} {two.span:20.1f}")
    print(f"{'series per hour':30} {one.per_hour:18.0f} {two.per_hour:20.0f}")
    def dealt(case: CaseResult) -> str:
        return " + ".join(str(sum(t.worker == w for t in case.tasks)) for w in range(case.workers))
    print(f"{'tasks by worker':30} {dealt(one):>18} {dealt(two):>20}")
    print(f"{'task seconds, median':30} {statistics.median(t.seconds for t in one.tasks):18.2f} "
          f"{statistics.median(t.seconds for t in two.tasks):20.2f}")
    print("\nworker core-seconds a series, by part (they add up to workers x span / series)")
    print(f"{'':30} {'1 worker':>10} {'2 workers':>10} {'difference':>11}")
    parts_one, parts_two = one.parts(), two.parts()
    for name in dict.fromkeys([*parts_one, *parts_two]):
        a, b = parts_one.get(name, 0.0), parts_two.get(name, 0.0)
        print(f"{name:30} {a:10.3f} {b:10.3f} {b - a:+11.3f}")
    total_one, total_two = sum(parts_one.values()), sum(parts_two.values())
    print(f"{'total':30} {total_one:10.3f} {total_two:10.3f} {total_two - total_one:+11.3f}")
    print("\nCPU seconds a series beside the workers, on their cores")
    for name, seconds in one.beside_cpu.items():
        print(f"{name:30} {seconds / one.series:10.3f} {two.beside_cpu[name] / two.series:10.3f}")
    ceiling = reference[0] / reference[1]
    print("\nreference, the executor alone (no node, broker or destination), the same series and cores:")
    print(f"{'span (s)':30} {reference[0]:18.1f} {reference[1]:20.1f}   ratio {ceiling:.2f}")
    verdict = "meets" if ratio >= GOAL_RATIO else "is UNDER"
    print(f"\nratio {ratio:.2f} (= 2 x {total_one:.3f} / {total_two:.3f}) against the machine's "
          f"{ceiling:.2f}; {verdict} the {GOAL_RATIO} goal")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=16, help="series per case, an even number (default 16)")
    parser.add_argument("--slices", type=int, default=150,
                        help=f"slices of 512x512 (2 to {CT_GRID.shape[0]}, default 150)")
    args = parser.parse_args()
    if args.series < 2 or args.series % 2:
        parser.error(f"--series must be an even number of at least 2, not {args.series}")
    if not 2 <= args.slices <= CT_GRID.shape[0]:
        parser.error(f"--slices must be between 2 and {CT_GRID.shape[0]}, not {args.slices}")
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        parser.error("two workers are pinned to cores 0 and 1: this machine must let us use both")
    workdir = Path(tempfile.mkdtemp(prefix="segnode-scaleout-"))
    try:
        print(f"writing {args.series} series of 512x512x{args.slices}...", flush=True)
        series = write_series(workdir / "series", args.series, args.slices)
        results, reference = [], []
        for workers in (1, 2):
            results.append(run_case(workdir / f"{workers}-workers", series, workers))
            print(f"{workers} worker(s): {results[-1].span:.1f} s", flush=True)
            reference.append(run_reference(workdir / f"{workers}-reference", series, workers))
            print(f"{workers} worker(s), the executor alone: {reference[-1]:.1f} s", flush=True)
        report(*results, tuple(reference), args.slices)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
