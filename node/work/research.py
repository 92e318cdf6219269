"""A job's de-identified copy for research: its source series, SEG and SR.

All of them go through one :class:`Deidentifier`, whose keyed UID mapping
keeps them linked (the SEG references the de-identified CT, the SR the SEG)
and is the same in every process, so a retry writes the same files under the
same names and queues nothing new. Either the whole set is exported or none
of it: a series that must not leave (BurnedInAnnotation YES) leaves nothing
behind, not even the slices de-identified before the refusing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pydicom

from config import RouteResearch
from dicomio.deidentify import DeidentificationProfile, Deidentifier, NotExportable
from dicomio.derived import write_dicom_atomically

#: The folder of a job's results that holds its research copies.
RESEARCH_FOLDER: Final = "research"


@dataclass(frozen=True)
class ResearchObject:
    """A de-identified instance written for the research destination."""

    path: Path
    sop_instance_uid: str


def research_profile(settings: RouteResearch) -> DeidentificationProfile:
    return DeidentificationProfile(dates=settings.dates, clean_descriptors=settings.clean_descriptors)


def export_for_research(sources: Sequence[Path], deidentifier: Deidentifier,
                        results: Path) -> tuple[ResearchObject, ...]:
    """De-identify `sources` into ``results/research/``, one file per instance
    named by its new SOP Instance UID.

    Raises :class:`NotExportable` having removed what it wrote: instances are
    read one at a time (a CT series may not fit in memory twice), so the
    refusing one may come after others were written. Nothing of an earlier
    attempt can have been queued then, as the same sources are refused the
    same way; other failures leave the files for the retry to rewrite.
    """
    folder = results / RESEARCH_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written: list[ResearchObject] = []
    try:
        for source in sources:
            copy = deidentifier.deidentify(pydicom.dcmread(source))
            path = folder / f"{copy.SOPInstanceUID}.dcm"
            write_dicom_atomically(copy, path)
            written.append(ResearchObject(path, str(copy.SOPInstanceUID)))
    except NotExportable:
        for item in written:
            item.path.unlink(missing_ok=True)
        raise
    return tuple(written)
