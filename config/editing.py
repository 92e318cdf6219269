"""Changing the configuration file from a program (the web console, ``segnode
console add-user``) as an administrator would with an editor.

The file stays the administrator's: a change rewrites only what it changes,
keeping comments, key order and quoting elsewhere (ruamel.yaml's round trip),
and a change is written only if the whole resulting file validates as the
node would read it, so that an invalid edit changes nothing. Values are
written typed (ports as numbers, booleans as booleans), and a string that
YAML 1.1, which the node's loader reads, would take for something else
(``on``, ``null``, ``12:30``) is quoted: what was typed reads back as typed.
"""

from __future__ import annotations

import difflib
import fcntl
import io
import json
import os
import stat
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Final

import yaml
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from config.loader import ConfigError, FieldError, validate_config
from config.schema import SegnodeConfig
from dicomio.files import atomic_file

__all__ = [
    "SECTIONS",
    "ConfigChange",
    "ConfigConflictError",
    "ConfigEditError",
    "FieldError",
    "add_user",
    "edit_section",
    "read_config_text",
    "save_change",
]

#: The top-level sections a form edits as a whole.
SECTIONS: Final = ("peers", "destinations", "pipelines", "routes")

_STRING_TAG: Final = "tag:yaml.org,2002:str"
# The resolver of yaml.safe_load, which the loader uses.
_LOADER_RESOLVER: Final = yaml.resolver.Resolver()


class ConfigEditError(Exception):
    """A change that would leave the configuration invalid; ``errors`` has every
    problem with its field, and the file is left as it was."""

    def __init__(self, source: str, errors: tuple[FieldError, ...]):
        super().__init__(f"{source}: " + "; ".join(str(error) for error in errors))
        self.source = source
        self.errors = errors


class ConfigConflictError(Exception):
    """The file changed since the change was made from it: someone else saved
    in between, and writing would undo their change."""


@dataclass(frozen=True)
class ConfigChange:
    """A validated change, not yet written: the text it was made from, the text
    to write, the configuration that text gives, and their unified diff (what
    an audit log records)."""

    old_text: str
    new_text: str
    config: SegnodeConfig
    diff: str


def read_config_text(path: Path) -> str:
    """The file's text exactly as :func:`save_change` compares it (no newline translation)."""
    return Path(path).read_bytes().decode("utf-8")


def edit_section(text: str, section: str, value: list | dict, *, source: str) -> ConfigChange:
    """`text` with the top-level `section` replaced by `value`.

    `value` is plain data built from form fields, whose values may still be
    strings ("11112", "true"): what is written is the schema's typed reading
    of them, with only the keys `value` sets. Entries and keys that did not
    change keep their comments and order.

    Raises
    ------
    ValueError
        If `section` is not one of :data:`SECTIONS`.
    ConfigEditError
        If `text` is not a YAML mapping, or the resulting file does not
        validate (certificate files read, as the node reads them).
    """
    if section not in SECTIONS:
        raise ValueError(f"{section!r} is not an editable section; one of {', '.join(SECTIONS)}")
    data = _loaded(text, source)
    entered = _change(text, data, (section,), value, source).config
    typed = entered.model_dump(mode="json", include={section}, exclude_unset=True, exclude_none=True)
    return _change(text, data, (section,), typed[section], source)


def add_user(text: str, name: str, password_hash: str, *, source: str) -> ConfigChange:
    """`text` with the console user `name` signing in with `password_hash`: added
    to ``node.console.users``, or its hash replaced if it is there.

    Raises
    ------
    ConfigEditError
        If there is no ``node.console`` to add a user to, or the result does
        not validate (a bad name or hash, among others).
    """
    data = _loaded(text, source)
    node = data.get("node")
    console = node.get("console") if isinstance(node, dict) else None
    if not isinstance(console, dict):
        raise ConfigEditError(source, (FieldError(
            "node.console", "no console is configured; add node.console.port first"),))
    users = console.get("users") or []
    if not isinstance(users, list):
        raise ConfigEditError(source, (FieldError("node.console.users", "not a list"),))
    names = [user.get("name") if isinstance(user, dict) else None for user in users]
    if name in names:
        users = [{**user, "password_hash": password_hash} if found == name else user
                 for user, found in zip(users, names, strict=True)]
    else:
        users = [*users, {"name": name, "password_hash": password_hash}]
    return _change(text, data, ("node", "console", "users"), users, source)


def save_change(path: Path, change: ConfigChange) -> None:
    """Write `change` to `path`, atomically and with the file's mode, if the file
    still holds the text the change was made from.

    Savers exclude each other with a lock on the file, so that of two changes
    made from the same text, the second is refused rather than undoing the first.

    Raises
    ------
    ConfigConflictError
        If the file's text is no longer ``change.old_text`` (or it is gone).
    OSError
        If the file or its folder cannot be written; the file is unchanged.
    """
    path = Path(path).resolve()  # a linked file is replaced where it lies, and the link kept
    while True:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise ConfigConflictError(f"{path}: removed since it was read") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                raise ConfigConflictError(f"{path}: removed since it was read") from None
            if current.st_ino != os.fstat(handle.fileno()).st_ino:
                continue  # replaced by another saver while we waited: lock the new file
            if handle.read().decode("utf-8", errors="replace") != change.old_text:
                raise ConfigConflictError(f"{path}: changed since it was read; read it again and redo "
                                          "the change")
            with atomic_file(path) as out:
                os.fchmod(out.fileno(), stat.S_IMODE(current.st_mode))
                out.write(change.new_text.encode("utf-8"))
            return


def _round_trip() -> YAML:
    yaml_ = YAML()
    yaml_.preserve_quotes = True
    yaml_.width = 4096  # never refold a long line of the file
    # The example file's layout: mappings by 2, "- " items indented by 2.
    yaml_.indent(mapping=2, sequence=4, offset=2)
    return yaml_


def _document(text: str, source: str) -> CommentedMap | None:
    """The round-trip document of `text`: its data with comments, order and
    quoting; None if it holds no data (empty, or only comments)."""
    try:
        document = _round_trip().load(text)
    except YAMLError as exc:
        raise ConfigEditError(source, (FieldError("", f"not valid YAML: {exc}"),)) from exc
    if document is not None and not isinstance(document, CommentedMap):
        raise ConfigEditError(source, (FieldError("", "the top level must be a mapping"),))
    return document


def _loaded(text: str, source: str) -> dict:
    """`text` as the node's loader reads it (YAML 1.1)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigEditError(source, (FieldError("", f"not valid YAML: {exc}"),)) from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigEditError(source, (FieldError("", "the top level must be a mapping"),))
    return data or {}


def _dumped(document: CommentedMap) -> str:
    out = io.StringIO()
    _round_trip().dump(document, out)
    return out.getvalue()


def _change(text: str, data: dict, keys: tuple[str, ...], value: object, source: str) -> ConfigChange:
    """`text`, whose data is `data`, with the value at `keys` (mappings, the
    last one created if missing) replaced by `value`, merged into what is
    there; validated.

    What is written must read back as what is validated, and ruamel.yaml's
    emitter can misplace a new entry beside comments (0.19.1: a block mapping
    inserted in a list whose first item has a comment above it). The text is
    thus read back as the loader reads it, and if it does not hold `value`
    and everything else as before, the value is written anew, without the
    comments inside it, and read back again.
    """
    expected = _fingerprint(_with(data, keys, value))
    for merge in (True, False):
        document = _document(text, source)
        head = ""
        if document is None:  # ruamel keeps no comment of a document without data: they are kept here
            document, head = CommentedMap(), text if text.endswith("\n") or not text else text + "\n"
        parent = _parent(document, keys)
        if merge and keys[-1] in parent:
            _merge_into(parent, keys[-1], value)
        else:
            parent[keys[-1]] = _node(value)
        new_text = head + _dumped(document)
        new_data = _read_back(new_text)
        if new_data is not None and _fingerprint(new_data) == expected:
            break
    else:
        problem = FieldError(".".join(keys), "cannot be written so that it reads back as entered")
        raise ConfigEditError(source, (problem,))
    try:
        config = validate_config(new_data, source, check_files=True)
    except ConfigError as exc:
        raise ConfigEditError(source, exc.fields) from exc
    lines = difflib.unified_diff(text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                 fromfile=source, tofile=source)
    return ConfigChange(text, new_text, config, "".join(lines))


def _read_back(text: str) -> dict | None:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _parent(document: CommentedMap, keys: tuple[str, ...]) -> CommentedMap:
    for key in keys[:-1]:
        document = document[key]
    return document


def _with(data: dict, keys: tuple[str, ...], value: object) -> dict:
    """`data` with the value at `keys` replaced, `data` itself unchanged."""
    key, *rest = keys
    return {**data, key: _with(data[key], tuple(rest), value) if rest else value}


def _merge_into(parent: CommentedMap, key: str, value: object) -> None:
    """``parent[key] = value``, merged into what is there.

    An emptied list or mapping is written anew, as ``[]`` or ``{}``, which
    ruamel.yaml 0.19.1 writes on a line of its own (no YAML) after a comment
    that came before its first item, and writes without the comments that
    followed its last: those, often the next key's heading, are moved after
    the key, and the ones before the first item dropped with the items.
    """
    old = parent[key]
    if isinstance(old, CommentedMap | CommentedSeq) and isinstance(value, dict | list) and not value:
        slots = parent.ca.items.setdefault(key, [None, None, None, None])
        slots[3] = None
        end = getattr(old.ca, "end", None)
        if end:
            after = slots[2].value if slots[2] is not None else "\n"
            slots[2] = CommentToken(after + "".join(token.value for token in end), CommentMark(0), None)
    parent[key] = _merged(old, value)


def _merged(old: object, new: object) -> object:
    """`new` (plain data) as a node of the document, made of `old`'s nodes where
    they hold the same: those keep their comments, order and quoting."""
    if isinstance(new, dict) and new and isinstance(old, CommentedMap):
        for key in [key for key in old if key not in new]:
            del old[key]
        for key, value in new.items():
            if key in old:
                _merge_into(old, key, value)
            else:
                old[_node(key)] = _node(value)
        return old
    if isinstance(new, list) and new and isinstance(old, CommentedSeq):
        _merge_items(old, new)
        return old
    return old if _fingerprint(old) == _fingerprint(new) and not _misread(old) else _node(new)


def _merge_items(old: CommentedSeq, new: list) -> None:
    """Make `old` hold `new`'s items. Items are matched by what names them
    (:data:`_NAMING_KEYS`), else by their whole value: a matched item is
    merged in place, keeping its comments (which ruamel keys by position),
    and the others are removed or inserted, so that deleting a peer leaves
    the other peers' comments where they were."""
    matcher = SequenceMatcher(None, [_identity(item) for item in old], [_identity(item) for item in new],
                              autojunk=False)
    # From the end, so that the positions of the earlier blocks stay valid.
    for _, old_start, old_end, new_start, new_end in reversed(matcher.get_opcodes()):
        paired = min(old_end - old_start, new_end - new_start)
        for offset in range(paired):
            old[old_start + offset] = _merged(old[old_start + offset], new[new_start + offset])
        for index in reversed(range(old_start + paired, old_end)):
            del old[index]
        # New entries are written as the ones beside them: a list of one-line peers stays one.
        flow = any(isinstance(item, CommentedMap) and item.fa.flow_style()
                   for item in old[max(old_start - 1, 0):old_start + 1])
        for offset in range(paired, new_end - new_start):
            item = _node(new[new_start + offset])
            if flow and isinstance(item, CommentedMap):
                item.fa.set_flow_style()
            old.insert(old_start + offset, item)


#: What names an entry of a list: a peer its AE title, a route or a console user its name.
_NAMING_KEYS: Final = ("ae_title", "name")


def _identity(item: object) -> str:
    if isinstance(item, dict):
        for key in _NAMING_KEYS:
            if key in item:
                return _fingerprint({key: item[key]})
    return _fingerprint(item)


def _fingerprint(value: object) -> str:
    """What `value` means, whatever its YAML spelling: 30 and 30.0 alike, true and 1 not."""
    return json.dumps(_meaning(value), sort_keys=True, default=str)


def _meaning(value: object) -> object:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {str(key): _meaning(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_meaning(item) for item in value]
    return str(value)


def _node(value: object) -> object:
    """Plain data as new nodes of the document, each string quoted where the
    loader's YAML 1.1 would read it as something else."""
    if isinstance(value, dict):
        return CommentedMap((_node(key), _node(item)) for key, item in value.items())
    if isinstance(value, list):
        return CommentedSeq(_node(item) for item in value)
    return DoubleQuotedScalarString(value) if _misread(value) else value


def _misread(value: object) -> bool:
    """Whether `value` is a string that, written unquoted, the loader reads as another type."""
    return (type(value) is str  # quoted in the file (ruamel's ScalarString) is never misread
            and _LOADER_RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) != _STRING_TAG)
