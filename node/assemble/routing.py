"""Routing: which jobs a complete series gets.

Routes are matched on what the sender and the series' own header say (the
calling AE of its first instance, the AE title it was sent to, Modality,
Series Description, Body Part Examined), in the configuration's order;
every matching route makes one job. Only CT series are segmented: a PET
series is an input of the CT job of its study, and other objects (SR,
presentation states, our own results coming back) need nothing. An NM
series (a SPECT time point of radionuclide therapy) gets a dosimetry job on
each matching route whose pipeline does dosimetry. A DICOM-SEG that someone
else made of a series we segmented gets a QA job on the route of that
segmentation.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import pydicom

from config import RouteMatch, SegnodeConfig
from dicomio.seg_reference import reference_subjects
from node.queue.jobs import JobKind, JobQueue, NewJob
from node.receive.index import InstanceIndex, SeriesRecord

LOG = logging.getLogger(__name__)

#: The only modality the segmenters take.
SEGMENTED_MODALITY = "CT"
#: The SPECT time points of radionuclide therapy, on routes whose pipeline does dosimetry.
DOSIMETRY_MODALITY = "NM"


@dataclass(frozen=True)
class SeriesFacts:
    """What routes match on, read once per series."""

    calling_ae: str
    called_ae: str
    modality: str
    series_description: str
    body_part_examined: str
    #: The series this is someone else's SEG of (see dicomio.seg_reference).
    reference_subjects: tuple[str, ...]


def series_facts(record: SeriesRecord, index: InstanceIndex, called_ae: str) -> SeriesFacts:
    """The facts of a series from its first stored instance's header.

    `called_ae` is the title the node answers to: it accepts no other, so
    every series was sent to it.
    """
    first = index.instances_of(record.series_instance_uid)[0]
    header = pydicom.dcmread(first.path, stop_before_pixels=True)
    return SeriesFacts(
        calling_ae=first.calling_ae,
        called_ae=called_ae,
        modality=record.modality,
        series_description=str(header.get("SeriesDescription", "")),
        body_part_examined=str(header.get("BodyPartExamined", "")),
        reference_subjects=tuple(sorted(reference_subjects(header))),
    )


def _matches(pattern: str | None, value: str) -> bool:
    return pattern is None or fnmatch.fnmatchcase(value.strip().upper(), pattern.strip().upper())


def route_matches(match: RouteMatch, facts: SeriesFacts) -> bool:
    """Whether every field the route gives matches the series."""
    return all(
        _matches(pattern, value)
        for pattern, value in (
            (match.calling_ae, facts.calling_ae),
            (match.called_ae, facts.called_ae),
            (match.modality, facts.modality),
            (match.series_description, facts.series_description),
            (match.body_part_examined, facts.body_part_examined),
        )
    )


def _has_dosimetry(config: SegnodeConfig, pipeline: str) -> bool:
    settings = config.pipelines.get(pipeline)
    return settings is not None and settings.dosimetry is not None


def jobs_for(
    record: SeriesRecord, facts: SeriesFacts, config: SegnodeConfig, queue: JobQueue
) -> list[NewJob]:
    """The jobs a complete series gets (none for most non-CT series)."""
    if facts.modality == SEGMENTED_MODALITY:
        return [
            NewJob(JobKind.SEGMENT, route.name, route.pipeline, tuple(route.send_to),
                   record.series_instance_uid)
            for route in config.routes
            if route_matches(route.match, facts)
        ]
    if facts.modality == DOSIMETRY_MODALITY:
        return [
            NewJob(JobKind.DOSIMETRY, route.name, route.pipeline, tuple(route.send_to),
                   record.series_instance_uid)
            for route in config.routes
            if route_matches(route.match, facts) and _has_dosimetry(config, route.pipeline)
        ]
    return [
        NewJob(JobKind.QA, job.route, job.pipeline, job.destinations, subject)
        for subject in facts.reference_subjects
        for job in queue.segmentations_of(subject)
    ]
