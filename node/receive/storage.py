"""Durable storage of received instances, exactly as they arrived.

pynetdicom spools each received data set to a file in ``root/spool`` as its
fragments arrive (node/receive/scp.py), so an instance never has to fit in memory.
An instance is acknowledged only once it would survive a crash: its spooled
file is fsync'ed, renamed into place in the series folder (the same file
system, so no copy) and the folder fsync'ed, so a reader (or a restart) sees
either the whole file or nothing.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import generate_uid

from dicomio.files import fsync_folder, move_durably
from node.receive.validation import InstanceIdentity

LOG = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
#: A spooled file untouched this long belongs to no transfer any more: a
#: transfer writes at every fragment, and a whole one is kept or refused
#: within seconds. Files of aborted transfers are left behind by pynetdicom.
SPOOL_ORPHAN_SECONDS = 600.0


class StorageError(Exception):
    """An instance could not be written; nothing of it is left on disk."""


@dataclass(frozen=True)
class StoredInstance:
    """A received instance that is durably on disk and ready to be indexed."""

    identity: InstanceIdentity
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_ae: str
    received_at: float


class InstanceStore:
    """Files under ``root/instances/<study>/<series>/<sop instance>.dcm``.

    The path components are UIDs that :mod:`node.receive.validation` has checked to
    be digits and dots only, so they cannot leave the storage folder.
    """

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.instances_dir = self.root / "instances"
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir = self.root / "spool"
        self.spool_dir.mkdir(exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()

    def path_for(self, identity: InstanceIdentity) -> Path:
        """Where an instance lives; refuses anything that would leave the store.

        The UIDs were validated already; this second check is a plain string
        test because resolving the path costs a system call per component.
        """
        names = (
            identity.study_instance_uid,
            identity.series_instance_uid,
            identity.sop_instance_uid,
        )
        for name in names:
            if name in ("", ".", "..") or "/" in name or "\0" in name:
                raise StorageError(f"refusing a path outside the store: {name!r}")
        return self.instances_dir / names[0] / names[1] / f"{names[2]}.dcm"

    def _forget_dir(self, directory: Path) -> None:
        with self._dirs_lock:
            self._known_dirs.discard(directory)

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` durably: each new folder's parent is fsync'ed."""
        with self._dirs_lock:
            if directory in self._known_dirs:
                return
            missing = []
            current = directory
            while not current.exists():
                missing.append(current)
                current = current.parent
            for folder in reversed(missing):
                try:
                    folder.mkdir()
                except FileExistsError:
                    pass
                fsync_folder(folder.parent)
            self._known_dirs.add(directory)

    def keep(self, identity: InstanceIdentity, spooled: Path) -> Path:
        """Move a spooled instance durably to its path, replacing an earlier copy.

        Raises :class:`StorageError` (with the OS reason) when the disk is
        full or not writable; the spooled file is removed in that case.
        """
        try:
            path = self.path_for(identity)
        except StorageError:
            spooled.unlink(missing_ok=True)
            raise
        try:
            self._ensure_dir(path.parent)
            try:
                move_durably(spooled, path)
            except FileNotFoundError:
                # Retention removed the emptied series folder meanwhile (node/retention/removal.py).
                self._forget_dir(path.parent)
                self._ensure_dir(path.parent)
                move_durably(spooled, path)
        except OSError as exc:
            spooled.unlink(missing_ok=True)
            raise StorageError(f"cannot store {path}: {exc.strerror or exc}") from exc
        return path

    def remove(self, path: Path) -> None:
        """Delete a stored file (used when its index row could not be written)."""
        path.unlink(missing_ok=True)

    def clear_spool(self) -> int:
        """Delete what an earlier run was receiving when it stopped; none of it was acknowledged."""
        count = self._remove_spooled(math.inf)
        if count:
            LOG.info("removed %d spooled files left by an earlier run", count)
        return count

    def remove_orphaned_spool_files(self, now: float) -> int:
        """Delete spooled files of transfers that ended without their instance
        being kept or refused (an abort, a dropped connection)."""
        count = self._remove_spooled(now - SPOOL_ORPHAN_SECONDS)
        if count:
            LOG.warning("removed %d spooled files of unfinished transfers", count)
        return count

    def _remove_spooled(self, before: float) -> int:
        """Delete the spooled files last written before ``before``.

        The spool is tempfile's folder for the whole node process
        (node/receive/scp.py), so a folder in it is left, and a file that cannot be
        removed is logged: neither may stop the node or keep it from starting.
        """
        count = 0
        with os.scandir(self.spool_dir) as entries:
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if entry.stat(follow_symlinks=False).st_mtime < before:
                        os.unlink(entry.path)
                        count += 1
                except FileNotFoundError:
                    pass  # kept or refused meanwhile
                except OSError as exc:
                    LOG.error("cannot remove %s from the spool: %s", entry.path, exc)
        return count


INSTALLATION_UID_FILENAME = "installation-uid"


def installation_uid(storage_dir: Path) -> str:
    """The UID that names this segnode installation in what it writes (the
    SEG's Device Serial Number, the SR's Device Observer UID), made once and
    kept with the storage so that it survives restarts and upgrades."""
    path = Path(storage_dir) / INSTALLATION_UID_FILENAME
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    uid = generate_uid(prefix=None)
    partial = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    with partial.open("w") as handle:
        handle.write(uid + "\n")
        handle.flush()
        os.fsync(handle.fileno())  # a crash must not leave an empty UID under the name
    try:
        # Two processes starting at once: the first link wins, both read it.
        os.link(partial, path)
    except FileExistsError:
        pass
    finally:
        partial.unlink()
    fsync_folder(path.parent)
    return path.read_text().strip()
