"""The outbox: result files waiting for their destinations, durable in SQLite.

One row per (job, destination, file), ``pending`` until the destination has
acknowledged the file, then ``delivered``; ``failed`` only after repeated
permanent refusals (the destination refused the instance itself, or never
accepts its SOP class). A destination that is down, fails TLS, rejects
associations or stalls is retried with exponential backoff for as long as it
takes. Files are never deleted here.

Delivery is at least once: a file is marked delivered only after its success
status came back, so a kill between the status and the commit sends it again
after the restart, which a C-STORE SCP takes as the same SOP instance again.
Nothing marks a file "in flight": after a kill -9 every row that was not
committed as delivered is simply still pending.

The index's conventions hold (node/receive/index.py): WAL so that ``segnode status``
reads while the node writes, synchronous=FULL so that a committed row
survives power loss, one connection serialised by a lock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from config import Destination, SegnodeConfig
from node.backoff import doubling_delay
from node.database import open_database, transaction
from node.metrics import NodeMetrics
from node.send.sender import Outcome, SendResult, send_files

LOG = logging.getLogger(__name__)

OUTBOX_FILENAME = "outbox.sqlite3"

# Files per association; a round's outcomes are committed together.
_ROUND_SIZE = 100
# The scheduler looks at the queue at least this often: workers queue results from
# their own processes, and due retries and metrics are found by looking.
_IDLE_POLL_SECONDS = 0.25

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY,
    job_id       TEXT NOT NULL,
    destination  TEXT NOT NULL,
    path         TEXT NOT NULL,
    state        TEXT NOT NULL,
    enqueued     REAL NOT NULL,
    next_attempt REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    refusals     INTEGER NOT NULL DEFAULT 0,
    last_attempt REAL,
    delivered    REAL,
    last_error   TEXT,
    UNIQUE (job_id, destination, path)
);
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox(state, destination, next_attempt);
"""


class ItemState(Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class OutboxError(Exception):
    """A request the outbox cannot take: an unknown destination, a file not on disk."""


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a file again, and when to give up on it.

    The n-th failed attempt waits ``min(max_seconds, base_seconds * 2**(n-1))``.
    Only permanent refusals (see :attr:`node.send.sender.SendResult.permanent`)
    count towards ``max_refusals``; a destination that is down or busy is
    retried forever.
    """

    base_seconds: float = 5.0
    max_seconds: float = 300.0
    max_refusals: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.base_seconds <= self.max_seconds:
            raise ValueError(
                f"retry delays must satisfy 0 < base ({self.base_seconds}) <= max ({self.max_seconds})"
            )
        if self.max_refusals < 1:
            raise ValueError(f"max_refusals must be at least 1, not {self.max_refusals}")

    def delay(self, attempts: int) -> float:
        return doubling_delay(attempts, self.base_seconds, self.max_seconds)


@dataclass(frozen=True)
class OutboxItem:
    """A pending file as a delivery round takes it."""

    id: int
    job_id: str
    destination: str
    path: Path


@dataclass(frozen=True)
class DestinationBacklog:
    """What waits for one destination: counts, the oldest file's age, the next retry, the last error."""

    destination: str
    pending: int
    failed: int
    oldest_pending_seconds: float | None
    next_attempt_seconds: float | None
    last_error: str | None


@dataclass(frozen=True)
class FailedItem:
    """A file given up on, and why."""

    job_id: str
    destination: str
    path: Path
    attempts: int
    reason: str


@dataclass(frozen=True)
class JobDeliveries:
    """Where one job's result files stand: how many still wait, and when the
    last of the others was delivered or given up on."""

    job_id: int
    pending: int
    last_settled: float | None


@dataclass(frozen=True)
class Delivery:
    """A job's files for one destination; ``last_error`` that of the latest
    failed attempt of a file not delivered."""

    destination: str
    delivered: int
    pending: int
    failed: int
    last_delivered_at: float | None
    last_error: str | None


class OutboxStore:
    """The outbox table in ``storage_dir/outbox.sqlite3``."""

    def __init__(self, storage_dir: Path, *, read_only: bool = False):
        path = Path(storage_dir) / OUTBOX_FILENAME
        self._db = open_database(path, _SCHEMA, read_only=read_only)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enqueue(self, job_id: str, destination: str, files: Sequence[Path], now: float) -> int:
        """Queue ``files`` for ``destination``; returns how many were not queued already.

        The files must be on disk (written and fsync'ed by the caller). A file
        queued again for the same job and destination keeps its row and state.
        """
        if not job_id:
            raise OutboxError("a job id is required")
        paths = [Path(f).resolve() for f in files]
        for path in paths:
            if not path.is_file():
                raise OutboxError(f"job {job_id}: {path} is not a file on disk; nothing was queued")
        rows = [(job_id, destination, str(path), ItemState.PENDING.value, now, now) for path in paths]
        with self._lock, transaction(self._db):
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (job_id, destination, path, state, enqueued, next_attempt) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            return self._db.total_changes - before

    def due_destinations(self, now: float) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT destination FROM outbox WHERE state = ? AND next_attempt <= ? "
                "ORDER BY destination",
                (ItemState.PENDING.value, now),
            ).fetchall()
        return [name for (name,) in rows]

    def next_attempt(self, excluding: Sequence[str]) -> float | None:
        """The earliest retry time among pending files of destinations not in ``excluding``."""
        marks = ", ".join("?" * len(excluding))
        with self._lock:
            (earliest,) = self._db.execute(
                f"SELECT MIN(next_attempt) FROM outbox WHERE state = ? AND destination NOT IN ({marks})",
                (ItemState.PENDING.value, *excluding),
            ).fetchone()
        return earliest

    def due(self, destination: str, now: float, limit: int) -> list[OutboxItem]:
        """Pending files of ``destination`` whose time has come, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, job_id, destination, path FROM outbox "
                "WHERE state = ? AND destination = ? AND next_attempt <= ? ORDER BY id LIMIT ?",
                (ItemState.PENDING.value, destination, now, limit),
            ).fetchall()
        return [OutboxItem(row[0], row[1], row[2], Path(row[3])) for row in rows]

    def record(
        self, items: Sequence[OutboxItem], results: Sequence[SendResult], now: float, policy: RetryPolicy
    ) -> None:
        """Commit one round's outcomes: delivered, retry later, or failed for good."""
        if len(items) != len(results):
            raise ValueError(f"{len(items)} items but {len(results)} results")
        with self._lock, transaction(self._db):
            for item, result in zip(items, results, strict=True):
                if result.outcome is Outcome.NOT_ATTEMPTED:
                    continue
                if result.delivered:
                    self._db.execute(
                        "UPDATE outbox SET state = ?, attempts = attempts + 1, last_attempt = ?, "
                        "delivered = ?, last_error = ? WHERE id = ?",
                        (ItemState.DELIVERED.value, now, now, result.detail or None, item.id),
                    )
                    continue
                attempts, refusals = self._db.execute(
                    "SELECT attempts + 1, refusals + ? FROM outbox WHERE id = ?",
                    (int(result.permanent), item.id),
                ).fetchone()
                error = f"{result.outcome.value}: {result.detail}"
                if refusals >= policy.max_refusals:
                    state, next_attempt = ItemState.FAILED, now
                else:
                    state, next_attempt = ItemState.PENDING, now + policy.delay(attempts)
                self._db.execute(
                    "UPDATE outbox SET state = ?, attempts = ?, refusals = ?, last_attempt = ?, "
                    "next_attempt = ?, last_error = ? WHERE id = ?",
                    (state.value, attempts, refusals, now, next_attempt, error, item.id),
                )

    def backlog(self, now: float) -> list[DestinationBacklog]:
        """Pending and failed files per destination (destinations with neither are left out)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT destination, SUM(state = ?), SUM(state = ?), "
                "MIN(CASE WHEN state = ? THEN enqueued END), "
                "MIN(CASE WHEN state = ? THEN next_attempt END) "
                "FROM outbox WHERE state IN (?, ?) GROUP BY destination ORDER BY destination",
                (
                    ItemState.PENDING.value,
                    ItemState.FAILED.value,
                    ItemState.PENDING.value,
                    ItemState.PENDING.value,
                    ItemState.PENDING.value,
                    ItemState.FAILED.value,
                ),
            ).fetchall()
            backlog = []
            for name, pending, failed, oldest, next_attempt in rows:
                error = self._db.execute(
                    "SELECT last_error FROM outbox WHERE destination = ? AND state = ? "
                    "AND last_error IS NOT NULL ORDER BY last_attempt DESC LIMIT 1",
                    (name, ItemState.PENDING.value),
                ).fetchone()
                backlog.append(
                    DestinationBacklog(
                        name,
                        pending,
                        failed,
                        None if oldest is None else max(0.0, now - oldest),
                        None if next_attempt is None else max(0.0, next_attempt - now),
                        error[0] if error else None,
                    )
                )
        return backlog

    def deliveries(self, job_ids: Sequence[int]) -> list[JobDeliveries]:
        """Delivery of the files of these jobs (queued by workers as
        ``"<job id>/<SOP Instance UID>"``); jobs with no file are left out.

        Each job's files are the keys from "<id>/" up to "<id>0" ('0' follows
        '/' in ASCII), a range of the table's unique index: retention asks
        under the index database's write lock, and grouping the whole outbox,
        which is never emptied, took 200-500 ms at 200,000 files.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT CAST(job.value AS INTEGER), SUM(state = ?), "
                "MAX(CASE WHEN state = ? THEN delivered WHEN state = ? THEN last_attempt END) "
                "FROM json_each(?) AS job JOIN outbox "
                "ON job_id >= job.value || '/' AND job_id < job.value || '0' GROUP BY job.value",
                (ItemState.PENDING.value, ItemState.DELIVERED.value, ItemState.FAILED.value,
                 json.dumps(list(job_ids))),
            ).fetchall()
        return [JobDeliveries(*row) for row in rows]

    def deliveries_by_destination(self, job_ids: Sequence[int]) -> dict[int, tuple[Delivery, ...]]:
        """Each job's files per destination, for the console's series page (a
        series has a handful of jobs); key ranges as in :meth:`deliveries`."""
        counts = (
            "SELECT destination, SUM(state = ?), SUM(state = ?), SUM(state = ?), MAX(delivered) FROM outbox "
            "WHERE job_id >= ? AND job_id < ? GROUP BY destination ORDER BY destination"
        )
        last_error = (
            "SELECT last_error FROM outbox WHERE job_id >= ? AND job_id < ? AND destination = ? "
            "AND state != ? AND last_error IS NOT NULL ORDER BY last_attempt DESC LIMIT 1"
        )
        states = (ItemState.DELIVERED.value, ItemState.PENDING.value, ItemState.FAILED.value)
        found: dict[int, tuple[Delivery, ...]] = {}
        with self._lock:
            for job_id in job_ids:
                keys = (f"{job_id}/", f"{job_id}0")
                rows = self._db.execute(counts, (*states, *keys)).fetchall()
                errors = [
                    self._db.execute(last_error, (*keys, row[0], ItemState.DELIVERED.value)).fetchone()
                    for row in rows
                ]
                found[job_id] = tuple(
                    Delivery(*row, None if error is None else error[0])
                    for row, error in zip(rows, errors, strict=True)
                )
        return found

    def failed_items(self) -> list[FailedItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, destination, path, attempts, last_error FROM outbox "
                "WHERE state = ? ORDER BY id",
                (ItemState.FAILED.value,),
            ).fetchall()
        return [FailedItem(row[0], row[1], Path(row[2]), row[3], row[4]) for row in rows]


def _warn_of_unchecked_certificates(config: SegnodeConfig) -> None:
    """Say which destinations accept a certificate for any host: allowed, for
    a PACS whose certificate does not name the address it is reached at, but
    then its CA alone stands between the results and whoever it certified."""
    for name, destination in config.destinations.items():
        tls = destination.tls
        if tls is not None and not tls.verify_hostname and tls.sha256 is None:
            LOG.warning(
                "destinations.%s.tls: verify_hostname is false and no sha256 pin: "
                "any certificate its CA signed is accepted",
                name,
            )


class Outbox:
    """Sends what the store holds: a scheduler thread, and one round thread per destination.

    Each round takes a destination's due files, sends them on one association
    (node.send.sender) and commits the outcomes. Destinations never wait for each
    other: one that is down or stalls only occupies its own round thread.
    Destinations are looked up by name when a round starts, so a reload
    (:meth:`apply`) that moves one takes effect on its next round.

    Parameters
    ----------
    storage_dir : pathlib.Path
        Where ``outbox.sqlite3`` lives (the node's storage folder).
    config : SegnodeConfig
        Destinations and this node's AE title (the calling AE).
    metrics : NodeMetrics
        Backlog gauges and send counters.
    policy : RetryPolicy
        Backoff and when to give up.
    timeout : float
        Seconds a destination may stay silent (node.send.sender.send_files).
    """

    def __init__(
        self,
        storage_dir: Path,
        config: SegnodeConfig,
        metrics: NodeMetrics,
        *,
        policy: RetryPolicy = RetryPolicy(),
        timeout: float = 10.0,
    ):
        self.store = OutboxStore(storage_dir)
        self._metrics = metrics
        self._policy = policy
        self._timeout = timeout
        self._config = config
        self._lock = threading.Lock()
        self._rounds: dict[str, threading.Thread] = {}
        self._unconfigured_reported: set[str] = set()
        self._gauged: set[str] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._scheduler = threading.Thread(target=self._schedule, name="outbox", daemon=True)
        _warn_of_unchecked_certificates(config)

    def apply(self, config: SegnodeConfig) -> None:
        """Use ``config``'s destinations and AE title from the next round on."""
        _warn_of_unchecked_certificates(config)
        with self._lock:
            self._config = config
            self._unconfigured_reported.clear()
        self._wake.set()

    def enqueue(self, job_id: str, destination: str, files: Sequence[Path]) -> int:
        """Queue result files (already durable on disk) for a configured destination.

        Returns how many were newly queued; the files are safe in the outbox
        when this returns.
        """
        with self._lock:
            if destination not in self._config.destinations:
                raise OutboxError(f"job {job_id}: no destination named {destination!r} is configured")
        queued = self.store.enqueue(job_id, destination, files, time.time())
        self._wake.set()
        return queued

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        """Stop scheduling, give running rounds one timeout to finish, close the store.

        A round cut short leaves its files pending; they go after the restart.
        """
        self._stopping.set()
        self._wake.set()
        if self._scheduler.is_alive():
            self._scheduler.join()
        with self._lock:
            rounds = list(self._rounds.values())
        for thread in rounds:
            thread.join(self._timeout)
        self.store.close()

    # Scheduler --------------------------------------------------------------

    def _schedule(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            wait = _IDLE_POLL_SECONDS
            try:
                now = time.time()
                self._update_gauges(now)
                for name in self.store.due_destinations(now):
                    self._start_round(name)
                # A running round wakes the scheduler when it ends; an
                # unconfigured destination waits for a reload.
                with self._lock:
                    not_waited_for = [*self._rounds, *self._unconfigured_reported]
                earliest = self.store.next_attempt(not_waited_for)
                if earliest is not None:
                    wait = min(wait, max(0.0, earliest - time.time()))
            except Exception:  # a dead scheduler would deliver nothing, silently
                LOG.exception("outbox scheduler: retrying in %gs", wait)
            self._wake.wait(wait)

    def _start_round(self, name: str) -> None:
        with self._lock:
            if name in self._rounds or self._stopping.is_set():
                return
            destination = self._config.destinations.get(name)
            if destination is None:
                if name not in self._unconfigured_reported:
                    LOG.error("files wait for destination %r, which is not configured", name)
                    self._unconfigured_reported.add(name)
                return
            calling_ae = self._config.node.ae_title
            thread = threading.Thread(
                target=self._round, args=(name, destination, calling_ae), name=f"outbox-{name}", daemon=True
            )
            self._rounds[name] = thread
        thread.start()

    def _round(self, name: str, destination: Destination, calling_ae: str) -> None:
        try:
            items = self.store.due(name, time.time(), _ROUND_SIZE)
            if items:
                results = send_files(
                    destination,
                    [item.path for item in items],
                    calling_ae=calling_ae,
                    timeout=self._timeout,
                    name=name,
                )
                self.store.record(items, results, time.time(), self._policy)
                self._count(name, results)
        except Exception:
            LOG.exception("delivery round to %s failed; its files stay queued", name)
            self._stopping.wait(self._policy.base_seconds)
        finally:
            with self._lock:
                del self._rounds[name]
            self._wake.set()

    def _count(self, name: str, results: Sequence[SendResult]) -> None:
        for result in results:
            if result.delivered:
                self._metrics.instances_sent.labels(name).inc()
            elif result.outcome is not Outcome.NOT_ATTEMPTED:
                self._metrics.send_failures.labels(name, result.outcome.value).inc()

    def _update_gauges(self, now: float) -> None:
        backlog = self.store.backlog(now)
        for entry in backlog:
            self._metrics.outbox_pending.labels(entry.destination).set(entry.pending)
            self._metrics.outbox_failed.labels(entry.destination).set(entry.failed)
            self._metrics.outbox_oldest_pending.labels(entry.destination).set(
                entry.oldest_pending_seconds or 0.0
            )
        for name in self._gauged - {entry.destination for entry in backlog}:
            self._metrics.outbox_pending.labels(name).set(0)
            self._metrics.outbox_failed.labels(name).set(0)
            self._metrics.outbox_oldest_pending.labels(name).set(0)
        self._gauged = {entry.destination for entry in backlog}
