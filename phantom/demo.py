"""``segnode demo``: the whole product on one machine, in under a minute.

It plays every part a hospital has: a scanner (sending a phantom CT and PET
study with known truth, or the shared Siemens series), a PACS (a C-STORE SCP
that keeps what it receives) and, between them, a real ``segnode serve``
process with a temporary store. Nothing is bypassed: the study goes over
DICOM, is stored, completed, routed, segmented by a worker, measured and
sent back, and the demo prints what the PACS received next to the truth.
"""

from __future__ import annotations

import csv
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    EncapsulatedPDFStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
)

from config import Destination
from dicomio.files import write_atomically
from node.send.sender import send_files
from phantom.anatomy import AxialGrid
from phantom.study import PhantomStudy, write_study

#: A small phantom grid: 2 mm pixels (the built-in finds the spine from
#: about 2 mm down), 5 mm slices, 600 mm of torso; seconds to segment.
DEMO_GRID = AxialGrid((120, 256, 256), (5.0, 1.953125, 1.953125))
#: The real Siemens series beside the repository (../shared, see README).
SHARED_SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct-abdomen-siemens" / "dicom"
SCANNER_AE, PACS_AE, NODE_AE = "DEMO-SCANNER", "DEMO-PACS", "SEGNODE"
_RESULT_TIMEOUT_SECONDS = 180


class DemoError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DemoPacs:
    """The PACS: a C-STORE SCP keeping every object it is sent."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.received: list[Path] = []
        self._arrived = threading.Condition()
        ae = AE(ae_title=PACS_AE)
        for sop_class in (*hd.seg.SOP_CLASS_UIDS, Comprehensive3DSRStorage, EncapsulatedPDFStorage,
                          SecondaryCaptureImageStorage, RTStructureSetStorage):
            ae.add_supported_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        path = self.folder / f"{dataset.Modality}-{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        with self._arrived:
            self.received.append(path)
            self._arrived.notify_all()
        return 0x0000

    def wait_for(self, expected: Counter, timeout: float) -> dict[str, list[Path]]:
        """The objects received by modality, once `expected` (how many of
        each modality) have come."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found: dict[str, list[Path]] = {}
                for path in self.received:
                    found.setdefault(path.name.split("-", 1)[0], []).append(path)
                missing = {modality: count - len(found.get(modality, ()))
                           for modality, count in expected.items() if len(found.get(modality, ())) < count}
                if not missing:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoError(f"still missing {missing} (modality: count) after {timeout:.0f} s")
                self._arrived.wait(left)

    @property
    def destination(self) -> dict:
        """The PACS as a destination that takes every output, and SEG in both formats."""
        return {"ae_title": PACS_AE, "host": "127.0.0.1", "port": self.port,
                "outputs": ["seg", "sr", "pdf", "overlay", "rtstruct"], "seg_format": "both"}

    def stop(self) -> None:
        self._server.shutdown()


@dataclass(frozen=True)
class _Inputs:
    ct: tuple[Path, ...]
    pet: tuple[Path, ...]
    study: PhantomStudy | None


@contextmanager
def _node(workdir: Path, pacs: DemoPacs) -> Iterator[tuple[Destination, Path]]:
    """A ``segnode serve`` process on free ports; yields where to send and its log."""
    port = _free_port()
    config = {
        "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": port,
                 "storage_dir": str(workdir / "store"), "series_stable_seconds": 2,
                 "metrics_port": _free_port()},
        # The scanner's series are complete once its association is released.
        "peers": [{"ae_title": SCANNER_AE, "host": "127.0.0.1", "completion": "association"}],
        "destinations": {"PACS": pacs.destination},
        "pipelines": {"organs": {"model": "builtin", "qa": {"plausibility": True}}},
        "routes": [{"name": "ct-organs", "match": {"modality": "CT"}, "pipeline": "organs",
                    "send_to": ["PACS"]}],
        "sending": {"retry_base_seconds": 1, "retry_max_seconds": 5},
        # The demo writes a few hundred MB: a laptop need not keep a production node's 10 GiB free.
        "storage": {"low_watermark_bytes": 512 << 20},
    }
    config_path = workdir / "segnode.yaml"
    write_atomically(config_path, yaml.safe_dump(config).encode())
    log_path = workdir / "segnode.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(config_path)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "segnode ready" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"segnode did not start; its log is {log_path}")
            time.sleep(0.1)
        yield Destination(ae_title=NODE_AE, host="127.0.0.1", port=port), log_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _inputs(workdir: Path, shared: bool) -> _Inputs:
    if shared:
        if not SHARED_SERIES.is_dir():
            raise DemoError(f"--shared: no shared data at {SHARED_SERIES}")
        return _Inputs(tuple(sorted(SHARED_SERIES.iterdir())), (), None)
    study = write_study(workdir / "scanner", DEMO_GRID)
    return _Inputs(study.ct.files, study.pet.files if study.pet else (), study)


def _send(destination: Destination, files: tuple[Path, ...], what: str) -> None:
    results = send_files(destination, files, calling_ae=SCANNER_AE, timeout=30)
    failed = [r for r in results if not r.delivered]
    if failed:
        raise DemoError(f"sending the {what} failed: {failed[0].outcome.value} {failed[0].detail}")
    print(f"scanner: sent {len(files)} {what} images to {destination.ae_title}")


def _measurements(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as table:
        return list(csv.DictReader(table))


def _report(rows: list[dict[str, str]], study: PhantomStudy | None) -> str:
    pet = any(row["suv_mean"] for row in rows)
    header = f"{'structure':<18} {'volume ml':>10} {'HU mean':>8}"
    if pet:
        header += f" {'SUVmean':>8} {'SUVmax':>7} {'SUVpeak':>8}"
    if study is not None:
        header += f"   | truth: {'volume ml':>9} {'HU':>6}" + (f" {'SUV':>5}" if pet else "")
    lines = [header]
    for row in rows:
        line = f"{row['structure']:<18} {float(row['volume_ml']):>10.1f} {float(row['hu_mean']):>8.1f}"
        if pet:
            line += "".join(f" {float(row[k]):>{w}.2f}" if row[k] else f" {'-':>{w}}"
                            for k, w in (("suv_mean", 8), ("suv_max", 7), ("suv_peak", 8)))
        truth = study.truth.get(row["structure"]) if study is not None else None
        if truth is not None:
            line += f"   |        {truth.volume_ml:>9.1f} {truth.mean_hu:>6.0f}"
            if pet:
                line += f" {truth.suv_mean:>5.2f}"
        lines.append(line)
        for flag in filter(None, row["flags"].splitlines()):
            lines.append(f"    QA: {flag}")
    return "\n".join(lines)


#: What each modality of the results is, for the summary.
_KINDS = {"SEG": "SEG (BINARY: structures, body; LABELMAP)", "SR": "SR (TID 1500)", "DOC": "PDF report",
          "RTSTRUCT": "RTSTRUCT", "OT": "overlay images"}


def _received(found: dict[str, list[Path]]) -> str:
    return ", ".join(f"{len(paths)} {_KINDS.get(modality, modality)}"
                     for modality, paths in sorted(found.items()))


def _result_csv(store: Path, seg: Dataset) -> Path:
    """The node's measurements.csv for the series the SEG was made of."""
    series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    found = sorted((store / "results" / series).glob("segment-*/measurements.csv"))
    if not found:
        raise DemoError(f"the node kept no measurements for series {series}")
    return found[0]


def run_demo(shared: bool = False, keep: Path | None = None) -> int:
    """Run the demo; `keep` keeps the store and the received objects there."""
    with tempfile.TemporaryDirectory(prefix="segnode-demo-") as tmp:
        workdir = Path(keep) if keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        inputs = _inputs(workdir, shared)
        pacs = DemoPacs(workdir / "pacs")
        try:
            with _node(workdir, pacs) as (node, log):
                print(f"segnode: listening as {node.ae_title} on port {node.port} (log {log})")
                _send(node, inputs.ct, "CT")
                if inputs.pet:
                    _send(node, inputs.pet, "PET")
                # The BINARY SEGs of the structures and of the body, the LABELMAP SEG, the BINARY
                # SEGs' SR, the report, the contours and an overlay per slice.
                expected = Counter(SEG=3, SR=1, DOC=1, RTSTRUCT=1, OT=len(inputs.ct))
                found = pacs.wait_for(expected, _RESULT_TIMEOUT_SECONDS)
                seg = pydicom.dcmread(found["SEG"][0], stop_before_pixels=True)  # any: one series
                rows = _measurements(_result_csv(workdir / "store", seg))
        finally:
            pacs.stop()
        print(f"PACS: received {len(pacs.received)} objects {time.monotonic() - start:.0f} s after the demo "
              f"started: {_received(found)}\n")
        print(_report(rows, inputs.study))
        if inputs.study is not None:
            lesion = inputs.study.lesion
            print(f"\n(the phantom's liver lesion, SUV {lesion.suv:g} in {lesion.volume_ml:.1f} ml, "
                  "is no structure of the built-in segmenter)")
        where = keep if keep else "a temporary folder, now removed (--keep DIR keeps it)"
        print(f"\nreturned objects: in {where}")
        if keep:
            print(f"open {workdir / 'pacs'} in a DICOM viewer (3D Slicer, OHIF) with the CT in "
                  f"{workdir / 'scanner' / 'ct' if not shared else SHARED_SERIES}; the PDF report is "
                  f"{_result_csv(workdir / 'store', seg).with_name('report.pdf')}")
    return 0

