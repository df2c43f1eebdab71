"""Kustomize overlays as component sources: which repo files an overlay reads, whether it may be rendered at all,
and the layer that brings a release's images to it.

``closure`` follows an overlay's kustomization file through every file and directory it names (resources, bases,
components, patches, generators' files...), refusing what the controller never runs: a path that leaves the
repository, a remote resource (rendering runs without network), Helm inflation, and exec/container/KRM-function
plugins (only kustomize's ``builtin`` plugin configurations are accepted). Every refusal names the kustomization
file and line. The files found are what the renderer copies into an empty directory: kustomize sees nothing else.
``wrapper`` is the kustomization written around the overlay at render time (the release's images); the overlay
itself is never edited. :class:`Build` is what renders (``reconciler.source.kustomize`` runs ``kubectl kustomize``).

Called by the loader (closure, at load time), by ``render_unit`` (wrapper + build) and the benches. Pure.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.core.problems import Problem
from reconciler.core.tree import PathEscapes, join_inside
from reconciler.core.yamlsafe import Document, YamlError, parse_documents

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
WRAPPER_DIR = ".reconciler-wrapper"  # where the renderer writes the wrapper, at the root of the laid-out repo
MAX_FILES = 2_000
MAX_BYTES = 32 * 1024 * 1024
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@|github\.com/|gitlab\.com/|bitbucket\.org/)", re.IGNORECASE)
_PATH_LISTS = ("resources", "bases", "components")  # files, or directories holding a kustomization
_FILE_LISTS = ("crds", "configurations", "patchesStrategicMerge")
_PATH_ITEMS = ("patches", "patchesJson6902", "replacements")  # items with a ``path`` (or inline)
_PLUGIN_LISTS = ("generators", "transformers", "validators")
_HELM = ("helmCharts", "helmGlobals", "helmChartInflationGenerator")
_PLUGIN_ANNOTATIONS = ("config.kubernetes.io/function", "config.k8s.io/function")


class Build(Protocol):
    """Renders an overlay: ``files`` (repo path -> bytes: the closure) laid out as in the repo, ``wrapper`` (a
    kustomization) written around the overlay directory ``overlay``. Returns the rendered YAML stream; raises
    :class:`KustomizeError` with what kustomize said (temporary paths replaced by repo paths)."""

    def __call__(self, files: Mapping[str, bytes], overlay: str, wrapper: bytes) -> bytes: ...


class KustomizeError(ValueError):
    """Rendering an overlay failed: ``path: message`` (the overlay's kustomization file)."""


@dataclass(frozen=True)
class Closure:
    files: tuple[str, ...]  # every repo file the overlay reads, sorted
    problems: tuple[Problem, ...]


def kustomization_file(directory: str, paths: Collection[str]) -> str | None:
    """The kustomization file of ``directory`` (repo path), if it has one."""
    for name in KUSTOMIZATION_FILES:
        candidate = name if directory in ("", ".") else f"{directory}/{name}"
        if candidate in paths:
            return candidate
    return None


def directories(paths: Collection[str]) -> set[str]:
    """Every directory of ``paths`` (repo paths of files), ``""`` for the root."""
    found = {""}
    for path in paths:
        directory = posixpath.dirname(path)
        while directory not in found:
            found.add(directory)
            directory = posixpath.dirname(directory)
    return found


def closure(
    overlay: str,
    paths: Collection[str],
    read: Callable[[str], bytes],
    dirs: set[str] | None = None,
    parsed: dict[str, list[Document] | YamlError] | None = None,
    size: Callable[[str], int] | None = None,
) -> Closure:
    """The files ``overlay`` (a repo directory) reads, and every reason it may not be rendered. ``dirs`` (see
    :func:`directories`) and ``parsed`` (kustomization files as parsed) may be shared by the closures of one load;
    ``size`` gives a file's size without reading it."""
    walk = _Walk(paths, read, directories(paths) if dirs is None else dirs, {} if parsed is None else parsed)
    walk.directory(overlay, None)
    total = sum(size(p) if size is not None else len(read(p)) for p in walk.files)
    if len(walk.files) > MAX_FILES or total > MAX_BYTES:
        limit = f"over the limit of {MAX_FILES} files, {MAX_BYTES} bytes"
        walk.problems.append(
            Problem(overlay, None, f"the overlay reads {len(walk.files)} files, {total} bytes: {limit}")
        )
    problems = sorted(walk.problems, key=lambda p: (p.path, p.line or 0))
    return Closure(tuple(sorted(walk.files)), tuple(problems))


class _Walk:
    def __init__(
        self,
        paths: Collection[str],
        read: Callable[[str], bytes],
        dirs: set[str],
        parsed: dict[str, list[Document] | YamlError],
    ) -> None:
        self.paths = paths
        self.read = read
        self.dirs = dirs
        self.parsed = parsed
        self.files: set[str] = set()
        self.seen: set[str] = set()
        self.problems: list[Problem] = []

    def directory(self, directory: str, named_by: tuple[Document, tuple[str | int, ...]] | None) -> None:
        if directory in self.seen:
            return
        self.seen.add(directory)
        found = kustomization_file(directory, self.paths)
        if found is None:
            message = f"{directory or '.'} has no kustomization.yaml"
            self.problems.append(Problem(named_by[0].path, named_by[0].line(named_by[1]), message)
                                 if named_by else Problem(directory or ".", None, message))  # fmt: skip
            return
        self.files.add(found)
        if found not in self.parsed:
            try:
                self.parsed[found] = [d for d in parse_documents(found, self.read(found)) if d.data is not None]
            except YamlError as exc:
                self.parsed[found] = exc
        docs = self.parsed[found]
        if isinstance(docs, YamlError):
            self.problems.append(Problem(found, docs.line, docs.message))
            return
        if len(docs) != 1 or not isinstance(docs[0].data, dict):
            self.problems.append(Problem(found, None, "a kustomization file holds one mapping"))
            return
        self.kustomization(docs[0], directory)

    def kustomization(self, doc: Document, directory: str) -> None:
        data: dict[str, Any] = doc.data
        for key in _HELM:
            if key in data:
                self.refuse(doc, (key,), f"{key}: Helm inflation is not allowed; render the chart in CI into a "
                            "manifests: directory (docs/kubernetes.md)")  # fmt: skip
        for key in _PATH_LISTS:
            for where, ref in _strings(data, key):
                self.reference(doc, where, directory, ref, directories=True)
        for key in _FILE_LISTS:
            for where, ref in _strings(data, key):
                if "\n" not in ref:  # (an inline patch is YAML text)
                    self.reference(doc, where, directory, ref)
        for key in _PATH_ITEMS:
            for where, item in _items(data, key):
                if isinstance(item.get("path"), str):
                    self.reference(doc, (*where, "path"), directory, item["path"])
        if isinstance(data.get("openapi"), dict) and isinstance(data["openapi"].get("path"), str):
            self.reference(doc, ("openapi", "path"), directory, data["openapi"]["path"])
        for key in ("configMapGenerator", "secretGenerator"):
            for where, item in _items(data, key):
                for sub in ("files", "envs"):
                    for inner, ref in _strings(item, sub):
                        self.reference(doc, (*where, *inner), directory, ref.rpartition("=")[2])
                if isinstance(item.get("env"), str):
                    self.reference(doc, (*where, "env"), directory, item["env"])
        for key in _PLUGIN_LISTS:
            self.plugins(doc, directory, key)

    def plugins(self, doc: Document, directory: str, key: str) -> None:
        entries = doc.data.get(key)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            where: tuple[str | int, ...] = (key, i)
            if isinstance(entry, dict):
                if not _builtin(entry):
                    self.refuse(doc, where, f"{key}: only kustomize's builtin plugins are allowed (no exec, "
                                "container or KRM function plugins)")  # fmt: skip
                continue
            if not isinstance(entry, str):
                continue
            path = self.reference(doc, where, directory, entry, directories=True)
            if path is None or path in self.dirs:
                continue
            try:
                configs = [d.data for d in parse_documents(path, self.read(path)) if d.data is not None]
            except YamlError as exc:
                self.problems.append(Problem(path, exc.line, exc.message))
                continue
            if not all(isinstance(c, dict) and _builtin(c) for c in configs):
                self.refuse(doc, where, f"{key}: {entry} is not a builtin plugin configuration; only kustomize's "
                            "builtin plugins are allowed (no exec, container or KRM function plugins)")  # fmt: skip

    def reference(
        self, doc: Document, where: tuple[str | int, ...], directory: str, ref: str, directories: bool = False
    ) -> str | None:
        """The repo path ``ref`` names (recorded), or ``None`` after recording why it cannot be read."""
        if _REMOTE.match(ref):
            self.refuse(doc, where, f"remote resource {ref!r} is not allowed: rendering runs without network")
            return None
        try:
            path = join_inside(directory, ref)
        except PathEscapes as exc:
            self.refuse(doc, where, str(exc))
            return None
        if path in self.paths:
            self.files.add(path)
            return path
        if directories and path in self.dirs:
            self.directory(path, (doc, where))
            return path
        self.refuse(doc, where, f"{ref!r} not found (looked for {path})")
        return None

    def refuse(self, doc: Document, where: tuple[str | int, ...], message: str) -> None:
        self.problems.append(Problem(doc.path, doc.line(where), message))


def _builtin(config: Mapping[str, Any]) -> bool:
    metadata = config.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if isinstance(annotations, dict) and any(a in annotations for a in _PLUGIN_ANNOTATIONS):
        return False
    return config.get("apiVersion") == "builtin"


def _strings(data: Mapping[str, Any], key: str) -> Iterator[tuple[tuple[str | int, ...], str]]:
    value = data.get(key)
    if isinstance(value, list):
        yield from (((key, i), v) for i, v in enumerate(value) if isinstance(v, str))


def _items(data: Mapping[str, Any], key: str) -> Iterator[tuple[tuple[str | int, ...], dict[str, Any]]]:
    value = data.get(key)
    if isinstance(value, list):
        yield from (((key, i), v) for i, v in enumerate(value) if isinstance(v, dict))


def image_entry(image: str, digest: str = "") -> dict[str, str] | None:
    """The kustomize ``images:`` entry that sets ``image``'s tag (and digest) wherever its name is used."""
    if not image:
        return None
    base, _, pinned_in_image = image.partition("@")
    name, _, tag = base.rpartition(":") if ":" in base.rsplit("/", 1)[-1] else (base, "", "")
    entry = {"name": name}
    if tag:
        entry["newTag"] = tag
    pinned = digest or pinned_in_image
    if pinned:
        entry["digest"] = pinned
    return entry


def wrapper(overlay_from_wrapper: str, images: list[dict[str, str]]) -> bytes:
    """The kustomization written around an overlay (JSON is YAML): the overlay as its one resource, the images."""
    body: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [overlay_from_wrapper],
    }
    if images:
        body["images"] = images
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
