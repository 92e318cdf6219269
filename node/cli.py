"""The ``segnode`` command line: serve, check-config, status, pet-suv."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from config import ConfigError, SegnodeConfig, load_config
from dicomio.suv import SuvError, SuvFactors, earliest_acquisition, suv_factors
from node.index import INDEX_FILENAME, InstanceIndex


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def _load_or_report(path: Path) -> SegnodeConfig | None:
    """The configuration, or None after printing each of its errors to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{exc.source}: {len(exc.errors)} error(s)", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    config = _load_or_report(args.file)
    if config is None:
        return 1
    node = config.node
    print(f"{args.file}: valid")
    print(f"  node {node.ae_title} on {node.host}:{node.port}, storage {node.storage_dir}")
    print(f"  series complete after {node.series_stable_seconds:g} s without a new instance")
    print(f"  metrics on port {node.metrics_port}")
    print(f"  {len(config.peers)} peer(s): " + ", ".join(p.ae_title for p in config.peers))
    print(f"  {len(config.destinations)} destination(s): " + ", ".join(config.destinations))
    print(f"  {len(config.routes)} route(s): " + ", ".join(r.name for r in config.routes))
    return 0


def _status(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    storage_dir = config.node.storage_dir
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
        }
        for s in series
    ]
    if args.json:
        print(json.dumps({"series": rows}, indent=2))
        return 0
    if not rows:
        print("no series received yet")
        return 0
    print(f"{'state':<10} {'modality':<8} {'instances':>9}  {'last received':<29}  series")
    for row in rows:
        print(
            f"{row['state']:<10} {row['modality']:<8} {row['instances']:>9}  "
            f"{row['last_received']:<29}  {row['series_instance_uid']}"
        )
    return 0


def _per_frame(factors: SuvFactors, field: str) -> float | list[float | None] | None:
    """One value when every frame has the same factor, else one per frame."""
    values = [getattr(frame, field) for frame in factors.frames]
    return values[0] if len(set(values)) == 1 else values


def _pet_suv_rows(paths: list[Path]) -> list[dict]:
    rows: list[dict] = [{"file": str(path)} for path in paths]
    datasets: list[Dataset | None] = []
    for row, path in zip(rows, paths, strict=True):
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            row["error"] = f"cannot read DICOM: {exc}"
            datasets.append(None)
    # QIBA's last fallback for a moved Series Time is the earliest
    # acquisition of the whole series, so files are grouped by series.
    series: dict[str, list[Dataset]] = {}
    for dataset in datasets:
        if dataset is not None:
            series.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append(dataset)
    earliest = {uid: earliest_acquisition(members) for uid, members in series.items()}
    for row, dataset in zip(rows, datasets, strict=True):
        if dataset is None:
            continue
        try:
            factors = suv_factors(
                dataset, series_earliest=earliest[str(dataset.get("SeriesInstanceUID", ""))]
            )
        except SuvError as exc:
            row["error"] = str(exc)
            continue
        row.update(
            sop_instance_uid=factors.sop_instance_uid,
            units=factors.units,
            decay_correction=factors.decay_correction.value,
            suv_bw_factor=_per_frame(factors, "suv_bw"),
            sul_factor=_per_frame(factors, "sul"),
            suv_bsa_factor=_per_frame(factors, "suv_bsa"),
            warnings=list(factors.warnings),
        )
    return rows


def _factor_text(value: float | list | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return f"{len(value)} frames"
    return f"{value:.6g}"


def _pet_suv(args: argparse.Namespace) -> int:
    rows = _pet_suv_rows(args.files)
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


def _serve(args: argparse.Namespace) -> int:
    from node.service import serve

    return serve(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segnode", description="DICOM node for organ segmentation."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the DICOM node in the foreground")
    serve.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_check_config)

    status = commands.add_parser("status", help="show received series and their states")
    status.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_status)

    pet_suv = commands.add_parser(
        "pet-suv", help="SUV factors (SUVbw, SUL, SUVbsa) of PET image files"
    )
    pet_suv.add_argument("files", type=Path, nargs="+", metavar="FILE")
    pet_suv.add_argument("--json", action="store_true", help="print one JSON object per file")
    pet_suv.set_defaults(run=_pet_suv)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # pynetdicom logs every PDU at INFO; keep its warnings and errors.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
