"""Reading the YAML file into a :class:`SegnodeConfig`, with readable errors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml
from pydantic import ValidationError

from config.schema import SegnodeConfig


class ConfigError(Exception):
    """A configuration file that cannot be used; ``errors`` holds one line per problem.

    ``sha256`` is the digest of the bytes that were refused, when they could be
    read, so that a node can say which version of the file it turned down.
    """

    def __init__(self, source: str, errors: list[str], sha256: str | None = None):
        super().__init__(f"{source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors
        self.sha256 = sha256


@dataclass(frozen=True)
class ConfigFile:
    """A configuration file as read: its content and the SHA-256 of its bytes,
    which ``sha256sum`` on the file reproduces."""

    path: Path
    sha256: str
    config: SegnodeConfig


def _location(loc: tuple[str | int, ...]) -> str:
    """Render a pydantic error location as ``peers[1].ae_title``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def parse_config(text: str, source: str = "<config>") -> SegnodeConfig:
    """Validate YAML text; raise :class:`ConfigError` listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping"])
    try:
        return SegnodeConfig.model_validate(raw)
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            where = _location(error["loc"])
            message = error["msg"]
            if error["type"] == "references":
                errors.extend(message.split("; "))
            elif where:
                errors.append(f"{where}: {message}")
            else:
                errors.append(message)
        raise ConfigError(source, errors) from exc


def read_config(path: Path) -> ConfigFile:
    """Read and validate a configuration file, once, keeping the digest of what was read."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8: byte {exc.start}"], digest) from exc
    try:
        config = parse_config(text, source=str(path))
    except ConfigError as exc:
        raise ConfigError(exc.source, exc.errors, digest) from exc
    return ConfigFile(Path(path), digest, config)


def load_config(path: Path) -> SegnodeConfig:
    """Read and validate a configuration file."""
    return read_config(path).config


#: Node fields bound to sockets or files opened at start: a reload keeps them.
RESTART_ONLY: Final = ("host", "port", "storage_dir", "metrics_port")


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What tells that a configuration file was replaced or edited (None: unreadable)."""
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def reloaded(new: SegnodeConfig, running: SegnodeConfig) -> SegnodeConfig:
    """`new` as a running process applies it: the RESTART_ONLY fields stay as in `running`."""
    kept = {field: getattr(running.node, field) for field in RESTART_ONLY}
    return new.model_copy(update={"node": new.node.model_copy(update=kept)})
