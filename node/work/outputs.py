"""Which result objects a job makes, and which of them each destination gets.

Destinations choose what they can show (``destinations[].outputs`` and
``seg_format``): a viewer takes SEG and SR, a PACS that shows only images
and documents the PDF report and overlay images, a planning system the
RTSTRUCT. A job makes the union of what its destinations take, so a
destination's choice costs nothing where nobody takes an object.

The BINARY SEG and its SR are always made: they are the job's record (what
``segnode run-series`` and a later comparison with a reference read). A
LABELMAP SEG gets an SR of its own, which references it, so a destination
that takes LABELMAP only never gets an SR whose segments it cannot find;
a structure that only overlapping segments can hold (the body outline) is
in the BINARY SEG and its SR alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from config import Destination


class SegFormat(Enum):
    """The two Segmentation IODs: one frame per segment and slice, or per slice."""

    BINARY = "binary"
    LABELMAP = "labelmap"


@dataclass(frozen=True)
class OutputPlan:
    """What one run makes besides the BINARY SEG, its SR, the CSV and the label map."""

    labelmap: bool = False
    pdf: bool = False
    overlay: bool = False
    rtstruct: bool = False

    @classmethod
    def for_destinations(cls, destinations: Iterable[Destination]) -> OutputPlan:
        """The union of what `destinations` take."""
        chosen = list(destinations)
        return cls(
            labelmap=any(_takes_labelmap(d) for d in chosen),
            pdf=any("pdf" in d.outputs for d in chosen),
            overlay=any("overlay" in d.outputs for d in chosen),
            rtstruct=any("rtstruct" in d.outputs for d in chosen),
        )


def _takes_labelmap(destination: Destination) -> bool:
    """Whether `destination` gets the LABELMAP SEG or the SR that references it."""
    if destination.seg_format == "labelmap":
        return bool({"seg", "sr"} & set(destination.outputs))
    return destination.seg_format == "both" and "seg" in destination.outputs


#: What a destination gets by default: SEG and SR, nothing more.
SEG_AND_SR = OutputPlan()

#: Every output a run can make: what ``segnode run-series`` writes.
EVERYTHING = OutputPlan(labelmap=True, pdf=True, overlay=True, rtstruct=True)


@dataclass(frozen=True)
class OutputObject:
    """One DICOM object a run wrote: what kind (an entry of
    ``destinations[].outputs``), for SEG and SR which SEG format, where,
    and the SOP Instance UID it is sent under."""

    kind: str
    path: Path
    sop_instance_uid: str
    seg_format: SegFormat | None = None

    def wanted_by(self, destination: Destination) -> bool:
        """Whether `destination` takes this object.

        An SR goes with the SEG it references: with ``seg_format: both``
        the destination gets the BINARY SEG's SR, which has every segment.
        """
        if self.kind not in destination.outputs:
            return False
        if self.seg_format is None:
            return True
        if self.kind == "sr":
            wanted = SegFormat.LABELMAP if destination.seg_format == "labelmap" else SegFormat.BINARY
            return self.seg_format is wanted
        return destination.seg_format in (self.seg_format.value, "both")
