"""What the console needs of the running node, handed over by the service.

The console opens its own SQLite connections (read-only where it only
reads) from ``storage_dir``, as ``segnode status`` does, so that a slow page
never holds a lock the receiving or working stages wait on. What only the
running process knows (its associations, the configuration in force) comes
through the callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from config import SegnodeConfig
from node.receive.scp import OpenAssociation


@dataclass(frozen=True)
class ConsoleContext:
    config_path: Path
    #: The configuration in force (a refused file never becomes it).
    current_config: Callable[[], SegnodeConfig]
    storage_dir: Path
    open_associations: Callable[[], tuple[OpenAssociation, ...]]
    #: Asks the node to reload its file, as SIGHUP does; returns at once.
    request_reload: Callable[[], None]
    #: The node's registry: the console's own metrics go there.
    registry: CollectorRegistry
