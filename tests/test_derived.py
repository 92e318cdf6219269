"""Writing a derived object in a forked process (dicomio/derived.py), as the
pipeline writes its SEG while it builds the SR."""

from __future__ import annotations

import multiprocessing
import os

import pydicom
import pytest

from dicomio.derived import BackgroundWriteError, write_dicom_atomically, written_in_background
from tests.synthetic import write_ct_series


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> pydicom.Dataset:
    folder = tmp_path_factory.mktemp("ct")
    return pydicom.dcmread(write_ct_series(folder, slices=1)[0])


def test_the_file_is_there_when_the_block_ends_with_the_bytes_of_a_plain_write(image, tmp_path):
    with written_in_background(image, tmp_path / "background.dcm"):
        pass
    write_dicom_atomically(image, tmp_path / "plain.dcm")
    assert (tmp_path / "background.dcm").read_bytes() == (tmp_path / "plain.dcm").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["background.dcm", "plain.dcm"]


def test_a_failed_write_says_which_file_and_why(image, tmp_path):
    missing = tmp_path / "no-such-folder" / "seg.dcm"
    with pytest.raises(BackgroundWriteError, match=f"{missing} was not written: FileNotFoundError"):
        with written_in_background(image, missing):
            pass


def test_a_writer_that_dies_is_an_error_and_leaves_no_file(image, tmp_path):
    # SIGKILL stands in for the kernel's OOM killer; 100,000 items keep the
    # writer busy for seconds, so it is killed while it writes.
    heavy = pydicom.Dataset()
    heavy.update(image)
    heavy.ReferencedImageSequence = [pydicom.Dataset() for _ in range(100_000)]
    for item in heavy.ReferencedImageSequence:
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    target = tmp_path / "seg.dcm"
    failure = f"{target} was not written: the writer exited with status -9"
    with pytest.raises(BackgroundWriteError, match=failure):
        with written_in_background(heavy, target):
            (writer,) = _writers()
            os.kill(writer.pid, 9)
    assert not target.exists()


def test_an_error_of_the_block_wins_and_the_writer_is_waited_for(image, tmp_path):
    target = tmp_path / "seg.dcm"
    with pytest.raises(ValueError, match="the SR failed"):
        with written_in_background(image, target):
            raise ValueError("the SR failed")
    assert pydicom.dcmread(target).SOPInstanceUID == image.SOPInstanceUID
    assert _writers() == []


def _writers() -> list[multiprocessing.Process]:
    """The background writers this process has running."""
    return [child for child in multiprocessing.active_children() if child.name.startswith("write ")]
