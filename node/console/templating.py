"""The console's Jinja2 environment: autoescaped, strict, with its filters.

Every template escapes what it prints (AE titles, series descriptions and
error messages come from scanners and users); a name a template misspells
is an error, not an empty string that would hide a missing value.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context
from jinja2.runtime import Context
from markupsafe import Markup

from node.console.csrf import CSRF_FIELD

TEMPLATES = Path(__file__).parent / "templates"
_UNITS = ("KiB", "MiB", "GiB", "TiB")


def local_time(epoch: float | None) -> str:
    """Epoch seconds in the node's local time, with the zone's name (a node may serve
    sites in several zones; the name says which one a time is in)."""
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def size(count: float | None) -> str:
    """Bytes in binary units (KiB, MiB, ...)."""
    if count is None:
        return "—"
    if count < 1024:
        return f"{count:.0f} B"
    exponent = min(len(_UNITS), int(math.log(count, 1024)))
    return f"{count / 1024 ** exponent:.1f} {_UNITS[exponent - 1]}"


@pass_context
def csrf_field(context: Context) -> Markup:
    """The hidden field that every form carries (``{{ csrf_field() }}``); a global, not a
    macro to import, so that a block rendered alone (a fragment) has it too."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, context["csrf_token"])


def console_templates() -> Environment:
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)
    environment.filters.update(local_time=local_time, duration=duration, size=size)
    environment.globals["csrf_field"] = csrf_field
    return environment
