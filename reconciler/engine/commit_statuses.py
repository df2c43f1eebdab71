"""Forge commit statuses after each cycle: one context per stage on the commit the controller applies.

:class:`StatusPoster` sums up each stage's environments (:func:`reconciler.core.notify.stage_status`: "44/47
Synced, 3 Progressing", pending / success / failure / error) and offers a status to the forge's outbox only when
it changed for that commit and context (GitLab: only when the state changed; it refuses the same state twice).
When the head moves, every stage gets a status on the new commit. Offering never waits, so a forge that is slow,
down or answering 429 delays no cycle and no status commit; what it missed is sent in order when it answers (its
outbox retries), the last status of each context last. After a restart the current commit's statuses are posted
again once (the forge keeps the latest per context). Called by :class:`reconciler.engine.notifications.Notifier`.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core.notify import StatusState, stage_status
from reconciler.core.plan import Phase
from reconciler.notify.forge import CommitStatus, ForgeStatuses
from reconciler.notify.outbox import Outbox

CONTEXT_PREFIX = "reconciler/"


class StatusPoster:
    def __init__(self, sink: ForgeStatuses, stages: frozenset[str] = frozenset(), link: str = "",
                 outbox: Outbox | None = None) -> None:  # fmt: skip
        self.sink = sink
        self.stages = stages  # empty: every stage
        self.link = link.rstrip("/")
        self.outbox = outbox or Outbox()
        self.sha = ""
        self.posted: dict[str, tuple[StatusState, str]] = {}  # context -> what the forge was last told (self.sha)

    def update(self, sha: str, members: Mapping[str, str], phases: Mapping[str, Phase | None]) -> list[CommitStatus]:
        """Offer the statuses that changed; ``members``: environment -> stage, ``phases``: environment -> phase.
        Returns what was offered."""
        if not sha:
            return []
        if sha != self.sha:
            self.sha, self.posted = sha, {}
        by_stage: dict[str, list[Phase | None]] = {}
        for env, stage in members.items():
            if not self.stages or stage in self.stages:
                by_stage.setdefault(stage, []).append(phases.get(env))
        offered = []
        for stage, stage_phases in sorted(by_stage.items()):
            state, description = stage_status(stage_phases)
            context = CONTEXT_PREFIX + stage
            last = self.posted.get(context)
            if last is not None and last[0] == state and (last[1] == description or not self.sink.descriptions_update):
                continue
            self.posted[context] = (state, description)
            status = CommitStatus(sha, context, state, description, self._target(stage, members))
            self.outbox.offer(self.sink, status.as_json())
            offered.append(status)
        return offered

    def _target(self, stage: str, members: Mapping[str, str]) -> str:
        if not self.link:
            return ""
        envs = [e for e, s in members.items() if s == stage]
        return f"{self.link}/environments/{envs[0]}" if len(envs) == 1 else f"{self.link}/stages"
