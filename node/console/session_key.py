"""The key that signs the console's session cookies.

32 random bytes in ``storage_dir/console/session.key``, readable by the
node's user only, made at the first start and kept: a log-in form loaded
before a restart (its token is in the signed cookie) still signs in after
it. Sessions themselves end with a restart, as their table lives in memory
(node/console/sessions.py). Deleting the file makes every cookie signed
before worthless.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from dicomio.files import fsync_folder

KEY_BYTES = 32


class SessionKeyError(OSError):
    def __init__(self, path: Path, problem: str):
        super().__init__(f"console session key {path}: {problem}")


def session_key_path(storage_dir: Path) -> Path:
    return Path(storage_dir) / "console" / "session.key"


def read_or_create_session_key(storage_dir: Path) -> bytes:
    """The key, made first if there is none.

    Raises
    ------
    SessionKeyError
        If the file is not a key this function wrote (wrong length, or others may read it).
    OSError
        If it cannot be read or written.
    """
    path = session_key_path(storage_dir)
    if not path.exists():
        _create(path)
    if path.stat().st_mode & 0o077:
        raise SessionKeyError(path, "others than its owner may read it: chmod 600 it, or delete it to "
                                    "make a new one")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise SessionKeyError(path, f"holds {len(key)} bytes, not {KEY_BYTES}: delete it to make a new one")
    return key


def _create(path: Path) -> None:
    """Write a new key under a temporary name (mkstemp's mode is 0600) and link it into
    place, so that no reader sees half a key and two starts at once keep the same one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".session.key.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_folder(path.parent)
