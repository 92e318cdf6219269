"""The layer contracts of pyproject.toml ([tool.importlinter]) hold, and they bite.

dicomio at the bottom, config (which writes its file through dicomio.files)
and inference above it, node above them, the phantom and demo on top;
inference never imports pynetdicom and dicomio never torch; node's stages
import one way. A new import that breaks a layer fails here, so the
structure the README describes stays the structure of the code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("phantom", "node", "inference", "dicomio", "config")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # No cache: a copy must be analysed afresh.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(root)})


def test_the_code_keeps_its_layers():
    linted = lint_imports(REPO)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "Contracts: 4 kept, 0 broken." in linted.stdout


def test_an_import_across_a_layer_breaks_its_contract(tmp_path):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with (tmp_path / "dicomio" / "codes.py").open("a") as codes:
        codes.write("\nimport node.metrics  # noqa\nimport torch  # noqa\n")
    with (tmp_path / "inference" / "segmenter.py").open("a") as segmenter:
        segmenter.write("\nimport pynetdicom  # noqa\n")
    with (tmp_path / "node" / "receive" / "index.py").open("a") as index:
        index.write("\nimport node.work.worker  # noqa\n")
    linted = lint_imports(tmp_path)
    assert linted.returncode == 1
    assert "Contracts: 0 kept, 4 broken." in linted.stdout
    assert "dicomio.codes -> node.metrics" in linted.stdout
    assert "node.receive.index -> node.work.worker" in linted.stdout
