"""The DICOM SCP: C-ECHO and C-STORE for every storage SOP class.

The C-STORE handler is the receive stage: it validates an instance, writes
the bytes exactly as they arrived (no transcoding, no pixel decoding) through
:class:`node.storage.InstanceStore`, indexes it, and only then answers
success. Every failure becomes a specific status (PS3.4 table B.2-1) with an
Error Comment, so the sender knows what happened and nothing is half stored.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

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
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from config import SegnodeConfig
from node.index import IndexWriteError, InstanceIndex
from node.metrics import NodeMetrics
from node.peers import PeerTable
from node.storage import InstanceStore, StorageError, StoredInstance
from node.validation import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    InvalidDataset,
    identify,
)

LOG = logging.getLogger(__name__)

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

# A-ASSOCIATE-RJ (source, diagnostic) -> metric label, PS3.8 section 9.3.4.
_REJECT_REASONS = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-not-supported",
    (1, 3): "calling-ae-not-recognized",
    (1, 7): "called-ae-not-recognized",
    (2, 1): "acse-no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}


def _status(code: int, comment: str) -> Dataset:
    """A C-STORE response status with an Error Comment (LO: at most 64 characters)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


class StorageSCP:
    """A running association server that stores what it receives.

    Parameters
    ----------
    config : SegnodeConfig
        Initial configuration; :meth:`apply` replaces the parts that take
        effect on new associations.
    store, index, metrics
        The receive stage's collaborators, shared with the rest of the node.
    """

    def __init__(
        self,
        config: SegnodeConfig,
        store: InstanceStore,
        index: InstanceIndex,
        metrics: NodeMetrics,
    ):
        self._store = store
        self._index = index
        self._metrics = metrics
        self._ae = AE(ae_title=config.node.ae_title)
        for context in AllStoragePresentationContexts:
            self._ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        self._ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES)
        self._peers = PeerTable.from_config(config)
        self._server: ThreadedAssociationServer | None = None
        self._address = (config.node.host, config.node.port)
        self._in_flight = 0
        self._stopping = False
        self._in_flight_changed = threading.Condition()
        self._established: weakref.WeakSet = weakref.WeakSet()
        self.apply(config)

    def apply(self, config: SegnodeConfig) -> None:
        """Take on a new configuration for associations requested from now on."""
        node = config.node
        self._peers = PeerTable.from_config(config)
        self._ae.maximum_associations = node.max_associations
        self._ae.maximum_pdu_size = node.max_pdu_size
        self._ae.acse_timeout = node.acse_timeout
        self._ae.dimse_timeout = node.dimse_timeout
        self._ae.network_timeout = node.network_timeout
        if self._server is not None:
            self._server.ae_title = node.ae_title

    @property
    def port(self) -> int:
        """The port listened on."""
        assert self._server is not None
        return self._server.server_address[1]

    def start(self) -> None:
        """Listen in background threads; one thread per association."""
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACSE_SENT, self._on_acse_sent),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._server = self._ae.start_server(
            self._address, block=False, evt_handlers=handlers, ae_title=self._peers.called_ae_title
        )
        LOG.info(
            "listening as %s on %s:%d", self._peers.called_ae_title, self._address[0], self.port
        )

    def shutdown(self) -> None:
        """Stop accepting associations, let in-flight C-STOREs finish, then abort the rest.

        A C-STORE that arrives after shutdown began is answered "out of
        resources" and not stored, so everything that was acknowledged is on
        disk and nothing that is on disk half-way was acknowledged.
        """
        if self._server is None:
            return
        server = self._server
        server.shutdown()
        with self._in_flight_changed:
            self._stopping = True
            if not self._in_flight_changed.wait_for(
                lambda: self._in_flight == 0, timeout=self._ae.dimse_timeout
            ):
                LOG.warning("%d C-STOREs still in flight at shutdown", self._in_flight)
        for assoc in server.active_associations:
            # The last response is queued right after its handler returns;
            # the DUL sends queued PDUs in order, so an abort queued after it
            # cannot overtake it.
            deadline = time.monotonic() + 1.0
            while not assoc.dul.to_provider_queue.empty() and time.monotonic() < deadline:
                time.sleep(0.005)
            assoc.abort()
        self._server = None
        LOG.info("stopped listening")

    # Association events -------------------------------------------------

    def _on_requested(self, event: Event) -> None:
        """Reject an unknown calling AE or a wrong called AE before negotiation.

        pynetdicom skips its own negotiation when this handler has rejected
        (association.py, ``run_reactor``).
        """
        assoc = event.assoc
        request = assoc.requestor.primitive
        assert request is not None
        verdict = self._peers.rejection(
            request.calling_ae_title, request.called_ae_title, assoc.requestor.address
        )
        if verdict is None:
            return
        (result, source, diagnostic), reason = verdict
        LOG.warning("rejecting association from %s: %s", assoc.requestor.address, reason)
        assoc.acse.send_reject(result, source, diagnostic)
        assoc.kill()

    def _on_acse_sent(self, event: Event) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_ASSOCIATE) and primitive.result not in (None, 0x00):
            reason = _REJECT_REASONS.get(
                (primitive.result_source, primitive.diagnostic),
                f"source-{primitive.result_source}-diagnostic-{primitive.diagnostic}",
            )
            self._metrics.associations_rejected.labels(reason).inc()

    def _on_established(self, event: Event) -> None:
        self._metrics.associations_accepted.labels(event.assoc.requestor.ae_title).inc()
        self._metrics.active_associations.inc()
        self._established.add(event.assoc)

    def _on_ended(self, event: Event) -> None:
        # Aborts also end associations that were never established.
        if event.assoc in self._established:
            self._established.discard(event.assoc)
            self._metrics.active_associations.dec()

    # C-STORE ---------------------------------------------------------------

    def _on_store(self, event: Event) -> Dataset | int:
        with self._in_flight_changed:
            if self._stopping:
                self._metrics.store_failures.labels("shutting-down").inc()
                return _status(STATUS_OUT_OF_RESOURCES, "node is shutting down; send again later")
            self._in_flight += 1
        try:
            return self._store_instance(event)
        finally:
            with self._in_flight_changed:
                self._in_flight -= 1
                self._in_flight_changed.notify_all()

    def _store_instance(self, event: Event) -> Dataset | int:
        calling_ae = event.assoc.requestor.ae_title
        request = event.request
        try:
            dataset = event.dataset
            identity = identify(
                dataset, event.context.abstract_syntax, str(request.AffectedSOPInstanceUID)
            )
        except InvalidDataset as exc:
            return self._refuse(exc.status, exc.reason, exc.detail, calling_ae)
        except Exception as exc:  # pydicom could not parse the byte stream at all
            return self._refuse(
                STATUS_CANNOT_UNDERSTAND, "cannot-decode", f"dataset cannot be decoded: {exc}", calling_ae
            )

        data = event.encoded_dataset(include_meta=True)
        received_at = time.time()
        try:
            path = self._store.write(identity, data)
        except StorageError as exc:
            LOG.error("from %s: %s", calling_ae, exc)
            self._metrics.store_failures.labels("out-of-resources").inc()
            return _status(STATUS_OUT_OF_RESOURCES, "cannot store the instance: out of resources")
        stored = StoredInstance(
            identity, str(event.context.transfer_syntax), path, len(data), calling_ae, received_at
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
        if recorded.previous_state is not None and recorded.previous_state != recorded.state:
            self._metrics.series_reopened.inc()
            LOG.warning(
                "late instance %s from %s reopens series %s (was %s)",
                identity.sop_instance_uid,
                calling_ae,
                identity.series_instance_uid,
                recorded.previous_state,
            )
        self._metrics.instances_received.labels(identity.modality or "unknown").inc()
        self._metrics.received_bytes.inc(len(data))
        return 0x0000

    def _refuse(self, status: int, reason: str, detail: str, calling_ae: str) -> Dataset:
        LOG.warning("refused an instance from %s: %s", calling_ae, detail)
        self._metrics.store_failures.labels(reason).inc()
        return _status(status, detail)
