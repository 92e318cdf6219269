"""Which signal, if any, completes a receiving series now.

The signals, strongest first:

- an MPPS step that ended (COMPLETED or DISCONTINUED) and listed the
  series: its list of instances is exact, so it alone decides, and neither
  a quiet period nor an association's end can cut the series short;
- the normal release of the association that brought it, for peers with
  ``completion: association``, once the grace period has passed with no
  other open association sending it;
- the stable period, for every series, as the fallback (an aborted
  association, a peer that gives no signal, a node restarted meanwhile).

A series an open association is still sending (from a peer whose
associations end its series) is not cut by the stable period either: the
association's own timeouts bound how long that lasts.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.receive.index import Completion, Promise, SeriesProgress
from node.receive.series_state import CompletionSignal


@dataclass(frozen=True)
class Timing:
    """The timers of the configuration in force (node.series_stable_seconds, node.mpps_wait_seconds)."""

    stable_seconds: float
    mpps_wait_seconds: float


def completion(progress: SeriesProgress, now: float, timing: Timing, held: bool) -> Completion | None:
    """The signal that completes `progress` at `now`, or None to wait.

    `held`: an open association that ends its series has sent instances of it.
    """
    promise = progress.promise
    if promise is not None:
        return _by_promise(promise, progress, now, timing)
    if held:
        return None
    if progress.complete_at is not None and progress.complete_at <= now:
        return Completion(CompletionSignal.ASSOCIATION)
    if progress.last_received < now - timing.stable_seconds:
        return Completion(CompletionSignal.STABLE)
    return None


def _by_promise(promise: Promise, progress: SeriesProgress, now: float, timing: Timing) -> Completion | None:
    missing = promise.promised - promise.arrived
    if promise.discontinued:
        return Completion(CompletionSignal.MPPS_DISCONTINUED, (
            f"MPPS step {promise.step_uid} was discontinued: the series is the {progress.instances} "
            f"instances that arrived ({missing} of the {promise.promised} it listed did not)"
            if missing else
            f"MPPS step {promise.step_uid} was discontinued; the {promise.promised} instances it "
            "listed all arrived"
        ))
    if missing <= 0:
        return Completion(CompletionSignal.MPPS)
    if max(promise.ended, progress.last_received) < now - timing.mpps_wait_seconds:
        return Completion(CompletionSignal.MPPS_INCOMPLETE, (
            f"MPPS step {promise.step_uid} listed {promise.promised} instances; {missing} never "
            f"arrived within {timing.mpps_wait_seconds:g} s, the series is the {progress.instances} "
            "that did"
        ))
    return None

