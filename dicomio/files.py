"""Writing an output file so that no reader ever sees part of it.

Another stage (the outbox, a user's script) may pick a file up as soon as it
appears, and a crash may come at any moment: the bytes go to a temporary
name in the same folder, are fsync'ed and renamed over the target, and the
folder is fsync'ed so that the rename itself is on disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` durably, replacing an existing file.

    Raises
    ------
    OSError
        If the folder is missing or not writable; no temporary file is left.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            # The permissions of stored instances (node/receive/storage.py), not mkstemp's 0600.
            os.fchmod(handle.fileno(), 0o640)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)
    return target


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
