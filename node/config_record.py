"""Which configuration a node runs, and which file it last refused, for other processes.

After a refused reload the file on disk is not the configuration in force, so
processes other than the node must not read it: ``segnode status`` reads the
record (when each was read, its SHA-256, why one was refused), and the workers
read a copy of the configuration in force, which changes only when the node
applies a file. Both live in the storage folder and are written whole (to a
temporary name, then renamed) at start and at every reload. The workers thus
cannot apply a file the node refused, even one that a worker started after
the refusal would otherwise read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from config import SegnodeConfig
from dicomio.files import write_atomically

RECORD_FILENAME: Final = "configuration.json"
IN_FORCE_FILENAME: Final = "configuration-in-force.yaml"


class ConfigRecordError(ValueError):
    """A record file that cannot be read back; the message names the file and the field."""


@dataclass(frozen=True)
class ConfigReading:
    """One reading of the configuration file: when, the SHA-256 of its bytes
    (None: unreadable), and for a refused one, why."""

    read_at: float
    sha256: str | None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConfigRecord:
    """The reading in force and, while it stands, the last one refused after it."""

    config_path: Path
    in_force: ConfigReading
    refused: ConfigReading | None = None

    def to_json(self) -> bytes:
        def reading(value: ConfigReading) -> dict:
            return {"read_at": value.read_at, "sha256": value.sha256, "reasons": list(value.reasons)}

        return json.dumps({
            "config_path": str(self.config_path),
            "in_force": reading(self.in_force),
            "refused": None if self.refused is None else reading(self.refused),
        }, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, source: Path) -> ConfigRecord:
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigRecordError(f"{source}: not JSON: {exc}") from exc

        def field(mapping: object, key: str, kinds: tuple[type, ...], where: str) -> object:
            value = mapping.get(key) if isinstance(mapping, dict) else None
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ConfigRecordError(f"{source}: {where}{key}: missing or not {kinds[0].__name__}")
            return value

        def reading(value: object, where: str) -> ConfigReading:
            reasons = field(value, "reasons", (list,), where)
            if not all(isinstance(reason, str) for reason in reasons):
                raise ConfigRecordError(f"{source}: {where}reasons: not a list of strings")
            return ConfigReading(
                read_at=float(field(value, "read_at", (float, int), where)),
                sha256=field(value, "sha256", (str, type(None)), where),
                reasons=tuple(reasons),
            )

        refused = raw.get("refused") if isinstance(raw, dict) else None
        return cls(
            config_path=Path(field(raw, "config_path", (str,), "")),
            in_force=reading(field(raw, "in_force", (dict,), ""), "in_force."),
            refused=None if refused is None else reading(refused, "refused."),
        )


def in_force_path(storage_dir: Path) -> Path:
    """The copy of the configuration in force, which the node's workers run."""
    return Path(storage_dir) / IN_FORCE_FILENAME


def write_in_force(storage_dir: Path, config: SegnodeConfig) -> None:
    """Every key written out, so that its reader applies exactly `config`."""
    text = "# Written by segnode: the configuration in force. Edit the node's own file instead.\n"
    text += yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    write_atomically(in_force_path(storage_dir), text.encode())


def write_record(storage_dir: Path, record: ConfigRecord) -> None:
    write_atomically(Path(storage_dir) / RECORD_FILENAME, record.to_json())


def read_record(storage_dir: Path) -> ConfigRecord | None:
    """The node's record, or None where no node has written one yet."""
    path = Path(storage_dir) / RECORD_FILENAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return ConfigRecord.from_json(data, path)
