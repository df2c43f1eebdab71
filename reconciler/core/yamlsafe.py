"""Hardened YAML reading for the releases repo and the operator config.

``parse_documents(path, data)`` turns the bytes of one file into plain Python values (dict, list, str, int, float,
bool, None) plus a map of where every key and item stands, so later checks can say ``file:line``. It walks
libyaml's event stream (PyYAML's C parser) and builds values itself, which lets it refuse, before anything is
built: aliases and anchors (alias bombs), tags other than the standard scalar ones (``!!python/object`` and
friends), duplicate keys, non-scalar keys, bytes that are not UTF-8 and files over the size limit.

Numbers keep the text they were written with (``YamlInt.text`` / ``YamlFloat.text``), so ``version: 1.10`` can
still be read as ``"1.10"``. Called by the manifest loader and the controller-config loader; pure (no I/O).
"""

from __future__ import annotations

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

_resolver = yaml.resolver.Resolver()
_constructor = yaml.constructor.SafeConstructor()


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
    tag = event.tag
    if tag is None or tag == "!":
        tag = _resolver.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
    value = event.value
    line = _line(event.start_mark)
    if tag in (_STR, _TIMESTAMP):
        return value  # timestamps keep their text; the schema decides what a field accepts
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return value.lower() in ("yes", "true", "on", "y")
    node = yaml.ScalarNode(tag, value)
    try:
        if tag == _INT:
            return YamlInt(_constructor.construct_yaml_int(node), value)
        if tag == _FLOAT:
            return YamlFloat(_constructor.construct_yaml_float(node), value)
    except ValueError:  # what YAML 1.1 reads as a number without digits: 0b_, 0x_
        raise YamlError(line, f"'{value}' is not a valid number (quote it if it is a string)") from None
    if tag == _MERGE:
        raise YamlError(line, "merge keys ('<<') are not allowed; write the values out")
    raise YamlError(
        line, f"tag '{_tag_name(event.tag or tag)}' is not allowed (only plain strings, numbers, booleans, null)"
    )


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
                    tag = _resolver.resolve(yaml.ScalarNode, key, event.implicit)  # type: ignore[no-untyped-call]
                if tag == _MERGE:
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
        raise YamlError(line, f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    text = text.removeprefix("\ufeff")
    try:
        return list(_documents(text, path))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        raise YamlError(_line(mark), f"invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise YamlError(None, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise YamlError(None, "YAML nesting is too deep") from None


def parse_file(path: str, data: bytes, max_size: int = DEFAULT_MAX_FILE_SIZE) -> tuple[list[Document], list[Problem]]:
    """:func:`parse_documents`, with a refusal turned into a :class:`Problem` naming the file."""
    try:
        return parse_documents(path, data, max_size), []
    except YamlError as exc:
        return [], [Problem(path, exc.line, exc.message)]
