"""Writing a file so that no reader ever sees part of it, and a crash loses
nothing that was reported written.

Another stage (the outbox, a user's script) may pick a file up as soon as it
appears, and a crash may come at any moment: the bytes go to a temporary
name in the same folder, are fsync'ed and renamed over the target, and the
folder is fsync'ed so that the rename itself is on disk. A file that is
already written elsewhere on the same file system (a spooled instance, a
file a library wrote) is moved the same way, and a folder built in place
(an installed model) is fsync'ed as a whole before its rename.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

#: The permissions of stored instances (node/receive/storage.py) and of
#: everything else written here, not mkstemp's 0600.
_FILE_MODE = 0o640


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A file to write that appears, durably, as `path` (replacing an existing
    file) once the block ends; nothing appears if it raises.

    Raises
    ------
    OSError
        If the folder is missing or not writable; no temporary file is left.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _FILE_MODE)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)


def write_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` durably, replacing an existing file (see :func:`atomic_file`)."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def move_durably(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Make `source`, a file written elsewhere on the target's file system,
    durable under the name `target`, replacing an existing file: it is
    fsync'ed, renamed and the target's folder fsync'ed.

    Raises
    ------
    OSError
        If `source` or the target's folder is missing; `source` is left
        where it was.
    """
    target = Path(target)
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fchmod(fd, _FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)
    fsync_folder(target.parent)
    return target


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Make every file and folder under `root` durable, so that renaming
    `root` into place shows its whole content even after a crash."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(folder)


def fsync_folder(path: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """Make a folder's entries (a rename, a new or removed file) durable.

    ``missing_ok`` is for removals finished again after a crash, whose
    folders may be gone already.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
