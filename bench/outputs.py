"""Output stages benchmark: quantify, encode and write of ``run_pipeline`` on the phantom CT.

The pipeline runs as a worker runs it (node/work/pipeline.py) on the
512x512x300 phantom CT (phantom/anatomy.py, as bench/e2e.py sends it), with
the built-in segmenter on the CPU; the segmentation is computed once and
replayed, so each repeat times the stages after it on identical labels and
the runs take seconds, not the segmenter's quarter of a minute. The first
run is a warm-up (highdicom reading its tables of the standard) and is not
counted. Each stage's median is printed beside the figure of the code
before issue 13, measured by this script on the same machine:

    .venv/bin/python bench/outputs.py --repeat 5

Before, the code at 15f7bfe run from a copy by this script just before
the changed code on the shared 2-core build machine (1-minute load 2.9 to
3.6; 8 segments, 1,676 SEG frames, 55.8 MB SEG), medians of 3: quantify
3.01 s, encode 2.71 s, write 2.49 s; the changed code right after: 2.19,
2.21 and 2.15 s. A second pair at load 3.6 to 4.2: 3.38, 3.34, 2.75 before
and 2.03, 3.34, 2.87 after (best 1.42, 1.59, 1.51).

Second step (the label map written beside the DICOM writes, the CT headers
kept by load_series instead of read again): figures in the closing note of
that commit, measured with this script.

Third step (the SEG written by a forked process while the SR is built and
written, the label map compressed from the start): encode+write 2.75 s
median (best 2.40) just before, 1.93 s (best 1.87) after, 5 runs each,
1-minute load 0.8 to 0.9 on the 2-core build machine.

Fourth step (issue 14's body, a SEG of its own, measured and checked on a
thread; the BINARY SEG built and written by a forked process from the
moment the label map exists, beside quantify and QA): quantify 1.24, QA
0.56, encode+write 1.37 s median, load 0.8 to 1.2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.e2e import phantom_grid  # noqa: E402
from config import Pipeline  # noqa: E402
from inference.builtin.segmenter import BuiltinSegmenter  # noqa: E402
from node.work.pipeline import PipelineInputs, run_pipeline  # noqa: E402
from phantom.study import write_study  # noqa: E402

#: Medians of the code before issue 13 (see the docstring), in seconds.
BEFORE = {"quantify": 3.01, "encode": 2.71, "write": 2.49}
#: Issue 13's goals, in seconds: quantify within 1 s, encode and write together within 2 s.
GOALS = {"quantify": 1.0, "enc+write": 2.0}
STAGES = ("load", "quantify", "qa", "encode", "write")


class ReplayedSegmenter(BuiltinSegmenter):
    """The built-in segmenter, segmenting once: later calls return the first result."""

    def __init__(self) -> None:
        super().__init__()
        self._first = None

    def segment(self, volume):
        if self._first is None:
            self._first = super().segment(volume)
        return self._first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # highdicom's notes are not the subject

    segmenter = ReplayedSegmenter()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="segnode-bench-outputs-") as tmp:
        study = write_study(Path(tmp) / "study", phantom_grid(args.slices), seed=1, with_pet=False)
        inputs = PipelineInputs(study.ct.files, (), "organs", Pipeline(),
                                datetime(2026, 1, 1, tzinfo=timezone.utc), "2.25.1")
        for run in range(args.repeat + 1):
            result = run_pipeline(inputs, segmenter, Path(tmp) / f"out{run}")
            if run:
                runs.append(result.seconds)
        seg_mb = result.seg.stat().st_size / 1e6
    print(f"phantom CT {args.slices}x512x512, {len(result.measurements)} segments, SEG {seg_mb:.1f} MB, "
          f"{args.repeat} runs after a warm-up")
    print(f"{'stage':<10}{'median s':>10}{'best s':>10}{'before s':>10}{'goal s':>10}")
    for stage in STAGES:
        _row(stage, [r[stage] for r in runs], BEFORE.get(stage))
    _row("enc+write", [r["encode"] + r["write"] for r in runs], BEFORE["encode"] + BEFORE["write"])
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


def _row(stage: str, values: list[float], before: float | None) -> None:
    """One stage's median and best beside the before figure and the goal,
    the median marked with whether it meets the goal."""
    median = statistics.median(values)
    goal = GOALS.get(stage)
    verdict = "" if goal is None else "  met" if median <= goal else "  not met"
    print(f"{stage:<10}{median:>10.2f}{min(values):>10.2f}{_figure(before)}{_figure(goal)}{verdict}")


def _figure(value: float | None) -> str:
    return f"{'-' if value is None else f'{value:.2f}':>10}"


if __name__ == "__main__":
    raise SystemExit(main())
