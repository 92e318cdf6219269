"""segnode configuration: one YAML file, validated by pydantic, passed to every stage."""

from config.loader import RESTART_ONLY, ConfigError, file_signature, load_config, parse_config, reloaded
from config.schema import (
    Destination,
    JobSettings,
    NodeSettings,
    Peer,
    Pipeline,
    QaSettings,
    Route,
    RouteMatch,
    SegnodeConfig,
    SendingSettings,
)

__all__ = [
    "RESTART_ONLY",
    "ConfigError",
    "Destination",
    "JobSettings",
    "NodeSettings",
    "Peer",
    "Pipeline",
    "QaSettings",
    "Route",
    "RouteMatch",
    "SegnodeConfig",
    "SendingSettings",
    "file_signature",
    "load_config",
    "parse_config",
    "reloaded",
]
