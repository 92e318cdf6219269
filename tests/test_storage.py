"""InstanceStore on its own: paths stay inside the store, failures leave nothing."""

from __future__ import annotations

import os
import time

import pytest

from node.receive.storage import SPOOL_ORPHAN_SECONDS, InstanceStore, StorageError
from node.receive.validation import InstanceIdentity


def identity(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5") -> InstanceIdentity:
    return InstanceIdentity("1.2.840.10008.5.1.4.1.1.2", sop, study, series, "CT")


def spooled(store: InstanceStore, data: bytes, name: str = "tmp1.dcm"):
    path = store.spool_dir / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("bad", ["..", ".", "", "1/../../x", "1\0"])
def test_a_name_that_could_leave_the_store_is_refused(tmp_path, bad):
    store = InstanceStore(tmp_path / "store")
    for fields in ({"study": bad}, {"series": bad}, {"sop": bad}):
        with pytest.raises(StorageError):
            store.keep(identity(**fields), spooled(store, b"x"))
    assert not any((tmp_path / "store").rglob("*.dcm"))


def test_keep_moves_the_spooled_file_and_replaces_an_earlier_copy(tmp_path):
    store = InstanceStore(tmp_path / "store")
    first = spooled(store, b"first-part")
    path = store.keep(identity(), first)
    assert path.read_bytes() == b"first-part" and not first.exists()
    assert store.keep(identity(), spooled(store, b"second")) == path
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert list(store.spool_dir.iterdir()) == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)


def test_a_failed_keep_removes_the_spooled_file(tmp_path):
    store = InstanceStore(tmp_path / "store")
    blocker = store.instances_dir / "1.2.3"
    blocker.write_bytes(b"a file where the study folder should be")
    with pytest.raises(StorageError, match="cannot store"):
        store.keep(identity(), spooled(store, b"x"))
    assert list(store.spool_dir.iterdir()) == []


def test_the_spool_of_an_earlier_run_is_cleared(tmp_path):
    store = InstanceStore(tmp_path / "store")
    spooled(store, b"half", "tmpa.dcm")
    spooled(store, b"half", "tmpb.dcm")
    assert InstanceStore(tmp_path / "store").clear_spool() == 2
    assert list(store.spool_dir.iterdir()) == []


def test_only_spooled_files_untouched_for_long_are_orphans(tmp_path):
    store = InstanceStore(tmp_path / "store")
    old = spooled(store, b"aborted", "tmpold.dcm")
    fresh = spooled(store, b"arriving", "tmpnew.dcm")
    past = time.time() - SPOOL_ORPHAN_SECONDS - 5
    os.utime(old, (past, past))
    assert store.remove_orphaned_spool_files(time.time()) == 1
    assert not old.exists() and fresh.exists()


def test_keep_makes_a_folder_again_that_retention_removed(tmp_path):
    store = InstanceStore(tmp_path / "store")
    first = store.keep(identity(sop="1.2.3.4.5"), spooled(store, b"one"))
    first.unlink()
    first.parent.rmdir()  # as node/retention/removal.py does once a series' files are gone
    second = store.keep(identity(sop="1.2.3.4.6"), spooled(store, b"two"))
    assert second.read_bytes() == b"two"


def test_a_folder_in_the_spool_is_left_and_stops_no_sweep(tmp_path):
    """The spool is tempfile's folder for the whole node process (node/receive/scp.py)."""
    store = InstanceStore(tmp_path / "store")
    past = time.time() - 2 * SPOOL_ORPHAN_SECONDS
    folder = store.spool_dir / "tmp-folder"
    folder.mkdir()
    old = spooled(store, b"old")
    for path in (folder, old):
        os.utime(path, (past, past))
    assert store.remove_orphaned_spool_files(time.time()) == 1
    assert store.clear_spool() == 0
    assert folder.is_dir() and not old.exists()
