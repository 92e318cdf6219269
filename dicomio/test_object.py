"""The object the console sends to a destination to show that storing works.

A Secondary Capture Image (PS3.3 A.8.1) that no one can take for a patient's:
patient ``SEGNODE^TEST`` (ID ``SEGNODE-TEST``), series "segnode connectivity
test", and a 64x64 picture of stripes and a frame, so that a PACS
administrator who finds it knows what it is and deletes it. Every send is a
new study, series and instance (fresh UIDs): a PACS that refuses a second
copy of an instance would otherwise fail every test after the first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomio.derived import date_object
from dicomio.seg import MANUFACTURER, MODEL_NAME

__all__ = ["TEST_PATIENT_ID", "TEST_PATIENT_NAME", "TEST_SERIES_DESCRIPTION", "connectivity_test_object"]

TEST_PATIENT_NAME: Final = "SEGNODE^TEST"
TEST_PATIENT_ID: Final = "SEGNODE-TEST"
TEST_SERIES_DESCRIPTION: Final = "segnode connectivity test"
_SIZE: Final = 64


def _pattern() -> np.ndarray:
    """Diagonal stripes inside a white frame: recognisable at a glance, and
    not a blank image that a viewer might show as missing."""
    rows, columns = np.indices((_SIZE, _SIZE))
    picture = np.where((rows + columns) // 8 % 2 == 0, 64, 192).astype(np.uint8)
    picture[[0, -1], :] = picture[:, [0, -1]] = 255
    return picture


def connectivity_test_object(station_ae: str, created: datetime) -> Dataset:
    """A fresh test Secondary Capture image, made by the node whose AE title is `station_ae` at `created`.

    `created` (local time) dates the study, series, instance and capture;
    the station name says which node sent it.
    """
    image = hd.sc.SCImage(
        pixel_array=_pattern(),
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=8,
        # highdicom asks for an orientation, which a picture of no patient lacks:
        # emptied below (Patient Orientation is Type 2C, PS3.3 C.7.6.1).
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "F"),
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        patient_id=TEST_PATIENT_ID,
        patient_name=TEST_PATIENT_NAME,
        study_id="SEGNODE",
        study_date=created.date(),
        study_time=created.time(),
        series_description=TEST_SERIES_DESCRIPTION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    image.PatientOrientation = ""
    image.StudyDescription = TEST_SERIES_DESCRIPTION
    image.StationName = station_ae
    # Made by software, not captured from a device (PS3.3 C.8.6.1).
    image.ConversionType = "WSD"
    image.BurnedInAnnotation = "NO"
    # Laterality is Type 2C (PS3.3 C.7.3.1): present and empty, "unknown".
    image.Laterality = ""
    date_object(image, created)
    image.DateOfSecondaryCapture = created.strftime("%Y%m%d")
    image.TimeOfSecondaryCapture = created.strftime("%H%M%S.%f")
    return image
