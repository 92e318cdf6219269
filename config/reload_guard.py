"""Which edited configuration files a running process refuses to apply.

A file that validates is not always one its author meant: a truncating
editor, ``> segnode.yaml`` or a disk that filled mid-write leaves an empty
file, which validates to the defaults (no peers: every scanner refused), and
a file cut short loses its later keys, which validate as left out. So a
reload is refused when the file sets no key at all, or when it would empty
``peers``, ``destinations`` or ``routes`` without writing the key (``peers:
[]``): a section left out is not the same as a section written empty.

A file that changes how jobs run (``jobs.backend``, ``jobs.celery``) is refused
too: the node chose its worker pool or its Celery dispatcher, and the broker
and queue it sends to, when it started; jobs it has sent are polled where it
sent them. Only the names of the changed settings are given, never their
values (a broker URL may hold a password).

The node (node/service.py) and its workers (node/work/worker.py) both reload the
file; both go through :func:`read_for_reload`, so that a worker never routes
jobs with a file the node refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from config.loader import ConfigError, ConfigFile, read_config
from config.schema import SegnodeConfig

#: The sections whose loss locks the node: no peers refuses every scanner,
#: no routes or destinations sends no result anywhere.
GUARDED: Final = ("peers", "destinations", "routes")

_EXPLICITLY_EMPTY: Final = {"peers": "peers: []", "destinations": "destinations: {}", "routes": "routes: []"}

#: The job settings bound to what the node started (its workers or its Celery dispatcher).
JOBS_RESTART_ONLY: Final = ("backend", "celery")


def sets_nothing(config: SegnodeConfig) -> bool:
    """Whether the file wrote no key at all (empty, only comments, ``{}``): pydantic
    keeps the keys that were present in ``model_fields_set``."""
    return not config.model_fields_set


def reload_refusals(new: SegnodeConfig, running: SegnodeConfig) -> tuple[str, ...]:
    """Why `new`, as read from the file, must not replace `running`; empty when it may.

    Each reason names the key it is about, as :class:`ConfigError` lines do.
    """
    if sets_nothing(new):
        return ("the file sets no key (it is empty or holds only comments); "
                "a node never applies an empty configuration",)
    reasons = []
    for key in GUARDED:
        in_force = getattr(running, key)
        if in_force and not getattr(new, key) and key not in new.model_fields_set:
            reasons.append(
                f"{key}: left out of the file, which would remove the {len(in_force)} in force; "
                f"write '{_EXPLICITLY_EMPTY[key]}' to remove them on purpose"
            )
    reasons.extend(_jobs_changes(new, running))
    return tuple(reasons)


def _jobs_changes(new: SegnodeConfig, running: SegnodeConfig) -> list[str]:
    """Why `new` changes how jobs run, which only a restart does: a node that
    switched its backend on a reload would strand the jobs the old one runs."""
    reasons = []
    if new.jobs.backend != running.jobs.backend:
        reasons.append(f"jobs.backend: {running.jobs.backend} in force, {new.jobs.backend} in the file; "
                       "a change of backend takes a restart of segnode")
    in_force, in_file = running.jobs.celery, new.jobs.celery
    changed = [field for field in type(in_force).model_fields
               if getattr(in_force, field) != getattr(in_file, field)]
    if changed:
        reasons.append(f"jobs.celery: {', '.join(f'jobs.celery.{field}' for field in changed)} changed in "
                       "the file; the Celery settings take a restart of segnode")
    return reasons


def read_for_reload(path: Path, running: SegnodeConfig, *, check_files: bool = True) -> ConfigFile:
    """The file at `path` if a process running `running` may apply it.

    ``check_files=False`` is for the workers: they read the node's copy of
    the configuration in force, whose certificates the node has checked, and
    open none of them.

    Raises
    ------
    ConfigError
        If the file cannot be read, is invalid, or :func:`reload_refusals`
        gives reasons (its ``errors``), with the digest of the bytes read.
    """
    loaded = read_config(path, check_files=check_files)
    reasons = reload_refusals(loaded.config, running)
    if reasons:
        raise ConfigError(str(path), list(reasons), loaded.sha256)
    return loaded
