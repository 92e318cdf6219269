"""Running a job on its files: the worker's step, with no database.

A job's inputs come as a :class:`~node.work.job_spec.JobSpec` and what it
made goes back as a :class:`~node.work.job_spec.JobOutcome`; sending it,
recording it and evaluating a dosimetry course are the node's
(:mod:`node.work.recording`). The executor keeps each model it loaded warm
for the next job.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from config import Pipeline, SegnodeConfig, read_research_key
from config.research_key import ResearchKeyError
from dicomio.deidentify import Deidentifier, NotExportable
from inference.model_store import ModelStore
from inference.segmenter import Segmenter
from inference.segmenters import open_segmenter
from node.queue.jobs import JobKind
from node.queue.results import SegmentResult
from node.work.comparison import compare_with_reference
from node.work.dosimetry import TimePointSources, dosimetry_settings, load_spect, read_time_point
from node.work.job_spec import JobOutcome, JobSpec
from node.work.outputs import OutputObject, OutputPlan, SegFormat
from node.work.pipeline import PipelineError, PipelineInputs, run_pipeline
from node.work.research import ResearchObject, export_for_research, research_profile
from node.work.stopwatch import Stopwatch

LOG = logging.getLogger("segnode.worker")

#: Where a time point keeps the headers of its SPECT and CT, in its results folder.
HEADERS_FOLDER = "headers"


class Executor:
    """Runs jobs on one device, keeping the models it loaded."""

    def __init__(self, device: str, device_uid: str):
        self.device = device
        self.device_uid = device_uid
        self._segmenters: dict[tuple[str, str], Segmenter] = {}

    def execute(self, spec: JobSpec, config: SegnodeConfig) -> JobOutcome:
        """Run `spec` under `config` (its pipelines, destinations, reports, research)."""
        pipeline = config.pipelines.get(spec.pipeline)
        if pipeline is None:
            raise PipelineError(f"pipeline {spec.pipeline!r} is no longer configured")
        if spec.kind == JobKind.SEGMENT:
            return self._segment(spec, pipeline, config)
        if spec.kind == JobKind.QA:
            return self._compare(spec, pipeline)
        return self._read_time_point(spec, pipeline, config)

    def _segment(self, spec: JobSpec, pipeline: Pipeline, config: SegnodeConfig) -> JobOutcome:
        segmenter = self._segmenter(config, pipeline.model, pipeline.device)
        inputs = PipelineInputs(
            ct_files=spec.inputs, pet_files=spec.pet, pipeline_name=spec.pipeline, settings=pipeline,
            created=datetime.fromtimestamp(spec.created, timezone.utc), device_uid=self.device_uid,
            notes=spec.notes, reports=config.reports,
        )
        destinations = [config.destinations[name] for name in spec.destinations
                        if name in config.destinations]
        result = run_pipeline(inputs, segmenter, spec.results, OutputPlan.for_destinations(destinations))
        # The BINARY SEGs and their SR, as the research destination reads them with the series.
        records = tuple(o.path for o in result.objects
                        if o.kind in ("seg", "sr") and o.seg_format is SegFormat.BINARY)
        return JobOutcome(
            result=SegmentResult(
                seg=result.seg, sr=result.sr, csv=result.csv, labels=result.labels,
                model=f"{segmenter.algorithm.name} {segmenter.algorithm.version}",
                structures=len(result.measurements), pet=bool(spec.pet), seconds=result.seconds,
                notes=spec.notes, objects=tuple(item.path for item in result.objects),
                warnings=result.warnings,
            ),
            objects=result.objects,
            research=self._research(spec, config, (*spec.inputs, *records)),
            seconds=result.seconds,
            warnings=(*spec.notes, *result.warnings),
        )

    def _compare(self, spec: JobSpec, pipeline: Pipeline) -> JobOutcome:
        assert spec.ours is not None, "a QA job is prepared with our segmentation"
        report = compare_with_reference(spec.inputs[0], spec.ours, spec.ct, pipeline, self.device_uid,
                                        datetime.fromtimestamp(spec.created, timezone.utc), spec.results)
        sr = OutputObject("sr", report.result.sr, report.sr_uid)
        return JobOutcome(result=report.result, objects=(sr,), seconds=dict(report.result.seconds))

    def _read_time_point(self, spec: JobSpec, pipeline: Pipeline, config: SegnodeConfig) -> JobOutcome:
        settings = dosimetry_settings(spec.pipeline, pipeline)
        clock = Stopwatch()
        spect = clock.run("load", lambda: load_spect(spec.inputs))
        sources = TimePointSources(spect, spec.inputs, spec.ct, spec.seg)
        reading = clock.run("read", lambda: read_time_point(
            sources, settings, lambda: self._segmenter(config, pipeline.model, pipeline.device),
            spec.results / HEADERS_FOLDER))
        warnings = tuple(f"{organ.structure.name} at {reading.hours_after_administration:.1f} h: "
                         f"{organ.misalignment}" for organ in reading.organs if organ.misalignment)
        return JobOutcome(reading=reading, seconds=clock.seconds, warnings=warnings)

    def _research(self, spec: JobSpec, config: SegnodeConfig,
                  sources: tuple[Path, ...]) -> tuple[ResearchObject, ...]:
        """A de-identified copy of `sources` for the route's research destination,
        if it has one (node/work/research.py). A series that must not leave is
        logged and not exported; the job's clinical results stand."""
        route = next((r for r in config.routes if r.name == spec.route), None)
        if route is None or route.research is None or config.research is None:
            return ()
        try:
            # Read at each export, so that a reload that names another file applies.
            secret = read_research_key(config.research.key_file)
        except ResearchKeyError as exc:
            raise PipelineError(f"research.key_file: {exc}") from None
        deidentifier = Deidentifier(secret, research_profile(route.research))
        try:
            return export_for_research(sources, deidentifier, spec.results)
        except NotExportable as exc:
            LOG.warning("job %d: not exported for research: %s", spec.job_id, exc)  # names the series
            return ()

    def _segmenter(self, config: SegnodeConfig, model: str, device: str) -> Segmenter:
        device = self.device if device == "auto" else device
        key = (model, device)
        if key not in self._segmenters:
            # models_dir is read at each load: a reload that changes it applies to
            # the models loaded after it, and those loaded already stay warm.
            store = ModelStore(config.node.models_dir)
            self._segmenters[key] = open_segmenter(model, store, device)
            LOG.info("model %s loaded on %s", model, device)
        return self._segmenters[key]
