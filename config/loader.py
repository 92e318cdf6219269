"""Reading the YAML file into a :class:`SegnodeConfig`, with readable errors."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml
from pydantic import ValidationError

from config.certificates import FileChecks
from config.schema import NodeConsole, NodeTls, SegnodeConfig


@dataclass(frozen=True)
class FieldError:
    """One problem of a configuration and the field it is about, in the
    notation of its messages (``peers[2].ae_title``, ``destinations.pacs.port``;
    "" for the file as a whole), so that a form can show it beside its field."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """A configuration file that cannot be used; ``errors`` holds one line per
    problem, ``fields`` the same problems with the field each is about.

    ``sha256`` is the digest of the bytes that were refused, when they could be
    read, so that a node can say which version of the file it turned down.
    """

    def __init__(self, source: str, errors: Sequence[str | FieldError], sha256: str | None = None):
        self.fields = tuple(error if isinstance(error, FieldError) else FieldError("", error)
                            for error in errors)
        self.errors = [str(error) for error in self.fields]
        super().__init__(f"{source}: " + "; ".join(self.errors))
        self.source = source
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
    return validate_config(raw, source, check_files=check_files)


def validate_config(raw: dict, source: str = "<config>", *, check_files: bool = True) -> SegnodeConfig:
    """Validate a file's data as ``yaml.safe_load`` read it, for a caller that
    holds it already (config/editing.py checks it before validating it); raise
    :class:`ConfigError` listing every problem."""
    try:
        return SegnodeConfig.model_validate(raw, context=FileChecks(check_files))
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            where = _location(error["loc"])
            if error["type"] == "references":
                errors.extend(FieldError(path, message) for path, message in error["ctx"]["problems"])
            elif error["type"] == "key_mismatch":
                certificate = _location((*error["loc"][:-1], "certificate"))
                errors.append(FieldError(where, f"does not match {certificate}"))
            else:
                errors.append(FieldError(where, error["msg"]))
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
        raise ConfigError(exc.source, exc.fields, digest) from exc
    return ConfigFile(Path(path), digest, config)


def load_config(path: Path, *, check_files: bool = True) -> SegnodeConfig:
    """Read and validate a configuration file."""
    return read_config(path, check_files=check_files).config


#: Node fields bound to sockets or files opened at start: a reload keeps them,
#: as it keeps whether ``node.tls`` is there and its port (:func:`reloaded`).
RESTART_ONLY: Final = ("host", "port", "storage_dir", "metrics_port", "listen_plain")

#: The console's fields bound to its listening socket and its TLS context,
#: made at start; a reload keeps them, and whether there is a console at all,
#: while its users and session length are the file's.
CONSOLE_RESTART_ONLY: Final = ("host", "port", "certificate", "private_key")


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
    console_in_force, console_in_file = running.node.console, new.node.console
    if (console_in_force is None) != (console_in_file is None):
        changes.append(RestartOnlyChange("node.console", _presence(console_in_force),
                                         _presence(console_in_file)))
    elif console_in_force is not None and console_in_file is not None:
        changes.extend(
            RestartOnlyChange(f"node.console.{field}", getattr(console_in_force, field),
                              getattr(console_in_file, field))
            for field in CONSOLE_RESTART_ONLY
            if getattr(console_in_force, field) != getattr(console_in_file, field)
        )
    return tuple(changes)


def _presence(section: NodeTls | NodeConsole | None) -> str:
    return "none" if section is None else "set"


def reloaded(new: SegnodeConfig, running: SegnodeConfig) -> SegnodeConfig:
    """`new` as a running process applies it: the RESTART_ONLY fields stay as in
    `running`, and so do the TLS listener's existence and port (its socket is
    opened at start), while its certificate, key and client CAs are the file's;
    likewise the console's existence and CONSOLE_RESTART_ONLY fields stay,
    while its users and session length are the file's."""
    kept: dict[str, object] = {field: getattr(running.node, field) for field in RESTART_ONLY}
    in_force, in_file = running.node.tls, new.node.tls
    if in_force is None or in_file is None:
        kept["tls"] = in_force
    else:
        kept["tls"] = in_file.model_copy(update={"port": in_force.port})
    console_in_force, console_in_file = running.node.console, new.node.console
    if console_in_force is None or console_in_file is None:
        kept["console"] = console_in_force
    else:
        kept["console"] = console_in_file.model_copy(
            update={field: getattr(console_in_force, field) for field in CONSOLE_RESTART_ONLY}
        )
    return new.model_copy(update={"node": new.node.model_copy(update=kept)})
