"""Reading the YAML documents of a desired unit for the kubernetes driver (called by its ``_desired``).

:func:`parse_documents_of` reads every YAML document of ``unit.files()`` as the hardened loader
(:mod:`reconciler.core.yamlsafe`) does: no aliases, no tags. Three readers, fastest first, each giving exactly what
the hardened one gives or leaving the file to the next:

* the **template reader**: a file rendered from a template (``unit.filled()``) is read by parsing its template once
  (every slot replaced by a marker word) and then, per rendering, putting the slots' texts into that parse. It is
  used only where the text cannot change what the YAML means: a text goes into a string scalar (never a key, a
  comment, a whole line), holds only characters that are literal in that scalar's style, and a plain scalar is
  resolved again (``80`` is still an int). Anything else goes to the next reader. At 60 applications x 235
  environments, parsing each template once instead of each rendering is most of the driver's client CPU saved;
* the **plain reader**: libyaml composes the documents and they are plain (no anchor, alias, tag or merge key can
  be written without one of the bytes of ``_UNUSUAL``; no duplicate or non-scalar key, nothing else unusual),
  three times faster than the hardened reader;
* the hardened reader itself, which accepts or refuses anything else and says why, with the exact line.

Empty documents are skipped and anything that is not an object (``apiVersion``, ``kind``, ``metadata.name``) is a
:class:`PermanentError` naming the file and line.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml

from reconciler.core.desired import Compiled, Filled
from reconciler.core.problems import PermanentError
from reconciler.core.yamlsafe import CORE_BOOL, DEFAULT_MAX_FILE_SIZE, YamlError, core_number, parse_documents

_CLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Document:
    """One YAML document of one file: ``source`` is ``<component>/<file>:<line>``."""

    component: str
    source: str
    body: dict[str, Any]


def _plain(value: Any) -> Any:
    """Loader values (ints/floats that remember their text) as plain JSON values."""
    return json.loads(json.dumps(value))


def parse_documents_of(files: Mapping[str, bytes], filled: Mapping[str, Filled] | None = None) -> list[Document]:
    """Every non-empty YAML document of ``files`` (``<component>/<file>`` -> bytes), in file order; ``filled`` says
    how templated files were rendered (:meth:`reconciler.core.desired.DesiredUnit.filled`), for the template reader."""
    documents: list[Document] = []
    for path in sorted(files):
        component = path.split("/", 1)[0]
        recipe = filled.get(path) if filled else None
        parsed = _filled_documents(recipe, files[path]) if recipe is not None else None
        parsed = parsed if parsed is not None else _plain_documents(files[path])
        if parsed is None or any(body is not None and _not_an_object(body) for _, _, body in parsed):
            parsed = _hardened_documents(path, files[path])  # it decides, and says why with the exact line
        for index, line, body in parsed:
            if body is None:
                continue
            source = f"{path}:{line}"
            problem = _not_an_object(body)
            if problem:
                raise PermanentError(f"{source}: document {index + 1} is not a Kubernetes object: {problem}")
            documents.append(Document(component, source, body))
    return documents


def _hardened_documents(path: str, data: bytes) -> list[tuple[int, int, Any]]:
    """(index, line, plain value) of every document, read by :func:`reconciler.core.yamlsafe.parse_documents`."""
    try:
        docs = parse_documents(path, data)
    except YamlError as exc:
        where = f"{path}:{exc.line}" if exc.line else path
        raise PermanentError(f"{where}: {exc.message}") from None
    return [(doc.index, doc.line() or 1, None if doc.data is None else _plain(doc.data)) for doc in docs]


# The common case, about three times faster: libyaml composes the documents and they are plain (no anchor, alias,
# tag or merge key can be written without one of these bytes; no duplicate or non-scalar key, nothing else
# unusual). Anything else, and any error, goes to the hardened reader, which accepts or refuses it and says why.
_UNUSUAL = (b"&", b"*", b"!", b"<<", b"\xef\xbb\xbf")
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp"))
_MAP_TAG = "tag:yaml.org,2002:map"
_STR_TAG = "tag:yaml.org,2002:str"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class _Unusual(Exception):
    pass


def _core_resolvers() -> dict[Any, Any]:
    """PyYAML implicit resolvers (first character -> [(tag, regexp)]) of the YAML 1.2 core schema, which the
    hardened reader (:func:`reconciler.core.yamlsafe.resolve_core`) uses: ``yes``/``no``/``on``/``1_000`` are text."""
    core = [
        ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
        ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
        ("float", r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
         "-+0123456789."),
        ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ]  # fmt: skip
    resolvers: dict[Any, Any] = {}
    for name, pattern, first in core:
        for char in first:
            resolvers.setdefault(char, []).append((f"tag:yaml.org,2002:{name}", re.compile(f"^(?:{pattern})$")))
    return resolvers


class _PlainLoader(_CLoader):  # type: ignore[valid-type, misc]
    """The C loader, resolving tags as it does with less Python per node: it has no path resolvers (descending and
    ascending track nothing), and a scalar that is quoted, or plain with a first character that no implicit resolver
    is registered for, is a string (what ``Resolver.resolve`` answers for it, without looking up the resolvers)."""

    _STR = _STR_TAG
    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = _core_resolvers()  # YAML 1.2 core, as the hardened reader
    yaml_path_resolvers: ClassVar[dict[Any, Any]] = {}
    _FIRST = frozenset(k for k in yaml_implicit_resolvers if k)

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and (not implicit[0] or (value and value[0] not in self._FIRST)):
            return self._STR
        return super().resolve(kind, value, implicit)


# the shortcuts hold for the loader they come from (no path resolver, no resolver for any first character)
_FAST_RESOLVE = not _PlainLoader.yaml_path_resolvers and None not in _PlainLoader.yaml_implicit_resolvers
_Loader = _PlainLoader if _FAST_RESOLVE and _PlainLoader.DEFAULT_SCALAR_TAG == _PlainLoader._STR else _CLoader


def _plain_documents(data: bytes) -> list[tuple[int, int, Any]] | None:
    """(index, line, plain value) of every document of a plain YAML file, ``None`` when it is not that plain."""
    if len(data) > DEFAULT_MAX_FILE_SIZE or any(marker in data for marker in _UNUSUAL):
        return None
    try:
        text = data.decode("utf-8")
        nodes = list(yaml.compose_all(text, Loader=_Loader))
        return [(i, node.start_mark.line + 1, _node_value(node)) for i, node in enumerate(nodes) if node is not None]
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError, TypeError, _Unusual):
        return None


def _node_value(node: yaml.Node) -> Any:
    tag = node.tag
    if isinstance(node, yaml.ScalarNode):
        value = node.value
        if tag == "tag:yaml.org,2002:str" or tag == "tag:yaml.org,2002:timestamp":
            return value  # timestamps keep their text, as the hardened reader does
        if tag == "tag:yaml.org,2002:null":
            return None
        if tag == "tag:yaml.org,2002:bool" and value in CORE_BOOL:
            return CORE_BOOL[value]
        if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            return core_number(tag, value)  # as the hardened reader (ValueError: it says where)
        raise _Unusual(tag)
    if isinstance(node, yaml.MappingNode) and tag == _MAP_TAG:
        out: dict[str, Any] = {}
        for key, item in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag not in _SCALAR_TAGS or key.value in out:
                raise _Unusual("key")
            # keys keep their text, as the hardened reader does; string values (most) without a call
            out[key.value] = item.value if type(item) is yaml.ScalarNode and item.tag == _STR_TAG else _node_value(item)
        return out
    if isinstance(node, yaml.SequenceNode) and tag == _SEQ_TAG:
        return [_node_value(item) for item in node.value]
    raise _Unusual(tag)


def _not_an_object(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "expected a mapping"
    for key in ("apiVersion", "kind"):
        if not isinstance(body.get(key), str) or not body[key]:
            return f"missing {key}"
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        return "missing metadata.name"
    for key in ("labels", "annotations"):
        if metadata.get(key) is not None and not isinstance(metadata[key], dict):
            return f"metadata.{key} must be a mapping"
    if metadata.get("namespace") is not None and not isinstance(metadata["namespace"], str):
        return "metadata.namespace must be a string"
    return None


# -- the template reader -----------------------------------------------------------------------------------------
# A slot of a template is parsed as this marker word (letters and digits: literal in every scalar style, and no
# implicit resolver matches a word that starts with a letter and holds digits after letters).
_MARK = "zqRECONCILERslot"
_MARKS = re.compile(_MARK + r"(\d{5})zq")
# What a slot's text may hold, by where it goes. Printable ASCII only (no line break, tab or byte-order mark), and
# none of the bytes that send a file to the hardened reader (& * ! <), so the rendered file reads like its template.
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/@+=-]*")  # anywhere: a plain scalar in a flow collection, ...
_COLON_WORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/:@+=-]*[A-Za-z0-9._/@+=-])?")  # block plain, quoted, block
_QUOTED = re.compile(r"[ #-%()+-;=-\[\]-~]*")  # a quoted scalar on one line: also spaces, or nothing (no ' " \)
_STR_TAG_ = "tag:yaml.org,2002:str"


class _Hole:
    """A string scalar of a template that holds slots: literal pieces and slot numbers; a plain one is resolved
    again once filled (``${params.port}`` may fill to an int)."""

    __slots__ = ("pieces", "plain", "prefix", "slot", "suffix")

    def __init__(self, pieces: tuple[str | int, ...], plain: bool) -> None:
        self.pieces, self.plain = pieces, plain
        slots = [i for i, piece in enumerate(pieces) if isinstance(piece, int)]
        # most hold one slot: prefix + text + suffix, without a loop
        self.slot, self.prefix, self.suffix = -1, "", ""
        if len(slots) == 1:
            at = slots[0]
            self.slot = int(pieces[at])
            self.prefix = "".join(p for p in pieces[:at] if isinstance(p, str))
            self.suffix = "".join(p for p in pieces[at + 1 :] if isinstance(p, str))

    def fill(self, texts: tuple[str, ...]) -> Any:
        if self.slot >= 0:
            text = self.prefix + texts[self.slot] + self.suffix
        else:
            text = "".join([piece if isinstance(piece, str) else texts[piece] for piece in self.pieces])
        if self.plain:
            tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))
            if tag != _STR_TAG_:
                return _node_value(yaml.ScalarNode(tag, text))
        return text


@dataclass(frozen=True)
class _Shape:
    """A template's documents, (index, line, value with :class:`_Hole` at the scalars with slots), its number of
    slots, and the checks of their texts: (pattern of many texts joined by line breaks, slot numbers), one per
    pattern (one regular expression call for all the slots that go into, say, quoted scalars)."""

    documents: tuple[tuple[int, int, Any], ...]
    slots: int
    checks: tuple[tuple[re.Pattern[str], tuple[int, ...]], ...]


_MANY = {p: re.compile(f"(?:{p.pattern})(?:\n(?:{p.pattern}))*") for p in (_WORD, _COLON_WORD, _QUOTED)}


def _filled_documents(filled: Filled, data: bytes) -> list[tuple[int, int, Any]] | None:
    """(index, line, plain value) of every document of ``data``, the rendering of ``filled``, from the parse of its
    template; ``None`` when the template or a text is not one the template reader may read that way."""
    compiled, texts = filled
    if len(data) > DEFAULT_MAX_FILE_SIZE:
        return None
    shape = _shape_of(compiled)
    if shape is None or len(texts) != shape.slots:
        return None
    for many, slots in shape.checks:  # (a text with a line break of its own is refused by the count)
        joined = "\n".join([texts[i] for i in slots])
        if joined.count("\n") != len(slots) - 1 or not many.fullmatch(joined):
            return None
    try:
        return [(index, line, _fill(value, texts)) for index, line, value in shape.documents]
    except (_Unusual, ValueError):  # (a number without digits, 0b_: the hardened reader says where)
        return None


def _fill(value: Any, texts: tuple[str, ...]) -> Any:
    """A fresh copy of a template's value with the texts in its holes (the driver adds its marks to the copy)."""
    kind = type(value)
    if kind is dict:
        return {key: item if type(item) is str else item.fill(texts) if type(item) is _Hole else _fill(item, texts)
                for key, item in value.items()}  # fmt: skip
    if kind is list:
        return [_fill(item, texts) for item in value]
    if kind is _Hole:
        return value.fill(texts)
    return value  # str, int, float, bool, None: immutable


@functools.lru_cache(maxsize=1024)  # (a compiled template hashes by identity: compile_template makes one each)
def _shape_of(compiled: Compiled) -> _Shape | None:
    """The parse of a template with its slots as marker words, when every slot lands inside a string scalar."""
    parts: list[str] = []
    slots = 0
    for part in compiled.parts:
        if isinstance(part, str):
            if _MARK in part:
                return None
            parts.append(part)
        elif part.whole:  # a whole line: any YAML at all
            return None
        else:
            parts.append(f"{_MARK}{slots:05d}zq")
            slots += 1
    data = "".join(parts).encode()
    if len(data) > DEFAULT_MAX_FILE_SIZE or any(marker in data for marker in _UNUSUAL):
        return None
    allowed: list[re.Pattern[str] | None] = [None] * slots
    try:
        text = data.decode("utf-8")
        nodes = list(yaml.compose_all(text, Loader=_Loader))
        documents = tuple(
            (i, node.start_mark.line + 1, _template_value(node, False, allowed, text))
            for i, node in enumerate(nodes)
            if node is not None
        )
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError, TypeError, _Unusual):
        return None
    if any(pattern is None for pattern in allowed):  # a slot in a comment, or a marker broken by an escape
        return None
    groups: dict[re.Pattern[str], list[int]] = {}
    for slot, pattern in enumerate(allowed):
        groups.setdefault(_MANY[pattern], []).append(slot)  # type: ignore[index]  # none is None (checked above)
    return _Shape(documents, slots, tuple((many, tuple(numbers)) for many, numbers in groups.items()))


def _template_value(node: yaml.Node, flow: bool, allowed: list[re.Pattern[str] | None], text: str) -> Any:
    """What :func:`_node_value` gives, with a :class:`_Hole` for each string scalar holding markers (each marker
    once, in a value, never a key, and written out in the scalar's own ``text``: an escape can spell a marker in a
    double-quoted scalar while its slot sits in a comment); ``allowed`` gets the pattern of each slot's text."""
    if isinstance(node, yaml.ScalarNode):
        if _MARK not in node.value:
            return _node_value(node)
        if node.tag != _STR_TAG_:
            raise _Unusual(node.tag)
        pieces: list[str | int] = []
        for i, piece in enumerate(_MARKS.split(node.value)):
            if i % 2 == 0:
                if _MARK in piece:
                    raise _Unusual("marker")
                pieces.append(piece)
            else:
                pieces.append(int(piece))
        plain = not node.style  # None (Python parser) or "" (libyaml)
        if plain:
            pattern = _WORD if flow else _COLON_WORD
        elif node.style in ('"', "'") and node.start_mark.line == node.end_mark.line:
            pattern = _QUOTED
        else:  # a quoted scalar over several lines, a literal or folded block
            pattern = _COLON_WORD
        source = text[node.start_mark.index : node.end_mark.index]
        for slot in pieces[1::2]:
            assert isinstance(slot, int)
            if slot >= len(allowed) or allowed[slot] is not None or f"{_MARK}{slot:05d}zq" not in source:
                raise _Unusual("marker")
            allowed[slot] = pattern
        return _Hole(tuple(p for p in pieces if p != ""), plain)
    inner = flow or (isinstance(node, yaml.CollectionNode) and bool(node.flow_style))
    if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
        out: dict[str, Any] = {}
        for key, item in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag not in _SCALAR_TAGS or key.value in out:
                raise _Unusual("key")
            if _MARK in key.value:
                raise _Unusual("a slot in a key")
            out[key.value] = _template_value(item, inner, allowed, text)
        return out
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
        return [_template_value(item, inner, allowed, text) for item in node.value]
    raise _Unusual(node.tag)


_RESOLVER = _Loader("")  # resolves a filled plain scalar as the plain reader's loader does
