"""Label map and legend: one record in two files, read whole or refused."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import dicomio.label_map
from dicomio.codes import structure_code
from dicomio.label_map import LabelMapError, read_label_map, write_label_map
from dicomio.seg import LabelledStructure
from dicomio.volume import SourceFrame, Volume

SHAPE = (4, 5, 6)


def ct_volume() -> Volume:
    """An axial grid: slices rise along +z, rows along +y, columns along +x."""
    affine = np.diag([2.5, 0.8, 0.8, 1.0])[[2, 1, 0, 3]]
    sources = tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{k}") for k in range(SHAPE[0]))
    return Volume(np.zeros(SHAPE, dtype=np.int16), affine, "1.2.3.4", "1.2.3.5", "1.2.3.6", "CT", sources)


def labelled(*names: str) -> tuple[np.ndarray, tuple[LabelledStructure, ...]]:
    """One structure per slice, valued 1, 2... in the order named."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    for value in range(1, len(names) + 1):
        labels[value - 1, 1:3, 1:4] = value
    return labels, tuple(LabelledStructure(v, structure_code(n)) for v, n in enumerate(names, start=1))


def test_a_label_map_reads_back_with_its_legend_and_nothing_partial_is_left(tmp_path: Path) -> None:
    volume = ct_volume()
    labels, structures = labelled("liver", "spleen")
    path = tmp_path / "labels.nii.gz"
    legend = write_label_map(labels, volume, structures, path)

    assert legend == tmp_path / "labels.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.json", "labels.nii.gz"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in (path, legend)} == {0o640}
    read, read_structures = read_label_map(path, volume)
    np.testing.assert_array_equal(read, labels)
    assert read_structures == structures


def test_a_rewrite_stopped_between_the_two_files_is_refused_until_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The label map is renamed first and the legend last: a crash (or a
    reader) between the two finds a new label map beside the old legend."""
    volume = ct_volume()
    path = tmp_path / "labels.nii.gz"
    old_labels, old_structures = labelled("liver", "spleen")
    write_label_map(old_labels, volume, old_structures, path)
    new_labels, new_structures = labelled("spleen", "liver", "aorta")

    def crash(*_: object) -> Path:
        raise OSError("killed before the legend was renamed")

    with monkeypatch.context() as patch:
        patch.setattr(dicomio.label_map, "write_atomically", crash)
        with pytest.raises(OSError, match="killed"):
            write_label_map(new_labels, volume, new_structures, path)
    with pytest.raises(LabelMapError, match=f"{path}: {tmp_path / 'labels.json'} is not the legend"):
        read_label_map(path, volume)

    write_label_map(new_labels, volume, new_structures, path)
    read, read_structures = read_label_map(path, volume)
    np.testing.assert_array_equal(read, new_labels)
    assert read_structures == new_structures


def test_a_legend_changed_after_writing_is_refused(tmp_path: Path) -> None:
    volume = ct_volume()
    path = tmp_path / "labels.nii"
    labels, structures = labelled("liver", "spleen")
    legend = write_label_map(labels, volume, structures, path)
    legend.write_text(legend.read_text().replace("liver", "kidney_left"))

    with pytest.raises(LabelMapError, match="is not the legend it was written with"):
        read_label_map(path, volume)


def test_a_label_map_written_before_legends_were_named_reads_as_before(tmp_path: Path) -> None:
    """Label maps of jobs run before the legend digest (an upgraded node) still compare."""
    volume = ct_volume()
    path = tmp_path / "labels.nii.gz"
    labels, structures = labelled("liver")
    write_label_map(labels, volume, structures, path)
    written = sitk.ReadImage(str(path))
    plain = sitk.GetImageFromArray(sitk.GetArrayFromImage(written))
    plain.CopyInformation(written)  # the same grid, and no description
    sitk.WriteImage(plain, str(path))

    read, read_structures = read_label_map(path, volume)
    assert np.array_equal(read, labels)
    assert read_structures == structures
