"""``reconciler plan --repo PATH --base REV --head REV``: what a pull request would change, and policy verdicts.

Reads both revisions straight from the repository (no checkout), validates the head, pairs the desired states
(:mod:`reconciler.core.diffplan`) and asks the release policies about every change: promotion (``promotesFrom``
+ soak, from the audit trail on the status branch found in the same repository), freezes (held until...),
protected stages (need a signed merge), ownership (on stages with ``ownerApproval``, a change by someone outside
the application's Team needs a commit signed by that Team or ops: verified with ``--allowed-signers`` or the
config's). Exit 0 when the head is valid and no policy is violated, 1 otherwise,
so it works as a required check. ``--format markdown`` is ready to post as a PR comment, ``json`` is for bots.
``--live --config FILE`` compares with the live versions on the status branch instead of the base revision.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.commands import plan_report
from reconciler.commands.common import ConfigError, fail, load_config, status_store
from reconciler.core.diffplan import RepoPlan, compare
from reconciler.core.loader import Limits, LoadResult, load_repo
from reconciler.core.policy import (
    PROMOTION_OVERRIDE,
    Stint,
    approval_hold,
    extend_history,
    freeze_hold,
    ownership_hold,
    promotion_hold,
)
from reconciler.core.problems import ReconcilerError
from reconciler.source.gitrepo import GitSource
from reconciler.source.history import open_repository
from reconciler.source.kustomize import KubectlKustomize
from reconciler.status import document

STATUS_REFS = ("refs/heads/reconciler-status", "refs/remotes/origin/reconciler-status")


@dataclass(frozen=True)
class Verdict:
    policy: str  # promotion | freeze | protected
    outcome: str  # violation | held | info | override
    message: str
    environments: tuple[str, ...]


def read_history(source: GitSource, ref: str | None) -> tuple[dict[tuple[str, str], list[Stint]], str | None]:
    history: dict[tuple[str, str], list[Stint]] = {}
    for candidate in (ref,) if ref else STATUS_REFS:
        sha = source.repo.resolve(candidate) if candidate else None
        if sha is None:
            continue
        tree = source.tree(sha)
        entries = []
        for path in sorted(p for p in tree.paths() if p.startswith("audit/") and p.endswith(".jsonl")):
            for line in tree.read(path).decode("utf-8", "replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    entries.append(entry)
        entries.sort(key=lambda e: str(e.get("end") or e.get("time") or ""))
        extend_history(history, entries)
        return history, candidate
    return history, None


def _verdicts(
    result: LoadResult, plan: RepoPlan, history: Mapping[tuple[str, str], list[Stint]], now: datetime,
    trailers: Mapping[str, str], status_ref: str | None,
) -> list[Verdict]:  # fmt: skip
    repo = result.repo
    assert repo is not None
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for env_change in plan.environments:
        env = repo.environments[env_change.environment]
        stage = repo.stages.get(env.stage)
        for change in env_change.changes:
            if change.after is None:
                continue
            frozen = freeze_hold(repo, env, change.application, now)
            if frozen is not None:
                grouped.setdefault(("freeze", "held", f"{change.application}: {frozen[0]}"), []).append(env.name)
            if change.before is not None and change.before != change.after and stage and stage.promotes_from:
                hold = promotion_hold(repo, env, change.application, change.after, history, now)
                if hold is not None:
                    override = trailers.get(PROMOTION_OVERRIDE)
                    if override:
                        key = ("promotion", "override", f"{hold} — overridden: {override} (needs a signed commit)")
                    else:
                        hint = "" if status_ref else " (no status branch found: pass --status-ref)"
                        key = ("promotion", "violation", f"{hold}{hint}")
                    grouped.setdefault(key, []).append(env.name)
            if stage is not None and stage.protected and not repo.teams:
                msg = f"{stage.name} is protected: applied only from a commit signed by an allowed signer"
                grouped.setdefault(("protected", "info", msg), []).append(env.name)
    return [Verdict(p, o, m, tuple(envs)) for (p, o, m), envs in sorted(grouped.items())]


def _approval(source: GitSource, result: LoadResult, plan: RepoPlan, base: str, head: str,
              signers: str | None) -> list[Verdict]:  # fmt: skip
    """With Teams, what a protected stage needs of this change: a signature by one of its approvers who is not the
    change's only author (four-eyes). The head commit (the signed merge, or a signed commit on the branch) is
    judged when signed; otherwise the verdict says who may sign the merge."""
    from reconciler.source.history import change_authors, verify_signature

    repo = result.repo
    assert repo is not None
    stages = {repo.environments[e.environment].stage for e in plan.environments if e.changes}
    found: list[Verdict] = []
    for name in sorted(stages):
        stage = repo.stages.get(name)
        if stage is None or not stage.protected or not repo.teams:
            continue
        envs = tuple(e.environment for e in plan.environments if e.changes and e.stage == name)
        authors = change_authors(source, head) if base == head else _authors(source, base, head)
        signature = replace(verify_signature(source, head, signers), authors=authors)
        approvers = repo.approvers(stage)
        if signature.good:
            hold = approval_hold(approvers, name, (signature,))
            fine = f"{name}: signed by {signature.signer}, an approver who is not the only author"
            outcome, message = ("violation", str(hold)) if hold else ("info", fine)
        else:
            others = sorted(approvers - set(authors))
            who = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            outcome, message = "info", (f"{name} is protected: the merge must be signed by an approver other than "
                                        f"the author{'s' if len(authors) > 1 else ''} ({', '.join(authors)}): "
                                        f"{who or 'nobody else is an approver'}")  # fmt: skip
        found.append(Verdict("protected", outcome, message, envs))
    return found


def _authors(source: GitSource, base: str, head: str) -> tuple[str, ...]:
    done = source.repo.run("log", "--format=%ae", "--no-show-signature", f"{base}..{head}")
    if done.returncode:
        raise ReconcilerError(f"cannot list the authors of {base[:12]}..{head[:12]}: {source.repo.tail(done)}")
    return tuple(sorted({line.strip().lower() for line in done.stdout.decode().splitlines() if line.strip()}))


def _ownership(source: GitSource, result: LoadResult, plan: RepoPlan, base: str, head: str,
               signers: str | None) -> list[Verdict]:  # fmt: skip
    """Changes by someone outside the owning Team, on stages with ``ownerApproval`` (see ``ownership_hold``)."""
    from reconciler.source.history import application_changes

    repo = result.repo
    assert repo is not None
    grouped: dict[str, list[str]] = {}
    for env_change in plan.environments:
        env = repo.environments[env_change.environment]
        stage = repo.stages.get(env.stage)
        if stage is None or not stage.owner_approval or not repo.teams:
            continue
        for change in env_change.changes:
            owners = repo.owners(change.application)
            if change.after is None or owners is None:
                continue
            found = application_changes(source, repo, stage, change.application, change.after, base, head, signers)
            hold = ownership_hold(change.application, owners, found)
            if hold is not None:
                grouped.setdefault(hold.reason, []).append(env.name)
    return [Verdict("ownership", "violation", m, tuple(envs)) for m, envs in sorted(grouped.items())]


def _signers(args: argparse.Namespace) -> str | None:
    if args.allowed_signers:
        return str(Path(args.allowed_signers).resolve())
    return load_config(args.config).allowed_signers if args.config else None


def _envs(names: tuple[str, ...], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def render_text(plan: RepoPlan, verdicts: list[Verdict], base: str, head: str) -> str:
    lines = [f"plan {base[:12]}..{head[:12]}: {plan.blast_radius()}"]
    for env in plan.environments:
        wave = f", wave {env.wave}" if env.wave else ""
        lines.append(f"  {env.environment} ({env.stage}{wave})")
        for c in env.changes:
            lines.append(
                f"    {c.application}: {c.before or '-'} -> {c.after or '-'}" + (f"  [{c.error}]" if c.error else "")
            )
    for note in plan.notes:
        lines.append(f"  note: {note}")
    for v in verdicts:
        lines.append(f"{v.outcome.upper()} {v.policy}: {v.message} ({len(v.environments)}: {_envs(v.environments)})")
    return "\n".join(lines)


def render_markdown(plan: RepoPlan, verdicts: list[Verdict], base: str, head: str) -> str:
    return plan_report.render_markdown(plan, verdicts, base, head)


def render_json(plan: RepoPlan, verdicts: list[Verdict], base: str, head: str) -> str:
    data: dict[str, Any] = {
        "base": base, "head": head, "blastRadius": plan.blast_radius(), "stages": plan.stages,
        "environmentsChanged": len(plan.environments), "environmentsTotal": plan.total_environments,
        "environments": [{"name": e.environment, "stage": e.stage, "wave": e.wave, "changes": [
            {"application": c.application, "from": c.before, "to": c.after, "kind": c.kind, "diff": c.diff,
             "error": c.error or None} for c in e.changes]} for e in plan.environments],
        "verdicts": [{"policy": v.policy, "outcome": v.outcome, "message": v.message,
                      "environments": list(v.environments)} for v in verdicts],
        "ok": not any(v.outcome == "violation" for v in verdicts), "notes": list(plan.notes),
    }  # fmt: skip
    return json.dumps(data, indent=2)


def _problems(result: LoadResult, fmt: str, head: str) -> int:
    problems = result.all_problems()
    if fmt == "json":
        print(json.dumps({"head": head, "ok": False, "problems": [p.as_dict() for p in problems]}, indent=2))
    elif fmt == "markdown":
        print(f"### reconciler plan: head `{head[:12]}` is invalid ❌\n")
        print("\n".join(f"- `{p}`" for p in problems))
    else:
        print("\n".join(str(p) for p in problems))
    return 1


def _live_versions(args: argparse.Namespace) -> dict[str, dict[str, str | None]]:
    config = load_config(args.config)
    snapshot = status_store(config).read()
    live: dict[str, dict[str, str | None]] = {}
    for path, data in snapshot.files.items():
        doc = document.parse(data) if path.startswith("environments/") else None
        if doc and isinstance(doc.get("environment"), str):
            apps = doc.get("applications") or {}
            live[doc["environment"]] = {a: s.get("live") for a, s in apps.items() if isinstance(s, dict)}
    return live


def run_plan(args: argparse.Namespace) -> int:
    try:
        source = open_repository(args.repo)
        head = source.repo.resolve(args.head)
        base = source.repo.resolve(args.base) if not args.live else head
        if head is None or base is None:
            return fail(f"{args.repo}: unknown revision {args.head if head is None else args.base!r}")
        limits = Limits(max_file_size=args.max_file_size, max_repo_size=args.max_repo_size)
        head_tree = source.tree(head)
        head_result = load_repo(head_tree, limits)
        if not head_result.ok or head_result.repo is None:
            return _problems(head_result, args.format, head)
        live = _live_versions(args) if args.live else None
        base_tree = source.tree(base) if not args.live else None
        base_result = load_repo(base_tree, limits) if base_tree is not None else None
        base_repo = base_result.repo if base_result else None
        plan = compare(base_repo, base_tree, head_result.repo, head_tree, live, build=KubectlKustomize())
        plan = plan_report.select(plan, args.env or (), args.stage or (), args.app or ())
        now = args.now or datetime.now(UTC)  # parsed (aware) by the CLI
        history, status_ref = read_history(source, args.status_ref)
        trailers = source.commit(head).trailers
        verdicts = _verdicts(head_result, plan, history, now, trailers, status_ref)
        if not args.live:
            signers = _signers(args)
            verdicts += _approval(source, head_result, plan, base, head, signers)
            verdicts += _ownership(source, head_result, plan, base, head, signers)
    except ConfigError as exc:
        return fail(str(exc))
    except ReconcilerError as exc:
        return fail(str(exc))
    filtered = _filters(args)
    if args.output:
        written = _write_reports(Path(args.output), plan, verdicts, base, head, filtered)
        if written:
            return fail(written)
    if args.format == "markdown":
        print(plan_report.render_markdown(plan, verdicts, base, head, filtered=filtered), end="")
    else:
        render = {"text": render_text, "json": render_json}[args.format]
        print(render(plan, verdicts, base, head))
    return 1 if any(v.outcome == "violation" for v in verdicts) else 0


def _filters(args: argparse.Namespace) -> str:
    given = [f"{flag} {', '.join(values)}" for flag, values in
             (("environment", args.env), ("stage", args.stage), ("application", args.app)) if values]  # fmt: skip
    return f" (filtered: {'; '.join(given)})" if given else ""


def _write_reports(out: Path, plan: RepoPlan, verdicts: list[Verdict], base: str, head: str, filtered: str) -> str:
    """The full reports for a CI artifact: plan.md (no size bound), plan.json, plan.txt. An error text, or ""."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.md").write_text(
            plan_report.render_markdown(plan, verdicts, base, head, budget=None, filtered=filtered), encoding="utf-8"
        )
        (out / "plan.json").write_text(render_json(plan, verdicts, base, head) + "\n", encoding="utf-8")
        (out / "plan.txt").write_text(render_text(plan, verdicts, base, head) + "\n", encoding="utf-8")
    except OSError as exc:
        return f"reconciler plan: cannot write the report to {out}: {exc.strerror or exc}"
    return ""
