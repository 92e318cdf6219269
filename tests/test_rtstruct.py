"""RT Structure Sets (dicomio/rtstruct.py) checked as a planning system reads them.

Every RTSTRUCT is saved, checked by dciodvfy and read back onto the source
series by rt-utils' own reader (``RTStructBuilder.create_from``, which
matches contours to images by SOP Instance UID and fills them with OpenCV):
each structure must come back with Dice >= 0.95 and no voxel outside it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from rt_utils import RTStructBuilder
from scipy import ndimage

from dicomio.codes import structure_code
from dicomio.colours import structure_colour
from dicomio.derived import write_dicom_atomically
from dicomio.rtstruct import RTStructIdentity, RTStructInputError, write_rtstruct
from dicomio.seg import LabelledStructure
from dicomio.series import LoadedSeries, load_series
from tests.conftest import free_port
from tests.synthetic import SAGITTAL, write_ct_series, write_enhanced_ct
from tests.test_orthanc import OrthancProcess, upload_series
from tests.test_seg import dciodvfy

STRUCTURES = (
    LabelledStructure(1, structure_code("skeleton")),
    LabelledStructure(2, structure_code("lung_left")),
    LabelledStructure(3, structure_code("skeletal_muscle")),
)
BODY = structure_code("body")
IDENTITY = RTStructIdentity(
    series_instance_uid="2.25.1001", sop_instance_uid="2.25.1002", series_number=95,
    series_description="segnode structures", structure_set_label="segnode",
    created=datetime(2026, 12, 6, 21, 0, 0, 123456),
)


def labels_for(shape: tuple[int, int, int]) -> np.ndarray:
    """Skeleton: a thick ring with two off-centre holes on some slices (one
    hole on others); left lung: two pieces; muscle: a block touching the ring."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:8, 30:90, 30:90] = 1
    labels[2:8, 36:48, 60:82] = 0
    labels[3:6, 60:80, 38:50] = 0
    labels[1:5, 100:110, 10:20] = 2
    labels[5:9, 100:116, 96:120] = 2
    labels[2:6, 90:98, 40:70] = 3
    return labels


def series(folder: Path, **options) -> LoadedSeries:
    return load_series(write_ct_series(folder, slices=10, rows=128, columns=128, **options))


@pytest.fixture(scope="module")
def reversed_axial(tmp_path_factory) -> tuple[Path, LoadedSeries]:
    """An axial series written head first (InstanceNumber 1 is the highest
    slice), the opposite of the volume's and rt-utils' ascending order."""
    folder = tmp_path_factory.mktemp("axial")
    return folder, series(folder, slice_step=-2.5, slice_thickness=2.5)


def written(folder: Path, loaded: LoadedSeries, labels: np.ndarray, path: Path) -> pydicom.Dataset:
    dataset = write_rtstruct(loaded.volume, labels, STRUCTURES, loaded.headers, IDENTITY, outline=BODY)
    write_dicom_atomically(dataset, path)
    dciodvfy(path)
    return pydicom.dcmread(path)


def read_back(folder: Path, path: Path, name: str) -> np.ndarray:
    """The ROI `name` filled by rt-utils onto the series in `folder`, indexed
    like the volume ([slice, row, column]; both sort slices along the normal)."""
    mask = RTStructBuilder.create_from(str(folder), str(path)).get_roi_mask_by_name(name)
    return np.moveaxis(mask, -1, 0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("orientation", ["reversed axial", "sagittal"])
def test_every_structure_reads_back_onto_the_source_grid(orientation, reversed_axial, tmp_path):
    if orientation == "sagittal":
        folder = tmp_path / "ct"
        loaded = series(folder, orientation=SAGITTAL)
    else:
        folder, loaded = reversed_axial
    labels = labels_for(loaded.volume.array.shape)
    path = tmp_path / "rtstruct.dcm"
    written(folder, loaded, labels, path)
    truths = {item.code.label: labels == item.value for item in STRUCTURES} | {BODY.label: labels > 0}
    for name, truth in truths.items():
        mask = read_back(folder, path, name)
        assert dice(mask, truth) >= 0.95, name
        # The keyhole channels are all that is lost; nothing is added.
        assert not (mask & ~truth).any(), name
    # The holes stay holes: a ring read back filled would add voxels above.
    assert not read_back(folder, path, "Skeleton")[3, 65, 42]


def test_contours_lie_on_their_images_within_the_structure(reversed_axial, tmp_path):
    folder, loaded = reversed_axial
    volume = loaded.volume
    labels = labels_for(volume.array.shape)
    dataset = written(folder, loaded, labels, tmp_path / "rtstruct.dcm")
    slice_of = {source.sop_instance_uid: index for index, source in enumerate(volume.sources)}
    to_voxels = np.linalg.inv(volume.affine)
    values = {roi.ROINumber: roi.ROIName for roi in dataset.StructureSetROISequence}
    masks = {item.code.label: labels == item.value for item in STRUCTURES} | {BODY.label: labels > 0}
    for roi in dataset.ROIContourSequence:
        mask = masks[values[roi.ReferencedROINumber]]
        contoured, pieces = set(), {}
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints
            voxels = (to_voxels @ np.c_[points, np.ones(len(points))].T)[:3].T
            (image,) = contour.ContourImageSequence
            index = slice_of[image.ReferencedSOPInstanceUID]
            contoured.add(index)
            pieces[index] = pieces.get(index, 0) + 1
            np.testing.assert_allclose(voxels[:, 0], index, atol=1e-3)
            rows, columns = np.nonzero(mask[index])
            assert voxels[:, 1].min() >= rows.min() - 1e-3 and voxels[:, 1].max() <= rows.max() + 1e-3
            assert voxels[:, 2].min() >= columns.min() - 1e-3 and voxels[:, 2].max() <= columns.max() + 1e-3
        assert contoured == set(np.flatnonzero(mask.any(axis=(1, 2))))
        # One contour per piece (OpenCV traces 8-connected pieces): a hole is
        # cut into its piece's contour (keyhole), not a contour of its own.
        assert pieces == {i: ndimage.label(mask[i], np.ones((3, 3)))[1] for i in contoured}


def test_rois_are_named_coloured_and_interpreted(reversed_axial, tmp_path):
    folder, loaded = reversed_axial
    dataset = written(folder, loaded, labels_for(loaded.volume.array.shape), tmp_path / "rtstruct.dcm")
    codes = [item.code for item in STRUCTURES] + [BODY]
    assert [roi.ROIName for roi in dataset.StructureSetROISequence] == [code.label for code in codes]
    assert [roi.ROINumber for roi in dataset.StructureSetROISequence] == [1, 2, 3, 4]
    assert [tuple(roi.ROIDisplayColor) for roi in dataset.ROIContourSequence] == [
        structure_colour(code) for code in codes
    ]
    assert [o.RTROIInterpretedType for o in dataset.RTROIObservationsSequence] == [
        "ORGAN", "ORGAN", "ORGAN", "EXTERNAL"
    ]
    source = loaded.headers[0]
    assert (dataset.PatientID, dataset.StudyInstanceUID, dataset.FrameOfReferenceUID) == (
        source.PatientID, source.StudyInstanceUID, source.FrameOfReferenceUID
    )
    assert (dataset.SeriesInstanceUID, dataset.SOPInstanceUID, dataset.SeriesNumber) == (
        "2.25.1001", "2.25.1002", 95
    )
    assert (dataset.StructureSetDate, dataset.StructureSetTime) == ("20261206", "210000.123456")
    assert dataset.Manufacturer == "segnode"
    (study,) = dataset.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    (referenced,) = study.RTReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == loaded.volume.series_instance_uid
    assert [item.ReferencedSOPInstanceUID for item in referenced.ContourImageSequence] == [
        source.sop_instance_uid for source in loaded.volume.sources
    ]


def test_a_rerun_writes_the_same_bytes(reversed_axial, tmp_path):
    folder, loaded = reversed_axial
    labels = labels_for(loaded.volume.array.shape)
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    for path in (first, second):
        dataset = write_rtstruct(loaded.volume, labels, STRUCTURES, loaded.headers, IDENTITY, outline=BODY)
        write_dicom_atomically(dataset, path)
    assert first.read_bytes() == second.read_bytes()


def test_series_rt_utils_cannot_contour_exactly_are_refused_by_name(tmp_path):
    non_square = series(tmp_path / "pixels", pixel_spacing=(0.8, 1.0))
    enhanced = load_series([write_enhanced_ct(tmp_path / "enhanced", slices=10, rows=128, columns=128)])
    for loaded, problem in ((non_square, "not square"), (enhanced, "multi-frame")):
        with pytest.raises(RTStructInputError, match=problem) as error:
            write_rtstruct(loaded.volume, labels_for((10, 128, 128)), STRUCTURES, loaded.headers, IDENTITY)
        assert loaded.volume.series_instance_uid in str(error.value)


def test_no_structure_present_is_refused(reversed_axial):
    _, loaded = reversed_axial
    empty = np.zeros(loaded.volume.array.shape, dtype=np.uint8)
    with pytest.raises(RTStructInputError, match="no structure"):
        write_rtstruct(loaded.volume, empty, STRUCTURES, loaded.headers, IDENTITY, outline=BODY)


def test_orthanc_files_the_rtstruct_in_the_source_study(reversed_axial, tmp_path):
    folder, loaded = reversed_axial
    path = tmp_path / "rtstruct.dcm"
    written(folder, loaded, labels_for(loaded.volume.array.shape), path)
    # Orthanc only needs to know a modality; nothing is sent over DICOM here.
    nobody = SimpleNamespace(config={"node": {"ae_title": "NOBODY"}}, port=free_port())
    pacs = OrthancProcess(tmp_path / "orthanc", nobody)
    try:
        ct = upload_series(pacs, sorted(folder.glob("*.dcm")))
        stored = pacs.upload(path)
        assert stored["Status"] == "Success", stored
        assert stored["ParentStudy"] == ct.study_id
        tags = pacs.get(f"/instances/{stored['ID']}/simplified-tags")
        assert (tags["Modality"], tags["SOPInstanceUID"]) == ("RTSTRUCT", IDENTITY.sop_instance_uid)
    finally:
        pacs.stop()
