"""The console's test buttons: a C-ECHO, or a test object C-STOREd, to one destination.

Each probe goes as the node's sending would: from the node's AE title, over
the destination's TLS settings, on :mod:`node.send.sender`'s sessions. What
comes back is one :class:`ProbeResult` whatever the network did, for the
page to show beside the button: a probe never raises for the destination's
failures, and ``timeout`` bounds the whole of it (connection, association,
request and release), so the page answers in bounded time.
"""

from __future__ import annotations

import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.sop_class import Verification

from config import Destination, SegnodeConfig
from dicomio.test_object import connectivity_test_object
from node.send.sender import (
    Outcome,
    Reply,
    Session,
    TlsFilesUnreadable,
    application_entity,
    destination_tls,
    send_files,
)

__all__ = ["ProbeResult", "echo", "send_test_object"]

#: What the summary line says of each outcome.
_VERDICTS = {
    Outcome.SUCCESS: "success",
    Outcome.WARNING: "stored with a warning",
    Outcome.REFUSED: "refused",
    Outcome.NOT_ACCEPTED: "not accepted",
    Outcome.UNREADABLE: "test object unreadable",
    Outcome.CONNECT_FAILED: "cannot connect",
    Outcome.TLS_FAILED: "TLS failed",
    Outcome.REJECTED: "association rejected",
    Outcome.ABORTED: "association aborted",
    Outcome.TIMED_OUT: "timed out",
}


@dataclass(frozen=True)
class ProbeResult:
    """How a probe went: a line for an administrator and, when it failed, what precisely went wrong."""

    ok: bool
    summary: str  # "C-ECHO to pacs (ORTHANC@127.0.0.1:4242): success in 12 ms"
    detail: str
    seconds: float


def echo(name: str, destination: Destination, config: SegnodeConfig, timeout: float) -> ProbeResult:
    """C-ECHO `destination` (configured as `name`), within `timeout` seconds in all."""
    started = time.monotonic()
    # Implicit VR Little Endian: the transfer syntax every DICOM AE accepts (PS3.5 10.1).
    ae = application_entity(config.node.ae_title, [(Verification, ImplicitVRLittleEndian)], timeout)
    try:
        tls = destination_tls(destination, name)
    except TlsFilesUnreadable as exc:
        reply = Reply(Outcome.TLS_FAILED, detail=str(exc))
    else:
        session = Session(ae, destination, name, timeout, tls, deadline=started + timeout)
        try:
            if session.failure is None:
                reply = session.echo()
            else:
                outcome, detail = session.failure
                reply = Reply(outcome, detail=detail)
        finally:
            session.close()
    return _result("C-ECHO", name, destination, reply, started, timeout)


def send_test_object(
    name: str, destination: Destination, config: SegnodeConfig, timeout: float, now: float
) -> ProbeResult:
    """C-STORE a fresh connectivity test object (:mod:`dicomio.test_object`), made at
    `now` (epoch seconds, dated in local time), to `destination`, within `timeout` seconds in all.

    The detail of a stored object gives its UIDs, for the destination's
    administrator to find and delete it.
    """
    started = time.monotonic()
    dataset = connectivity_test_object(config.node.ae_title, datetime.fromtimestamp(now))
    with tempfile.TemporaryDirectory(prefix="segnode-probe-") as folder:
        path = Path(folder) / "test-object.dcm"
        dataset.save_as(path, enforce_file_format=True)
        (sent,) = send_files(
            destination,
            [path],
            calling_ae=config.node.ae_title,
            timeout=timeout,
            name=name,
            deadline=started + timeout,
        )
    detail = sent.detail
    if sent.delivered:
        stored = (
            f"stored SOP Instance UID {dataset.SOPInstanceUID} (Secondary Capture), "
            f"study {dataset.StudyInstanceUID}, patient {dataset.PatientName} ({dataset.PatientID})"
        )
        detail = f"{stored}; {detail}" if detail else stored
    reply = Reply(sent.outcome, sent.status, detail)
    return _result("C-STORE of a test object", name, destination, reply, started, timeout)


def _result(
    action: str, name: str, destination: Destination, reply: Reply, started: float, timeout: float
) -> ProbeResult:
    detail = reply.detail
    verdict = _VERDICTS[reply.outcome]
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    if reply.outcome is Outcome.CONNECT_FAILED:
        why = _connect_failure(destination, started + timeout - time.monotonic(), timeout)
        detail = f"cannot connect to {where}: {why}"
    elif reply.outcome is Outcome.REFUSED:
        assert reply.status is not None
        verdict = f"refused with status 0x{reply.status:04X}"
    elif reply.outcome is Outcome.ABORTED and time.monotonic() - started >= timeout:
        verdict = "timed out"
    seconds = time.monotonic() - started
    took = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
    return ProbeResult(
        ok=reply.outcome in (Outcome.SUCCESS, Outcome.WARNING),
        summary=f"{action} to {name} ({where}): {verdict} in {took}",
        detail=detail,
        seconds=seconds,
    )


def _connect_failure(destination: Destination, left: float, timeout: float) -> str:
    """Why a connection to `destination` fails. pynetdicom keeps no reason for
    a failed connection; one more plain TCP connection, within what is left
    of the probe's time, learns it (refused, no route, unknown host)."""
    if left <= 0:
        return f"no answer within {timeout:g}s"
    try:
        with socket.create_connection((destination.host, destination.port), timeout=left):
            return "it accepts connections again now"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
