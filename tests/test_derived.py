"""Building and writing a derived object in a forked process
(dicomio/derived.py), as the pipeline builds and writes its SEG while it
measures and builds the SR."""

from __future__ import annotations

import multiprocessing
import os

import pydicom
import pytest

from dicomio.derived import BackgroundWriteError, built_in_background, write_dicom_atomically
from tests.synthetic import write_ct_series


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> pydicom.Dataset:
    folder = tmp_path_factory.mktemp("ct")
    return pydicom.dcmread(write_ct_series(folder, slices=1)[0])


def test_the_file_is_there_when_the_block_ends_and_the_header_is_the_object_without_pixels(image, tmp_path):
    with built_in_background(lambda: image, tmp_path / "background.dcm") as build:
        header = build.header()
    write_dicom_atomically(image, tmp_path / "plain.dcm")
    assert (tmp_path / "background.dcm").read_bytes() == (tmp_path / "plain.dcm").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["background.dcm", "plain.dcm"]
    assert "PixelData" in image and "PixelData" not in header
    assert [e.tag for e in header] == [e.tag for e in image if e.keyword != "PixelData"]


def test_a_large_header_does_not_hold_the_builder(image, tmp_path):
    """A header larger than a pipe holds (64 KiB) is taken off it as it comes."""
    heavy = _heavy(image, 20_000)
    with built_in_background(lambda: heavy, tmp_path / "seg.dcm") as build:
        pass
    assert len(build.header().ReferencedImageSequence) == 20_000
    assert pydicom.dcmread(tmp_path / "seg.dcm").SOPInstanceUID == image.SOPInstanceUID


def test_a_failed_build_or_write_says_which_file_and_why(image, tmp_path):
    missing = tmp_path / "no-such-folder" / "seg.dcm"
    with pytest.raises(BackgroundWriteError, match=f"{missing} was not written: FileNotFoundError"):
        with built_in_background(lambda: image, missing):
            pass

    def broken() -> pydicom.Dataset:
        raise ValueError("labels of shape (3,) do not fit")

    target = tmp_path / "seg.dcm"
    with pytest.raises(BackgroundWriteError, match="not written: ValueError: labels of shape"):
        with built_in_background(broken, target) as build:
            build.header()
    assert not target.exists()


def test_a_writer_that_dies_is_an_error_and_leaves_no_file(image, tmp_path):
    # SIGKILL stands in for the kernel's OOM killer; 100,000 items keep the
    # writer busy for seconds, so it is killed while it writes.
    heavy = _heavy(image, 100_000)
    target = tmp_path / "seg.dcm"
    failure = f"{target} was not written: the builder exited with status -9"
    with pytest.raises(BackgroundWriteError, match=failure):
        with built_in_background(lambda: heavy, target):
            (writer,) = _writers()
            os.kill(writer.pid, 9)
    assert not target.exists()


def test_an_error_of_the_block_wins_and_the_writer_is_waited_for(image, tmp_path):
    target = tmp_path / "seg.dcm"
    with pytest.raises(ValueError, match="the SR failed"):
        with built_in_background(lambda: image, target):
            raise ValueError("the SR failed")
    assert pydicom.dcmread(target).SOPInstanceUID == image.SOPInstanceUID
    assert _writers() == []


def _heavy(image: pydicom.Dataset, items: int) -> pydicom.Dataset:
    heavy = pydicom.Dataset()
    heavy.update(image)
    heavy.file_meta = image.file_meta
    heavy.ReferencedImageSequence = [pydicom.Dataset() for _ in range(items)]
    for item in heavy.ReferencedImageSequence:
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return heavy


def _writers() -> list[multiprocessing.Process]:
    """The background writers this process has running."""
    return [child for child in multiprocessing.active_children() if child.name.startswith("write ")]
