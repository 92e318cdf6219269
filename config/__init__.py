"""segnode configuration: one YAML file, validated by pydantic, passed to every stage."""

from config.loader import ConfigError, load_config, parse_config
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
    "load_config",
    "parse_config",
]
