"""InstanceStore on its own: paths stay inside the store, failures leave nothing."""

from __future__ import annotations

import pytest

from node.storage import InstanceStore, StorageError
from node.validation import InstanceIdentity


def identity(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5") -> InstanceIdentity:
    return InstanceIdentity("1.2.840.10008.5.1.4.1.1.2", sop, study, series, "CT")


@pytest.mark.parametrize("bad", ["..", ".", "", "1/../../x", "1\0"])
def test_a_name_that_could_leave_the_store_is_refused(tmp_path, bad):
    store = InstanceStore(tmp_path / "store")
    for fields in ({"study": bad}, {"series": bad}, {"sop": bad}):
        with pytest.raises(StorageError):
            store.write(identity(**fields), b"x")
    assert not any((tmp_path / "store").rglob("*.dcm"))


def test_write_replaces_and_leaves_no_temporary_file(tmp_path):
    store = InstanceStore(tmp_path / "store")
    path = store.write(identity(), b"first-part")
    assert path.read_bytes() == b"first-part"
    assert store.write(identity(), b"second") == path
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_partial_files_from_a_crash_are_removed(tmp_path):
    store = InstanceStore(tmp_path / "store")
    leftover = store.write(identity(), b"x").with_name(".1.2.3.4.5.dcm.99.1.partial")
    leftover.write_bytes(b"half")
    assert store.remove_partial_files() == 1
    assert not leftover.exists()
