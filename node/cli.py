"""The ``segnode`` command line: serve, check-config, status."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from config import ConfigError, SegnodeConfig, load_config
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
