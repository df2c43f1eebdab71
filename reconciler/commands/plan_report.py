"""The markdown report of ``reconciler plan``: grouped, filtered, and short enough to post as a PR comment.

GitHub refuses a comment over 65,536 characters and GitLab a note over 1,000,000, so the markdown stays under
:data:`BUDGET` whatever the change: environments with the same rendered change are one group ("same change in 47
environments: ..."), every affected environment is named in the change table, and when the diffs still do not fit
the longest are cut first, each cut said where it was made, with a pointer to the full report that ``--output DIR``
writes (``plan.md`` uncut, ``plan.json``, ``plan.txt``) for a CI artifact. :func:`select` applies the
``--env/--stage/--app`` filters. Called by :mod:`reconciler.commands.plan`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from reconciler.core.diffplan import EnvChange, RepoPlan

BUDGET = 65_000  # characters: under GitHub's 65,536 for a comment, with room for a bot's own header
ICONS = {"violation": "❌", "held": "⏸️", "info": "ℹ️", "override": "⚠️"}


class Verdictish(Protocol):
    @property
    def policy(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def environments(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Group:
    """One rendered change shared by several environments."""

    application: str
    before: str
    after: str
    body: str  # the diff, or the render error
    error: bool
    environments: tuple[str, ...]


def select(plan: RepoPlan, envs: Sequence[str] = (), stages: Sequence[str] = (), apps: Sequence[str] = ()) -> RepoPlan:
    """The plan restricted to the named environments, stages and applications (each filter: any of its values)."""
    kept: list[EnvChange] = []
    for env in plan.environments:
        if (envs and env.environment not in envs) or (stages and env.stage not in stages):
            continue
        changes = tuple(c for c in env.changes if not apps or c.application in apps)
        if changes:
            kept.append(replace(env, changes=changes))
    return replace(plan, environments=tuple(kept))


def _content(diff: str) -> str:
    """A diff without the target in its file names (``a/k8s-nord/api/x.yaml`` -> ``a/api/x.yaml``): the same
    content change on targets of other regions is the same change."""
    out = []
    for line in diff.splitlines(keepends=True):
        if line.startswith(("--- a/", "+++ b/")) and line.count("/") >= 2:
            head, rest = line[:6], line[6:]
            line = head + rest.split("/", 1)[1]
        out.append(line)
    return "".join(out)


def groups(plan: RepoPlan) -> list[Group]:
    """Changes with the same application, versions and rendered content diff (or error), largest group first."""
    found: dict[tuple[str, str, str, str, bool], list[str]] = {}
    for env in plan.environments:
        for c in env.changes:
            if c.diff or c.error:
                key = (c.application, c.before or "-", c.after or "-", c.error or _content(c.diff), bool(c.error))
                found.setdefault(key, []).append(env.environment)
    out = [Group(a, b, t, body, err, tuple(names)) for (a, b, t, body, err), names in found.items()]
    return sorted(out, key=lambda g: (-len(g.environments), g.application, g.before, g.after))


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


def _short(names: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _head(plan: RepoPlan, verdicts: Sequence[Verdictish], base: str, head: str, filtered: str) -> list[str]:
    ok = not any(v.outcome == "violation" for v in verdicts)
    out = [f"### reconciler plan `{base[:12]}..{head[:12]}` {'✅' if ok else '❌ policy violation'}", "",
           f"**Blast radius:** {plan.blast_radius()}{filtered}", ""]  # fmt: skip
    if verdicts:
        out += ["| | policy | verdict | environments |", "|---|---|---|---|"]
        for v in verdicts:
            msg = v.message.replace("|", "\\|")
            out.append(f"| {ICONS.get(v.outcome, '')} | {v.policy} | {msg} | "
                       f"{len(v.environments)}: {_short(v.environments)} |")  # fmt: skip
        out.append("")
    return out


def _table(plan: RepoPlan) -> list[str]:
    """Every affected environment, named, by (application, from, to)."""
    by_change: dict[tuple[str, str, str], list[str]] = {}
    for env in plan.environments:
        for c in env.changes:
            by_change.setdefault((c.application, c.before or "-", c.after or "-"), []).append(env.environment)
    if not by_change:
        return []
    out = ["| application | from | to | environments |", "|---|---|---|---|"]
    for (app, before, after), envs in sorted(by_change.items()):
        out.append(f"| {app} | {before} | {after} | {len(envs)}: {_names(envs)} |")
    return [*out, ""]


def _details(group: Group, body: str | None) -> str:
    where = (f"same change in {len(group.environments)} environments: {_names(group.environments)}"
             if len(group.environments) > 1 else group.environments[0])  # fmt: skip
    title = f"{group.application} {group.before} → {group.after}{' (render error)' if group.error else ''}"
    lines = [f"<details><summary>{title}: {where}</summary>\n"]
    if body is None:
        size = group.body.count("\n") + 1
        lines.append(f"_diff of {size} lines cut to fit the comment: see the full report (`plan --output`)._\n")
    else:
        lines += ["```diff", body.rstrip().replace("```", "`\u200b``"), "```", ""]
    lines.append("</details>")
    return "\n".join(lines)


def render_markdown(plan: RepoPlan, verdicts: Sequence[Verdictish], base: str, head: str, *,
                    budget: int | None = BUDGET, filtered: str = "") -> str:  # fmt: skip
    """The report; with a ``budget``, diffs are cut (longest first) until it fits, and the cuts are said."""
    top = "\n".join(_head(plan, verdicts, base, head, filtered) + _table(plan))
    notes = "".join(f"\n> {note}\n" for note in plan.notes)
    found = groups(plan)
    bodies: list[str | None] = [g.body for g in found]
    cut = 0

    def text() -> str:
        parts = [_details(g, b) for g, b in zip(found, bodies, strict=True)]
        said = ""
        if cut:
            said = (f"\n_{cut} of {len(found)} diffs were cut to keep this comment under {budget:,} characters "
                    "(longest first); the full report is the CI artifact written by `plan --output`._\n")  # fmt: skip
        return top + "\n" + "\n".join(parts) + "\n" + notes + said

    result = text()
    if budget is not None:
        for index in sorted(range(len(found)), key=lambda i: -len(found[i].body)):
            if len(result) <= budget:
                break
            bodies[index], cut = None, cut + 1
            result = text()
        if len(result) > budget:  # even without diffs (thousands of environments): the names stay, shortened
            result = result[: budget - 200].rsplit("\n", 1)[0] + (
                f"\n\n_report cut at {budget:,} characters; the full report is written by `plan --output`._\n"
            )
    return result
