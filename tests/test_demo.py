"""``segnode demo``: a phantom study through a real node and back, figures against the truth."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest

from phantom.anatomy import ct_phantom
from phantom.demo import DEMO_GRID, SHARED_SERIES

# The whole demo, twice: a stage of .ci/run after the default suite (docker/ci-check.sh runs it too).
pytestmark = pytest.mark.slow


def run_demo(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "demo", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def table(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and re.fullmatch(r"[a-z_]+", cells[0]) and len(cells) >= 3 and cells[1][0].isdigit():
            rows[cells[0]] = cells[1:]
    return rows


def test_the_phantom_comes_back_measured_close_to_its_truth(tmp_path):
    done = run_demo("--keep", str(tmp_path / "demo"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    slices = DEMO_GRID.shape[0]
    assert f"PACS: received {slices + 6} objects" in done.stdout, done.stdout
    assert f"{slices} overlay images" in done.stdout
    assert "3 SEG (BINARY: structures, body; LABELMAP)" in done.stdout
    rows = table(done.stdout)
    truth = ct_phantom(DEMO_GRID).truth
    for lung in ("lung_left", "lung_right"):
        volume, hu, suv_mean = (float(v) for v in rows[lung][:3])
        assert volume == pytest.approx(truth[lung].volume_ml, rel=0.02)
        assert hu == pytest.approx(truth[lung].mean_hu, abs=5)
        assert suv_mean == pytest.approx(truth[lung].suv_mean, abs=0.05)
    # The body is the whole body outline, its volume the phantom's body.
    assert float(rows["body"][0]) == pytest.approx(truth["body"].volume_ml, rel=0.02)
    received = Counter(p.name.split("-")[0] for p in (tmp_path / "demo" / "pacs").iterdir())
    assert received == Counter(SEG=3, SR=1, DOC=1, RTSTRUCT=1, OT=slices)


def test_the_shared_siemens_series_goes_through_too(tmp_path):
    if not SHARED_SERIES.is_dir():
        pytest.skip(f"shared data absent: {SHARED_SERIES}")
    done = run_demo("--shared", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table(done.stdout)
    assert {"body", "skeleton", "skeletal_muscle"} <= rows.keys()
    assert "SUVmean" not in done.stdout  # no PET with this series
