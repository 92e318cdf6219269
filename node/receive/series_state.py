"""The states of a series and the one table of allowed transitions.

Every state change goes through :func:`next_state`, so the life of a series
can be read here and nowhere else. What happens to a dispatched series is
the life of its jobs (node/queue/jobs.py).
"""

from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    # Routed: its jobs (none when no route matched) are in the queue.
    DISPATCHED = "dispatched"
    # The retention policy decided to remove its files (node/retention/removal.py);
    # it is refused new instances until they are gone.
    REMOVING = "removing"
    # Its files are gone; the index keeps the series and a record of the removal.
    REMOVED = "removed"


class SeriesEvent(StrEnum):
    INSTANCE_RECEIVED = "instance-received"
    # One of the completion signals said it is whole (node/assemble/completion.py).
    COMPLETED = "completed"
    ROUTED = "routed"
    RETENTION_DUE = "retention-due"
    FILES_REMOVED = "files-removed"


class CompletionSignal(StrEnum):
    """What said that a series is complete."""

    # No instance for node.series_stable_seconds.
    STABLE = "stable"
    # The association that brought it was released, and none other was sending it.
    ASSOCIATION = "association"
    # A completed MPPS step listed its instances, and all of them are stored.
    MPPS = "mpps"
    # An MPPS step was discontinued: what arrived is the series.
    MPPS_DISCONTINUED = "mpps-discontinued"
    # A completed MPPS step listed instances that did not come in node.mpps_wait_seconds.
    MPPS_INCOMPLETE = "mpps-incomplete"


class InvalidTransition(Exception):
    """An event that the series' current state does not allow."""


# (current state, event) -> next state; None is a series not seen before.
TRANSITIONS: dict[tuple[SeriesState | None, SeriesEvent], SeriesState] = {
    (None, SeriesEvent.INSTANCE_RECEIVED): SeriesState.RECEIVING,
    (SeriesState.RECEIVING, SeriesEvent.INSTANCE_RECEIVED): SeriesState.RECEIVING,
    # A late instance reopens a completed series.
    (SeriesState.COMPLETE, SeriesEvent.INSTANCE_RECEIVED): SeriesState.RECEIVING,
    (SeriesState.DISPATCHED, SeriesEvent.INSTANCE_RECEIVED): SeriesState.RECEIVING,
    (SeriesState.RECEIVING, SeriesEvent.COMPLETED): SeriesState.COMPLETE,
    (SeriesState.COMPLETE, SeriesEvent.ROUTED): SeriesState.DISPATCHED,
    (SeriesState.DISPATCHED, SeriesEvent.RETENTION_DUE): SeriesState.REMOVING,
    (SeriesState.REMOVING, SeriesEvent.FILES_REMOVED): SeriesState.REMOVED,
    # Sent again after its removal: it starts a new life with what arrives.
    # (A series being removed has no such entry: its instances are refused
    # until the removal is over.)
    (SeriesState.REMOVED, SeriesEvent.INSTANCE_RECEIVED): SeriesState.RECEIVING,
}


def next_state(current: SeriesState | None, event: SeriesEvent) -> SeriesState:
    """Return the state that ``event`` leads to from ``current``."""
    try:
        return TRANSITIONS[(current, event)]
    except KeyError:
        raise InvalidTransition(f"{event} is not allowed in state {current}") from None
