"""Memory benchmark: many concurrent associations of 512x512 slices, into segnode and into dcmtk storescp.

``--associations`` dcmtk storescu processes (64 by default) start at once,
each sending its own series of ``--slices`` uncompressed 512x512 CT slices
(explicit VR little endian, about 0.5 MB each) on one association: first
into dcmtk's storescp (``--fork``: one process per association, as segnode
has one thread per association), then into ``segnode serve`` (fsync'ed files
and SQLite index before each success status, max_associations set to
``--associations``). Meanwhile each receiver's VmRSS (/proc/<pid>/status) is
sampled every 50 ms:

- segnode: the node process, which receives; its worker process (which
  only runs jobs, and no route is configured here) is shown on its own line
  and is not part of the node's figures;
- storescp: the listening process plus its forked children, summed (RSS
  counts pages the children share with the parent once per process, so
  this sum overstates what storescp really uses).

It prints baseline (idle, before sending), peak and final RSS, elapsed wall
time and throughput for each. Both peers run with TCP_NODELAY=1 (see
bench/ingest.py).

    python bench/associations_memory.py --associations 64 --slices 20
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ingest import DCMTK, ENV, start_segnode, start_storescp  # noqa: E402
from tests.synthetic import write_ct_series  # noqa: E402

SAMPLE_SECONDS = 0.05


def vm_rss(pid: int) -> int:
    """VmRSS of a process in bytes, 0 once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@dataclass
class Peak:
    baseline: int
    peak: int = 0
    final: int = 0


class Sampler:
    """Peak RSS of named process groups, every SAMPLE_SECONDS, in a thread."""

    def __init__(self, groups: dict[str, callable]):
        self.groups = groups
        self.peaks = {name: Peak(measure()) for name, measure in groups.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            for name, measure in self.groups.items():
                self.peaks[name].peak = max(self.peaks[name].peak, measure())

    def stop(self) -> dict[str, Peak]:
        self._stop.set()
        self._thread.join()
        for name, measure in self.groups.items():
            peak = self.peaks[name]
            peak.final = measure()
            peak.peak = max(peak.peak, peak.final)  # a run shorter than one sample
        return self.peaks


def send_all(series: list[list[Path]], port: int, called_ae: str) -> float:
    """Start one storescu per series at once; the wall time until the last has finished."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [DCMTK / "storescu", "-aet", "STORESCU", "-aec", called_ae, "127.0.0.1", str(port)]
            + [str(f) for f in files],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        for files in series
    ]
    failures = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failures.append(stderr.decode(errors="replace")[-500:])
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} storescu runs into {called_ae} failed, the first:\n"
                           f"{failures[0]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, default=64)
    parser.add_argument("--slices", type=int, default=20, help="slices per association")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="segnode-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    series = [
        write_ct_series(workdir / f"series{i}", "1.2.840.10008.1.2.1", slices=args.slices, rows=512,
                        columns=512, seed=i)
        for i in range(args.associations)
    ]
    megabytes = sum(f.stat().st_size for files in series for f in files) / 1e6
    print(f"{args.associations} associations at once, each {args.slices} slices of 512x512 "
          f"({megabytes:.1f} MB in all), sent by dcmtk storescu")

    storescp, storescp_port = start_storescp(workdir, "--fork")
    # All storescu processes connect from 127.0.0.1 at the same moment.
    segnode, segnode_port = start_segnode(workdir, max_associations=args.associations,
                                          max_pending_per_address=args.associations,
                                          max_pending_connections=args.associations)
    worker = children(segnode.pid)
    rows = []
    try:
        time.sleep(2)  # let both settle before the baseline
        sampler = Sampler({"dcmtk storescp --fork (sum)":
                           lambda: vm_rss(storescp.pid) + sum(vm_rss(c) for c in children(storescp.pid))})
        elapsed = send_all(series, storescp_port, "STORESCP")
        rows += [(name, peak, elapsed) for name, peak in sampler.stop().items()]

        groups = {"segnode (node process)": lambda: vm_rss(segnode.pid)}
        if worker:
            groups["segnode worker (apart)"] = lambda: sum(vm_rss(pid) for pid in worker)
        sampler = Sampler(groups)
        elapsed = send_all(series, segnode_port, "SEGNODE")
        time.sleep(1)
        rows += [(name, peak, elapsed) for name, peak in sampler.stop().items()]
    finally:
        for proc in (storescp, segnode):
            proc.terminate()
            proc.wait(30)

    mib = 1 << 20
    print(f"{'receiver':<28} {'baseline MiB':>12} {'peak MiB':>9} {'peak-base':>10} {'final MiB':>10}"
          f" {'elapsed s':>10} {'MB/s':>7}")
    for name, peak, elapsed in rows:
        print(f"{name:<28} {peak.baseline / mib:>12.0f} {peak.peak / mib:>9.0f}"
              f" {(peak.peak - peak.baseline) / mib:>10.0f} {peak.final / mib:>10.0f}"
              f" {elapsed:>10.2f} {megabytes / elapsed:>7.1f}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
