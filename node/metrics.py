"""Prometheus metrics of the node, in a registry of its own.

The registry is passed in rather than taken from prometheus-client's global
one, so that several nodes (tests, benchmarks) can live in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from config import EXPIRY_WARNING_DAYS, CertificateExpiry, SegnodeConfig, certificate_expiries

LOG = logging.getLogger(__name__)


class NodeMetrics:
    """The counters the receiving side updates; names follow Prometheus conventions."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.associations_accepted = Counter(
            "segnode_associations_accepted_total",
            "Associations accepted, by calling AE title.",
            ["calling_ae"],
            registry=r,
        )
        self.associations_rejected = Counter(
            "segnode_associations_rejected_total",
            "Associations rejected, by DICOM reason.",
            ["reason"],
            registry=r,
        )
        self.active_associations = Gauge(
            "segnode_active_associations", "Associations in progress.", registry=r
        )
        self.instances_received = Counter(
            "segnode_instances_received_total",
            "Instances stored and acknowledged, by modality.",
            ["modality"],
            registry=r,
        )
        self.received_bytes = Counter(
            "segnode_received_bytes_total", "Bytes of instances stored.", registry=r
        )
        self.store_failures = Counter(
            "segnode_store_failures_total",
            "C-STORE requests answered with a failure status, by reason.",
            ["reason"],
            registry=r,
        )
        self.series_completed = Counter(
            "segnode_series_completed_total",
            "Series that became complete, by the signal that completed them.",
            ["signal"],
            registry=r,
        )
        self.mpps_steps = Counter(
            "segnode_mpps_steps_total",
            "MPPS N-CREATE and N-SET requests kept, by the step's status after them.",
            ["status"],
            registry=r,
        )
        self.mpps_refused = Counter(
            "segnode_mpps_refused_total", "MPPS N-CREATE and N-SET requests refused.", registry=r
        )
        self.series_reopened = Counter(
            "segnode_series_reopened_total",
            "Completed series reopened by a late instance.",
            registry=r,
        )
        self.series_receive_duration = Histogram(
            "segnode_series_receive_duration_seconds",
            "Time from a series' first to its last instance.",
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.config_reloads = Counter(
            "segnode_config_reloads_total",
            "Configuration reloads, by result.",
            ["result"],
            registry=r,
        )
        self.config_refused = Gauge(
            "segnode_config_refused",
            "1 while the configuration file was refused and an earlier configuration is in force.",
            registry=r,
        )
        self.pending_connections = Gauge(
            "segnode_pending_connections",
            "Connections not yet accepted as an association.",
            registry=r,
        )
        self.connections_dropped = Counter(
            "segnode_connections_dropped_total",
            "Connections closed or aborted by the node before or outside a normal release, by reason.",
            ["reason"],
            registry=r,
        )
        self.storage_bytes = Gauge(
            "segnode_storage_bytes",
            "Bytes stored, by kind (instances, results).",
            ["kind"],
            registry=r,
        )
        self.storage_freed_bytes = Counter(
            "segnode_storage_freed_bytes_total",
            "Bytes removed by the retention policy, by kind (instances, results, mpps: MPPS steps).",
            ["kind"],
            registry=r,
        )
        self.storage_free_bytes = Gauge(
            "segnode_storage_free_bytes",
            "Free bytes on the storage folder's file system.",
            registry=r,
        )
        self.storage_seconds_to_full = Gauge(
            "segnode_storage_seconds_to_full",
            "Time until the file system is full at the rate of the last hour (+Inf when not filling).",
            registry=r,
        )
        self.storage_low_space = Gauge(
            "segnode_storage_low_space",
            "1 while free space is below the low watermark and new instances are refused.",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "segnode_outbox_pending",
            "Files waiting in the outbox, by destination.",
            ["destination"],
            registry=r,
        )
        self.outbox_failed = Gauge(
            "segnode_outbox_failed",
            "Files given up on after repeated permanent refusals, by destination.",
            ["destination"],
            registry=r,
        )
        self.outbox_oldest_pending = Gauge(
            "segnode_outbox_oldest_pending_seconds",
            "Time since the oldest waiting file was queued, by destination (0 when none waits).",
            ["destination"],
            registry=r,
        )
        self.instances_sent = Counter(
            "segnode_instances_sent_total",
            "Files acknowledged by a destination (success or warning status), by destination.",
            ["destination"],
            registry=r,
        )
        self.send_failures = Counter(
            "segnode_send_failures_total",
            "Attempts to send a file that failed, by destination and outcome.",
            ["destination", "outcome"],
            registry=r,
        )

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` over HTTP on a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)


class ConsoleMetrics:
    """The web console's requests and failed log-ins, in the node's registry."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "segnode_console_requests_total",
            "Console requests answered, by method, route (its path template) and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "segnode_console_request_seconds",
            "Time to answer a console request.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.failed_logins = Counter(
            "segnode_console_failed_logins_total",
            "Console log-ins refused: a wrong name or password, or too many failures before.",
            registry=registry,
        )


class CertificateExpiryCollector(Collector):
    """``segnode_certificate_expiry_days`` of the certificates in force, and
    warnings in the log for those about to expire.

    The files are read when a configuration is applied (start, reload), as
    the TLS contexts are: a certificate renewed on disk but not yet reloaded
    still counts down. The days are computed when Prometheus scrapes.
    """

    def __init__(self) -> None:
        self._expiries: tuple[CertificateExpiry, ...] = ()

    def apply(self, config: SegnodeConfig) -> None:
        """Read the certificates `config` names, and warn of those about to expire."""
        self._expiries = certificate_expiries(config)
        self.warn_expiring()

    def warn_expiring(self) -> None:
        """A warning for each certificate with fewer than EXPIRY_WARNING_DAYS left."""
        now = datetime.now(timezone.utc)
        for expiry in self._expiries:
            days = expiry.days_left(now)
            if days is None:
                LOG.warning("%s: %s", expiry.field, expiry.problem)
            elif days < 0:
                LOG.warning("%s: %s expired %.0f days ago", expiry.field, expiry.path, -days)
            elif days < EXPIRY_WARNING_DAYS:
                LOG.warning("%s: %s expires in %.0f days, on %s", expiry.field, expiry.path, days,
                            f"{expiry.not_valid_after:%Y-%m-%d %H:%M} UTC")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "segnode_certificate_expiry_days",
            "Days until a configured certificate expires (a CA file: its soonest), by field.",
            labels=["field"],
        )
        now = datetime.now(timezone.utc)
        for expiry in self._expiries:
            days = expiry.days_left(now)
            if days is not None:
                family.add_metric([expiry.field], days)
        yield family
