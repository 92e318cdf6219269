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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from config import Pipeline, ReportSettings
from dicomio.derived import source_headers
from dicomio.measurements import QualityFlag, StructureMeasurements
from dicomio.pet import SuvVolume, load_suv_volume
from dicomio.seg import Segment, plan_segments
from dicomio.series import load_series
from inference.qa import mirror_dice, plausibility_flags
from inference.quantify import DEFAULT_DENSITIES, quantify
from inference.segmenter import Segmentation, Segmenter
from node.work.outputs import SEG_AND_SR, OutputObject, OutputPlan
from node.work.stopwatch import Stopwatch
from node.work.writing import RunOutputs, binary_seg_in_background, write_outputs

LOG = logging.getLogger(__name__)

class PipelineError(Exception):
    """A series the pipeline cannot process; the message says why."""


@dataclass(frozen=True)
class PipelineInputs:
    """What one run works on.

    ``created`` dates the objects: the time the job was queued.
    ``device_uid`` identifies this segnode installation in the SEG and SR.
    ``notes`` are what the report must say about its input (how the series
    completed, when that left a gap). ``reports`` gives the PDF's
    disclaimer and the overlay images' slice step.
    """

    ct_files: tuple[Path, ...]
    pet_files: tuple[Path, ...]
    pipeline_name: str
    settings: Pipeline
    created: datetime
    device_uid: str
    notes: tuple[str, ...] = ()
    reports: ReportSettings = ReportSettings()


@dataclass(frozen=True)
class PipelineResult:
    """Where the outputs were written (the BINARY SEG and its SR are the
    job's record; ``objects`` are every DICOM object to send), what they
    say, and how long each stage took."""

    seg: Path
    sr: Path
    csv: Path
    labels: Path
    objects: tuple[OutputObject, ...]
    measurements: tuple[StructureMeasurements, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def run_pipeline(
    inputs: PipelineInputs, segmenter: Segmenter, out_dir: Path, plan: OutputPlan = SEG_AND_SR
) -> PipelineResult:
    """Segment, measure and encode one CT series (with its PET, if given)
    into ``out_dir``: ``seg.dcm``, ``sr.dcm``, ``measurements.csv``, the
    label map (``labels.nii.gz`` and its legend, for later comparisons) and
    what `plan` adds (node/work/writing.py)."""
    clock = Stopwatch()
    warnings: list[str] = []
    loaded = clock.run("load", lambda: load_series(inputs.ct_files))
    warnings += [f"{w.reason.value}: {len(w.sources)} image(s) left out: {w.detail}" for w in loaded.warnings]
    volume = loaded.volume
    if volume.modality != "CT":
        raise PipelineError(f"series {volume.series_instance_uid} is {volume.modality}, not CT")
    used = {s.sop_instance_uid for s in volume.sources}
    pet: SuvVolume | None = None
    pet_headers: tuple[Dataset, ...] = ()
    if inputs.pet_files:
        pet = clock.run("load_pet", lambda: load_suv_volume(inputs.pet_files))
        warnings += list(pet.warnings)
        pet_headers = tuple(
            source_headers(inputs.pet_files, {s.sop_instance_uid for s in pet.suv_bw.sources})
        )

    segmentation = clock.run("segment", lambda: segmenter.segment(volume))
    series_uid = volume.series_instance_uid
    segments = plan_segments(segmentation.labels, segmentation.structures, series_instance_uid=series_uid)
    if not segments:
        raise PipelineError(f"series {series_uid}: {segmenter.algorithm.name} found no structure")
    # The outline (the built-in segmenter's body): the one segment of a SEG of its own.
    outlined = segmentation.outlined()
    outline = None if outlined is None else Segment(1, 1, outlined.structures[0].code)
    densities = DEFAULT_DENSITIES.with_overrides(inputs.settings.densities)

    identity = (inputs.pipeline_name, segmenter.algorithm.name, segmenter.algorithm.version,
                pet.suv_bw.series_instance_uid if pet else "",
                hashlib.sha256(np.ascontiguousarray(segmentation.labels).data).hexdigest())
    run = RunOutputs(
        segmentation=segmentation, segments=segments, outline=outline, measurements=(),
        headers=tuple(loaded.headers), pet_headers=pet_headers, sources=tuple(sorted(used)),
        identity=identity, created=inputs.created, device_uid=inputs.device_uid, notes=inputs.notes,
        reports=inputs.reports,
    )
    # The BINARY SEG is built and written by a forked process meanwhile; the
    # outline is measured and checked on a thread beside the label map
    # (numpy, scipy and cc3d release the GIL for most of it).
    with binary_seg_in_background(run, out_dir) as seg, ThreadPoolExecutor(max_workers=1) as pool:

        def measure() -> tuple[StructureMeasurements, ...]:
            if outline is None:
                return quantify(segmentation, segments, densities=densities, pet=pet)
            of_outline = pool.submit(quantify, outlined, [outline], densities=densities, pet=pet)
            return quantify(segmentation, segments, densities=densities, pet=pet) + of_outline.result()

        measurements = clock.run("quantify", measure)
        measurements = clock.run(
            "qa", lambda: _checked(measurements, segmentation, outlined, segmenter, inputs.settings, pool)
        )
        started = time.perf_counter()
        written = write_outputs(replace(run, measurements=measurements), plan, out_dir, seg, clock.run)
    # "write" is the rest of the output stage: writing, and waiting for the SEG.
    counted = sum(clock.seconds.get(stage, 0.0) for stage in ("encode", "pdf", "overlay", "rtstruct"))
    clock.seconds["write"] = round(time.perf_counter() - started - counted, 3)
    return PipelineResult(written.seg, written.sr, written.csv, written.labels, written.objects,
                          measurements=measurements, seconds=clock.seconds,
                          warnings=(*warnings, *written.warnings))


def _checked(
    measurements: tuple[StructureMeasurements, ...],
    segmentation: Segmentation,
    outlined: Segmentation | None,
    segmenter: Segmenter,
    settings: Pipeline,
    pool: ThreadPoolExecutor,
) -> tuple[StructureMeasurements, ...]:
    """The measurements with the pipeline's QA: plausibility flags (of the
    outline too, on `pool`) and the mirrored-prediction Dice where the model
    allows it."""
    flags: dict[str, tuple[QualityFlag, ...]] = {}
    if settings.qa.plausibility:
        of_outline = None if outlined is None else pool.submit(plausibility_flags, outlined)
        flags = plausibility_flags(segmentation) | ({} if of_outline is None else of_outline.result())
    values = {s.code.name: s.value for s in segmentation.structures}
    mirror: dict[int, float] = {}
    if settings.qa.mirror_consistency:
        mirrored = segmenter.segment_mirrored(segmentation.volume)
        if mirrored is None:
            LOG.info("%s allows no mirrored prediction: no mirror consistency", segmenter.algorithm.name)
        else:
            mirror = mirror_dice(segmentation.labels, mirrored.labels, list(values.values()))
    # The outline is in no label map, mirrored or not: it has no mirror Dice.
    return tuple(
        replace(m, flags=flags.get(m.name, ()),
                mirror_dice=mirror.get(values[m.name]) if m.name in values else None)
        for m in measurements
    )
