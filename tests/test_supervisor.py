"""node/work/supervisor.py with real child processes: the doubling pause
between restarts, its reset after a healthy run, and stopping by a signal, a
grace period and a kill."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

import pytest

from node.work.supervisor import ChildSlot, ProcessSupervisor

EXIT_AT_ONCE = "import sys; sys.exit(3)"
SLEEP = "import time; time.sleep(60)"


def ready_then_sleep(on_quit: str) -> str:
    """A child that says it is ready once its SIGQUIT disposition is set."""
    return (f"import signal, sys, time\n{on_quit}\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")


def python(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)


def test_a_child_that_keeps_exiting_waits_twice_as_long_each_time_until_it_ran_a_while(caplog):
    scripts = [EXIT_AT_ONCE, EXIT_AT_ONCE, SLEEP, SLEEP]
    spawned: list[tuple[float, subprocess.Popen]] = []
    exited: list[tuple[float, str]] = []

    def spawn(slot: ChildSlot) -> subprocess.Popen:
        spawned.append((time.monotonic(), python(scripts[len(spawned)])))
        return spawned[-1][1]

    slot = ChildSlot("child-0", "cpu")
    children = ProcessSupervisor([slot], spawn, signal.SIGTERM, 5.0,
                                 on_exit=lambda label: exited.append((time.monotonic(), label)))
    caplog.set_level(logging.INFO, logger="node.work.supervisor")
    children.start()
    try:
        checked_until(children, lambda: len(spawned) == 3, 10)
        # Each pause runs from the exit seen to the next start.
        assert 1.0 <= spawned[1][0] - exited[0][0] < 1.3
        assert 2.0 <= spawned[2][0] - exited[1][0] < 2.3
        assert [label for _, label in exited] == [f"child-0:{p.pid}" for _, p in spawned[:2]]
        assert [p.returncode for _, p in spawned[:2]] == [3, 3]
        assert "exited with status 3; restarting it in 1 s" in caplog.text
        assert "exited with status 3; restarting it in 2 s" in caplog.text
        assert children.states() == [{"name": "child-0", "device": "cpu", "pid": spawned[2][1].pid,
                                      "running": True, "restarts": 2}]

        # A child that ran longer than the longest pause (its start moved back
        # rather than waited for) was healthy: its pauses start over.
        slot.started_at -= 61
        spawned[2][1].kill()
        checked_until(children, lambda: len(spawned) == 4, 5)
        assert 1.0 <= spawned[3][0] - exited[2][0] < 1.3
        assert children.states()[0]["restarts"] == 1
        assert f"child-0:{spawned[2][1].pid} exited with status -9; restarting it in 1 s" in caplog.text
    finally:
        children.stop()
    assert spawned[3][1].returncode == -signal.SIGTERM


def test_stop_sends_the_stop_signal_and_kills_what_outlives_the_grace_period(caplog):
    scripts = {"quits": ready_then_sleep("signal.signal(signal.SIGQUIT, lambda *_: sys.exit(5))"),
               "stays": ready_then_sleep("signal.signal(signal.SIGQUIT, signal.SIG_IGN)")}
    processes: dict[str, subprocess.Popen] = {}

    def spawn(slot: ChildSlot) -> subprocess.Popen:
        processes[slot.name] = python(scripts[slot.name])
        return processes[slot.name]

    children = ProcessSupervisor([ChildSlot("quits", "cuda:0"), ChildSlot("stays", "cuda:1")], spawn,
                                 signal.SIGQUIT, 1.0)
    children.start()
    for process in processes.values():
        assert process.stdout.readline() == b"ready\n"
    assert [s["running"] for s in children.states()] == [True, True]

    start = time.monotonic()
    children.stop()
    assert 1.0 <= time.monotonic() - start < 3.0
    assert processes["quits"].returncode == 5
    assert processes["stays"].returncode == -signal.SIGKILL
    assert f"stays:{processes['stays'].pid} did not stop in 1 s; killing it" in caplog.text
    assert f"quits:{processes['quits'].pid} did not stop" not in caplog.text
    assert [s["running"] for s in children.states()] == [False, False]


def checked_until(children: ProcessSupervisor, condition, timeout: float) -> None:
    """The owner's loop, checked faster than the node does, so that timings are close."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out; children: {children.states()}")
        children.check()
        time.sleep(0.02)
