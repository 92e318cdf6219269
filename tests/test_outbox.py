"""node/send/outbox.py: durable delivery to real peers, retries, give-ups, kill -9.

The peers are those of tests/test_send.py: dcmtk's storescp as a subprocess
and a scripted pynetdicom SCP. Retry delays are shortened so that each
test takes seconds; the behaviour they show does not depend on the scale.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config import SegnodeConfig
from node.metrics import NodeMetrics
from node.send.outbox import JobDeliveries, Outbox, OutboxError, OutboxStore, RetryPolicy
from tests.conftest import REPO, free_port
from tests.synthetic import dataset_bytes, write_ct_series
from tests.test_send import Peers, StoreSCP, uid_of

FAST = RetryPolicy(base_seconds=0.2, max_seconds=0.8, max_refusals=3)


def config_for(**destinations) -> SegnodeConfig:
    return SegnodeConfig.model_validate(
        {
            "node": {"ae_title": "SEGNODE"},
            "destinations": {name: dest.model_dump() for name, dest in destinations.items()},
        }
    )


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"after {timeout}s: {what}")


def pending(outbox: Outbox, destination: str) -> int:
    return next((b.pending for b in outbox.store.backlog(time.time()) if b.destination == destination), 0)


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    started = Peers(tmp_path)
    yield started
    started.stop()


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return write_ct_series(tmp_path / "results", slices=3, rows=8, columns=8)


@pytest.fixture
def make_outbox(tmp_path: Path) -> Iterator:
    made: list[Outbox] = []

    def make(config: SegnodeConfig, timeout: float = 5.0) -> tuple[Outbox, NodeMetrics]:
        metrics = NodeMetrics()
        outbox = Outbox(tmp_path / "store", config, metrics, policy=FAST, timeout=timeout)
        made.append(outbox)
        outbox.start()
        return outbox, metrics

    yield make
    for outbox in made:
        outbox.stop()


def test_queued_files_are_delivered_counted_and_kept(peers, files, make_outbox):
    storescp = peers.storescp()
    outbox, metrics = make_outbox(config_for(pacs=storescp.destination))

    assert outbox.enqueue("job-1", "pacs", files) == 3
    wait_until(lambda: len(storescp.received()) == 3, 10, "three files at storescp")
    wait_until(lambda: outbox.store.backlog(time.time()) == [], 5, "an empty backlog")

    received = storescp.received()
    for path in files:
        assert path.exists(), "the outbox must not delete what it sent"
        assert dataset_bytes(received[uid_of(path)]) == dataset_bytes(path)
    assert sample(metrics, "segnode_instances_sent_total", destination="pacs") == 3
    wait_until(
        lambda: sample(metrics, "segnode_outbox_pending", destination="pacs") == 0,
        3,
        "pending gauge back to 0",
    )
    assert outbox.enqueue("job-1", "pacs", files) == 0, "queuing the same files again is a no-op"


def test_destination_down_then_back_gets_everything_after_backoff(peers, files, make_outbox):
    port = free_port()
    outbox, metrics = make_outbox(config_for(pacs=StoreSCP.destination_at(port)))
    outbox.enqueue("job-1", "pacs", files)

    wait_until(
        lambda: (
            sample(metrics, "segnode_send_failures_total", destination="pacs", outcome="connect-failed") >= 9
        ),
        10,
        "three failed rounds",
    )
    (backlog,) = outbox.store.backlog(time.time())
    assert backlog.pending == 3 and backlog.failed == 0
    assert backlog.last_error.startswith("connect-failed: cannot connect to STORESCP@127.0.0.1")
    assert backlog.next_attempt_seconds is not None and backlog.next_attempt_seconds <= FAST.max_seconds
    assert backlog.oldest_pending_seconds > 0.5
    assert sample(metrics, "segnode_outbox_pending", destination="pacs") == 3
    # Backoff, not a busy loop: after rounds at 0, 0.2 and 0.6 s the delay
    # stays at 0.8 s, so 1.6 s later two more rounds have failed.
    time.sleep(2 * FAST.max_seconds)
    failures = sample(metrics, "segnode_send_failures_total", destination="pacs", outcome="connect-failed")
    assert 3 * 4 <= failures <= 3 * 6

    back = peers.storescp(port=port)
    waited = wait_until(lambda: len(back.received()) == 3, FAST.max_seconds + 3, "delivery after the restart")
    assert waited <= FAST.max_seconds + 1.5
    wait_until(lambda: outbox.store.backlog(time.time()) == [], 3, "an empty backlog")
    assert sample(metrics, "segnode_instances_sent_total", destination="pacs") == 3


def test_permanent_refusals_give_up_transient_ones_never(peers, files, make_outbox):
    scripted_scp = peers.scripted()
    refused, busy, fine = (uid_of(path) for path in files)
    scripted_scp.answers[refused] = [(0xC000, "cannot understand")]
    scripted_scp.answers[busy] = [0xA700]
    outbox, metrics = make_outbox(config_for(pacs=scripted_scp.destination))
    outbox.enqueue("job-1", "pacs", files)

    wait_until(lambda: outbox.store.failed_items(), 10, "a failed item")
    (failed,) = outbox.store.failed_items()
    assert failed.path == files[0].resolve()
    assert failed.job_id == "job-1" and failed.destination == "pacs"
    assert failed.attempts == FAST.max_refusals == scripted_scp.attempts(refused)
    assert "refused: 0xC000 Cannot Understand: cannot understand" in failed.reason
    wait_until(
        lambda: scripted_scp.attempts(busy) > FAST.max_refusals + 1, 10, "more out-of-resources retries"
    )
    (backlog,) = outbox.store.backlog(time.time())
    assert (backlog.pending, backlog.failed) == (1, 1)
    assert "0xA700" in backlog.last_error
    assert scripted_scp.attempts(fine) == 1
    assert all(path.exists() for path in files)
    wait_until(lambda: sample(metrics, "segnode_outbox_failed", destination="pacs") == 1, 3, "failed gauge")


def test_a_stalled_destination_delays_neither_the_others_nor_itself_for_long(peers, files, make_outbox):
    scripted_scp, storescp = peers.scripted(), peers.storescp()
    scripted_scp.stall_first.add(uid_of(files[0]))
    outbox, metrics = make_outbox(
        config_for(slow=scripted_scp.destination, fast=storescp.destination), timeout=1.5
    )

    outbox.enqueue("job-1", "slow", files[:1])
    assert scripted_scp.stalled.wait(5)
    outbox.enqueue("job-1", "fast", files)
    assert wait_until(lambda: len(storescp.received()) == 3, 5, "delivery to the other destination") < 1.0

    wait_until(lambda: pending(outbox, "slow") == 0, 1.5 + FAST.base_seconds + 3, "the retry after the stall")
    assert scripted_scp.attempts(uid_of(files[0])) == 2
    assert sample(metrics, "segnode_send_failures_total", destination="slow", outcome="timed-out") == 1


def test_a_reload_moves_a_destination_for_the_next_round(peers, files, make_outbox):
    storescp = peers.storescp()
    outbox, metrics = make_outbox(config_for(pacs=StoreSCP.destination_at(free_port())))
    outbox.enqueue("job-1", "pacs", files)
    wait_until(
        lambda: sample(metrics, "segnode_send_failures_total", destination="pacs", outcome="connect-failed"),
        5,
        "a failed round",
    )

    outbox.apply(config_for(pacs=storescp.destination))
    wait_until(
        lambda: len(storescp.received()) == 3, FAST.max_seconds + 3, "delivery to the moved destination"
    )


def test_bad_requests_are_refused_and_queue_nothing(files, make_outbox, tmp_path):
    outbox, _ = make_outbox(config_for(pacs=StoreSCP.destination_at(free_port())))
    with pytest.raises(OutboxError, match="no destination named 'archive'"):
        outbox.enqueue("job-1", "archive", files)
    with pytest.raises(OutboxError, match="missing.dcm is not a file on disk"):
        outbox.enqueue("job-1", "pacs", [files[0], tmp_path / "missing.dcm"])
    with pytest.raises(OutboxError, match="job id"):
        outbox.enqueue("", "pacs", files)
    assert outbox.store.backlog(time.time()) == []
    with pytest.raises(ValueError, match="base"):
        RetryPolicy(base_seconds=10, max_seconds=1)


def test_deliveries_keep_apart_jobs_whose_ids_share_digits(files, tmp_path):
    """Retention reads a job's files by the "<job id>/" prefix of their keys."""
    store = OutboxStore(tmp_path)
    store.enqueue("5/1.2.3", "pacs", files[:1], 100.0)
    store.enqueue("50/1.2.3", "pacs", files[:2], 100.0)
    store.enqueue("500/1.2.3", "pacs", files[:3], 100.0)
    store.enqueue("job-1", "pacs", files, 100.0)  # not a worker's key: no job's
    assert sorted(store.deliveries([5, 50, 7, 500]), key=lambda d: d.job_id) == [
        JobDeliveries(5, 1, None), JobDeliveries(50, 2, None), JobDeliveries(500, 3, None)]
    store.close()


DELIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from config import SegnodeConfig
    from node.metrics import NodeMetrics
    from node.send.outbox import Outbox, RetryPolicy

    storage, port, *files = sys.argv[1:]
    config = SegnodeConfig.model_validate(
        {"destinations": {"pacs": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": int(port)}}}
    )
    outbox = Outbox(Path(storage), config, NodeMetrics(), policy=RetryPolicy(0.2, 0.8), timeout=5)
    if files:
        outbox.enqueue("job-1", "pacs", [Path(f) for f in files])
    outbox.start()
    time.sleep(600)
    """
)


def test_kill_9_while_delivering_then_restart_delivers_everything(peers, files, tmp_path):
    # +uf keeps every copy that arrives; --sleep-after holds each response
    # back for a second after the file is written, so the kill lands while
    # the first file is stored but not yet acknowledged.
    peer = peers.storescp("+uf", "--sleep-after", "1")
    storage = tmp_path / "store"

    def deliver(*queue: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", DELIVER, str(storage), str(peer.port), *map(str, queue)], cwd=REPO
        )

    first = deliver(*files)
    try:
        wait_until(lambda: peer.received_counts(), 10, "the first file at storescp")
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait(10)
    store = OutboxStore(storage, read_only=True)
    try:
        (backlog,) = store.backlog(time.time())
        assert backlog.pending == 3, "nothing was acknowledged before the kill"
    finally:
        store.close()

    second = deliver()
    try:
        store = OutboxStore(storage, read_only=True)
        try:
            wait_until(lambda: store.backlog(time.time()) == [], 15, "everything delivered after the restart")
        finally:
            store.close()
    finally:
        second.kill()
        second.wait(10)

    counts = peer.received_counts()
    assert counts == {uid_of(files[0]): 2, uid_of(files[1]): 1, uid_of(files[2]): 1}
    for arrived in peer.out.iterdir():
        sent = next(path for path in files if uid_of(path) == uid_of(arrived))
        assert dataset_bytes(arrived) == dataset_bytes(sent)
