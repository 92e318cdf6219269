"""A worker's copy of the configuration that follows its file, as the node's reload does.

Workers (the node's own processes, and ``segnode worker`` hosts) read the
node's file again when it changes, under the node's rule: what the node
would refuse is refused here too (config/reload_guard.py), and the store
stays where it is (:func:`config.loader.reloaded`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from config.loader import ConfigError, file_signature, load_config, reloaded
from config.reload_guard import read_for_reload
from config.schema import SegnodeConfig

LOG = logging.getLogger(__name__)


class FollowedConfig:
    """The configuration in `path`, loaded without checking files (the node's
    copy, checked by the node: a certificate that expired since must not keep
    a restarted worker from its jobs)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.config = load_config(self.path, check_files=False)
        self._signature = file_signature(self.path)

    def current(self) -> SegnodeConfig:
        """The configuration, read again first if the file changed since."""
        signature = file_signature(self.path)
        if signature is not None and signature != self._signature:
            self._signature = signature
            try:
                loaded = read_for_reload(self.path, self.config, check_files=False)
                self.config = reloaded(loaded.config, self.config)
                LOG.info("configuration %s reloaded", self.path)
            except ConfigError as exc:
                LOG.error("keeping the configuration in force: %s", exc)
        return self.config
