"""Reading the YAML file into a :class:`SegnodeConfig`, with readable errors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml
from pydantic import ValidationError

from config.certificates import FileChecks
from config.schema import NodeTls, SegnodeConfig


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


def parse_config(text: str, source: str = "<config>", *, check_files: bool = True) -> SegnodeConfig:
    """Validate YAML text; raise :class:`ConfigError` listing every problem.

    ``check_files=False`` leaves the certificate and key files unread, for a
    reader that needs the rest and may not be allowed to read the key.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping"])
    try:
        return SegnodeConfig.model_validate(raw, context=FileChecks(check_files))
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            where = _location(error["loc"])
            message = error["msg"]
            if error["type"] == "references":
                errors.extend(message.split("; "))
            elif error["type"] == "key_mismatch":
                errors.append(f"{where}: does not match {_location((*error['loc'][:-1], 'certificate'))}")
            elif where:
                errors.append(f"{where}: {message}")
            else:
                errors.append(message)
        raise ConfigError(source, errors) from exc


def read_config(path: Path, *, check_files: bool = True) -> ConfigFile:
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
        config = parse_config(text, source=str(path), check_files=check_files)
    except ConfigError as exc:
        raise ConfigError(exc.source, exc.errors, digest) from exc
    return ConfigFile(Path(path), digest, config)


def load_config(path: Path, *, check_files: bool = True) -> SegnodeConfig:
    """Read and validate a configuration file."""
    return read_config(path, check_files=check_files).config


#: Node fields bound to sockets or files opened at start: a reload keeps them,
#: as it keeps whether ``node.tls`` is there and its port (:func:`reloaded`).
RESTART_ONLY: Final = ("host", "port", "storage_dir", "metrics_port", "listen_plain")


@dataclass(frozen=True)
class RestartOnlyChange:
    """A restart-only setting that a reloaded file changes: ``field`` as
    ``node.tls.port``, its value in force and the one in the file."""

    field: str
    in_force: object
    in_file: object


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What tells that a configuration file was replaced or edited (None: unreadable)."""
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def restart_only_changes(new: SegnodeConfig, running: SegnodeConfig) -> tuple[RestartOnlyChange, ...]:
    """What of `new` waits for a restart: the settings :func:`reloaded` keeps as in `running`."""
    changes = [
        RestartOnlyChange(f"node.{field}", getattr(running.node, field), getattr(new.node, field))
        for field in RESTART_ONLY
        if getattr(running.node, field) != getattr(new.node, field)
    ]
    in_force, in_file = running.node.tls, new.node.tls
    if (in_force is None) != (in_file is None):
        changes.append(RestartOnlyChange("node.tls", _presence(in_force), _presence(in_file)))
    elif in_force is not None and in_file is not None and in_force.port != in_file.port:
        changes.append(RestartOnlyChange("node.tls.port", in_force.port, in_file.port))
    return tuple(changes)


def _presence(tls: NodeTls | None) -> str:
    return "none" if tls is None else "set"


def reloaded(new: SegnodeConfig, running: SegnodeConfig) -> SegnodeConfig:
    """`new` as a running process applies it: the RESTART_ONLY fields stay as in
    `running`, and so do the TLS listener's existence and port (its socket is
    opened at start), while its certificate, key and client CAs are the file's."""
    kept: dict[str, object] = {field: getattr(running.node, field) for field in RESTART_ONLY}
    in_force, in_file = running.node.tls, new.node.tls
    if in_force is None or in_file is None:
        kept["tls"] = in_force
    else:
        kept["tls"] = in_file.model_copy(update={"port": in_force.port})
    return new.model_copy(update={"node": new.node.model_copy(update=kept)})
