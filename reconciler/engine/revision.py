"""The revision being served and its caches: load the head (kept as *last good* only when valid), and the
per-revision digests that tell which environments' inputs changed.

An invalid head never replaces the last good revision: it is remembered with its problems (every environment
shows Invalid) while the last good one keeps being served; after a restart on an invalid head the last good
revision named on the status branch is loaded. Input keys and render tokens are computed once per revision.
Owned by the controller (:mod:`reconciler.engine.controller`), which asks it once per cycle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from reconciler.core.config import ControllerConfig
from reconciler.core.desired import app_digest, environment_payload, render_token
from reconciler.core.loader import Limits, load_repo
from reconciler.core.model import Environment, ReleasesRepo
from reconciler.core.problems import Problem, ReconcilerError
from reconciler.core.tree import CachingTree, SourceTree
from reconciler.engine.memo import RenderMemo
from reconciler.observability.logging import get_logger


class Source(Protocol):
    def fetch(self) -> str: ...
    def tree(self, revision: str) -> SourceTree: ...
    def commit(self, revision: str) -> Any: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Loaded:
    revision: str
    repo: ReleasesRepo
    tree: SourceTree
    author: str
    committer: str
    committed_at: float | None
    env_problems: Mapping[str, list[Problem]]
    trailers: Mapping[str, str] = field(default_factory=dict)


def _person(name: str, email: str) -> str:
    return f"{name} <{email}>" if email else name


class Revisions:
    """The last good revision (``good``), the observed head, an invalid head with its problems, and caches."""

    def __init__(self, config: ControllerConfig, source: Source) -> None:
        self.config = config
        self.source = source
        self.log = get_logger(component="controller")
        self.good: Loaded | None = None
        self.head: str | None = None
        self.invalid: tuple[str, list[Problem]] | None = None
        self.last_good_hint: str | None = None  # from the status branch: what to serve if the head is invalid
        self.restored_invalid = False  # the status branch shows an invalid head
        self.memo = RenderMemo()
        self._app_digests: dict[tuple[str, str, str], str] = {}
        self._input_keys: dict[tuple[str, str], str] = {}  # (revision, environment) -> input key
        self._render_tokens: dict[tuple[str, str], dict[str, str]] = {}  # (revision, environment) -> app -> token

    def advance(self, head: str) -> bool:
        """Load a new head; returns whether the head is valid again after an invalid one (``recovered``)."""
        self.head = head
        was_invalid = self.invalid is not None or self.restored_invalid
        self.restored_invalid = False
        self.load(head)
        recovered = was_invalid and self.invalid is None
        hint = self.last_good_hint
        if self.invalid and self.good is None and hint and hint != head:
            self._load_last_good(hint)
        return recovered

    def load(self, head: str) -> None:
        tree = CachingTree(self.source.tree(head))
        limits = Limits(max_file_size=self.config.max_file_size, max_repo_size=self.config.max_repo_size)
        result = load_repo(tree, limits)
        if result.repo is None:
            self.invalid = (head, result.problems)
            self.log.error("revision invalid; serving the last good one", revision=head[:12],
                           problems=len(result.problems), first=str(result.problems[0]),
                           serving=self.good.revision[:12] if self.good else None)  # fmt: skip
            return
        self.memo.retain(result.repo.environments)  # environments that are gone: their renders are forgotten
        self._app_digests.clear()  # keyed by revision: those of earlier revisions are never asked for again
        self._input_keys.clear()
        self._render_tokens.clear()
        info = self.source.commit(head)
        self.good = Loaded(
            revision=head,
            repo=result.repo,
            tree=tree,
            author=_person(info.author_name, info.author_email),
            committer=_person(info.committer_name, info.committer_email),
            committed_at=info.committed_at.timestamp() if info.committed_at else None,
            env_problems=result.environment_problems,
            trailers=dict(info.trailers or {}),
        )
        self.invalid = None
        self.log.info("revision loaded", revision=head[:12], environments=len(result.repo.environments),
                      invalid_environments=len(result.environment_problems))  # fmt: skip

    def _load_last_good(self, revision: str) -> None:
        """After a restart on an invalid head: serve the last good revision recorded on the status branch."""
        invalid = self.invalid
        try:
            self.load(revision)
        except ReconcilerError as exc:
            self.log.error("cannot load the last good revision", revision=revision[:12], error=str(exc))
        if self.invalid is not None:  # not good after all: serve nothing
            self.good = None
        self.invalid = invalid

    # --- which environments' inputs changed -------------------------------------------------------------------
    def _app_digest(self, loaded: Loaded, app: str, version: str) -> str:
        key = (loaded.revision, app, version)
        found = self._app_digests.get(key)
        if found is None:
            application, release = loaded.repo.applications[app], loaded.repo.releases[(app, version)]
            found = self._app_digests[key] = app_digest(application, release, loaded.tree.digest)
        return found

    def input_key(self, loaded: Loaded, env: Environment) -> str:
        """A digest of everything the environment's reconcile reads; equal keys mean equal desired state.
        Computed once per revision (a cycle without a new revision asks again for every environment)."""
        cached = self._input_keys.get((loaded.revision, env.name))
        if cached is not None:
            return cached
        key = self._input_keys[(loaded.revision, env.name)] = self._compute_input_key(loaded, env)
        return key

    def _compute_input_key(self, loaded: Loaded, env: Environment) -> str:
        versions = loaded.repo.desired_versions(env)
        stage = loaded.repo.stages.get(env.stage)
        payload = [
            *environment_payload(env),
            stage.self_heal if stage else True,
            sorted((a, v, self._app_digest(loaded, a, v)) for a, v in versions.items()),
        ]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def render_tokens(self, loaded: Loaded, env: Environment) -> dict[str, str]:
        """Per application, a digest of everything rendering it in ``env`` reads (keys of the render memo).
        Computed once per revision, like :meth:`input_key`."""
        cached = self._render_tokens.get((loaded.revision, env.name))
        if cached is None:
            own = render_token(env, "")  # (the environment's part, computed once)
            versions = loaded.repo.desired_versions(env).items()
            cached = {a: own + self._app_digest(loaded, a, v)[:32] for a, v in versions}
            self._render_tokens[(loaded.revision, env.name)] = cached
        return cached
