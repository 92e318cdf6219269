"""The configuration page: peers, destinations, pipelines and routes as forms.

The forms show the file, not the configuration in force: after a refused
reload the two differ, and an administrator fixes the file. A change is
made to the file's text as read (``config.editing``), validated as the
node reads it, written atomically, and only then is the node asked to
reload. Each form carries the SHA-256 of the text it was built from, so
that a change made from a page shown before someone else saved is refused
instead of undoing theirs.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, replace
from typing import Final, Literal

import yaml
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from config import Destination, Peer, Pipeline
from config import Route as RouteModel
from config.editing import (
    SECTIONS,
    ConfigConflictError,
    ConfigEditError,
    FieldError,
    edit_section,
    read_config_text,
    save_change,
)
from node.config_record import ConfigRecordError, read_record
from node.console.context import ConsoleContext
from node.console.web import checked_form, page, record_change, signed_in_user, whole_number

#: What a form can do to its section.
ACTIONS: Final = ("add", "edit", "remove", "move")
#: A new or renamed destination or pipeline: its name is in URLs, logs and metric labels.
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE: Final = "1 to 64 of A-Z a-z 0-9 . _ -, beginning with a letter or digit"
_CONFLICT: Final = ("The file changed since this page was shown (someone saved, or edited it); nothing was "
                     "changed. Here is the file as it is now: make the change again.")
#: The session key of the notice shown once after a change (the session cookie is signed).
_NOTICE: Final = "config_notice"


@dataclass(frozen=True)
class FormField:
    """One field of an entry's form. ``name`` is also its path in the entry
    (``match.modality``). An optional text field left empty removes the key,
    so that the schema's default (or "anything", for a route's match) applies."""

    name: str
    label: str
    kind: Literal["text", "number", "select", "checks", "flag"]
    choices: tuple[str, ...] = ()
    optional: bool = False


@dataclass(frozen=True)
class Section:
    """A section as forms: its model, whether its entries are named (a
    mapping) or ordered (a list), and the fields its forms show."""

    key: str
    title: str
    noun: str
    model: type[BaseModel]
    named: bool
    fields: tuple[FormField, ...]


_MATCH_FIELDS = tuple(
    FormField(f"match.{name}", f"match {name}", "text", optional=True)
    for name in ("calling_ae", "called_ae", "modality", "series_description", "body_part_examined")
)


def sections(document: dict) -> tuple[Section, ...]:
    """The four sections; a route's pipeline and destinations are chosen among the file's."""
    return (
        Section("peers", "Peers", "peer", Peer, False, (
            FormField("ae_title", "AE title", "text"),
            FormField("host", "host", "text", optional=True),
            FormField("tls", "TLS", "select", ("optional", "required")),
            FormField("completion", "completion", "select", ("stable", "association")),
        )),
        Section("destinations", "Destinations", "destination", Destination, True, (
            FormField("ae_title", "AE title", "text"),
            FormField("host", "host", "text"),
            FormField("port", "port", "number"),
            FormField("outputs", "outputs", "checks", ("seg", "sr", "pdf", "overlay", "rtstruct")),
            FormField("seg_format", "SEG format", "select", ("binary", "labelmap", "both")),
        )),
        Section("pipelines", "Pipelines", "pipeline", Pipeline, True, (
            FormField("model", "model", "text"),
            FormField("device", "device", "select", ("auto", "cpu", "cuda")),
            FormField("qa.plausibility", "QA: plausibility", "flag"),
            FormField("qa.mirror_consistency", "QA: mirror consistency", "flag"),
        )),
        Section("routes", "Routes", "route", RouteModel, False, (
            FormField("name", "name", "text"),
            *_MATCH_FIELDS,
            FormField("pipeline", "pipeline", "select", _names(document, "pipelines")),
            FormField("send_to", "send to", "checks", _names(document, "destinations")),
        )),
    )


def _names(document: dict, section: str) -> tuple[str, ...]:
    value = document.get(section)
    return tuple(str(name) for name in value) if isinstance(value, dict) else ()


def _default(model: type[BaseModel], path: str) -> object:
    """The schema's value of a field the file leaves out (None where it has none)."""
    first, *rest = path.split(".")
    info = model.model_fields[first]
    value = None if info.is_required() else info.get_default(call_default_factory=True)
    for part in rest:
        value = getattr(value, part, None)
    return value


def _lookup(entry: dict, path: str) -> object:
    value: object = entry
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _put(entry: dict, path: str, value: object, default: object) -> None:
    """Set `value` at `path` in `entry`; None removes the key, and a default the
    file did not spell out stays unspelt (a form never adds noise to the file)."""
    *parents, last = path.split(".")
    target = entry
    for part in parents:
        if not isinstance(target.get(part), dict):
            if value is None or value == default:
                return
            target[part] = {}
        target = target[part]
    if value is None:
        target.pop(last, None)
    elif last in target or value != default:
        target[last] = value


def _form_value(field: FormField, form: FormData) -> object:
    """What the form says of `field`: text as typed (the schema reads "4242" as a
    port), None for an optional field left empty."""
    if field.kind == "checks":
        return [str(value) for value in form.getlist(field.name)]
    if field.kind == "flag":
        return form.get(field.name) == "on"
    value = str(form.get(field.name, ""))
    return None if field.optional and not value.strip() else value


def _with_form(section: Section, entry: dict, form: FormData) -> dict:
    edited = copy.deepcopy(entry)
    for field in section.fields:
        _put(edited, field.name, _form_value(field, form), _default(section.model, field.name))
    return edited


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _document(text: str) -> tuple[dict, tuple[str, ...]]:
    """The file's data as the node's loader reads it, and why it cannot be shown if so."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return {}, (f"The file is not valid YAML: {exc}",)
    if document is None:
        return {}, ()
    if not isinstance(document, dict):
        return {}, ("The file's top level is not a mapping.",)
    return document, ()


def _entries(document: dict, section: Section) -> dict | list:
    """The section's entries in the file; entries that are not mappings read as empty ones."""
    value = document.get(section.key)
    if section.named:
        value = value if isinstance(value, dict) else {}
        return {str(name): entry if isinstance(entry, dict) else {} for name, entry in value.items()}
    value = value if isinstance(value, list) else []
    return [entry if isinstance(entry, dict) else {} for entry in value]


# ---------------------------------------------------------------- what the page shows


@dataclass(frozen=True)
class FieldView:
    field: FormField
    value: str  # text, number, select
    chosen: tuple[str, ...]  # checks; a flag is chosen when ("on",)
    errors: tuple[str, ...]


@dataclass(frozen=True)
class EntryView:
    """One form: an entry of the file (``entry`` its name or position) or a new one ("")."""

    entry: str
    name: str  # a destination's or pipeline's name (its key in the file)
    name_errors: tuple[str, ...]
    fields: tuple[FieldView, ...]
    errors: tuple[str, ...]
    file_only: tuple[str, ...]  # keys of the entry that only the file shows
    first: bool
    last: bool


@dataclass(frozen=True)
class SectionView:
    section: Section
    entries: tuple[EntryView, ...]
    new: EntryView


@dataclass(frozen=True)
class Kept:
    """A refused change, shown again as the user entered it, with its errors."""

    section: str
    entry: str  # the form it came from: an entry, or "" for the add form
    values: dict
    name: str
    errors: tuple[FieldError, ...]
    prefix: str  # where the schema's messages about this entry point (``peers[2]``)


def _field_errors(kept: Kept, fields: tuple[FormField, ...]) -> tuple[dict[str, list[str]], list[str]]:
    """The kept change's errors by field name, and those about the entry as a whole.
    Errors elsewhere in the file are left for the top of the page."""
    by_field: dict[str, list[str]] = {}
    whole: list[str] = []
    names = ["name", *(field.name for field in fields)]
    for error in kept.errors:
        if error.path == kept.prefix:
            whole.append(error.message)
        elif _within(error.path, kept.prefix):
            rest = error.path[len(kept.prefix) + 1:]
            field = next((name for name in names if rest == name or _within(rest, name)), None)
            if field is None:
                whole.append(str(FieldError(rest, error.message)))
            else:
                by_field.setdefault(field, []).append(error.message)
    return by_field, whole


def _within(path: str, prefix: str) -> bool:
    """Whether `path` is inside `prefix`: ``peers[2].host`` and ``outputs[0]`` are, ``peers[20]`` is not."""
    return path.startswith((prefix + ".", prefix + "["))


def _stray_errors(kept: Kept | None) -> tuple[str, ...]:
    """The errors of a refused change about neither its entry nor a field of its form."""
    if kept is None:
        return ()
    return tuple(str(error) for error in kept.errors
                 if error.path != kept.prefix and not _within(error.path, kept.prefix))


def _entry_view(section: Section, entry: str, name: str, values: dict, kept: Kept | None,
                position: tuple[bool, bool]) -> EntryView:
    by_field, whole = _field_errors(kept, section.fields) if kept else ({}, [])
    views = []
    for field in section.fields:
        value = _lookup(values, field.name)
        if value is None:
            value = _default(section.model, field.name)
        if field.kind == "checks":
            chosen = tuple(str(item) for item in value) if isinstance(value, list) else ()
        else:
            chosen = ("on",) if value is True else ()
        text = "" if value is None or field.kind in ("checks", "flag") else str(value)
        views.append(FieldView(field, text, chosen, tuple(by_field.get(field.name, ()))))
    shown = {field.name.split(".")[0] for field in section.fields}
    file_only = tuple(key for key in values if key not in shown)
    name_errors = tuple(by_field.get("name", ())) if section.named else ()
    return EntryView(entry, name, name_errors, tuple(views), tuple(whole), file_only, *position)


def _section_view(section: Section, document: dict, kept: Kept | None) -> SectionView:
    entries = _entries(document, section)
    items = list(entries.items()) if isinstance(entries, dict) else [(str(index), entry)
                                                                      for index, entry in enumerate(entries)]
    views = []
    for index, (entry, values) in enumerate(items):
        name = entry if section.named else ""
        here = kept if kept is not None and kept.section == section.key and kept.entry == entry else None
        if here is not None:
            values, name = here.values, here.name
        views.append(_entry_view(section, entry, name, values, here, (index == 0, index == len(items) - 1)))
    here = kept if kept is not None and kept.section == section.key and kept.entry == "" else None
    new = _entry_view(section, "", here.name if here else "", here.values if here else {}, here, (True, True))
    return SectionView(section, tuple(views), new)


def _refusal(context: ConsoleContext) -> tuple[str, ...]:
    """Why the running node refused the file last, while its refusal stands."""
    try:
        record = read_record(context.storage_dir)
    except ConfigRecordError as exc:
        return (f"The node's record of its configuration cannot be read: {exc}",)
    if record is None or record.refused is None:
        return ()
    return record.refused.reasons or ("the node gave no reason",)


def config_page(request: Request, context: ConsoleContext, text: str, *, status_code: int = 200,
                kept: Kept | None = None, problems: tuple[str, ...] = ()) -> Response:
    """The page built from `text`: `kept`'s form as the user left it, `problems` at the top."""
    document, unreadable = _document(text)
    in_force = context.current_config()
    notice = request.session.pop(_NOTICE, None) if status_code == 200 else None
    return page(request, "config.html", {
        "base": _digest(text),
        "config_path": str(context.config_path),
        "notice": notice if isinstance(notice, str) else None,
        "problems": (*problems, *unreadable, *_stray_errors(kept)),
        "refusal": _refusal(context),
        "sections": tuple(_section_view(section, document, kept) for section in sections(document)),
        "probe_targets": tuple(in_force.destinations),
    }, status_code)


# ---------------------------------------------------------------- changing the file


@dataclass(frozen=True)
class Proposal:
    """A section's new value, and what to say of it once saved."""

    value: dict | list
    notice: str
    kept: Kept | None  # how the form is shown again if the schema refuses it


def _position(form: FormData, entries: list, noun: str) -> int:
    entry = str(form.get("entry", ""))
    position = whole_number(entry)
    if position is None or position >= len(entries):
        raise HTTPException(404, f"The file has no {noun} {entry!r}; reload the page.")
    return position


def _name_of(form: FormData, entries: dict, noun: str) -> str:
    entry = str(form.get("entry", ""))
    if entry not in entries:
        raise HTTPException(404, f"The file has no {noun} {entry!r}; reload the page.")
    return entry


def _proposed_list(section: Section, action: str, form: FormData, entries: list) -> Proposal:
    if action == "add":
        values = _with_form(section, {}, form)
        label = _label(section, values, len(entries))
        return Proposal([*entries, values], f"Added {section.noun} {label}.",
                        Kept(section.key, "", values, "", (), f"{section.key}[{len(entries)}]"))
    index = _position(form, entries, section.noun)
    label = _label(section, entries[index], index)
    if action == "edit":
        values = _with_form(section, entries[index], form)
        return Proposal([*entries[:index], values, *entries[index + 1:]], f"Saved {section.noun} {label}.",
                        Kept(section.key, str(index), values, "", (), f"{section.key}[{index}]"))
    if action == "remove":
        return Proposal([*entries[:index], *entries[index + 1:]], f"Removed {section.noun} {label}.", None)
    if section.key != "routes":
        raise HTTPException(404, f"{section.title} are not ordered.")
    direction = form.get("direction")
    target = index - 1 if direction == "up" else index + 1 if direction == "down" else -1
    if not 0 <= target < len(entries):
        raise HTTPException(400, f"The {section.noun} {label} cannot move {direction!r}.")
    moved = list(entries)
    moved[index], moved[target] = moved[target], moved[index]
    return Proposal(moved, f"Moved {section.noun} {label} {direction}.", None)


def _label(section: Section, values: dict, index: int) -> str:
    title = values.get("name") if section.key == "routes" else values.get("ae_title")
    return repr(str(title)) if title else f"#{index + 1}"


def _proposed_mapping(section: Section, action: str, form: FormData, entries: dict) -> Proposal:
    new_name = str(form.get("name", ""))
    if action == "add":
        values = _with_form(section, {}, form)
        kept = Kept(section.key, "", values, new_name, (), f"{section.key}.{new_name}")
        _check_name(section, new_name, entries, kept)
        return Proposal({**entries, new_name: values}, f"Added {section.noun} {new_name!r}.", kept)
    name = _name_of(form, entries, section.noun)
    if action == "remove":
        return Proposal({key: value for key, value in entries.items() if key != name},
                        f"Removed {section.noun} {name!r}.", None)
    if action != "edit":
        raise HTTPException(404, f"{section.title} are not ordered.")
    values = _with_form(section, entries[name], form)
    kept = Kept(section.key, name, values, new_name, (), f"{section.key}.{new_name}")
    if new_name != name:
        _check_name(section, new_name, entries, kept)
    renamed = {(new_name if key == name else key): (values if key == name else value)
               for key, value in entries.items()}
    what = f"{name!r}" if new_name == name else f"{name!r}, now {new_name!r}"
    return Proposal(renamed, f"Saved {section.noun} {what}.", kept)


def _check_name(section: Section, name: str, entries: dict, kept: Kept) -> None:
    """A new name must be well formed and free: the schema takes any key."""
    if not NAME.fullmatch(name):
        problem = NAME_RULE
    elif name in entries:
        problem = f"another {section.noun} is called {name!r}"
    else:
        return
    raise _Refused(replace(kept, errors=(FieldError(f"{kept.prefix}.name", problem),)))


class _Refused(Exception):
    """A change refused before the schema saw it, shown as the schema's refusals are."""

    def __init__(self, kept: Kept):
        super().__init__("; ".join(str(error) for error in kept.errors))
        self.kept = kept


def _unsaved(section: Section) -> str:
    return f"The {section.noun} was not saved: what is wrong is said beside its fields."


def _change(request: Request, context: ConsoleContext, section_key: str, action: str,
            form: FormData) -> Response:
    """Make, check and save one change; the node reloads the file as on SIGHUP."""
    text = read_config_text(context.config_path)
    if form.get("base") != _digest(text):
        return config_page(request, context, text, status_code=409, problems=(_CONFLICT,))
    document, unreadable = _document(text)
    if unreadable:
        return config_page(request, context, text, status_code=400)
    section = next(section for section in sections(document) if section.key == section_key)
    entries = _entries(document, section)
    try:
        proposal = (_proposed_mapping(section, action, form, entries) if isinstance(entries, dict)
                    else _proposed_list(section, action, form, entries))
    except _Refused as exc:
        return config_page(request, context, text, status_code=400, kept=exc.kept,
                           problems=(_unsaved(section),))
    try:
        change = edit_section(text, section.key, proposal.value, source=str(context.config_path))
        if change.new_text == text:
            request.session[_NOTICE] = f"{proposal.notice.removesuffix('.')}: nothing changed."
            return RedirectResponse("/config", 303)
        save_change(context.config_path, change)
    except ConfigEditError as exc:
        if proposal.kept is None:  # a removal or a move: no form to show again
            return config_page(request, context, text, status_code=400, problems=tuple(map(str, exc.errors)))
        kept = replace(proposal.kept, errors=exc.errors)
        return config_page(request, context, text, status_code=400, kept=kept, problems=(_unsaved(section),))
    except ConfigConflictError:  # saved by someone else since it was read above
        return config_page(request, context, read_config_text(context.config_path), status_code=409,
                           problems=(_CONFLICT,))
    context.request_reload()
    record_change(request, f"config.{section.key}.{action}", change.diff)
    request.session[_NOTICE] = f"{proposal.notice} The node reloads the file."
    return RedirectResponse("/config", 303)


def config_routes(context: ConsoleContext) -> list[BaseRoute]:
    """The configuration page of `context`'s file, and its forms."""

    def show_config(request: Request) -> Response:
        signed_in_user(request)
        return config_page(request, context, read_config_text(context.config_path))

    async def change_section(request: Request) -> Response:
        _, form = await checked_form(request)  # sign-in and CSRF first: nothing answers a stranger
        section, action = request.path_params["section"], request.path_params["action"]
        if section not in SECTIONS or action not in ACTIONS:
            raise HTTPException(404, "There is no such form.")
        return await run_in_threadpool(_change, request, context, section, action, form)

    return [
        Route("/config", show_config, methods=["GET"]),
        Route("/config/{section}/{action}", change_section, methods=["POST"]),
    ]
