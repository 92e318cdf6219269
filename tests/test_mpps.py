"""MPPS end to end: a scanner's N-CREATE, N-SET and images against ``segnode serve``.

The stable period is a minute here, so a series that completes within
seconds was completed by its MPPS step and by nothing else. The cases that
need no restart share one node (each has its own study and series), so
they count metrics as differences.
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, ModalityPerformedProcedureStep

from tests.conftest import NodeProcess
from tests.synthetic import write_ct_series
from tests.test_mpps_protocol import scanner_create, scanner_set

# The node's end-to-end loops: the slow stage of .ci/run (README, Tests).
pytestmark = pytest.mark.slow

STABLE_SECONDS = 60
MPPS_WAIT_SECONDS = 4
# How long a completion that MPPS decides may take to show in `segnode status` (a CLI run per look).
PROMPTLY = 15


class Scanner:
    """A modality as the node sees it: MPPS N-CREATE and N-SET, then C-STORE of its images."""

    def __init__(self, node):
        self.node = node
        self.ae = AE(ae_title="TESTSCU")
        self.ae.add_requested_context(ModalityPerformedProcedureStep,
                                      [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])

    def _associate(self):
        assoc = self.ae.associate("127.0.0.1", self.node.port, ae_title="SEGNODE")
        assert assoc.is_established, f"association refused:\n{self.node.log()[-3000:]}"
        return assoc

    def n_create(self, step_uid: str, attributes: Dataset) -> Dataset:
        return self._request(lambda assoc: assoc.send_n_create(attributes, ModalityPerformedProcedureStep,
                                                               step_uid), "N-CREATE")

    def n_set(self, step_uid: str, modification: Dataset) -> Dataset:
        return self._request(lambda assoc: assoc.send_n_set(modification, ModalityPerformedProcedureStep,
                                                            step_uid), "N-SET")

    def _request(self, send, what: str) -> Dataset:
        """One request on an association of its own, as scanners send MPPS; its status."""
        assoc = self._associate()
        try:
            status, _ = send(assoc)
        finally:
            assoc.release()
        assert "Status" in status, f"no {what} response"
        return status

    def store(self, files: list[Path]) -> None:
        assoc = self._associate()
        try:
            for path in files:
                assert assoc.send_c_store(path).Status == 0x0000
        finally:
            assoc.release()


# write_ct_series derives its UIDs from its arguments: a seed each keeps series apart.
_seeds = itertools.count(1)


class Acquisition:
    """A small CT series as a scanner makes it, and what its MPPS step says about it."""

    def __init__(self, directory: Path, slices: int = 4, *, study_uid: str | None = None):
        self.files = write_ct_series(directory, slices=slices, rows=32, columns=32, seed=next(_seeds),
                                     study_instance_uid=study_uid)
        first = pydicom.dcmread(self.files[0], stop_before_pixels=True)
        self.study_uid = str(first.StudyInstanceUID)
        self.series_uid = str(first.SeriesInstanceUID)
        self.sop_uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                         for path in self.files]


@pytest.fixture(scope="module")
def slow_node(tmp_path_factory):
    """A node whose stable period is far longer than any MPPS case takes."""
    node = NodeProcess(tmp_path_factory.mktemp("mpps"), series_stable_seconds=STABLE_SECONDS,
                       mpps_wait_seconds=MPPS_WAIT_SECONDS).start()
    yield node
    node.kill()


def completions(node, signal: str) -> float:
    return node.metrics().get(f'segnode_series_completed_total{{signal="{signal}"}}', 0)


def row(node, series_uid: str) -> dict:
    [found] = [series for series in node.status() if series["series_instance_uid"] == series_uid]
    return found


def completed(node, series_uid: str, instances: int, timeout: float = PROMPTLY) -> dict:
    """The series' status row once complete (dispatched: no routes here)."""
    return node.wait_for_series(series_uid, "dispatched", instances, timeout=timeout)


def begin(scanner: Scanner, study_uid: str) -> str:
    step_uid = generate_uid()
    status = scanner.n_create(step_uid, scanner_create(study_uid))
    assert status.Status == 0x0000, f"{status}\n{scanner.node.log()[-3000:]}"
    return step_uid


def stored_steps(node) -> dict[str, list[Dataset]]:
    """The step files under <storage_dir>/mpps, by step UID."""
    steps: dict[str, list[Dataset]] = {}
    for path in sorted((node.storage_dir / "mpps").rglob("*")):
        if path.is_file():
            ds = pydicom.dcmread(path, force=True)
            steps.setdefault(str(ds.SOPInstanceUID), []).append(ds)
    return steps


def test_the_node_answers_mpps_as_the_standard_says(slow_node, tmp_path):
    scanner = Scanner(slow_node)
    study_uid = generate_uid()
    step_uid = begin(scanner, study_uid)
    assert scanner.n_create(step_uid, scanner_create(study_uid)).Status == 0x0111  # duplicate SOP instance
    unknown = scanner.n_set(generate_uid(), scanner_set({generate_uid(): []}))
    assert unknown.Status == 0x0112  # no such SOP instance

    not_in_progress = scanner_create(study_uid)
    not_in_progress.PerformedProcedureStepStatus = "COMPLETED"
    refused = scanner.n_create(generate_uid(), not_in_progress)
    assert refused.Status == 0x0106
    assert "IN PROGRESS" in refused.ErrorComment

    assert scanner.n_set(step_uid, scanner_set({generate_uid(): []})).Status == 0x0000
    again = scanner.n_set(step_uid, scanner_set({generate_uid(): []}))
    assert again.Status == 0x0110
    assert again.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert again.ErrorID == 0xA710  # PS3.4 table F.7.2-2


def test_steps_are_stored_as_last_set(slow_node):
    scanner = Scanner(slow_node)
    study_uid = generate_uid()
    ended, open_ = begin(scanner, study_uid), begin(scanner, study_uid)
    assert scanner.n_set(ended, scanner_set({generate_uid(): []})).Status == 0x0000
    steps = stored_steps(slow_node)
    assert len(steps[ended]) == len(steps[open_]) == 1, "one file per step"
    assert steps[ended][0].PerformedProcedureStepStatus == "COMPLETED"
    assert steps[ended][0].PerformedProcedureStepEndTime == "102230"
    assert steps[ended][0].PerformedStationAETitle == "SCANNER"
    assert steps[open_][0].PerformedProcedureStepStatus == "IN PROGRESS"


def test_completed_before_the_instances_completes_the_series_with_its_last_instance(slow_node, tmp_path):
    scanner = Scanner(slow_node)
    series = Acquisition(tmp_path / "ct")
    by_mpps = completions(slow_node, "mpps")
    step_uid = begin(scanner, series.study_uid)
    assert scanner.n_set(step_uid, scanner_set({series.series_uid: series.sop_uids})).Status == 0x0000
    scanner.store(series.files[:-1])
    assert row(slow_node, series.series_uid)["state"] == "receiving"
    scanner.store(series.files[-1:])
    done = completed(slow_node, series.series_uid, len(series.files))
    assert done["completed_by"] == "mpps"
    assert done["completion_note"] is None
    assert completions(slow_node, "mpps") == by_mpps + 1
    assert completions(slow_node, "stable") == 0


def test_completed_during_the_instances_waits_for_the_rest(slow_node, tmp_path):
    scanner = Scanner(slow_node)
    series = Acquisition(tmp_path / "ct", slices=5)
    step_uid = begin(scanner, series.study_uid)
    scanner.store(series.files[:2])
    assert scanner.n_set(step_uid, scanner_set({series.series_uid: series.sop_uids})).Status == 0x0000
    time.sleep(1)
    waiting = row(slow_node, series.series_uid)
    assert (waiting["state"], waiting["instances"], waiting["completed_by"]) == ("receiving", 2, None)
    scanner.store(series.files[2:])
    assert completed(slow_node, series.series_uid, 5)["completed_by"] == "mpps"


def test_completed_after_the_instances_completes_the_series_at_once(slow_node, tmp_path):
    scanner = Scanner(slow_node)
    series = Acquisition(tmp_path / "ct")
    step_uid = begin(scanner, series.study_uid)
    scanner.store(series.files)
    assert row(slow_node, series.series_uid)["state"] == "receiving"
    assert scanner.n_set(step_uid, scanner_set({series.series_uid: series.sop_uids})).Status == 0x0000
    assert completed(slow_node, series.series_uid, len(series.files))["completed_by"] == "mpps"


def test_a_listed_instance_that_never_comes_completes_the_series_with_a_warning(slow_node, tmp_path):
    node, wait = slow_node, MPPS_WAIT_SECONDS
    scanner = Scanner(node)
    series = Acquisition(tmp_path / "ct")
    step_uid = begin(scanner, series.study_uid)
    never_sent = generate_uid()
    listed = [*series.sop_uids, never_sent]
    assert scanner.n_set(step_uid, scanner_set({series.series_uid: listed})).Status == 0x0000
    scanner.store(series.files)
    last_event = time.monotonic()
    assert row(node, series.series_uid)["state"] == "receiving"
    done = completed(node, series.series_uid, len(series.files), timeout=wait + PROMPTLY)
    assert time.monotonic() - last_event >= wait
    assert done["completed_by"] == "mpps-incomplete"
    # The note names the step, how many it listed and how many never came.
    note = done["completion_note"]
    assert step_uid in note
    counts = re.findall(r"\b\d+\b", note.replace(step_uid, ""))
    assert str(len(listed)) in counts and "1" in counts, note
    assert completions(node, "mpps-incomplete") == 1


def test_discontinued_completes_what_arrived_at_once_and_says_so(slow_node, tmp_path):
    scanner = Scanner(slow_node)
    series = Acquisition(tmp_path / "ct", slices=5)
    step_uid = begin(scanner, series.study_uid)
    scanner.store(series.files[:3])
    stopped = scanner_set({series.series_uid: series.sop_uids}, status="DISCONTINUED")
    assert scanner.n_set(step_uid, stopped).Status == 0x0000
    done = completed(slow_node, series.series_uid, 3)
    assert done["completed_by"] == "mpps-discontinued"
    assert "discontinued" in done["completion_note"]
    assert step_uid in done["completion_note"]
    assert completions(slow_node, "mpps-discontinued") == 1


def test_steps_survive_a_kill_and_complete_their_series_after_the_restart(node_factory, tmp_path):
    node = node_factory(series_stable_seconds=STABLE_SECONDS).start()
    scanner = Scanner(node)
    series = Acquisition(tmp_path / "ct")
    step_uid = begin(scanner, series.study_uid)
    open_ = begin(scanner, series.study_uid)
    assert scanner.n_set(step_uid, scanner_set({series.series_uid: series.sop_uids})).Status == 0x0000
    scanner.store(series.files[:-1])
    node.kill()
    node.start()
    assert row(node, series.series_uid)["state"] == "receiving"
    assert scanner.n_create(step_uid, scanner_create(series.study_uid)).Status == 0x0111
    assert scanner.n_set(step_uid, scanner_set({series.series_uid: []})).Status == 0x0110
    scanner.store(series.files[-1:])
    assert completed(node, series.series_uid, len(series.files))["completed_by"] == "mpps"
    assert scanner.n_set(open_, scanner_set({generate_uid(): []})).Status == 0x0000
    assert sorted(stored_steps(node)) == sorted([step_uid, open_])


def test_a_series_the_step_does_not_list_keeps_the_stable_period(node_factory, tmp_path):
    stable = 8
    node = node_factory(series_stable_seconds=stable).start()
    scanner = Scanner(node)
    listed = Acquisition(tmp_path / "listed", slices=3)
    other = Acquisition(tmp_path / "other", slices=3, study_uid=listed.study_uid)
    step_uid = begin(scanner, listed.study_uid)
    assert scanner.n_set(step_uid, scanner_set({listed.series_uid: listed.sop_uids})).Status == 0x0000
    scanner.store(listed.files + other.files)
    sent = time.monotonic()
    assert completed(node, listed.series_uid, 3, timeout=stable)["completed_by"] == "mpps"
    assert row(node, other.series_uid)["state"] == "receiving"
    assert completed(node, other.series_uid, 3)["completed_by"] == "stable"
    assert time.monotonic() - sent >= stable


def aborted(assoc, timeout: float = 5) -> None:
    """The requestor heard the node's A-ABORT (its reader thread notes it a moment after the call returns)."""
    deadline = time.monotonic() + timeout
    while not assoc.is_aborted:
        assert time.monotonic() < deadline, "the association was not aborted"
        time.sleep(0.05)


def test_a_request_for_another_service_than_its_sop_class_is_aborted_and_nothing_kept(node, tmp_path):
    """pynetdicom picks a handler by the command's SOP class: an N-SET naming CT
    storage, or a C-STORE of an MPPS step, must not reach the other service's
    handler (the fuzz stage found both: a traceback, a spooled file left)."""
    scanner = Scanner(node)
    assoc = scanner._associate()
    status, _ = assoc.send_n_set(scanner_set({}), CTImageStorage, generate_uid())
    assert "Status" not in status
    aborted(assoc)
    step = scanner_create(generate_uid())
    step.SOPClassUID, step.SOPInstanceUID = ModalityPerformedProcedureStep, generate_uid()
    step.file_meta = FileMetaDataset()
    step.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assoc = scanner._associate()
    assert "Status" not in assoc.send_c_store(step)
    aborted(assoc)
    log = node.log()
    assert f"command 0x0120 for SOP class '{CTImageStorage}'" in log
    assert f"command 0x0001 for SOP class '{ModalityPerformedProcedureStep}'" in log
    assert "Traceback" not in log and node.partial_files() == [] and node.stored_files() == []
    Scanner(node).store(Acquisition(tmp_path / "ct", slices=2).files)  # everyone else is still served
    assert len(node.stored_files()) == 2
