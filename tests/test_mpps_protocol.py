"""MPPS N-CREATE and N-SET checked as the protocol says (node/receive/mpps.py).

Datasets in, a Step or a refusal out: no node, no network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode, encode

from node.receive import mpps
from node.receive.mpps import PerformedSeries, StepRefused, StepStatus, created, updated

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"


def scanner_create(study_uid: str, *, accession: str = "ACC0001") -> Dataset:
    """The attribute list of a scanner's N-CREATE, as PS3.4 table F.7.2-1 has it."""
    scheduled = Dataset()
    scheduled.StudyInstanceUID = study_uid
    scheduled.AccessionNumber = accession
    scheduled.ReferencedStudySequence = []
    scheduled.RequestedProcedureID = "RP1"
    scheduled.RequestedProcedureDescription = "CT abdomen"
    scheduled.ScheduledProcedureStepID = "SPS1"
    scheduled.ScheduledProcedureStepDescription = "CT abdomen with contrast"
    scheduled.ScheduledProtocolCodeSequence = []
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = [scheduled]
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SEGNODE-SYN-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "SCANNER"
    ds.PerformedStationName = "CT1"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20240115"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT abdomen"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def performed_series(series_uid: str, sop_uids: Sequence[str], sop_class: str = CT_IMAGE_STORAGE) -> Dataset:
    """One Performed Series Sequence item listing ``sop_uids`` as images."""
    item = Dataset()
    item.PerformingPhysicianName = ""
    item.ProtocolName = "Abdomen"
    item.OperatorsName = ""
    item.SeriesInstanceUID = series_uid
    item.SeriesDescription = "Abdomen 1.0"
    item.RetrieveAETitle = ""
    references = []
    for sop_uid in sop_uids:
        reference = Dataset()
        reference.ReferencedSOPClassUID = sop_class
        reference.ReferencedSOPInstanceUID = sop_uid
        references.append(reference)
    item.ReferencedImageSequence = references
    item.ReferencedNonImageCompositeSOPInstanceSequence = []
    return item


def scanner_set(series: Mapping[str, Sequence[str]], status: str = "COMPLETED") -> Dataset:
    """The modification list of a scanner's final N-SET: end date and time and what it performed."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240115"
    ds.PerformedProcedureStepEndTime = "102230"
    ds.PerformedSeriesSequence = [performed_series(uid, sops) for uid, sops in series.items()]
    return ds


def over_the_wire(ds: Dataset, implicit: bool = True) -> Dataset:
    """``ds`` encoded and decoded as pynetdicom does between a scanner and the SCP."""
    return decode(BytesIO(encode(ds, implicit, True)), implicit, True)


def refused(call: Callable[[], object], status: int) -> StepRefused:
    with pytest.raises(StepRefused) as caught:
        call()
    assert caught.value.status == status, caught.value
    assert 0 < len(caught.value.comment) <= 64  # Error Comment is LO
    return caught.value


@pytest.fixture
def step_uid() -> str:
    return generate_uid()


@pytest.fixture
def study_uid() -> str:
    return generate_uid()


@pytest.fixture
def in_progress(step_uid, study_uid) -> Dataset:
    """A created step as read back from its file (explicit VR; the requests come in implicit VR)."""
    stored, _ = created(step_uid, over_the_wire(scanner_create(study_uid)))
    return over_the_wire(stored, implicit=False)


# N-CREATE -------------------------------------------------------------------------------


def test_a_scanners_n_create_is_stored_with_its_identity(step_uid, study_uid):
    attributes = over_the_wire(scanner_create(study_uid))
    stored, step = created(step_uid, attributes)
    assert step == mpps.Step(step_uid, StepStatus.IN_PROGRESS, (study_uid,), ())
    assert stored.SOPClassUID == "1.2.840.10008.3.1.2.3.3"
    assert stored.SOPInstanceUID == step_uid
    assert stored.PerformedStationAETitle == "SCANNER"
    assert "SOPInstanceUID" not in attributes  # the request is left as it came


def test_the_studies_of_a_step_are_listed_once_each_in_order(step_uid):
    first, second = generate_uid(), generate_uid()
    attributes = scanner_create(first)
    for study, accession in ((second, "ACC0002"), (first, "ACC0003")):
        attributes.ScheduledStepAttributesSequence.append(scanner_create(study, accession=accession)
                                                          .ScheduledStepAttributesSequence[0])
    _, step = created(step_uid, over_the_wire(attributes))
    assert step.study_instance_uids == (first, second)


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED", "DONE"])
def test_a_step_is_created_only_in_progress(step_uid, study_uid, status):
    attributes = scanner_create(study_uid)
    attributes.PerformedProcedureStepStatus = status
    refusal = refused(lambda: created(step_uid, attributes), 0x0106)
    assert step_uid in str(refusal)


@pytest.mark.parametrize("missing", [None, ""])
def test_a_step_without_a_uid_is_refused(study_uid, missing):
    refusal = refused(lambda: created(missing, scanner_create(study_uid)), 0x0120)
    assert "Affected SOP Instance UID" in refusal.comment


@pytest.mark.parametrize("bad_uid", ["1.02.3", "1.2.840.x", "1.2..3", "1." + "2" * 64, "../../etc"])
def test_a_step_uid_that_is_no_uid_is_an_invalid_object_instance(study_uid, bad_uid):
    refused(lambda: created(bad_uid, scanner_create(study_uid)), 0x0117)


@pytest.mark.parametrize(
    ("change", "status", "named"),
    [
        (lambda ds: delattr(ds, "PerformedProcedureStepStatus"), 0x0120, "PerformedProcedureStepStatus"),
        (lambda ds: setattr(ds, "PerformedProcedureStepStatus", ""), 0x0121, "PerformedProcedureStepStatus"),
        (lambda ds: delattr(ds, "ScheduledStepAttributesSequence"), 0x0120,
         "ScheduledStepAttributesSequence"),
        (lambda ds: setattr(ds, "ScheduledStepAttributesSequence", []), 0x0121,
         "ScheduledStepAttributesSequence"),
        (lambda ds: delattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID"), 0x0120,
         "StudyInstanceUID"),
        (lambda ds: setattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID", ""), 0x0121,
         "StudyInstanceUID"),
        (lambda ds: setattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID", "1.2.3.04"), 0x0106,
         "StudyInstanceUID"),
        (lambda ds: setattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID", ["1.2.3", "1.2.4"]),
         0x0106, "StudyInstanceUID"),
    ],
)
def test_what_the_node_relies_on_at_n_create_is_required(step_uid, study_uid, change, status, named):
    attributes = scanner_create(study_uid)
    change(attributes)
    refusal = refused(lambda: created(step_uid, over_the_wire(attributes)), status)
    assert named in refusal.comment


def test_a_sequence_sent_as_bytes_is_refused_not_raised(step_uid, study_uid):
    attributes = scanner_create(study_uid)
    del attributes.ScheduledStepAttributesSequence
    attributes.add_new(0x00400270, "OB", b"\xfe\xff\x00\xe0")
    refused(lambda: created(step_uid, over_the_wire(attributes, implicit=False)), 0x0106)


@pytest.mark.parametrize("tag", [0x00000900, 0x00020010, 0x00041220])
def test_command_and_file_meta_elements_are_no_attributes(in_progress, step_uid, study_uid, tag):
    attributes = scanner_create(study_uid)
    attributes.add_new(tag, "UL", 1)
    refused(lambda: created(step_uid, over_the_wire(attributes)), 0x0105)
    modification = scanner_set({generate_uid(): []})
    modification.add_new(tag, "UL", 1)
    refused(lambda: updated(in_progress, over_the_wire(modification)), 0x0105)


# N-SET ----------------------------------------------------------------------------------


def test_completed_lists_each_series_and_its_exact_instances(in_progress, step_uid, study_uid):
    first, second = generate_uid(), generate_uid()
    images = [generate_uid() for _ in range(3)]
    stored, step = updated(in_progress, over_the_wire(scanner_set({first: images, second: []})))
    assert step.status is StepStatus.COMPLETED
    assert step.study_instance_uids == (study_uid,)
    assert step.series == (PerformedSeries(first, tuple(images)), PerformedSeries(second, ()))
    assert stored.PerformedProcedureStepEndTime == "102230"
    assert stored.PerformedStationAETitle == "SCANNER"  # what the N-SET did not send is kept
    assert stored.SOPInstanceUID == step_uid


def test_images_and_non_image_objects_of_a_series_are_one_set(in_progress):
    series_uid = generate_uid()
    image, raw, twice = generate_uid(), generate_uid(), generate_uid()
    modification = scanner_set({series_uid: [image, twice]})
    non_image = performed_series(series_uid, [raw, twice], RAW_DATA_STORAGE).ReferencedImageSequence
    modification.PerformedSeriesSequence[0].ReferencedNonImageCompositeSOPInstanceSequence = non_image
    # A scanner that lists the series in a second item adds to the same set.
    modification.PerformedSeriesSequence.append(performed_series(series_uid, [image]))
    _, step = updated(in_progress, over_the_wire(modification))
    assert step.series == (PerformedSeries(series_uid, (image, twice, raw)),)


def test_an_n_set_in_progress_updates_without_final_state(in_progress):
    modification = Dataset()
    modification.PerformedProcedureStepDescription = "CT abdomen, arterial phase"
    modification.PerformedSeriesSequence = [performed_series(generate_uid(), [generate_uid()])]
    stored, step = updated(in_progress, over_the_wire(modification))
    assert step.status is StepStatus.IN_PROGRESS
    assert len(step.series) == 1
    assert stored.PerformedProcedureStepDescription == "CT abdomen, arterial phase"


def test_an_n_set_leaves_the_stored_step_as_it_was(in_progress):
    merged, _ = updated(in_progress, over_the_wire(scanner_set({generate_uid(): [generate_uid()]})))
    assert merged.PerformedProcedureStepStatus == "COMPLETED"
    assert in_progress.PerformedProcedureStepStatus == "IN PROGRESS"
    assert in_progress.PerformedSeriesSequence == []


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
def test_a_step_that_ended_may_no_longer_be_updated(in_progress, final):
    ended, _ = updated(in_progress, scanner_set({generate_uid(): []}, final))
    refusal = refused(lambda: updated(ended, scanner_set({generate_uid(): []})), 0x0110)
    assert refusal.comment == "Performed Procedure Step Object may no longer be updated"
    assert refusal.error_id == 0xA710
    assert str(ended.SOPInstanceUID) in str(refusal)


def test_an_n_set_to_an_unknown_status_is_refused(in_progress):
    refused(lambda: updated(in_progress, scanner_set({generate_uid(): []}, "FINISHED")), 0x0106)


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
@pytest.mark.parametrize(
    ("change", "status", "named"),
    [
        (lambda ds: delattr(ds, "PerformedProcedureStepEndDate"), 0x0121, "PerformedProcedureStepEndDate"),
        (lambda ds: setattr(ds, "PerformedProcedureStepEndTime", ""), 0x0121,
         "PerformedProcedureStepEndTime"),
        (lambda ds: setattr(ds, "PerformedSeriesSequence", []), 0x0121, "PerformedSeriesSequence"),
    ],
)
def test_a_step_ends_only_with_its_final_state(in_progress, final, change, status, named):
    """The end date, time and series are empty in the stored N-CREATE: left out
    of the final N-SET, they are there without a value."""
    modification = scanner_set({generate_uid(): [generate_uid()]}, final)
    change(modification)
    refusal = refused(lambda: updated(in_progress, over_the_wire(modification)), status)
    assert named in refusal.comment


def test_a_step_created_without_the_final_attributes_ends_only_when_they_come(step_uid, study_uid):
    attributes = scanner_create(study_uid)
    del attributes.PerformedProcedureStepEndDate
    del attributes.PerformedSeriesSequence
    stored, _ = created(step_uid, attributes)
    modification = scanner_set({generate_uid(): []})
    del modification.PerformedProcedureStepEndDate
    refused(lambda: updated(stored, modification), 0x0120)
    del modification.PerformedSeriesSequence
    modification.PerformedProcedureStepEndDate = "20240115"
    refused(lambda: updated(stored, modification), 0x0120)


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (lambda item: delattr(item, "SeriesInstanceUID"), 0x0120),
        (lambda item: setattr(item, "SeriesInstanceUID", ""), 0x0121),
        (lambda item: setattr(item, "SeriesInstanceUID", "1.2.3.4/../.."), 0x0106),
        (lambda item: setattr(item.ReferencedImageSequence[1], "ReferencedSOPInstanceUID", "1.2.3.abc"),
         0x0106),
        (lambda item: delattr(item.ReferencedImageSequence[0], "ReferencedSOPInstanceUID"), 0x0120),
        (lambda item: setattr(item.ReferencedImageSequence[0], "ReferencedSOPClassUID", "CT"), 0x0106),
    ],
)
def test_uids_in_the_performed_series_must_be_uids(in_progress, change, status):
    modification = scanner_set({generate_uid(): [generate_uid(), generate_uid()]})
    change(modification.PerformedSeriesSequence[0])
    refused(lambda: updated(in_progress, over_the_wire(modification)), status)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("Modality", "MR"),
        ("PerformedProcedureStepStartTime", "111111"),
        ("PatientID", "SOMEONE-ELSE"),
        ("SOPInstanceUID", "1.2.3.4"),
    ],
)
def test_an_n_set_may_not_change_what_table_f_7_2_1_does_not_allow(in_progress, keyword, value):
    modification = scanner_set({generate_uid(): []})
    setattr(modification, keyword, value)
    refusal = refused(lambda: updated(in_progress, over_the_wire(modification)), 0x0106)
    assert keyword in refusal.comment


def test_an_n_set_may_not_move_the_step_to_another_study(in_progress):
    modification = scanner_set({generate_uid(): []})
    other_study = scanner_create(generate_uid())
    modification.ScheduledStepAttributesSequence = other_study.ScheduledStepAttributesSequence
    refused(lambda: updated(in_progress, over_the_wire(modification)), 0x0106)


def test_an_n_set_repeating_what_n_create_sent_is_accepted(in_progress, study_uid):
    modification = scanner_create(study_uid)
    modification.update(scanner_set({generate_uid(): [generate_uid()]}))
    _, step = updated(in_progress, over_the_wire(modification))
    assert step.status is StepStatus.COMPLETED


def test_the_number_of_series_is_bounded(in_progress, monkeypatch):
    monkeypatch.setattr(mpps, "MAX_SERIES", 3)
    _, step = updated(in_progress, scanner_set({generate_uid(): [] for _ in range(3)}))
    assert len(step.series) == 3
    four = scanner_set({generate_uid(): [] for _ in range(4)})
    refusal = refused(lambda: updated(in_progress, four), 0x0213)
    assert "more than 3 performed series" == refusal.comment


def test_the_number_of_referenced_instances_is_bounded_across_series(in_progress, monkeypatch):
    monkeypatch.setattr(mpps, "MAX_INSTANCES", 5)
    three = {generate_uid(): [generate_uid() for _ in range(3)] for _ in range(2)}
    refusal = refused(lambda: updated(in_progress, scanner_set(three)), 0x0213)
    assert "referenced instances" in refusal.comment
    del three[next(iter(three))]
    three[generate_uid()] = [generate_uid(), generate_uid()]
    _, step = updated(in_progress, scanner_set(three))
    assert sum(len(series.sop_instance_uids) for series in step.series) == 5


def test_the_bounds_fit_the_largest_real_steps():
    assert mpps.MAX_INSTANCES >= 20 * 320  # a 20-phase perfusion CT of 320 slices
    assert mpps.MAX_SERIES >= 100


def test_an_n_set_in_another_character_set_keeps_both_readable(step_uid, study_uid):
    attributes = scanner_create(study_uid)
    attributes.SpecificCharacterSet = "ISO_IR 100"
    attributes.PatientName = "Müller^Jürgen"
    stored, _ = created(step_uid, over_the_wire(attributes))
    modification = scanner_set({generate_uid(): []})
    modification.SpecificCharacterSet = "ISO_IR 192"
    modification.PerformedProcedureStepDescription = "Thorax – 造影"
    merged, _ = updated(stored, over_the_wire(modification))
    again = over_the_wire(merged)
    assert again.SpecificCharacterSet == "ISO_IR 192"
    assert again.PatientName == "Müller^Jürgen"
    assert again.PerformedProcedureStepDescription == "Thorax – 造影"
