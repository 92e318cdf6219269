"""The README's two-host deployment is one that segnode would run as written."""

from __future__ import annotations

from pathlib import Path

import yaml

from config import load_config
from node.cli import build_parser

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "two-hosts"


def test_the_two_host_configuration_is_valid_and_uses_celery() -> None:
    config = load_config(EXAMPLE / "segnode.yaml", check_files=False)
    assert config.jobs.backend == "celery"
    assert config.worker.devices == "auto"


def test_every_host_mounts_the_storage_where_the_configuration_says_and_runs_a_real_command() -> None:
    compose = yaml.safe_load((EXAMPLE / "compose.yaml").read_text())
    storage = str(load_config(EXAMPLE / "segnode.yaml", check_files=False).node.storage_dir)
    services = compose["services"]
    for name in ("node", "worker"):
        assert f"segnode-storage:{storage}" in services[name]["volumes"], name
        # The image's entrypoint is segnode: the command is one of its subcommands.
        build_parser().parse_args(services[name]["command"])
    assert services["worker"]["command"][0] == "worker"
    assert compose["volumes"]["segnode-storage"]["driver_opts"]["type"] == "nfs"
