"""One series through the stages: load, segment, quantify, check, encode.

The same function runs in a worker for a routed series and in ``segnode
run-series`` for a folder, so what a PACS gets back is what a user can
reproduce offline.

A retry must not make new objects: the SEG and SR UIDs are derived from the
source instances, the PET series, the model, the pipeline and the label map
itself, and both are dated by the time the job was queued, so a second run
writes the same bytes and a destination that already has them just gets
them again. A series that changed (a late slice), or a model that now
labels it differently under the same version, gets new UIDs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from config import Pipeline
from dicomio.csv import write_measurements_csv
from dicomio.derived import (
    date_object,
    fix_dimension_organisation,
    result_uid,
    source_headers,
    write_dicom_atomically,
    written_in_background,
)
from dicomio.label_map import write_label_map
from dicomio.measurements import StructureMeasurements
from dicomio.pet import SuvVolume, load_suv_volume
from dicomio.seg import plan_segments, write_seg
from dicomio.series import load_series
from dicomio.sr import write_measurement_report
from inference.qa import mirror_dice, plausibility_flags
from inference.quantify import DEFAULT_DENSITIES, quantify
from inference.segmenter import Segmentation, Segmenter

LOG = logging.getLogger(__name__)

#: Series Numbers of what segnode writes, high so that viewers list them
#: after the scanner's series.
SEG_SERIES_NUMBER = 9001
SR_SERIES_NUMBER = 9002

class PipelineError(Exception):
    """A series the pipeline cannot process; the message says why."""


@dataclass(frozen=True)
class PipelineInputs:
    """What one run works on.

    ``created`` dates the objects: the time the job was queued.
    ``device_uid`` identifies this segnode installation in the SEG and SR.
    ``notes`` are what the report must say about its input (how the series
    completed, when that left a gap).
    """

    ct_files: tuple[Path, ...]
    pet_files: tuple[Path, ...]
    pipeline_name: str
    settings: Pipeline
    created: datetime
    device_uid: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PipelineResult:
    """Where the outputs were written, the SOP Instance UIDs of the SEG and
    SR (what they are sent under), what they say, and how long each stage took."""

    seg: Path
    sr: Path
    csv: Path
    labels: Path
    seg_uid: str
    sr_uid: str
    measurements: tuple[StructureMeasurements, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


class Stopwatch:
    """Seconds per stage, for the job's log line and the metrics."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, step: Callable[[], object]) -> object:
        """Run `step`, adding its time to `stage`'s (a stage may run in parts)."""
        start = time.perf_counter()
        value = step()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 3)
        return value


def run_pipeline(inputs: PipelineInputs, segmenter: Segmenter, out_dir: Path) -> PipelineResult:
    """Segment, measure and encode one CT series (with its PET, if given)
    into ``out_dir/seg.dcm``, ``sr.dcm`` and ``measurements.csv``, and keep
    the label map (``labels.nii.gz`` and its legend) for later comparisons."""
    clock = Stopwatch()
    warnings: list[str] = []
    loaded = clock.run("load", lambda: load_series(inputs.ct_files))
    warnings += [f"{w.reason.value}: {len(w.sources)} image(s) left out: {w.detail}" for w in loaded.warnings]
    volume = loaded.volume
    if volume.modality != "CT":
        raise PipelineError(f"series {volume.series_instance_uid} is {volume.modality}, not CT")
    used = {s.sop_instance_uid for s in volume.sources}
    headers = list(loaded.headers)
    pet: SuvVolume | None = None
    pet_headers: list[Dataset] = []
    if inputs.pet_files:
        pet = clock.run("load_pet", lambda: load_suv_volume(inputs.pet_files))
        warnings += list(pet.warnings)
        pet_headers = source_headers(inputs.pet_files, {s.sop_instance_uid for s in pet.suv_bw.sources})

    segmentation = clock.run("segment", lambda: segmenter.segment(volume))
    series_uid = volume.series_instance_uid
    segments = plan_segments(segmentation.labels, segmentation.structures, series_instance_uid=series_uid)
    if not segments:
        raise PipelineError(f"series {series_uid}: {segmenter.algorithm.name} found no structure")
    densities = DEFAULT_DENSITIES.with_overrides(inputs.settings.densities)
    measurements = clock.run(
        "quantify", lambda: quantify(segmentation, segments, densities=densities, pet=pet)
    )
    measurements = clock.run("qa", lambda: _checked(measurements, segmentation, segmenter, inputs.settings))

    identity = (inputs.pipeline_name, segmenter.algorithm.name, segmenter.algorithm.version,
                pet.suv_bw.series_instance_uid if pet else "",
                hashlib.sha256(np.ascontiguousarray(segmentation.labels).data).hexdigest())
    sources = sorted(used)

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "seg.dcm", out_dir / "sr.dcm", out_dir / "measurements.csv", out_dir / "labels.nii.gz"

    def build_seg() -> Dataset:
        seg = write_seg(
            volume, segmentation.labels, segmentation.structures, segmentation.algorithm, headers,
            series_number=SEG_SERIES_NUMBER,
            series_description=f"{segmenter.algorithm.name} segmentation"[:64],
            device_serial_number=inputs.device_uid,
            series_instance_uid=result_uid("seg-series", sources, identity),
            sop_instance_uid=result_uid("seg", sources, identity),
            segments=segments,
        )
        date_object(seg, inputs.created)
        fix_dimension_organisation(seg, result_uid("seg-dimensions", sources, identity))
        return seg

    def build_sr(seg: Dataset) -> Dataset:
        sr = write_measurement_report(
            measurements, seg, headers + pet_headers, segmentation.algorithm,
            device_uid=inputs.device_uid,
            series_number=SR_SERIES_NUMBER,
            series_description=f"{segmenter.algorithm.name} measurements"[:64],
            series_instance_uid=result_uid("sr-series", sources, identity),
            sop_instance_uid=result_uid("sr", sources, identity),
            notes=inputs.notes,
        )
        date_object(sr, inputs.created)
        return sr

    def encode_and_write() -> tuple[Dataset, Dataset]:
        # Three things overlap on two cores: SimpleITK compresses the label
        # map without holding the GIL, a forked process writes the SEG, and
        # this one builds and writes the SR meanwhile.
        with ThreadPoolExecutor(max_workers=1) as pool:
            label_map = pool.submit(
                write_label_map, segmentation.labels, volume, segmentation.structures, paths[3]
            )
            seg = clock.run("encode", build_seg)
            with written_in_background(seg, paths[0]):
                sr = clock.run("encode", lambda: build_sr(seg))
                write_dicom_atomically(sr, paths[1])
                write_measurements_csv(measurements, paths[2])
            label_map.result()
        return seg, sr

    started = time.perf_counter()
    seg, sr = encode_and_write()
    # "write" is the rest of that wall time: writing, and waiting for the writes.
    clock.seconds["write"] = round(time.perf_counter() - started - clock.seconds["encode"], 3)
    return PipelineResult(*paths, seg_uid=str(seg.SOPInstanceUID), sr_uid=str(sr.SOPInstanceUID),
                          measurements=measurements, seconds=clock.seconds, warnings=tuple(warnings))


def _checked(
    measurements: tuple[StructureMeasurements, ...],
    segmentation: Segmentation,
    segmenter: Segmenter,
    settings: Pipeline,
) -> tuple[StructureMeasurements, ...]:
    """The measurements with the pipeline's QA: plausibility flags and the
    mirrored-prediction Dice where the model allows it."""
    flags = plausibility_flags(segmentation) if settings.qa.plausibility else {}
    values = {s.code.name: s.value for s in segmentation.structures}
    mirror: dict[int, float] = {}
    if settings.qa.mirror_consistency:
        mirrored = segmenter.segment_mirrored(segmentation.volume)
        if mirrored is None:
            LOG.info("%s allows no mirrored prediction: no mirror consistency", segmenter.algorithm.name)
        else:
            mirror = mirror_dice(segmentation.labels, mirrored.labels, list(values.values()))
    return tuple(
        replace(m, flags=flags.get(m.name, ()), mirror_dice=mirror.get(values[m.name]))
        for m in measurements
    )
