"""The PDF report as a DICOM Encapsulated PDF (PS3.3 A.45.1), its own series.

A PACS files it with the study, beside the SEG and SR, and any viewer opens
it; highdicom has no class for this IOD, so pydicom builds it module by
module. Patient and study are copied from the segmented CT; the document
shows patient data, so Burned In Annotation is YES.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomio.derived import copy_patient_and_study
from dicomio.seg import MANUFACTURER, MODEL_NAME

__all__ = ["ENCAPSULATED_PDF_STORAGE", "encapsulate_pdf"]

#: Encapsulated PDF Storage (PS3.4 B.5).
ENCAPSULATED_PDF_STORAGE: Final = UID("1.2.840.10008.5.1.4.1.1.104.1")


def encapsulate_pdf(
    pdf: bytes,
    source_images: Sequence[Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    series_description: str,
    document_title: str,
    created: datetime,
    device_serial_number: str,
) -> Dataset:
    """An Encapsulated PDF instance holding `pdf`, ready to save (with file meta).

    Parameters
    ----------
    pdf : bytes
        The document (``%PDF-``...).
    source_images : sequence of pydicom.dataset.Dataset
        Headers of the instances the document was made from (the segmented
        CT): patient and study are copied from the first, and every one is
        listed in the Source Instance Sequence.
    series_instance_uid, sop_instance_uid : str
        Of the new series and instance (a retry passes the same ones).
    series_number : int
    series_description : str
        At most 64 characters (LO).
    document_title : str
        Document Title (0042,0010), what a PACS lists the document as.
    created : datetime
        Content and instance creation date and time.
    device_serial_number : str
        This segnode installation.

    Raises
    ------
    ValueError
        If `pdf` is not a PDF document or there is no source image.
    """
    if not source_images:
        raise ValueError(f"Encapsulated PDF {sop_instance_uid}: no source image to copy the patient from")
    first = source_images[0]
    if not pdf.startswith(b"%PDF-"):
        raise ValueError(f"Encapsulated PDF for series {first.SeriesInstanceUID}: the document is not a PDF")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: any copied name can be written
    # SOP Common (C.12.1)
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = _date(created), _time(created)
    # Patient, General Study, Patient Study
    copy_patient_and_study(ds, first)
    # Encapsulated Document Series (C.24.1)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    # General Equipment (C.7.5.1)
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = device_serial_number
    # SC Equipment (C.8.6.1): made on a workstation
    ds.ConversionType = "WSD"
    # Encapsulated Document (C.24.2)
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = _date(created), _time(created)
    ds.AcquisitionDateTime = f"{_date(created)}{_time(created)}"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = document_title
    title = Dataset()
    # CID 7000 "Diagnostic Imaging Report Document Title" (PS3.16): LOINC 18748-4.
    title.CodeValue = codes.LN.DiagnosticImagingReport.value
    title.CodingSchemeDesignator = codes.LN.DiagnosticImagingReport.scheme_designator
    title.CodeMeaning = codes.LN.DiagnosticImagingReport.meaning
    ds.ConceptNameCodeSequence = [title]
    ds.SourceInstanceSequence = [_reference(image) for image in source_images]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # C.24.2.1: an odd-length document is padded with one trailing NULL,
    # and Encapsulated Document Length gives its length without the pad.
    ds.EncapsulatedDocument = pdf + b"\x00" * (len(pdf) % 2)
    ds.EncapsulatedDocumentLength = len(pdf)

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _reference(image: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return item


def _date(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _time(moment: datetime) -> str:
    return moment.strftime("%H%M%S.%f")
