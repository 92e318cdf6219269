"""The ``segnode`` command line: serve, worker, check-config, status, jobs, storage, pet-suv, models, segment,
run-series, demo, console."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

from config import (
    GUARDED,
    ConfigError,
    SegnodeConfig,
    UserName,
    certificate_expiries,
    load_config,
    parse_config,
    sets_nothing,
)
from config.editing import ConfigConflictError, ConfigEditError, add_user, read_config_text, save_change
from config.passwords import hash_password
from dicomio.measurements import StructureMeasurements
from dicomio.suv import FileSuvFactors, SuvFactors, read_suv_factors
from node.config_record import ConfigReading, ConfigRecordError, in_force_path, read_record
from node.queue.job_state import JobState
from node.queue.jobs import Job, JobNotFoundError, JobQueue
from node.receive.index import INDEX_FILENAME, InstanceIndex
from node.send.outbox import OUTBOX_FILENAME, OutboxStore

if TYPE_CHECKING:
    from inference.model_store import ModelStore


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def _load_or_report(path: Path, *, check_files: bool = False) -> SegnodeConfig | None:
    """The configuration, or None after printing each of its errors to stderr.

    Only check-config reads the certificate and key files: the other commands
    need the rest, also once a certificate expired, and may run as a user who
    cannot read the key.
    """
    try:
        return load_config(path, check_files=check_files)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{exc.source}: {len(exc.errors)} error(s)", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    config = _load_or_report(args.file, check_files=True)
    if config is None:
        return 1
    node = config.node
    print(f"{args.file}: valid")
    print(f"  node {node.ae_title} on {node.host}:{node.port}, storage {node.storage_dir}")
    print(f"  series complete after {node.series_stable_seconds:g} s without a new instance, or by MPPS")
    ending = [p.ae_title for p in config.peers if p.completion == "association"]
    if ending:
        print(f"  series complete {node.association_grace_seconds:g} s after their association is released, "
              f"from: {', '.join(ending)}")
    print(f"  metrics on port {node.metrics_port}")
    print(f"  {len(config.peers)} peer(s): " + ", ".join(p.ae_title for p in config.peers))
    print(f"  {len(config.destinations)} destination(s): " + ", ".join(config.destinations))
    print(f"  {len(config.routes)} route(s): " + ", ".join(r.name for r in config.routes))
    if sets_nothing(config):
        print("  warning: the file sets no key; a running node refuses it as a reload")
    else:
        for key in GUARDED:
            if key not in config.model_fields_set:
                print(f"  warning: no '{key}' key; a running node that has {key} refuses this file as a "
                      "reload (a file cut short loses its last keys); write it empty to mean none")
    return 0


def _status(args: argparse.Namespace) -> int:
    storage_dir = _status_storage_dir(args)
    if storage_dir is None:
        return 1
    if not (storage_dir / INDEX_FILENAME).exists():
        series = []
    else:
        index = InstanceIndex(storage_dir, read_only=True)
        try:
            series = index.all_series()
        finally:
            index.close()
    rows = [
        {
            "study_instance_uid": s.study_instance_uid,
            "series_instance_uid": s.series_instance_uid,
            "modality": s.modality,
            "instances": s.instances,
            "state": s.state.value,
            "first_received": _iso(s.first_received),
            "last_received": _iso(s.last_received),
            "completed_by": None if s.completed_by is None else s.completed_by.value,
            "completion_note": s.completion_note,
        }
        for s in series
    ]
    jobs = []
    if (storage_dir / INDEX_FILENAME).exists():
        queue = JobQueue(storage_dir, read_only=True)
        try:
            jobs = [_job_row(job) for job in queue.jobs()]
        finally:
            queue.close()
    outbox, failed = _outbox_status(storage_dir)
    configuration = _config_status(storage_dir)
    certificates = _certificate_status(storage_dir)
    celery = _celery_status(storage_dir)
    if args.json:
        print(json.dumps({"configuration": configuration, "certificates": certificates, "series": rows,
                          "jobs": jobs, "outbox": outbox, "outbox_failed": failed, "celery": celery},
                         indent=2))
        return 0
    if configuration is not None:
        in_force = configuration["in_force"]
        print(f"configuration {configuration['file']} in force, read {in_force['read_at']} "
              f"(sha256 {in_force['sha256']})")
        refused = configuration["refused"]
        if refused is not None:
            print(f"configuration file REFUSED, read {refused['read_at']} (sha256 {refused['sha256']}); "
                  "the one above stays in force:")
            for reason in refused["reasons"]:
                print(f"  {reason}")
    for certificate in certificates:
        if certificate["days_left"] is None:
            state = certificate["problem"]
        elif certificate["days_left"] < 0:
            state = f"EXPIRED {-certificate['days_left']:.0f} days ago ({certificate['path']})"
        else:
            state = (f"{certificate['days_left']:.0f} days left, until {certificate['not_valid_after']} "
                     f"({certificate['path']})")
        print(f"certificate {certificate['field']}: {state}")
    if celery is not None:
        _print_celery_status(celery)
    if not rows:
        print("no series received yet")
        return 0
    print(f"{'state':<10} {'modality':<8} {'instances':>9}  {'last received':<29}  "
          f"{'completed by':<17}  series")
    for row in rows:
        print(
            f"{row['state']:<10} {row['modality']:<8} {row['instances']:>9}  "
            f"{row['last_received']:<29}  {row['completed_by'] or '':<17}  {row['series_instance_uid']}"
        )
        if row["completion_note"]:
            print(f"  warning: {row['completion_note']}")
    counts = {state.value: sum(job["state"] == state.value for job in jobs) for state in JobState}
    print("jobs: " + ", ".join(f"{count} {state}" for state, count in counts.items()))
    for job in jobs:
        if job["state"] == JobState.FAILED.value:
            print(f"  job {job['id']} failed after {job['attempts']} attempts: {job['error']}")
    for entry in outbox:
        line = f"outbox {entry['destination']}: {entry['pending']} pending, {entry['failed']} given up"
        if entry["oldest_pending_seconds"] is not None:
            line += f", oldest waiting {entry['oldest_pending_seconds']:.0f} s"
        if entry["last_error"]:
            line += f"; last error: {entry['last_error']}"
        print(line)
    for item in failed:
        print(f"  not sent to {item['destination']} after {item['attempts']} attempts: {item['path']}: "
              f"{item['reason']}")
    return 0


def _status_storage_dir(args: argparse.Namespace) -> Path | None:
    """The storage folder to report on: --storage-dir, else the one the file names.

    A file the node refused may name none: an emptied one would send status to
    the default folder, where no node runs, so it is refused here too.
    """
    if args.storage_dir is not None:
        return args.storage_dir
    hint = "a running node keeps the configuration in force; read its state with --storage-dir DIR"
    config = _load_or_report(args.config)
    if config is None:
        print(f"segnode status: {hint}", file=sys.stderr)
        return None
    if sets_nothing(config):
        print(f"segnode status: {args.config} sets no key (it is empty or holds only comments), so it names "
              f"no storage folder; {hint}", file=sys.stderr)
        return None
    return config.node.storage_dir


def _config_status(storage_dir: Path) -> dict | None:
    """The configuration the node runs and the file it last refused, from its record."""
    try:
        record = read_record(storage_dir)
    except (OSError, ConfigRecordError) as exc:
        print(f"segnode status: cannot read the configuration record: {exc}", file=sys.stderr)
        return None
    if record is None:
        return None

    def reading(value: ConfigReading) -> dict:
        return {"read_at": _iso(value.read_at), "sha256": value.sha256, "reasons": list(value.reasons)}

    return {
        "file": str(record.config_path),
        "in_force": reading(record.in_force),
        "refused": None if record.refused is None else reading(record.refused),
    }


def _certificate_status(storage_dir: Path) -> list[dict]:
    """The days left of each certificate of the configuration in force (the node's
    copy of it), as its files are now; empty where no node has written one."""
    path = in_force_path(storage_dir)
    if not path.exists():
        return []
    config = _load_or_report(path)
    if config is None:
        return []
    now = datetime.now(timezone.utc)
    return [
        {
            "field": expiry.field,
            "path": str(expiry.path),
            "not_valid_after": None if expiry.not_valid_after is None
            else expiry.not_valid_after.isoformat(timespec="seconds"),
            "days_left": expiry.days_left(now),
            "problem": expiry.problem,
        }
        for expiry in certificate_expiries(config)
    ]


def _outbox_status(storage_dir: Path) -> tuple[list[dict], list[dict]]:
    """What waits in the outbox per destination, and the files given up on."""
    if not (storage_dir / OUTBOX_FILENAME).exists():
        return [], []
    store = OutboxStore(storage_dir, read_only=True)
    try:
        backlog = [dataclasses.asdict(entry) for entry in store.backlog(time.time())]
        failed = [{**dataclasses.asdict(item), "path": str(item.path)} for item in store.failed_items()]
    finally:
        store.close()
    return backlog, failed


def _celery_status(storage_dir: Path) -> dict | None:
    """In celery mode (of the configuration in force), the broker as the node sees it:
    whether it answers, the messages waiting in the queue and the workers that answer.
    None in embedded mode, where Celery is not even imported."""
    path = in_force_path(storage_dir)
    config = _load_or_report(path) if path.exists() else None
    if config is None or config.jobs.backend != "celery":
        return None
    from node.queue.broker import BrokerUnavailable, celery_app, queue_depth, redacted, workers_seen

    settings = config.jobs.celery
    app = celery_app(settings)
    status: dict = {"broker": redacted(settings.broker_url), "queue": settings.queue, "answers": False,
                    "queue_depth": None, "workers": [], "error": None}
    try:
        status["queue_depth"] = queue_depth(app, settings.queue)
        status["answers"] = True
        status["workers"] = [dataclasses.asdict(worker) for worker in workers_seen(app, timeout=1.0)]
    except BrokerUnavailable as exc:
        status["error"] = str(exc)
    finally:
        app.close()
    return status


def _print_celery_status(celery: dict) -> None:
    if not celery["answers"]:
        print(f"jobs through Celery: broker {celery['broker']} does NOT answer: {celery['error']}")
        return
    print(f"jobs through Celery: broker {celery['broker']} answers; queue {celery['queue']}: "
          f"{celery['queue_depth']} message(s) waiting; {len(celery['workers'])} worker(s) answer")
    for worker in celery["workers"]:
        print(f"  worker {worker['name']} on {worker['host']}, device {worker['device']}: "
              f"{worker['active']} job(s) running")


def _job_row(job: Job) -> dict:
    return {
        "id": job.id,
        "kind": job.kind.value,
        "state": job.state.value,
        "series_instance_uid": job.series_instance_uid,
        "route": job.route,
        "pipeline": job.pipeline,
        "destinations": list(job.destinations),
        "attempts": job.attempts,
        "queued_at": _iso(job.queued_at),
        "updated_at": _iso(job.updated_at),
        "next_attempt_at": _iso(job.not_before) if job.state == JobState.QUEUED else None,
        "error": job.error,
        "result": job.result.to_json() if job.result is not None else None,
    }


def _jobs_list(args: argparse.Namespace) -> int:
    queue = _job_queue(args)
    if queue is None:
        return 1
    try:
        rows = [_job_row(job) for job in queue.jobs(JobState(args.state) if args.state else None)]
    finally:
        queue.close()
    if args.json:
        print(json.dumps({"jobs": rows}, indent=2))
        return 0
    if not rows:
        print("no jobs")
        return 0
    print(f"{'id':>5} {'kind':<7} {'state':<7} {'tries':>5}  {'route':<16} series / error")
    for row in rows:
        print(f"{row['id']:>5} {row['kind']:<7} {row['state']:<7} {row['attempts']:>5}  "
              f"{row['route']:<16} {row['series_instance_uid']}")
        if row["error"]:
            print(f"{'':>46}{row['error']}")
    return 0


def _jobs_retry(args: argparse.Namespace) -> int:
    queue = _job_queue(args)
    if queue is None:
        return 1
    try:
        job = queue.retry(args.id)
    except (JobNotFoundError, ValueError) as exc:
        print(f"segnode jobs retry: {exc}", file=sys.stderr)
        return 1
    finally:
        queue.close()
    print(f"job {job.id} queued again ({job.kind.value} of series {job.series_instance_uid})")
    return 0


def _job_queue(args: argparse.Namespace) -> JobQueue | None:
    config = _load_or_report(args.config)
    if config is None:
        return None
    if not (config.node.storage_dir / INDEX_FILENAME).exists():
        print(f"no segnode storage at {config.node.storage_dir}", file=sys.stderr)
        return None
    return JobQueue(config.node.storage_dir)


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "never at this rate"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.1f} days"


def _storage(args: argparse.Namespace) -> int:
    """Usage and what the retention policy removes now; with purge --yes, remove it."""
    from node.disk_space import DiskSpace
    from node.receive.step_files import StepFiles
    from node.retention.keeper import purge, steps_due
    from node.retention.policy import plan
    from node.retention.removal import RemovalStore

    if args.action != "purge" and (args.yes or args.dry_run):
        print("segnode storage: --yes and --dry-run go with 'purge'", file=sys.stderr)
        return 2
    config = _load_or_report(args.config)
    if config is None:
        return 1
    storage_dir = config.node.storage_dir
    if not (storage_dir / INDEX_FILENAME).exists():
        print(f"no segnode storage at {storage_dir}", file=sys.stderr)
        return 1
    settings = config.storage
    disk = DiskSpace(storage_dir, settings.low_watermark_bytes)
    store = RemovalStore(storage_dir)
    index = InstanceIndex(storage_dir, read_only=True)
    try:
        now = time.time()
        stored = store.stored_bytes()
        free = disk.free_bytes()
        intake = index.bytes_received_since(now - 3600)  # per hour
        shortfall = disk.shortfall_bytes()
        removing = args.action == "purge" and args.yes
        if removing:
            purged = purge(store, disk, settings.retention)
            removals, steps, step_bytes = purged.removals, purged.steps, purged.step_bytes
        else:
            removals = plan(store.activity(), settings.retention, now, shortfall)
            due = steps_due(store, settings.retention, now)
            steps, step_bytes = len(due), sum(StepFiles.size(step.path) for step in due)
        recent = store.removals(10)
    finally:
        index.close()
        store.close()
    usage = {
        "storage_dir": str(storage_dir), "instances_bytes": stored.instances, "results_bytes": stored.results,
        "free_bytes": free, "low_watermark_bytes": settings.low_watermark_bytes, "low_space": shortfall > 0,
        "received_bytes_last_hour": intake,
        "seconds_to_full": free / (intake / 3600) if intake else None,
    }
    rows = [{"kind": r.kind.value, "study_instance_uid": r.study_instance_uid,
             "series_instance_uid": r.series_instance_uid, "job_id": r.job_id,
             "path": str(r.path) if r.path else None, "files": r.files, "bytes": r.bytes,
             "reason": r.reason.value, "settled_at": _iso(r.settled_at), "due_at": _iso(r.due_at)}
            for r in removals]
    if args.json:
        recent_rows = [{**dataclasses.asdict(r), "path": str(r.path) if r.path else None} for r in recent]
        print(json.dumps({"usage": usage, "removed" if removing else "would_remove": rows,
                          "mpps_steps_removed" if removing else "mpps_steps_due": {"steps": steps,
                                                                                   "bytes": step_bytes},
                          "recent_removals": recent_rows}, indent=2))
        return 0
    print(f"storage {storage_dir}: instances {_size(stored.instances)}, results {_size(stored.results)}")
    print(f"free {_size(free)}, low watermark {_size(settings.low_watermark_bytes)}"
          + (": BELOW IT, new instances are refused" if shortfall else ""))
    print(f"received in the last hour {_size(intake)}; full in "
          + (_duration(free / (intake / 3600)) if intake else _duration(float("inf"))))
    retention = settings.retention
    print(f"retention: instances {retention.instances_hours:g} h, results {retention.results_hours:g} h, "
          f"failed jobs {retention.failed_hours:g} h")
    if not rows:
        print("nothing to remove now")
    else:
        print(("removed:" if removing else "would remove:")
              + f" {_size(sum(r.bytes for r in removals))} in {len(rows)} item(s)")
        for row in rows:
            what = f"results of job {row['job_id']}" if row["kind"] == "results" else "instances"
            print(f"  {what} of series {row['series_instance_uid']} (study {row['study_instance_uid']}): "
                  f"{row['files']} files, {_size(row['bytes'])}, {row['reason']}, due {row['due_at']}")
    if steps:
        print(("removed" if removing else "would remove") + f" {steps} MPPS step(s), {_size(step_bytes)}")
    if args.action == "purge" and not removing:
        print("dry run: nothing was removed (--yes removes)")
    return 0


def _per_frame(factors: SuvFactors, field: str) -> float | list[float | None] | None:
    """One value when every frame has the same factor, else one per frame."""
    values = [getattr(frame, field) for frame in factors.frames]
    return values[0] if len(set(values)) == 1 else values


def _pet_suv_row(found: FileSuvFactors) -> dict:
    factors = found.factors
    if factors is None:
        return {"file": str(found.path), "error": found.error}
    return {
        "file": str(found.path),
        "sop_instance_uid": factors.sop_instance_uid,
        "units": factors.units,
        "decay_correction": factors.decay_correction.value,
        "suv_bw_factor": _per_frame(factors, "suv_bw"),
        "sul_factor": _per_frame(factors, "sul"),
        "suv_bsa_factor": _per_frame(factors, "suv_bsa"),
        "warnings": list(factors.warnings),
    }


def _factor_text(value: float | list | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return f"{len(value)} frames"
    return f"{value:.6g}"


def _pet_suv(args: argparse.Namespace) -> int:
    rows = [_pet_suv_row(found) for found in read_suv_factors(args.files)]
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"{'units':<5} {'decay':<5} {'SUVbw':>12} {'SUL':>12} {'SUVbsa':>12}  file")
        for row in rows:
            if "error" in row:
                print(f"{'error':<5} {'':<5} {'':>38}  {row['file']}: {row['error']}")
                continue
            print(
                f"{row['units']:<5} {row['decay_correction']:<5} "
                f"{_factor_text(row['suv_bw_factor']):>12} {_factor_text(row['sul_factor']):>12} "
                f"{_factor_text(row['suv_bsa_factor']):>12}  {row['file']}"
            )
            for warning in row["warnings"]:
                print(f"      warning: {warning}")
        print(f"SUVbw and SUL in {SuvFactors.SUV_BW_UNITS}, SUVbsa in {SuvFactors.SUV_BSA_UNITS}")
    return 1 if any("error" in row for row in rows) else 0


def _store(args: argparse.Namespace) -> ModelStore:
    # Imported here, not at the top: highdicom (via the code table) and the
    # inference engine take seconds to import, which serve and status need not pay.
    from config import default_models_dir
    from inference.model_store import ModelStore

    if args.store is not None:
        return ModelStore(args.store)
    if args.config is not None:
        config = _load_or_report(args.config)
        if config is None:
            raise SystemExit(1)
        return ModelStore(config.node.models_dir)
    return ModelStore(default_models_dir())


def _models_list(args: argparse.Namespace) -> int:
    from inference.model_store import BUILTIN, ModelStoreError
    from inference.segmenters import open_segmenter

    store = _store(args)
    try:
        installed = store.models()
    except ModelStoreError as exc:
        print(f"segnode models list: {exc}", file=sys.stderr)
        return 1
    builtin = open_segmenter(BUILTIN, store, "cpu")
    rows = [
        {
            "name": BUILTIN,
            "kind": "built-in",
            "structures": {str(s.value): s.code.name for s in builtin.structures},
        }
    ]
    for model in installed:
        rows.append(
            {
                "name": model.name,
                "kind": "nnU-Net",
                "path": str(model.path),
                "installed_at": model.installed_at,
                "parts": [
                    {
                        "dataset": part.dataset,
                        "source": part.source,
                        "sha256": part.sha256,
                        "configurations": [c.folder for c in part.configurations],
                        "folds": sorted({fold for c in part.configurations for fold in c.folds}),
                    }
                    for part in model.parts
                ],
                "structures": {str(label.value): label.structure for label in model.structures},
            }
        )
    if args.json:
        print(json.dumps({"store": str(store.root), "models": rows}, indent=2))
        return 0
    print(f"model store: {store.root}")
    for row in rows:
        print(f"{row['name']} ({row['kind']}, {len(row['structures'])} structures)")
        for part in row.get("parts", []):
            print(
                f"  {part['dataset']}: {', '.join(part['configurations'])}, "
                f"folds {', '.join(part['folds'])}, from {part['source']}"
            )
        names = ", ".join(row["structures"].values())
        print(textwrap.fill(names, width=100, initial_indent="    ", subsequent_indent="    "))
    return 0


def _models_install(args: argparse.Namespace) -> int:
    from inference.download import DownloadError
    from inference.model_store import ModelStoreError

    store = _store(args)
    try:
        model = store.install(args.sources, name=args.name, sha256=args.sha256)
    except (ModelStoreError, DownloadError) as exc:
        print(f"segnode models install: {exc}", file=sys.stderr)
        return 1
    print(
        f"installed {model.name} in {model.path}: {len(model.parts)} part(s), "
        f"{len(model.structures)} structures"
    )
    return 0


def measurement_table(measurements: Sequence[StructureMeasurements]) -> str:
    """The measurements as a plain-text table, the flags under their structure."""
    pet = any(m.suv_mean is not None for m in measurements)
    header = f"{'structure':<24} {'volume ml':>10} {'mass g':>9} {'HU mean':>8} {'HU sd':>6}"
    if pet:
        header += f" {'SUVmean':>8} {'SUVmax':>7} {'SUVpeak':>8}"
    lines = [header]
    for m in measurements:
        line = (f"{m.name:<24} {m.volume_ml:>10.1f} {_number(m.mass_g, 9, 0)} {m.hu_mean:>8.1f} "
                f"{m.hu_std:>6.1f}")
        if pet:
            line += f" {_number(m.suv_mean, 8, 2)} {_number(m.suv_max, 7, 2)} {_number(m.suv_peak, 8, 2)}"
        lines.append(line)
        if m.mirror_dice is not None:
            lines.append(f"    mirror consistency Dice {m.mirror_dice:.3f}")
        lines += [f"    QA flag {flag.kind.value}: {flag.detail}" for flag in m.flags]
    return "\n".join(lines)


def _number(value: float | None, width: int, decimals: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{decimals}f}"


def _run_series(args: argparse.Namespace) -> int:
    import socket

    from config import Pipeline
    from dicomio.derived import result_uid
    from dicomio.series import SeriesError, series_files
    from inference.model_store import ModelStoreError
    from inference.segmenters import open_segmenter
    from node.work.outputs import EVERYTHING
    from node.work.pipeline import PipelineError, PipelineInputs, run_pipeline

    for folder in filter(None, (args.dir, args.pet)):
        if not folder.is_dir():
            print(f"segnode run-series: {folder}: not a folder", file=sys.stderr)
            return 1
    try:
        segmenter = open_segmenter(args.model, _store(args), args.device)
    except ModelStoreError as exc:
        print(f"segnode run-series: {exc}", file=sys.stderr)
        return 1
    inputs = PipelineInputs(
        ct_files=tuple(series_files(args.dir)),
        pet_files=tuple(series_files(args.pet)) if args.pet else (),
        pipeline_name="run-series",
        settings=Pipeline(model=args.model, device=args.device),
        created=datetime.now(timezone.utc),
        # One observer UID per machine, as a node keeps one per installation.
        device_uid=result_uid("installation", [socket.gethostname()], ()),
    )
    try:
        result = run_pipeline(inputs, segmenter, args.out, EVERYTHING)
    except (PipelineError, SeriesError, ValueError, OSError) as exc:
        print(f"segnode run-series: {args.dir}: {exc}", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(measurement_table(result.measurements))
    timings = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.seconds.items())
    written = sorted({item.path.parent if item.kind == "overlay" else item.path for item in result.objects})
    print(f"\nwrote {', '.join(map(str, written))}, {result.csv} and {result.labels} ({timings})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from phantom.demo import DemoError, run_demo

    try:
        return run_demo(shared=args.shared, keep=args.keep)
    except DemoError as exc:
        print(f"segnode demo: {exc}", file=sys.stderr)
        return 1


def _segment(args: argparse.Namespace) -> int:
    from dicomio.label_map import nifti_suffix, write_label_map
    from dicomio.series import VolumeReadError, read_volume
    from inference.model_store import ModelStoreError
    from inference.segmenters import open_segmenter

    if nifti_suffix(args.out) is None:
        print(f"segnode segment: --out {args.out}: the name must end in .nii.gz or .nii", file=sys.stderr)
        return 1
    if not args.out.parent.is_dir():
        print(f"segnode segment: --out {args.out}: no folder {args.out.parent}", file=sys.stderr)
        return 1
    try:
        segmenter = open_segmenter(args.model, _store(args), args.device)
    except ModelStoreError as exc:
        print(f"segnode segment: {exc}", file=sys.stderr)
        return 1
    try:
        loaded = read_volume(args.input)
    except VolumeReadError as exc:
        print(f"segnode segment: {exc}", file=sys.stderr)
        return 1
    for warning in loaded.warnings:
        logging.getLogger("segnode.segment").warning(
            "%s: %d image(s) left out: %s", warning.reason.value, len(warning.sources), warning.detail
        )
    volume = loaded.volume
    try:
        segmentation = segmenter.segment(volume)
    except ValueError as exc:  # a volume the model cannot take (the built-in one needs CT)
        print(f"segnode segment: cannot segment {args.input}: {exc}", file=sys.stderr)
        return 1
    legend = write_label_map(segmentation.labels, volume, segmentation.structures, args.out)
    print(
        f"{args.out}: {len(segmentation.structures)} structures of "
        f"{segmentation.algorithm.name} {segmentation.algorithm.version}, legend in {legend}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from node.service import serve

    return serve(args.config)


def _worker(args: argparse.Namespace) -> int:
    from node.work.celery_worker import run_worker_host

    return run_worker_host(args.config, args.host)


def _console_add_user(args: argparse.Namespace) -> int:
    """Checks the name and the file before asking for the password, which is
    then typed for nothing less often."""
    command = "segnode console add-user"
    try:
        TypeAdapter(UserName).validate_python(args.name)
    except ValidationError as exc:
        print(f"{command}: the name {args.name!r} is {exc.errors()[0]['msg']}", file=sys.stderr)
        return 1
    try:
        text = read_config_text(args.config)
        config = parse_config(text, str(args.config))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        print(f"{command}: {args.config}: cannot read: {reason}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{command}: {exc.source} is not valid; fix it first", file=sys.stderr)
        return 1
    if config.node.console is None:
        print(f"{command}: {args.config} configures no console; add node.console.port first", file=sys.stderr)
        return 1
    password = _new_password(args.password_stdin)
    if password is None:
        return 1
    try:
        change = add_user(text, args.name, hash_password(password), source=str(args.config))
        save_change(args.config, change)
    except ValueError as exc:  # an empty or overlong password
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    except ConfigEditError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    except (ConfigConflictError, OSError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    known = {user.name for user in config.node.console.users}
    done = "password replaced" if args.name in known else "added"
    print(f"{args.config}: console user {args.name} {done}; a running node applies it when it reloads "
          "the file")
    return 0


def _new_password(from_stdin: bool) -> str | None:
    """One line of stdin, or the password typed twice; None (said why) if the two differ."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != password:
        print("segnode console add-user: the two passwords differ; nothing changed", file=sys.stderr)
        return None
    return password


def _model_arguments(parser: argparse.ArgumentParser, store_help: str) -> None:
    parser.add_argument("--model", default="builtin", help="model name (default: builtin)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default: cpu)"
    )
    _store_arguments(parser, store_help)


def _store_arguments(parser: argparse.ArgumentParser, store_help: str) -> None:
    """The model store: a folder, or the one a node's configuration names."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--store", type=Path, help=store_help)
    where.add_argument("--config", type=Path, help="the store of this node configuration (node.models_dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segnode", description="DICOM node for organ segmentation."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the DICOM node in the foreground")
    serve.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    serve.set_defaults(run=_serve)

    worker = commands.add_parser(
        "worker", help="run the node's jobs on this host's devices through Celery (jobs.backend: celery)"
    )
    worker.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    worker.add_argument("--host", metavar="NAME",
                        help="the name after @ in segnode-<device>@NAME (default: this machine's hostname)")
    worker.set_defaults(run=_worker)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_check_config)

    status = commands.add_parser(
        "status", help="the configuration in force, received series, jobs and what waits to be sent"
    )
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="YAML configuration file")
    where.add_argument("--storage-dir", type=Path, metavar="DIR",
                       help="the node's storage folder, where its configuration file was refused")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_status)

    jobs = commands.add_parser("jobs", help="list jobs or queue a failed one again")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    jobs_list = jobs_commands.add_parser("list", help="every job with its state and last error")
    jobs_list.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    jobs_list.add_argument("--state", choices=[s.value for s in JobState], help="only jobs in this state")
    jobs_list.add_argument("--json", action="store_true", help="print JSON")
    jobs_list.set_defaults(run=_jobs_list)
    retry = jobs_commands.add_parser("retry", help="queue a job again with its attempts reset")
    retry.add_argument("id", type=int, metavar="ID")
    retry.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    retry.set_defaults(run=_jobs_retry)

    storage = commands.add_parser(
        "storage", help="storage usage and what the retention policy removes; purge removes it"
    )
    storage.add_argument("action", nargs="?", choices=("show", "purge"), default="show",
                         help="show (the default) or purge: a dry run unless --yes")
    storage.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    sure = storage.add_mutually_exclusive_group()
    sure.add_argument("--dry-run", action="store_true", help="purge: only say what would go (the default)")
    sure.add_argument("--yes", action="store_true", help="purge: remove it")
    storage.add_argument("--json", action="store_true", help="print JSON")
    storage.set_defaults(run=_storage)

    pet_suv = commands.add_parser(
        "pet-suv", help="SUV factors (SUVbw, SUL, SUVbsa) of PET image files"
    )
    pet_suv.add_argument("files", type=Path, nargs="+", metavar="FILE")
    pet_suv.add_argument("--json", action="store_true", help="print one JSON object per file")
    pet_suv.set_defaults(run=_pet_suv)

    store_help = "model store folder (default: $SEGNODE_MODELS, else ~/.local/share/segnode/models)"
    models = commands.add_parser("models", help="list or install segmentation models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_list = models_commands.add_parser("list", help="the built-in and installed models")
    _store_arguments(models_list, store_help)
    models_list.add_argument("--json", action="store_true", help="print JSON")
    models_list.set_defaults(run=_models_list)
    install = models_commands.add_parser(
        "install",
        help="install an nnU-Net model from https URLs, zips or folders (several make one multi-part model)",
    )
    install.add_argument("sources", nargs="+", metavar="SOURCE")
    install.add_argument("--name", help="model name (required for several parts)")
    install.add_argument(
        "--sha256", action="append", default=[], metavar="HEX",
        help="expected SHA-256 of an archive; once per SOURCE, in the same order",
    )
    _store_arguments(install, store_help)
    install.set_defaults(run=_models_install)

    segment = commands.add_parser("segment", help="segment a CT series folder or NIfTI file")
    segment.add_argument("input", type=Path, metavar="INPUT", help="DICOM series folder or NIfTI file")
    segment.add_argument(
        "--out", type=Path, required=True, metavar="LABELS.nii.gz",
        help="label map to write; LABELS.json beside it maps label values to structures",
    )
    _model_arguments(segment, store_help)
    segment.set_defaults(run=_segment)

    run_series = commands.add_parser(
        "run-series", help="the whole pipeline offline: SEG, SR and measurements of a CT series folder"
    )
    run_series.add_argument("dir", type=Path, metavar="DIR", help="CT series folder")
    run_series.add_argument("--out", type=Path, required=True, metavar="OUTDIR",
                            help="folder for seg.dcm, sr.dcm, measurements.csv and labels.nii.gz")
    run_series.add_argument("--pet", type=Path, metavar="DIR",
                            help="PET series folder of the same study and frame of reference")
    _model_arguments(run_series, store_help)
    run_series.set_defaults(run=_run_series)

    demo = commands.add_parser(
        "demo", help="a scanner, segnode and a PACS on this machine: a phantom study in, SEG and SR back"
    )
    demo.add_argument("--shared", action="store_true",
                      help="send the real Siemens CT series of ../shared/data instead of the phantom")
    demo.add_argument("--keep", type=Path, metavar="DIR",
                      help="keep the store, the sent study and the returned objects in DIR")
    demo.set_defaults(run=_demo)

    console = commands.add_parser("console", help="the web console's users")
    console_commands = console.add_subparsers(dest="console_command", required=True)
    add = console_commands.add_parser(
        "add-user", help="let NAME sign in to the web console, or set a new password for NAME"
    )
    add.add_argument("name", metavar="NAME", help="1 to 64 of A-Z a-z 0-9 . _ @ -")
    add.add_argument("--config", type=Path, required=True, help="YAML configuration file, rewritten")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of stdin instead of asking twice")
    add.set_defaults(run=_console_add_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # pynetdicom logs every PDU at INFO, highdicom every copied module;
        # keep their warnings and errors.
        for chatty in ("pynetdicom", "highdicom"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
