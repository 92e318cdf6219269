"""A real RabbitMQ for the tests of the Celery backend: Debian's rabbitmq-server, one node per test.

The node runs as the current user on free ports, with its own name, Erlang
cookie (in HOME), data, logs, configuration and epmd, all under the test's
folder: it shares nothing with a system RabbitMQ on 5672, nor with another
test's node. Killed and started again on the same data folder it keeps its
durable queues and the persistent messages it had written, as a site's
broker does.

Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the
``rabbitmq`` user; the script it calls is run directly. With
``RABBITMQ_ALLOW_INPUT`` that script execs the Erlang VM instead of
keeping a shell in front of it, so the process started here is the broker
itself, killed and reaped exactly (its port helpers exit with it); ``-noinput``
keeps the VM's shell off stdin all the same.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from tests.conftest import free_port, wait_for_port

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = Path("/usr/bin/epmd")
_START_SECONDS = 60.0


def rabbitmq_missing() -> str | None:
    """Why no RabbitMQ node can be started here, or None."""
    for path in (RABBITMQ_SERVER, EPMD):
        if not path.exists():
            return f"{path} is not installed (Debian's rabbitmq-server package)"
    return None


class RabbitMQServer:
    """One RabbitMQ node on 127.0.0.1, its state in `workdir`; can be killed and started again."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"segnode-test-{self.port}@localhost"
        self.proc: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None
        self._write_configuration()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _write_configuration(self) -> None:
        (self.workdir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.workdir / "enabled_plugins").write_text("[].\n")  # no management plugin, no port of its own
        (self.workdir / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq's

    def _environment(self) -> dict[str, str]:
        workdir = self.workdir
        return {
            **os.environ,
            "HOME": str(workdir),  # the Erlang cookie
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),  # absent: none
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_ALLOW_INPUT": "1",
        }

    def start(self) -> RabbitMQServer:
        missing = rabbitmq_missing()
        if missing is not None:
            raise RuntimeError(missing)
        with (self.workdir / "epmd.log").open("ab") as log:
            self.epmd = subprocess.Popen([str(EPMD), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.epmd_port, self.epmd)
        with (self.workdir / "rabbitmq.log").open("ab") as log:
            self.proc = subprocess.Popen([str(RABBITMQ_SERVER), "-noinput"], env=self._environment(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir)
        self._wait_for_amqp()
        return self

    def _wait_for_amqp(self) -> None:
        """Until a client logs in: the port opens before the default user may."""
        deadline = time.monotonic() + _START_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}:\n{self.log()}")
            with Connection(self.url, connect_timeout=1) as connection:
                try:
                    connection.connect()
                    return
                except connection.connection_errors as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"RabbitMQ at {self.url} did not answer in {_START_SECONDS:.0f} s "
                                           f"({exc}):\n{self.log()}") from exc
            time.sleep(0.2)

    def log(self) -> str:
        """The ends of its stdout (the banner, or why it did not boot) and of the node's log file."""
        paths = (self.workdir / "rabbitmq.log", self.workdir / "log" / f"{self.nodename}.log")
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in paths if path.exists())

    def stop(self) -> None:
        """Kill it (kill -9: no clean shutdown), and its epmd: what it wrote to disk stays."""
        for proc in (self.proc, self.epmd):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def rabbitmq_server(tmp_path: Path) -> Iterator[RabbitMQServer]:
    missing = rabbitmq_missing()
    if missing is not None:
        pytest.skip(missing)
    server = RabbitMQServer(tmp_path / "rabbitmq").start()
    yield server
    server.stop()
