"""The DICOM SCP: C-ECHO, C-STORE for every storage SOP class, and MPPS.

The C-STORE handler is the receive stage: it validates an instance, writes
the bytes exactly as they arrived (no transcoding, no pixel decoding) through
:class:`node.receive.storage.InstanceStore`, indexes it, and only then answers
success. Every failure becomes a specific status (PS3.4 table B.2-1) with an
Error Comment, so the sender knows what happened and nothing is half stored.

It also hears what says a series is complete (node/assemble/completion.py):
which series each open association has sent, the normal release of an
association, and MPPS steps (N-CREATE, N-SET), which it keeps like instances.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import ModalityPerformedProcedureStep, Verification

from config import NodeTls, SegnodeConfig
from node.disk_space import DiskSpace
from node.metrics import NodeMetrics
from node.receive.dataset_check import check_instance
from node.receive.index import IndexWriteError, InstanceIndex, StepConflict, StoredStep
from node.receive.mpps import (
    STATUS_PROCESSING_FAILURE,
    STATUS_RESOURCE_LIMITATION,
    Step,
    StepRefused,
    created,
    updated,
)
from node.receive.peers import PeerTable, Rejection
from node.receive.step_files import StepFiles, encoded
from node.receive.storage import InstanceStore, StorageError, StoredInstance
from node.receive.transport import (
    ConnectionGate,
    GatedAssociationServer,
    GuardedSocket,
    GuardedTlsSocket,
    Limits,
    Violation,
    contain_thread_failures,
    reject_reason,
)
from node.receive.validation import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    InvalidDataset,
    modality_label,
)
from node.tls import PeerCertificate, server_context

LOG = logging.getLogger(__name__)

# Message Control Header bits of a PDV: command, last fragment (PS3.8 annex E.2).
_LAST_COMMAND_FRAGMENT = 0b11

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]

#: Transfer syntaxes for MPPS: a step is a few attributes, never pixels.
STEP_TRANSFER_SYNTAXES = ACCEPTED_TRANSFER_SYNTAXES[:4]
# N-CREATE and N-SET failures (PS3.7 annex C).
_STATUS_DUPLICATE_INSTANCE = 0x0111
_STATUS_NO_SUCH_INSTANCE = 0x0112


def _status(code: int, comment: str, error_id: int | None = None) -> Dataset:
    """A response status with an Error Comment (LO: at most 64 characters)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    if error_id is not None:
        status.ErrorID = error_id
    return status


@dataclass(frozen=True)
class OpenAssociation:
    """One association the SCP has accepted and not yet ended."""

    calling_ae: str
    address: str  # the peer's "host:port"
    since: float  # epoch seconds it was established
    instances: int  # C-STOREs stored on it so far


@dataclass
class _Sending:
    """An open association: who it is and since when, how many instances it
    stored, the series they are of, and whether its peer's series complete
    when it is released (peers[].completion)."""

    calling_ae: str
    address: str
    since: float
    ends_series: bool
    instances: int = 0
    series: set[str] = field(default_factory=set)


class StorageSCP:
    """A running association server that stores what it receives.

    Parameters
    ----------
    config : SegnodeConfig
        Initial configuration; :meth:`apply` replaces the parts that take
        effect on new associations.
    store, index, metrics
        The receive stage's collaborators, shared with the rest of the node.
    disk_space : DiskSpace
        Free space against the low watermark, under which instances are refused.
    completion_due : callable
        Told the time at which a series may complete by a signal heard here
        (the series assembler wakes then).
    """

    def __init__(
        self,
        config: SegnodeConfig,
        store: InstanceStore,
        index: InstanceIndex,
        metrics: NodeMetrics,
        disk_space: DiskSpace,
        completion_due: Callable[[float], None],
    ):
        self._store = store
        self._steps = StepFiles(config.node.storage_dir)
        self._completion_due = completion_due
        self._index = index
        self._metrics = metrics
        self._disk_space = disk_space
        self._ae = AE(ae_title=config.node.ae_title)
        for context in AllStoragePresentationContexts:
            self._ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        self._ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES)
        self._ae.add_supported_context(ModalityPerformedProcedureStep, STEP_TRANSFER_SYNTAXES)
        self._peers = PeerTable.from_config(config)
        self._gate = ConnectionGate(Limits.from_settings(config.node), self._admission, metrics)
        self._plain_server: GatedAssociationServer | None = None
        self._tls_server: GatedAssociationServer | None = None
        self._host = config.node.host
        self._plain_port = config.node.port if config.node.listen_plain else None
        self._tls_port = None if config.node.tls is None else config.node.tls.port
        self._tls_context: ssl.SSLContext | None = None
        # Requests whose response is not yet on the socket, per association.
        self._responses_owed: weakref.WeakKeyDictionary[Association, int] = weakref.WeakKeyDictionary()
        self._stopping = False
        self._in_flight_changed = threading.Condition()
        self._established: weakref.WeakSet = weakref.WeakSet()
        self._sending: weakref.WeakKeyDictionary[Association, _Sending] = weakref.WeakKeyDictionary()
        self._sending_lock = threading.Lock()
        # A step's data set is decoded in memory (5 kB per listed instance,
        # node/receive/mpps.py): one at a time bounds what hostile peers can
        # make the node hold to one step, whatever the number of associations.
        self._one_step_at_a_time = threading.Lock()
        self.apply(config)

    def apply(self, config: SegnodeConfig) -> None:
        """Take on a new configuration for associations requested from now on."""
        node = config.node
        self._peers = PeerTable.from_config(config)
        self._ending_peers = frozenset(peer.ae_title for peer in config.peers
                                       if peer.completion == "association")
        self._grace_seconds = node.association_grace_seconds
        self._gate.limits = Limits.from_settings(node)
        self._max_instance_bytes = node.max_instance_bytes
        self._ae.maximum_associations = node.max_associations
        self._ae.maximum_pdu_size = node.max_pdu_size
        self._ae.acse_timeout = node.acse_timeout
        self._ae.dimse_timeout = node.dimse_timeout
        self._ae.network_timeout = node.network_timeout
        if node.tls is not None and self._tls_port is not None:
            self._load_tls(node.tls)
        for server in self._servers:
            server.ae_title = node.ae_title

    def _load_tls(self, tls: NodeTls) -> None:
        """The TLS context from the files named now (certificates reload with
        the configuration); files that cannot be loaded keep the one in force."""
        try:
            context = server_context(tls)
        except (OSError, ssl.SSLError) as exc:
            if self._tls_context is None:
                raise
            LOG.error("node.tls: cannot load the certificate, key or client CA (%s); "
                      "the TLS port keeps the ones loaded before", exc)
            return
        self._tls_context = context
        if self._tls_server is not None:
            self._tls_server.tls = context

    @property
    def _servers(self) -> list[GatedAssociationServer]:
        return [server for server in (self._plain_server, self._tls_server) if server is not None]

    @property
    def port(self) -> int | None:
        """The plain port listened on; None when there is only TLS."""
        return None if self._plain_server is None else self._plain_server.server_address[1]

    @property
    def tls_port(self) -> int | None:
        """The DICOM TLS port listened on, if any."""
        return None if self._tls_server is None else self._tls_server.server_address[1]

    def start(self) -> None:
        """Listen in background threads; one thread per association."""
        handlers = [
            (evt.EVT_ACSE_SENT, self._on_acse_sent),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_N_CREATE, self._on_n_create),
            (evt.EVT_N_SET, self._on_n_set),
            (evt.EVT_PDU_SENT, self._on_pdu_sent),
        ]
        # Data sets are spooled to a file as they arrive, not held in
        # memory; the spool is in the store, so keeping one is a rename.
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self._store.spool_dir)
        contain_thread_failures()
        if self._plain_port is not None:
            self._plain_server = self._listen(self._plain_port, handlers, None)
        if self._tls_port is not None:
            self._tls_server = self._listen(self._tls_port, handlers, self._tls_context)

    def _listen(self, port: int, handlers: list, tls: ssl.SSLContext | None) -> GatedAssociationServer:
        """One listener; its connections share the gate and its limits."""
        server = self._ae.make_server(
            (self._host, port), ae_title=self._peers.called_ae_title, evt_handlers=handlers,
            server_class=GatedAssociationServer, gate=self._gate, watcher=self, tls=tls,
        )
        kind = "dicom-listener" if tls is None else "dicom-tls-listener"
        threading.Thread(target=server.serve_forever, name=kind, daemon=True).start()
        # As AE.start_server does: the server's shutdown takes itself off this list.
        self._ae._servers.append(server)
        LOG.info("listening as %s on %s:%d%s", self._peers.called_ae_title, self._host,
                 server.server_address[1], "" if tls is None else " (DICOM TLS)")
        return server

    def shutdown(self) -> None:
        """Stop accepting associations, let in-flight C-STOREs finish, then abort the rest.

        A C-STORE that arrives after shutdown began is answered "out of
        resources" and not stored, so everything that was acknowledged is on
        disk and nothing that is on disk half-way was acknowledged.
        """
        servers = self._servers
        if not servers:
            return
        for server in servers:
            server.shutdown()
        with self._in_flight_changed:
            self._stopping = True
            # Waits for the responses too, not just the handlers: pynetdicom
            # queues a response after its handler returns, and an abort sent
            # before it would leave a stored instance unacknowledged.
            if not self._in_flight_changed.wait_for(
                lambda: not any(self._responses_owed.values()), timeout=self._ae.dimse_timeout
            ):
                LOG.warning("%d responses still owed at shutdown",
                            sum(self._responses_owed.values()))
        for server in servers:
            for assoc in server.active_associations:
                assoc.abort()
        self._plain_server = self._tls_server = None
        LOG.info("stopped listening")

    # Association events -------------------------------------------------

    def _admission(self, calling_ae: str, called_ae: str, address: str,
                   certificate: PeerCertificate | None) -> Rejection | None:
        """Whether an association request may go on to pynetdicom (asked by
        the transport's gate, before the association takes a slot)."""
        verdict = self._peers.rejection(calling_ae, called_ae, address, certificate)
        if verdict is None and self._disk_space.is_low():
            # Rejected-transient, service-provider (presentation), temporary
            # congestion (PS3.8 section 9.3.4): the sender tries again later.
            verdict = (0x02, 0x03, 0x01), "storage below its low watermark"
        return verdict

    def _on_acse_sent(self, event: Event) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE) and primitive.result not in (None, 0x00):
            reason = reject_reason(primitive.result_source, primitive.diagnostic)
            self._metrics.associations_rejected.labels(reason).inc()

    # The transport's watcher (node/receive/transport.py) ---------------------------

    def dropped(self, violation: Violation, peer: str) -> None:
        """A connection the transport closed or aborted."""
        self._metrics.connections_dropped.labels(violation.reason).inc()
        level = logging.DEBUG if violation.reason == "closed" else logging.WARNING
        LOG.log(level, "dropped a connection from %s: %s", peer, violation.detail)

    def closed(self, sock: GuardedSocket | GuardedTlsSocket) -> None:
        """A connection ended: forget its association and remove what it was
        still spooling.

        pynetdicom leaves the spooled file of a data set that never arrived
        whole (an abort, a full disk), and when its reader thread fails it
        ends the association without EVT_ABORTED, which would leave it
        counted as active.
        """
        association = sock.association
        if association is None:
            return
        self._on_ended_association(association)
        message = association.dimse.message
        unfinished = getattr(message, "_data_set_path", None)
        if unfinished is not None:
            Path(unfinished).unlink(missing_ok=True)

    def _on_established(self, event: Event) -> None:
        calling_ae = event.assoc.requestor.ae_title
        self._metrics.associations_accepted.labels(calling_ae).inc()
        self._metrics.active_associations.inc()
        with self._in_flight_changed:
            self._established.add(event.assoc)
        requestor = event.assoc.requestor
        sending = _Sending(calling_ae, f"{requestor.address}:{requestor.port}", time.time(),
                           calling_ae.strip() in self._ending_peers)
        with self._sending_lock:
            self._sending[event.assoc] = sending

    def open_associations(self) -> tuple[OpenAssociation, ...]:
        """The associations established and not yet ended, the oldest first (for the console)."""
        with self._sending_lock:
            open_now = [OpenAssociation(s.calling_ae, s.address, s.since, s.instances)
                        for s in self._sending.values()]
        return tuple(sorted(open_now, key=lambda association: association.since))

    def held(self) -> frozenset[str]:
        """Series that an open association, whose release will complete them, has sent."""
        with self._sending_lock:
            return frozenset(uid for sending in self._sending.values() if sending.ends_series
                             for uid in sending.series)

    def _on_released(self, event: Event) -> None:
        """A normal release completes, after the grace period, the series the
        association sent, where its peer says so and no other open
        association has sent them too."""
        released = time.time()
        with self._sending_lock:
            sending = self._sending.pop(event.assoc, None)
            others = {uid for other in self._sending.values() for uid in other.series}
        if sending is not None and sending.ends_series and sending.series - others:
            complete_at = released + self._grace_seconds
            try:
                self._index.end_association(sending.series - others, released, complete_at)
            except IndexWriteError as exc:
                LOG.error("association from %s: its series wait for the stable period: %s",
                          event.assoc.requestor.ae_title, exc)
            else:
                self._completion_due(complete_at)
        self._on_ended_association(event.assoc)

    def _on_ended(self, event: Event) -> None:
        self._on_ended_association(event.assoc)

    def _on_ended_association(self, association: Association) -> None:
        # Aborts also end associations that were never established; an
        # association may end twice (its event, then its socket's close).
        with self._sending_lock:
            self._sending.pop(association, None)
        with self._in_flight_changed:
            # An ended association owes nothing more.
            if self._responses_owed.pop(association, None):
                self._in_flight_changed.notify_all()
            if association not in self._established:
                return
            self._established.discard(association)
        self._metrics.active_associations.dec()

    # C-ECHO and C-STORE ----------------------------------------------------

    def _on_echo(self, event: Event) -> int:
        with self._in_flight_changed:
            self._owe_response(event.assoc)
        return 0x0000

    def _on_store(self, event: Event) -> Dataset | int:
        with self._in_flight_changed:
            self._owe_response(event.assoc)
            if self._stopping:
                self._metrics.store_failures.labels("shutting-down").inc()
                return _status(STATUS_OUT_OF_RESOURCES, "node is shutting down; send again later")
            if self._disk_space.is_low():
                self._metrics.store_failures.labels("low-space").inc()
                return _status(STATUS_OUT_OF_RESOURCES, "storage below its low watermark; send again later")
        return self._store_instance(event)

    def _owe_response(self, association: Association) -> None:
        """Count a request whose response is not yet on the socket (called
        under the lock): every one, so that the count stays right even for a
        peer that sends its next request before the last response."""
        self._responses_owed[association] = self._responses_owed.get(association, 0) + 1

    def _on_pdu_sent(self, event: Event) -> None:
        """A response is on the socket once the PDU carrying the last
        fragment of its command has been sent; an SCP sends no other commands."""
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        if not any(item.presentation_data_value[0] & _LAST_COMMAND_FRAGMENT == _LAST_COMMAND_FRAGMENT
                   for item in pdu.presentation_data_value_items):
            return
        with self._in_flight_changed:
            owed = self._responses_owed.get(event.assoc, 0)
            if owed:
                self._responses_owed[event.assoc] = owed - 1
                self._in_flight_changed.notify_all()

    def _store_instance(self, event: Event) -> Dataset | int:
        calling_ae = event.assoc.requestor.ae_title
        spooled = event.dataset_path
        try:
            identity = check_instance(spooled, event.context.abstract_syntax,
                                      str(event.request.AffectedSOPInstanceUID), self._max_instance_bytes)
        except InvalidDataset as exc:
            return self._refuse(exc.status, exc.reason, exc.detail, calling_ae)
        except Exception as exc:  # a data set that breaks the check itself is no readable one
            LOG.exception("checking an instance from %s failed", calling_ae)
            return self._refuse(STATUS_CANNOT_UNDERSTAND, "cannot-decode",
                                f"data set cannot be decoded: {type(exc).__name__}", calling_ae)

        size = spooled.stat().st_size
        received_at = time.time()
        try:
            path = self._store.keep(identity, spooled)
        except StorageError as exc:
            LOG.error("from %s: %s", calling_ae, exc)
            self._metrics.store_failures.labels("out-of-resources").inc()
            return _status(STATUS_OUT_OF_RESOURCES, "cannot store the instance: out of resources")
        stored = StoredInstance(
            identity, str(event.context.transfer_syntax), path, size, calling_ae, received_at
        )
        try:
            recorded = self._index.record_instance(stored)
        except IndexWriteError as exc:
            LOG.error("from %s: %s", calling_ae, exc)
            if not self._index.is_indexed(identity.sop_instance_uid):
                self._store.remove(path)
            self._metrics.store_failures.labels("out-of-resources").inc()
            return _status(STATUS_OUT_OF_RESOURCES, "cannot index the instance: out of resources")
        if recorded.replaced_path is not None:
            self._store.remove(recorded.replaced_path)
        with self._sending_lock:
            sending = self._sending.get(event.assoc)
            if sending is not None:
                sending.instances += 1
                sending.series.add(identity.series_instance_uid)
        if recorded.promised:
            self._completion_due(received_at)
        if recorded.previous_state is not None and recorded.previous_state != recorded.state:
            self._metrics.series_reopened.inc()
            LOG.warning(
                "late instance %s from %s reopens series %s (was %s)",
                identity.sop_instance_uid,
                calling_ae,
                identity.series_instance_uid,
                recorded.previous_state,
            )
        self._metrics.instances_received.labels(modality_label(identity.modality)).inc()
        self._metrics.received_bytes.inc(size)
        return 0x0000

    def _refuse(self, status: int, reason: str, detail: str, calling_ae: str) -> Dataset:
        LOG.warning("refused an instance from %s: %s", calling_ae, detail)
        self._metrics.store_failures.labels(reason).inc()
        return _status(status, detail)

    # MPPS ----------------------------------------------------------------

    def _on_n_create(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        """A scanner starts a step (PS3.4 F.7.2.1): checked, then kept."""
        with self._in_flight_changed:
            self._owe_response(event.assoc)
        calling_ae = event.assoc.requestor.ae_title
        uid = event.request.AffectedSOPInstanceUID
        with self._one_step_at_a_time:
            try:
                step_dataset, step = created(None if uid is None else str(uid), event.attribute_list)
                data = encoded(step_dataset)
            except StepRefused as exc:
                return self._refuse_step(exc, calling_ae), None
            except Exception as exc:  # a data set pydicom cannot decode
                return self._step_undecodable(exc, "N-CREATE", calling_ae), None
            if self._index.step(step.sop_instance_uid) is not None:
                return _status(_STATUS_DUPLICATE_INSTANCE, "MPPS step exists already"), None
            return self._keep_step(data, step_dataset, step, calling_ae, None)

    def _on_n_set(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        """A scanner updates a step (PS3.4 F.7.2.2); COMPLETED and DISCONTINUED
        say which instances its series are."""
        with self._in_flight_changed:
            self._owe_response(event.assoc)
        calling_ae = event.assoc.requestor.ae_title
        with self._one_step_at_a_time:
            current = self._index.step(str(event.request.RequestedSOPInstanceUID))
            if current is None:
                return _status(_STATUS_NO_SUCH_INSTANCE, "no such MPPS step"), None
            try:
                step_dataset, step = updated(self._steps.read(current.path), event.modification_list)
                data = encoded(step_dataset)
            except StepRefused as exc:
                return self._refuse_step(exc, calling_ae), None
            except Exception as exc:  # a data set pydicom cannot decode
                return self._step_undecodable(exc, "N-SET", calling_ae), None
            return self._keep_step(data, step_dataset, step, calling_ae, current)

    def _keep_step(self, data: bytes, step_dataset: Dataset, step: Step, calling_ae: str,
                   current: StoredStep | None) -> tuple[Dataset | int, Dataset | None]:
        """Write the step's next version (`data`, the file of `step_dataset`)
        and record it (node/receive/step_files.py says why in that order); the
        response's status and attribute list."""
        if self._stopping or self._disk_space.is_low():
            return _status(STATUS_RESOURCE_LIMITATION, "stopping or low on space; send again later"), None
        version = 1 if current is None else current.version + 1
        try:
            path = self._steps.write(step.sop_instance_uid, version, data)
        except OSError as exc:
            LOG.error("MPPS step %s from %s cannot be kept: %s", step.sop_instance_uid, calling_ae, exc)
            return _status(STATUS_PROCESSING_FAILURE, "cannot keep the MPPS step: out of resources"), None
        stored = StoredStep(step.sop_instance_uid, step.status, version, path)
        try:
            decided = self._index.record_step(step, stored, calling_ae, time.time(), current)
        except (StepConflict, IndexWriteError) as exc:
            self._steps.remove(path)
            LOG.error("MPPS step %s from %s not kept: %s", step.sop_instance_uid, calling_ae, exc)
            if isinstance(exc, StepConflict) and current is None:
                return _status(_STATUS_DUPLICATE_INSTANCE, "MPPS step exists already"), None
            return _status(STATUS_PROCESSING_FAILURE, str(exc)), None
        if current is not None:
            self._steps.remove(current.path)
        self._metrics.mpps_steps.labels(step.status.value).inc()
        LOG.info("MPPS step %s from %s is %s%s", step.sop_instance_uid, calling_ae, step.status.value,
                 f"; it decides when series {', '.join(decided)} are complete" if decided else "")
        if decided:
            self._completion_due(time.time())
        return 0x0000, step_dataset

    def _refuse_step(self, refused: StepRefused, calling_ae: str) -> Dataset:
        LOG.warning("refused from %s: %s", calling_ae, refused)
        self._metrics.mpps_refused.inc()
        return _status(refused.status, refused.comment, refused.error_id)

    def _step_undecodable(self, exc: Exception, message: str, calling_ae: str) -> Dataset:
        LOG.warning("refused an %s from %s: its data set cannot be decoded: %s", message, calling_ae, exc)
        self._metrics.mpps_refused.inc()
        return _status(STATUS_PROCESSING_FAILURE, f"data set cannot be decoded: {type(exc).__name__}")
