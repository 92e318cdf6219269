"""The node's lifecycle: start the stages, reload configuration, stop cleanly.

Signals only set flags; the main thread does the work, so a reload never
races another reload or a shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from config import RESTART_ONLY, ConfigError, SegnodeConfig, file_signature, load_config, reloaded
from node.assembly import SeriesAssembler
from node.dispatch import Dispatcher
from node.index import InstanceIndex
from node.job_metrics import JobCollector
from node.jobs import JobQueue
from node.metrics import NodeMetrics
from node.outbox import Outbox, RetryPolicy
from node.scp import StorageSCP
from node.storage import InstanceStore
from node.worker_pool import WorkerPool, worker_devices

LOG = logging.getLogger(__name__)

_WATCH_INTERVAL_SECONDS = 1.0


class Node:
    """One running segnode: metrics endpoint, SCP, series assembler and
    dispatcher, worker processes, outbox, config watcher."""

    def __init__(self, config_path: Path, config: SegnodeConfig):
        self.config_path = Path(config_path)
        self.config = config
        self.metrics = NodeMetrics()
        self.store = InstanceStore(config.node.storage_dir)
        self.store.remove_partial_files()
        self.index = InstanceIndex(config.node.storage_dir)
        self.scp = StorageSCP(config, self.store, self.index, self.metrics)
        self.queue = JobQueue(config.node.storage_dir)
        self.metrics.registry.register(JobCollector(self.queue))
        dispatcher = Dispatcher(self.index, self.queue, lambda: self.config)
        self.assembler = SeriesAssembler(
            self.index, self.metrics, config.node.series_stable_seconds, dispatcher.dispatch_complete
        )
        sending = config.sending  # the outbox's retry policy and timeout are read at start only
        policy = RetryPolicy(sending.retry_base_seconds, sending.retry_max_seconds, sending.max_refusals)
        self.outbox = Outbox(config.node.storage_dir, config, self.metrics, policy=policy,
                             timeout=sending.timeout_seconds)
        self.workers = WorkerPool(self.config_path, self.queue, lambda: self.config.jobs, worker_devices())
        self._config_signature = file_signature(self.config_path)
        self._wake = threading.Event()
        self._stop_requested = False
        self._reload_requested = False

    def start(self) -> None:
        self.metrics.serve(self.config.node.host, self.config.node.metrics_port)
        self.scp.start()
        self.outbox.start()
        self.workers.start()
        self.assembler.start()
        LOG.info(
            "segnode ready: DICOM %s:%d, metrics http://%s:%d/metrics, storage %s",
            self.config.node.host,
            self.scp.port,
            self.config.node.host,
            self.config.node.metrics_port,
            self.store.root,
        )

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def run_until_stopped(self) -> None:
        """Serve until :meth:`request_stop`; reload on request or when the file changes."""
        while not self._stop_requested:
            self._wake.wait(_WATCH_INTERVAL_SECONDS)
            self._wake.clear()
            signature = file_signature(self.config_path)
            if signature != self._config_signature and signature is not None:
                self._config_signature = signature
                self._reload_requested = True
            if self._reload_requested and not self._stop_requested:
                self._reload_requested = False
                self.reload()
        self.stop()

    def reload(self) -> bool:
        """Apply the configuration file if it is valid; otherwise keep the current one."""
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for error in exc.errors:
                LOG.error("configuration reload refused: %s: %s", exc.source, error)
            LOG.error("keeping the configuration in force")
            self.metrics.config_reloads.labels("refused").inc()
            return False
        for field in RESTART_ONLY:
            old_value, new_value = getattr(self.config.node, field), getattr(new.node, field)
            if old_value != new_value:
                LOG.warning(
                    "node.%s changed from %s to %s: takes effect after a restart",
                    field,
                    old_value,
                    new_value,
                )
        effective = reloaded(new, self.config)
        self.scp.apply(effective)
        self.outbox.apply(effective)
        self.assembler.stable_seconds = effective.node.series_stable_seconds
        self.config = effective
        self.metrics.config_reloads.labels("applied").inc()
        LOG.info("configuration reloaded from %s", self.config_path)
        return True

    def stop(self) -> None:
        self.scp.shutdown()
        self.assembler.stop()
        self.workers.stop()
        self.outbox.stop()
        self.queue.close()
        self.index.close()
        LOG.info("segnode stopped")


def serve(config_path: Path) -> int:
    """Run a node in the foreground until SIGTERM or SIGINT; SIGHUP reloads."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for error in exc.errors:
            LOG.error("%s: %s", exc.source, error)
        return 1
    try:
        node = Node(config_path, config)
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
