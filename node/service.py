"""The node's lifecycle: start the stages, reload configuration, stop cleanly.

Signals only set flags; the main thread does the work, so a reload never
races another reload or a shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from config import (
    ConfigError,
    SegnodeConfig,
    file_signature,
    read_config,
    read_for_reload,
    reloaded,
    restart_only_changes,
    sets_nothing,
)
from node.assemble.assembly import SeriesAssembler
from node.assemble.completion import Timing
from node.assemble.handover import Handover
from node.config_record import ConfigReading, ConfigRecord, in_force_path, write_in_force, write_record
from node.console.context import ConsoleContext
from node.console.server import ConsoleServer
from node.disk_space import DiskSpace
from node.metrics import CertificateExpiryCollector, NodeMetrics
from node.queue.courses import CourseStore
from node.queue.job_metrics import JobCollector
from node.queue.jobs import JobQueue
from node.receive.index import InstanceIndex
from node.receive.scp import StorageSCP
from node.receive.storage import InstanceStore, installation_uid
from node.retention.keeper import StorageKeeper
from node.retention.removal import RemovalStore
from node.send.outbox import Outbox, RetryPolicy
from node.work.supervisor import worker_devices
from node.work.worker_pool import WorkerPool

if TYPE_CHECKING:
    from node.work.dispatch import CeleryDispatcher

LOG = logging.getLogger(__name__)

_WATCH_INTERVAL_SECONDS = 1.0
_SPOOL_CHECK_SECONDS = 60.0
_CERTIFICATE_WARNING_SECONDS = 86400.0


def _timing(config: SegnodeConfig) -> Timing:
    return Timing(config.node.series_stable_seconds, config.node.mpps_wait_seconds)


class Node:
    """One running segnode: metrics endpoint, SCP, series assembler and
    handover of complete series, worker processes, outbox, config watcher."""

    def __init__(self, config_path: Path, config: SegnodeConfig):
        self.config_path = Path(config_path)
        self.config = config
        self.metrics = NodeMetrics()
        self.store = InstanceStore(config.node.storage_dir)
        self.store.clear_spool()
        self.index = InstanceIndex(config.node.storage_dir)
        self.disk_space = DiskSpace(config.node.storage_dir, config.storage.low_watermark_bytes)
        self.queue = JobQueue(config.node.storage_dir)
        self.metrics.registry.register(JobCollector(self.queue))
        self.certificates = CertificateExpiryCollector()
        self.certificates.apply(config)
        self.metrics.registry.register(self.certificates)
        self.courses = CourseStore(config.node.storage_dir)
        handover = Handover(self.index, self.queue, self.courses, lambda: self.config)
        self.assembler = SeriesAssembler(
            self.index, self.metrics, _timing(config), lambda: self.scp.held(), handover.hand_over_complete
        )
        self.scp = StorageSCP(config, self.store, self.index, self.metrics, self.disk_space,
                              self.assembler.due)
        sending = config.sending  # the outbox's retry policy and timeout are read at start only
        policy = RetryPolicy(sending.retry_base_seconds, sending.retry_max_seconds, sending.max_refusals)
        self.outbox = Outbox(config.node.storage_dir, config, self.metrics, policy=policy,
                             timeout=sending.timeout_seconds)
        self.workers = self._workers(config)
        removals = RemovalStore(config.node.storage_dir)
        removals.finish_interrupted()  # before a worker could write a folder being removed
        self.keeper = StorageKeeper(removals, self.disk_space, self.metrics, lambda: self.config.storage)
        self.console = None if config.node.console is None else ConsoleServer(ConsoleContext(
            config_path=self.config_path,
            current_config=lambda: self.config,
            storage_dir=config.node.storage_dir,
            open_associations=self.scp.open_associations,
            request_reload=self.request_reload,
            registry=self.metrics.registry,
        ), config.node.console)
        self._config_signature = file_signature(self.config_path)
        self._config_record: ConfigRecord | None = None  # set by serve, then by each reload
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False

    def _workers(self, config: SegnodeConfig) -> WorkerPool | CeleryDispatcher:
        """The node's own worker processes, or a dispatcher to Celery workers anywhere
        (``jobs.backend``, which a reload does not change: config/reload_guard.py)."""
        if config.jobs.backend == "celery":
            from node.queue.broker import celery_app  # Celery's import is paid by celery nodes alone
            from node.work.dispatch import CeleryDispatcher

            settings = config.jobs.celery
            return CeleryDispatcher(
                lambda: self.config, self.queue, self.index, self.outbox.store, self.courses,
                installation_uid(config.node.storage_dir), celery_app(settings), settings,
                self.metrics.registry,
            )
        # Workers run the node's copy of the configuration in force, never a file it refused.
        return WorkerPool(in_force_path(config.node.storage_dir), self.queue, lambda: self.config.jobs,
                          worker_devices())

    def start(self) -> None:
        self.metrics.serve(self.config.node.host, self.config.node.metrics_port)
        if self.console is not None:
            self.console.start()
        self.scp.start()
        self.outbox.start()
        self.keeper.start()
        self.workers.start()
        self.assembler.start()
        host = self.config.node.host
        listeners = [f"DICOM {host}:{port}" for port in (self.scp.port,) if port is not None]
        listeners += [f"DICOM TLS {host}:{port}" for port in (self.scp.tls_port,) if port is not None]
        console = "" if self.console is None else f", console {self.console.url}"
        LOG.info("segnode ready: %s, metrics http://%s:%d/metrics%s, storage %s",
                 ", ".join(listeners), host, self.config.node.metrics_port, console, self.store.root)

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def run_until_stopped(self) -> None:
        """Serve until :meth:`request_stop`; reload on request or when the file changes;
        clear the spool of transfers that ended unfinished."""
        spool_checked = certificates_checked = time.monotonic()
        while not self._stop_requested:
            self._wake.wait(_WATCH_INTERVAL_SECONDS)
            self._wake.clear()
            if time.monotonic() - spool_checked > _SPOOL_CHECK_SECONDS:
                spool_checked = time.monotonic()
                self.store.remove_orphaned_spool_files(time.time())
            if time.monotonic() - certificates_checked > _CERTIFICATE_WARNING_SECONDS:
                certificates_checked = time.monotonic()
                self.certificates.warn_expiring()
            signature = file_signature(self.config_path)
            if signature != self._config_signature and signature is not None:
                self._config_signature = signature
                self._reload_requested = True
            if self._reload_requested and not self._stop_requested:
                self._reload_requested = False
                self.reload()
        self.stop()

    def reload(self) -> bool:
        """Apply the configuration file if it is valid and config/reload_guard.py lets
        it replace the running one; otherwise keep the running one, and say so in the
        log, the metrics and the record that ``segnode status`` reads."""
        read_at = time.time()
        try:
            loaded = read_for_reload(self.config_path, self.config)
        except ConfigError as exc:
            for error in exc.errors:
                LOG.error("configuration reload refused: %s: %s", exc.source, error)
            LOG.error("keeping the configuration in force")
            self.metrics.config_reloads.labels("refused").inc()
            self.metrics.config_refused.set(1)
            if self._config_record is not None:
                refused = ConfigReading(read_at, exc.sha256, tuple(exc.errors))
                self._keep_record(replace(self._config_record, refused=refused))
            return False
        new = loaded.config
        for change in restart_only_changes(new, self.config):
            LOG.warning("%s changed from %s to %s: takes effect after a restart",
                        change.field, change.in_force, change.in_file)
        effective = reloaded(new, self.config)
        self.scp.apply(effective)
        self.certificates.apply(effective)
        self.outbox.apply(effective)
        self.disk_space.set_low_watermark(effective.storage.low_watermark_bytes)
        self.assembler.timing = _timing(effective)
        self.config = effective
        self.metrics.config_reloads.labels("applied").inc()
        self.metrics.config_refused.set(0)
        try:
            write_in_force(self.config.node.storage_dir, effective)
        except OSError as exc:
            LOG.error("the workers keep the configuration of before: cannot write %s: %s",
                      in_force_path(self.config.node.storage_dir), exc)
        self._keep_record(ConfigRecord(self.config_path, ConfigReading(read_at, loaded.sha256)))
        LOG.info("configuration reloaded from %s (sha256 %s)", self.config_path, loaded.sha256)
        return True

    def started_with(self, sha256: str, read_at: float) -> None:
        """Record the file the node started with; before :meth:`start`, as the workers read
        its copy. Raises OSError: a node that cannot write to its storage cannot start."""
        write_in_force(self.config.node.storage_dir, self.config)
        self._config_record = ConfigRecord(self.config_path, ConfigReading(read_at, sha256))
        write_record(self.config.node.storage_dir, self._config_record)

    def _keep_record(self, record: ConfigRecord) -> None:
        """Write which configuration is in force where ``segnode status`` reads it.
        A full disk must not stop a reload: the record is then only logged."""
        self._config_record = record
        try:
            write_record(self.config.node.storage_dir, record)
        except OSError as exc:
            LOG.error("cannot write the configuration record in %s: %s", self.config.node.storage_dir, exc)

    def stop(self) -> None:
        if self.console is not None:
            self.console.stop()
        self.scp.shutdown()
        self.keeper.stop()
        self.assembler.stop()
        self.workers.stop()
        self.outbox.stop()
        self.queue.close()
        self.courses.close()
        self.index.close()
        LOG.info("segnode stopped")


def serve(config_path: Path) -> int:
    """Run a node in the foreground until SIGTERM or SIGINT; SIGHUP reloads."""
    read_at = time.time()
    try:
        loaded = read_config(config_path)
    except ConfigError as exc:
        for error in exc.errors:
            LOG.error("%s: %s", exc.source, error)
        return 1
    if sets_nothing(loaded.config):
        # An emptied file (a truncating editor) would start a node that refuses every scanner.
        LOG.error("%s sets no key (it is empty or holds only comments): not starting", config_path)
        return 1
    try:
        node = Node(config_path, loaded.config)
        node.started_with(loaded.sha256, read_at)
        node.start()
    except OSError as exc:
        LOG.error("cannot start: %s", exc)
        return 1
    signal.signal(signal.SIGTERM, lambda signum, frame: node.request_stop())
    signal.signal(signal.SIGINT, lambda signum, frame: node.request_stop())
    signal.signal(signal.SIGHUP, lambda signum, frame: node.request_reload())
    LOG.info("pid %d; SIGHUP or editing %s reloads the configuration", os.getpid(), config_path)
    node.run_until_stopped()
    return 0
