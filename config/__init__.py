"""segnode configuration: one YAML file, validated by pydantic, passed to every stage."""

from config.loader import (
    RESTART_ONLY,
    ConfigError,
    ConfigFile,
    file_signature,
    load_config,
    parse_config,
    read_config,
    reloaded,
)
from config.reload_guard import GUARDED, read_for_reload, reload_refusals, sets_nothing
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
    default_models_dir,
)

__all__ = [
    "GUARDED",
    "RESTART_ONLY",
    "ConfigError",
    "ConfigFile",
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
    "default_models_dir",
    "file_signature",
    "load_config",
    "parse_config",
    "read_config",
    "read_for_reload",
    "reload_refusals",
    "reloaded",
    "sets_nothing",
]
