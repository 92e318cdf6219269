"""Every output a destination can take, through a real PACS (Debian's Orthanc
1.10.1): SEG, SR, the PDF report, overlay images and RTSTRUCT land in the
CT's study. The one SOP class this Orthanc does not know (Label Map
Segmentation, newer than it) is refused at association unless Orthanc is
told to accept unknown SOP classes; the node logs the refusal, shows it in
its status and still delivers the rest."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from pydicom.uid import (
    EncapsulatedPDFStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from tests.synthetic import write_ct_series
from tests.test_orthanc import OrthancProcess, serve_orthanc, upload_series

# The node's end-to-end loops: the slow stage of .ci/run (README, Tests).
pytestmark = pytest.mark.slow

SLICES = 12
#: Label Map Segmentation Storage (Supplement 243), which Orthanc 1.10.1 does not know.
LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"
EVERY_OUTPUT = {"outputs": ["seg", "sr", "pdf", "overlay", "rtstruct"], "seg_format": "both"}


@pytest.mark.parametrize("knows_labelmap", [False, True], ids=["as-installed", "unknown-sop-accepted"])
def test_orthanc_files_every_output_in_the_study(node_factory, tmp_path, knows_labelmap):
    node = node_factory()
    pacs = OrthancProcess(tmp_path / "orthanc", node, UnknownSopClassAccepted=knows_labelmap)
    try:
        serve_orthanc(node, pacs, destination=EVERY_OUTPUT)
        ct = upload_series(pacs, write_ct_series(tmp_path / "ct", slices=SLICES, rows=96, columns=96,
                                                 pixel_spacing=(4.0, 4.0), slice_thickness=4.0))
        sent = pacs.post("/modalities/segnode/store",
                         json.dumps({"Resources": [ct.series_id], "Synchronous": True}).encode())
        assert sent["FailedInstancesCount"] == 0

        segs = 3 if knows_labelmap else 2  # the structures' SEG, the body's, and the LABELMAP
        expected = {"CT": SLICES, "SEG": segs, "SR": 1, "DOC": 1, "RTSTRUCT": 1, "OT": SLICES}
        found = _wait_for_study(pacs, node, ct.study_id, expected, timeout=120)
        classes = {modality: {pacs.dataset(i).SOPClassUID for i in ids} for modality, ids in found.items()}
        assert classes["SEG"] == {SegmentationStorage, *([LABEL_MAP_SEGMENTATION] if knows_labelmap else [])}
        assert classes["DOC"] == {EncapsulatedPDFStorage}
        assert classes["RTSTRUCT"] == {RTStructureSetStorage}
        assert classes["OT"] == {SecondaryCaptureImageStorage}
        if knows_labelmap:
            return

        # A refusal is retried (sending.max_refusals) in case the PACS is reconfigured meanwhile.
        deadline = time.monotonic() + 60
        while not (failed := _status(node)["outbox_failed"]) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert [item["path"].rsplit("/", 1)[1] for item in failed] == ["labelmap-seg.dcm"], node.log()
        assert "not-accepted" in failed[0]["reason"] and LABEL_MAP_SEGMENTATION in failed[0]["reason"]
        assert "labelmap-seg.dcm: PACS accepted no context for SOP class" in node.log()
        printed = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config",
                                  str(node.config_path)],
                                 capture_output=True, text=True, check=True, cwd=node.workdir).stdout
        assert "labelmap-seg.dcm" in printed and "not sent to PACS" in printed, printed
    finally:
        pacs.stop()


def _wait_for_study(pacs: OrthancProcess, node, study_id: str, expected: dict[str, int],
                    timeout: float) -> dict[str, list[str]]:
    """Orthanc's instance ids in the study by modality, once `expected` are there."""
    deadline = time.monotonic() + timeout
    found: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        found = {}
        for series in pacs.get(f"/studies/{study_id}/series"):
            found.setdefault(series["MainDicomTags"]["Modality"], []).extend(series["Instances"])
        if {modality: len(ids) for modality, ids in found.items()} == expected:
            return found
        time.sleep(0.5)
    raise AssertionError(f"study has {({m: len(i) for m, i in found.items()})}, expected {expected}\n"
                         f"segnode log:\n{node.log()[-5000:]}\nOrthanc log:\n{pacs.log()[-3000:]}")


def _status(node) -> dict:
    done = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path),
                           "--json"], capture_output=True, text=True, check=True, cwd=node.workdir)
    return json.loads(done.stdout)
