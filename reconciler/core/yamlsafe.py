"""Hardened YAML reading for the releases repo and the operator config.

``parse_documents(path, data)`` turns the bytes of one file into plain Python values (dict, list, str, int, float,
bool, None) plus a map of where every key and item stands, so later checks can say ``file:line``. It walks
libyaml's event stream (PyYAML's C parser) and builds values itself, which lets it refuse, before anything is
built: aliases and anchors (alias bombs), tags other than the standard scalar ones (``!!python/object`` and
friends), duplicate keys, non-scalar keys, bytes that are not UTF-8, numbers over 1,000 characters and files over
the size limit.

Plain scalars are resolved by the YAML 1.2 core schema, not YAML 1.1's: only ``true``/``false`` are booleans and
only ``null``/``~``/nothing is null, so ``logLevel: no``, ``tls: on`` or ``answer: y`` stay the strings written;
numbers are decimal, ``0o`` octal, ``0x`` hex or floats (``010`` is ten, ``1_000`` and ``1:20`` are strings).
Numbers keep the text they were written with (``YamlInt.text`` / ``YamlFloat.text``), so ``version: 1.10`` can
still be read as ``"1.10"``. Called by the manifest loader and the controller-config loader; pure (no I/O).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.core.problems import Problem

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser; the pure one only as a fallback

DEFAULT_MAX_FILE_SIZE = 1024 * 1024

Path = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"

# YAML 1.2 core schema: only these plain scalars are not strings (YAML 1.1's yes/no/on/off/y/n booleans, 010
# octals, 1_000 and 1:20 sexagesimals are the text the user wrote); https://yaml.org/spec/1.2.2/#1032-tag-resolution
_CORE_NULL = frozenset(("", "~", "null", "Null", "NULL"))
CORE_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_CORE_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"  # 1.5, .5, 3., 1e3
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
MAX_NUMBER_LENGTH = 1000  # characters of a number; a longer one is refused (and int() of it is never tried)


def resolve_core(value: str, plain: bool) -> str:
    """The tag of an untagged scalar under the YAML 1.2 core schema (a quoted scalar is always a string)."""
    if not plain:
        return _STR
    if value in _CORE_NULL:
        return _NULL
    if value in CORE_BOOL:
        return _BOOL
    if _CORE_INT.fullmatch(value):
        return _INT
    if _CORE_FLOAT.fullmatch(value):
        return _FLOAT
    return _STR


class YamlInt(int):
    """An int that remembers how it was written."""

    text: str

    def __new__(cls, value: int, text: str) -> YamlInt:
        obj = super().__new__(cls, value)
        obj.text = text
        return obj


class YamlFloat(float):
    """A float that remembers how it was written (``1.10`` stays ``"1.10"`` through :func:`scalar_text`)."""

    text: str

    def __new__(cls, value: float, text: str) -> YamlFloat:
        obj = super().__new__(cls, value)
        obj.text = text
        return obj


def scalar_text(value: object) -> str:
    """The exact source text of a scalar (for versions and names); ``str()`` for anything else."""
    if isinstance(value, YamlInt | YamlFloat):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@dataclass
class Document:
    """One YAML document of a file: its value and the line (1-based) of every key / item path."""

    path: str
    index: int
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line(self, where: Path = ()) -> int | None:
        """The line of ``where`` or of its nearest ancestor that has one."""
        while True:
            found = self.lines.get(where)
            if found is not None or not where:
                return found
            where = where[:-1]


class YamlError(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _tag_name(tag: str | None) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag and tag.startswith("tag:yaml.org,2002:") else str(tag)


def _line(mark: Any) -> int | None:
    return None if mark is None else int(mark.line) + 1


def _scalar(event: yaml.ScalarEvent) -> Any:
    value = event.value
    line = _line(event.start_mark)
    tag = event.tag
    if tag is None or tag == "!":
        tag = resolve_core(value, tag is None and bool(event.implicit[0]))
    if tag in (_STR, _TIMESTAMP):
        return value  # timestamps keep their text; the schema decides what a field accepts
    if tag == _NULL and value in _CORE_NULL:
        return None
    if tag == _BOOL and value in CORE_BOOL:
        return CORE_BOOL[value]
    if tag in (_INT, _FLOAT):
        return _number(tag, value, line)
    if tag in (_NULL, _BOOL):
        raise YamlError(line, f"{value!r} is not a valid {_tag_name(tag)} (YAML 1.2: only true/false, null)")
    raise YamlError(
        line, f"tag '{_tag_name(event.tag or tag)}' is not allowed (only plain strings, numbers, booleans, null)"
    )


def core_number(tag: str, value: str) -> int | float:
    """The value of a scalar resolved (or tagged) ``!!int`` / ``!!float`` under the YAML 1.2 core schema. Raises
    ValueError for one that is not such a number or is over :data:`MAX_NUMBER_LENGTH` characters. Also used by the
    kubernetes driver's fast readers, so they read numbers exactly as this module does."""
    if len(value) > MAX_NUMBER_LENGTH:
        raise ValueError(f"number of {len(value)} characters is over the limit of {MAX_NUMBER_LENGTH} (quote it)")
    text = value.strip()
    if tag == _INT and _CORE_INT.fullmatch(text):
        base = 8 if text.startswith("0o") else 16 if text.startswith("0x") else 10
        return int(text[2:] if base != 10 else text, base)
    if tag == _FLOAT and _CORE_FLOAT.fullmatch(text):
        return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))  # YAML's .inf / .nan
    raise ValueError(f"{value!r} is not a valid {_tag_name(tag)} (quote it if it is a string)")


def _number(tag: str, value: str, line: int | None) -> YamlInt | YamlFloat:
    """A number under the core schema, keeping its text; a malformed or overlong one is a :class:`YamlError`."""
    try:
        number = core_number(tag, value)
    except ValueError as exc:
        raise YamlError(line, str(exc)) from exc
    return YamlInt(number, value) if isinstance(number, int) else YamlFloat(number, value)


class _Frame:
    __slots__ = ("key", "key_line", "path", "value")

    def __init__(self, value: Any, path: Path) -> None:
        self.value = value
        self.path = path
        self.key: str | None = None
        self.key_line: int | None = None


def _check_collection_tag(event: Any, standard: str) -> None:
    if event.tag not in (None, "!", standard):
        raise YamlError(_line(event.start_mark), f"tag '{_tag_name(event.tag)}' is not allowed")


def _documents(text: str, path: str) -> Iterator[Document]:
    stack: list[_Frame] = []
    doc: Document | None = None
    root: list[Any] = []

    def attach(value: Any, line: int | None) -> Path:
        assert doc is not None
        if not stack:
            root.append(value)
            doc.lines[()] = line or 1
            return ()
        top = stack[-1]
        if isinstance(top.value, dict):
            key = top.key
            assert key is not None
            top.value[key] = value
            where: Path = (*top.path, key)
            doc.lines[where] = top.key_line or line or 1
            top.key = None
            return where
        top.value.append(value)
        where = (*top.path, len(top.value) - 1)
        doc.lines[where] = line or 1
        return where

    def expecting_key() -> bool:
        return bool(stack) and isinstance(stack[-1].value, dict) and stack[-1].key is None

    for event in yaml.parse(text, Loader=_Loader):
        line = _line(event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            raise YamlError(line, f"alias '*{event.anchor}' is not allowed; write the value out")
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            raise YamlError(line, f"anchor '&{event.anchor}' is not allowed; write the value out")
        if isinstance(event, yaml.DocumentStartEvent):
            doc = Document(path=path, index=0 if doc is None else doc.index + 1, data=None)
            root.clear()
        elif isinstance(event, yaml.DocumentEndEvent):
            assert doc is not None
            doc.data = root[0] if root else None
            yield doc
        elif isinstance(event, yaml.ScalarEvent):
            if expecting_key():
                top = stack[-1]
                key = event.value
                tag = event.tag
                if tag is None or tag == "!":
                    tag = resolve_core(key, tag is None and bool(event.implicit[0]))
                if tag == _MERGE or (key == "<<" and event.tag is None and event.implicit[0]):
                    raise YamlError(line, "merge keys ('<<') are not allowed; write the values out")
                if tag not in (_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP):
                    raise YamlError(line, f"tag '{_tag_name(event.tag)}' is not allowed on a key")
                if key in top.value:
                    first = doc.lines.get((*top.path, key)) if doc else None
                    raise YamlError(line, f"duplicate key {key!r}" + (f" (first at line {first})" if first else ""))
                top.key = key
                top.key_line = line
            else:
                attach(_scalar(event), line)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            if expecting_key():
                raise YamlError(line, "keys must be plain scalars, not mappings or lists")
            is_map = isinstance(event, yaml.MappingStartEvent)
            _check_collection_tag(event, _MAP if is_map else _SEQ)
            value: Any = {} if is_map else []
            where = attach(value, line)
            stack.append(_Frame(value, where))
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            stack.pop()


def parse_documents(path: str, data: bytes, max_size: int = DEFAULT_MAX_FILE_SIZE) -> list[Document]:
    """Parse every document of one file. Raises :class:`YamlError` (with a line where known) on refusal."""
    if len(data) > max_size:
        raise YamlError(None, f"file is {len(data)} bytes, over the limit of {max_size} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YamlError(line, f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from exc
    text = text.removeprefix("\ufeff")
    try:
        return list(_documents(text, path))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        raise YamlError(_line(mark), f"invalid YAML: {what}") from exc
    except yaml.YAMLError as exc:
        raise YamlError(None, f"invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise YamlError(None, "YAML nesting is too deep") from exc


def parse_file(path: str, data: bytes, max_size: int = DEFAULT_MAX_FILE_SIZE) -> tuple[list[Document], list[Problem]]:
    """:func:`parse_documents`, with a refusal turned into a :class:`Problem` naming the file."""
    try:
        return parse_documents(path, data, max_size), []
    except YamlError as exc:
        return [], [Problem(path, exc.line, exc.message)]
