"""The retention rule for MPPS steps: when a step, with its promises, may go.

An ended step (COMPLETED or DISCONTINUED) is only of use through its
promises, the instances it listed per series, which decide when those
series complete (node/assemble/completion.py); its file is otherwise a
record nobody reads. It goes ``instances_hours`` after it ended, the period
a study's files are kept once settled. A step still IN PROGRESS goes
``failed_hours`` after its last update: its scanner never ended it, and the
longer period leaves a long examination, or a scanner that ends its steps
late, the time to do so.

A step is kept while a series it promised is receiving: the promise decides
when that series completes (every listed instance, or the MPPS wait after
the last one), and removing it would hand the series to the stable period
half-way. That lasts only while instances of the series still come, since
the promise completes the series within ``node.mpps_wait_seconds`` of the
last one, and is spent then (node/receive/index.py).

Other promises do not keep it: one for a series that never arrived, or for
a series completed without all its listed instances (kept in case they
arrive and reopen it). Past the period the series' own files are due too,
and a series that comes or reopens later completes by the stable period.
The promises go with the step, so that neither rows nor files outgrow
retention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config.schema import RetentionSettings
from node.receive.mpps import StepStatus

_HOUR = 3600.0


@dataclass(frozen=True)
class StepActivity:
    """A stored step as the index holds it.

    ``updated`` is its last N-CREATE or N-SET (its end, for an ended step);
    ``awaited``: a series it holds the promise of is receiving.
    """

    sop_instance_uid: str
    status: StepStatus
    path: Path
    updated: float
    awaited: bool


def step_due(step: StepActivity, settings: RetentionSettings, now: float) -> bool:
    """Whether ``step`` may go at ``now``."""
    if step.awaited:
        return False
    hours = settings.failed_hours if step.status is StepStatus.IN_PROGRESS else settings.instances_hours
    return step.updated + hours * _HOUR <= now
