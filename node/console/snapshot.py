"""What the console shows: snapshots of the node, read without holding it up.

Each call opens its own connections to the index and outbox databases,
read-only where the class allows it (the job queue has no read-only mode; it
only reads here), as ``segnode status`` does, and closes them: a page never
holds a lock that receiving or the workers wait on. Series are listed a
page at a time through an index (LIMIT/OFFSET), so pages stay fast with
thousands of series.
Times are epoch seconds; the pages format them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from dicomio.csv import MeasurementsCsvError, read_measurements_csv
from dicomio.measurements import QualityFlag, StructureMeasurements
from node.console.context import ConsoleContext
from node.disk_space import DiskSpace
from node.queue.job_state import JobState
from node.queue.jobs import Job, JobKind, JobQueue
from node.queue.results import SegmentResult
from node.receive.index import InstanceIndex, InstanceRecord, ListedSeries
from node.receive.scp import OpenAssociation
from node.receive.series_state import CompletionSignal, SeriesState
from node.retention.removal import RemovalKind
from node.send.outbox import Delivery, OutboxStore
from node.work.writing import REPORT_PDF

#: How many of the latest series the overview lists.
RECENT_SERIES = 10
#: The overview counts each peer's instances over this many seconds.
PEER_WINDOW_SECONDS = 86400.0
#: The most series one page may ask for.
MAX_PER_PAGE = 500
# The storage keeper's gauge of bytes stored, by kind (node/retention/keeper.py).
_STORAGE_BYTES = "segnode_storage_bytes"


@dataclass(frozen=True)
class SeriesRow:
    """A series as the index knows it; ``calling_ae`` is the peer that sent
    its earliest stored instance (None once the retention policy removed them)."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    calling_ae: str | None
    instances: int
    state: SeriesState
    first_received: float
    last_received: float
    completed_by: CompletionSignal | None
    completion_note: str | None


@dataclass(frozen=True)
class DestinationState:
    """One destination's outbox backlog. ``configured`` is False for a
    destination files still wait for after it left the configuration."""

    name: str
    configured: bool
    pending: int
    failed: int
    oldest_pending_since: float | None
    next_attempt_at: float | None
    last_error: str | None


@dataclass(frozen=True)
class DiskUse:
    """Bytes stored as the storage keeper last measured them (None until its
    first pass), and free space measured now."""

    instances_bytes: int | None
    results_bytes: int | None
    free_bytes: int
    low_watermark_bytes: int


@dataclass(frozen=True)
class PeerActivity:
    """When a calling AE's latest instance still stored arrived, and how many
    came from it in the :data:`PEER_WINDOW_SECONDS` before the overview."""

    calling_ae: str
    last_instance_at: float
    instances: int


@dataclass(frozen=True)
class Overview:
    associations: tuple[OpenAssociation, ...]
    series_receiving: int
    # Complete, whether or not routed yet (states complete and dispatched).
    series_complete: int
    recent_series: tuple[SeriesRow, ...]
    jobs_by_state: tuple[tuple[JobState, int], ...]
    destinations: tuple[DestinationState, ...]
    disk: DiskUse
    peers: tuple[PeerActivity, ...]


@dataclass(frozen=True)
class SeriesPage:
    """One page of the series, the latest received first."""

    rows: tuple[SeriesRow, ...]
    page: int  # 1-based, clamped to the pages there are
    pages: int  # at least 1
    total: int
    per_page: int
    state: SeriesState | None


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    calling_ae: str
    received_at: float


@dataclass(frozen=True)
class JobRow:
    """A job of the series; ``stages`` the seconds of each stage of its last
    successful run (empty until it finished)."""

    id: int
    kind: JobKind
    state: JobState
    route: str
    pipeline: str
    attempts: int
    error: str | None
    created_at: float
    updated_at: float
    # When a queued job may run next (after a failed attempt's backoff).
    next_attempt_at: float | None
    stages: tuple[tuple[str, float], ...]
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True)
class StructureRow:
    """One structure's measurements; PET and QA values None where not measured."""

    segment_number: int
    structure: str
    volume_ml: float
    mass_g: float | None
    hu_mean: float
    hu_std: float
    suv_mean: float | None
    suv_max: float | None
    suv_peak: float | None
    mirror_dice: float | None
    flags: tuple[QualityFlag, ...]


@dataclass(frozen=True)
class SeriesDetail:
    """A series, its instances and jobs, and the measurements and report of
    its latest finished segmentation (``measurements_job``); why there are
    none although it finished is in ``measurements_problem``."""

    series: SeriesRow
    instances: tuple[InstanceRow, ...]
    jobs: tuple[JobRow, ...]
    measurements: tuple[StructureRow, ...]
    measurements_job: int | None
    measurements_problem: str | None
    report_pdf: Path | None


def overview(context: ConsoleContext, now: float) -> Overview:
    """The node at `now`: what arrives, what waits, what is stored."""
    config = context.current_config()
    storage_dir = context.storage_dir
    with closing(InstanceIndex(storage_dir, read_only=True)) as index:
        counts = index.series_counts()
        recent = index.newest_series(RECENT_SERIES, 0)
        peers = index.peer_activity(now - PEER_WINDOW_SECONDS)
    with closing(JobQueue(storage_dir, read_only=True)) as queue:
        by_kind = queue.counts()
    jobs = tuple((state, sum(by_kind[kind, state] for kind in JobKind)) for state in JobState)
    return Overview(
        associations=context.open_associations(),
        series_receiving=counts[SeriesState.RECEIVING],
        series_complete=counts[SeriesState.COMPLETE] + counts[SeriesState.DISPATCHED],
        recent_series=tuple(_series_row(listed) for listed in recent),
        jobs_by_state=jobs,
        destinations=_destinations(storage_dir, tuple(config.destinations), now),
        disk=_disk_use(context, config.storage.low_watermark_bytes),
        peers=tuple(PeerActivity(p.calling_ae, p.last_received, p.instances_since) for p in peers),
    )


def series_page(storage_dir: Path, page: int, per_page: int = 50, state: str | None = None) -> SeriesPage:
    """Page `page` (1-based; clamped) of the series in `state` (all when
    None), the latest received first.

    Raises ValueError for a `state` that is no series state, or a `per_page`
    outside 1..MAX_PER_PAGE.
    """
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be from 1 to {MAX_PER_PAGE}, not {per_page}")
    wanted = None if state is None else SeriesState(state)
    with closing(InstanceIndex(storage_dir, read_only=True)) as index:
        counts = index.series_counts()
        total = sum(counts.values()) if wanted is None else counts[wanted]
        pages = max(1, math.ceil(total / per_page))
        page = min(max(page, 1), pages)
        listed = index.newest_series(per_page, (page - 1) * per_page, wanted)
    return SeriesPage(tuple(_series_row(row) for row in listed), page, pages, total, per_page, wanted)


def series_detail(storage_dir: Path, series_instance_uid: str) -> SeriesDetail | None:
    """Everything about one series; None when the index does not know it."""
    with closing(InstanceIndex(storage_dir, read_only=True)) as index:
        record = index.series(series_instance_uid)
        if record is None:
            return None
        instances = index.instance_records(series_instance_uid)
        listed = ListedSeries(record, instances[0].calling_ae if instances else None)
    with closing(JobQueue(storage_dir, read_only=True)) as queue:
        jobs = [job for job in queue.jobs_reading([record.study_instance_uid])
                if series_instance_uid in (job.series_instance_uid, job.subject)]
    with closing(OutboxStore(storage_dir, read_only=True)) as outbox:
        deliveries = outbox.deliveries_by_destination([job.id for job in jobs])
    latest = max(_finished_segmentations(jobs, series_instance_uid), key=lambda done: done[0].updated_at,
                 default=None)
    measurements: tuple[StructureRow, ...] = ()
    problem = report = None
    if latest is not None:
        measurements, problem = _measurements(latest[1])
        pdf = latest[1].csv.parent / REPORT_PDF
        report = pdf if pdf.is_file() else None
    return SeriesDetail(
        series=_series_row(listed),
        instances=tuple(_instance_row(instance) for instance in instances),
        jobs=tuple(_job_row(job, deliveries[job.id]) for job in jobs),
        measurements=measurements,
        measurements_job=None if latest is None else latest[0].id,
        measurements_problem=problem,
        report_pdf=report,
    )


def _series_row(listed: ListedSeries) -> SeriesRow:
    s = listed.series
    return SeriesRow(s.series_instance_uid, s.study_instance_uid, s.modality, listed.calling_ae, s.instances,
                     s.state, s.first_received, s.last_received, s.completed_by, s.completion_note)


def _instance_row(instance: InstanceRecord) -> InstanceRow:
    return InstanceRow(instance.sop_instance_uid, instance.sop_class_uid, instance.transfer_syntax_uid,
                       instance.size, instance.calling_ae, instance.received)


def _job_row(job: Job, deliveries: tuple[Delivery, ...]) -> JobRow:
    stages = tuple(job.result.seconds.items()) if job.result is not None else ()
    return JobRow(
        id=job.id, kind=job.kind, state=job.state, route=job.route, pipeline=job.pipeline,
        attempts=job.attempts, error=job.error, created_at=job.queued_at, updated_at=job.updated_at,
        next_attempt_at=job.not_before if job.state == JobState.QUEUED else None,
        stages=stages, deliveries=deliveries,
    )


def _finished_segmentations(jobs: list[Job], series_instance_uid: str) -> Iterator[tuple[Job, SegmentResult]]:
    """The segmentations of the series that finished, with their results."""
    for job in jobs:
        if (job.kind == JobKind.SEGMENT and job.series_instance_uid == series_instance_uid
                and job.state == JobState.DONE and isinstance(job.result, SegmentResult)):
            yield job, job.result


def _measurements(result: SegmentResult) -> tuple[tuple[StructureRow, ...], str | None]:
    """The structures of a finished segmentation's CSV, or why they cannot
    be shown (the retention policy removed its results, the file is damaged)."""
    try:
        structures = read_measurements_csv(result.csv)
    except FileNotFoundError:
        return (), f"{result.csv} is gone (removed by the retention policy?)"
    except (OSError, MeasurementsCsvError) as exc:
        return (), str(exc)
    return tuple(_structure_row(m) for m in structures), None


def _structure_row(m: StructureMeasurements) -> StructureRow:
    return StructureRow(m.segment_number, m.name, m.volume_ml, m.mass_g, m.hu_mean, m.hu_std, m.suv_mean,
                        m.suv_max, m.suv_peak, m.mirror_dice, m.flags)


def _destinations(storage_dir: Path, configured: tuple[str, ...], now: float) -> tuple[DestinationState, ...]:
    """Every configured destination, then any other that files still wait for."""
    with closing(OutboxStore(storage_dir, read_only=True)) as store:
        backlog = {entry.destination: entry for entry in store.backlog(now)}
    states = []
    for name in (*configured, *sorted(set(backlog) - set(configured))):
        entry = backlog.get(name)
        if entry is None:
            states.append(DestinationState(name, True, 0, 0, None, None, None))
            continue
        states.append(DestinationState(
            name, name in configured, entry.pending, entry.failed,
            None if entry.oldest_pending_seconds is None else now - entry.oldest_pending_seconds,
            None if entry.next_attempt_seconds is None else now + entry.next_attempt_seconds,
            entry.last_error,
        ))
    return tuple(states)


def _disk_use(context: ConsoleContext, low_watermark_bytes: int) -> DiskUse:
    """Stored bytes from the storage keeper's gauge (it walks the results
    folder once a pass; a page must not), free bytes from the file system now."""
    stored: dict[str, int] = {}
    for metric in context.registry.restricted_registry([_STORAGE_BYTES]).collect():
        for sample in metric.samples:
            if sample.name == _STORAGE_BYTES:
                stored[sample.labels["kind"]] = int(sample.value)
    free = DiskSpace(context.storage_dir, low_watermark_bytes).free_bytes()
    return DiskUse(stored.get(RemovalKind.INSTANCES.value), stored.get(RemovalKind.RESULTS.value), free,
                   low_watermark_bytes)
