"""Reading the YAML file into a :class:`SegnodeConfig`, with readable errors."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import yaml
from pydantic import ValidationError

from config.schema import SegnodeConfig


class ConfigError(Exception):
    """A configuration file that cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]):
        super().__init__(f"{source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors


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


def load_config(path: Path) -> SegnodeConfig:
    """Read and validate a configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    return parse_config(text, source=str(path))


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
