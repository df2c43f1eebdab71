"""The stage view (``GET /stages``): the promotion pipeline, one row per application, one column per stage.

A cell says which versions run in that stage's environments (and how many run each), which version Git wants
there when some environments do not run it yet, and, where a promotion or a change waits, why: the environments
that are Blocked, Failed or Degraded for that application, with their most frequent reasons (for example "4.14.0
has not run 24h in preproduction yet" or "suspended by alice: incident 4711"). Columns follow the promotion order
of the snapshot's ``stages``; a cell links to the matrix filtered to that stage and application.

Called by :mod:`reconciler.http.handler` through :mod:`reconciler.http.dashboard`; a pure function of the
snapshot. Everything shown is escaped (:func:`reconciler.http.pages.esc`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from reconciler.http.pages import ATTENTION, SYMBOLS, apps_of, banner, esc, page, phase_of, stage_names, views

MAX_VERSIONS = 4  # versions listed per cell, most frequent first; the rest are counted
MAX_REASONS = 3  # reasons listed per cell, most frequent first


@dataclass
class _Cell:
    """What one application does in one stage's environments."""

    live: Counter[str] = field(default_factory=Counter)
    desired: Counter[str] = field(default_factory=Counter)
    waiting: int = 0  # environments whose live version is not the desired one
    attention: Counter[str] = field(default_factory=Counter)  # phase -> environments
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, status: Mapping[str, Any]) -> None:
        live, desired = status.get("live"), status.get("desired")
        if live is not None:
            self.live[str(live)] += 1
        if desired is not None:
            self.desired[str(desired)] += 1
            self.waiting += live is None or str(live) != str(desired)
        phase = phase_of(status.get("phase"))
        if phase in ATTENTION:
            self.attention[phase] += 1
            self.reasons[str(status.get("message") or "no reason given")] += 1


def _cells(snapshot: Mapping[str, Any]) -> dict[tuple[str, str], _Cell]:
    cells: dict[tuple[str, str], _Cell] = {}
    for env in snapshot.get("environments") or []:
        if not isinstance(env, Mapping):
            continue
        stage = str(env.get("stage"))
        for app, status in apps_of(env).items():
            if isinstance(status, Mapping):
                cells.setdefault((str(app), stage), _Cell()).add(status)
    return cells


def _versions(counts: Counter[str]) -> str:
    shown = counts.most_common(MAX_VERSIONS)
    items = "".join(f"<li><strong>{esc(v)}</strong> ×{n}</li>" for v, n in shown)
    rest = sum(counts.values()) - sum(n for _, n in shown)
    return items + (f"<li>and {rest} more</li>" if rest else "")


def _main(cell: _Cell | None) -> str | None:
    """The version most of a stage's environments run (None when none runs the application)."""
    return cell.live.most_common(1)[0][0] if cell is not None and cell.live else None


def _cell(app: str, stage: str, cell: _Cell | None, upstream: tuple[str, str | None] | None) -> str:
    if cell is None:
        return "<td>—</td>"
    link = "/?" + urlencode({"stage": stage, "app": app})
    out = [f'<td data-stage="{esc(stage)}"><a href="{esc(link)}"><ul class="live">{_versions(cell.live)}</ul></a>']
    if upstream is not None and upstream[1] is not None and upstream[1] != _main(cell):
        out.append(f'<span class="behind">{esc(upstream[0])} runs {esc(upstream[1])}</span>')
    if cell.waiting:
        wanted = ", ".join(esc(v) for v, _ in cell.desired.most_common(2))
        out.append(f'<span class="wait">→ {wanted}: {cell.waiting} waiting</span>')
    for phase, count in sorted(cell.attention.items()):
        out.append(f' <span class="p" data-phase="{phase}" title="{count} {phase}">{count}</span>')
    for reason, count in cell.reasons.most_common(MAX_REASONS):
        out.append(f'<span class="why">{esc(reason)}{f" (×{count})" if count > 1 else ""}</span>')
    if len(cell.reasons) > MAX_REASONS:
        out.append(f'<span class="why">and {len(cell.reasons) - MAX_REASONS} other reasons</span>')
    out.append("</td>")
    return "".join(out)


def _header(stages: list[str], snapshot: Mapping[str, Any]) -> str:
    info = {str(s.get("name")): s for s in snapshot.get("stages") or [] if isinstance(s, Mapping)}
    sizes = Counter(str(e.get("stage")) for e in snapshot.get("environments") or [] if isinstance(e, Mapping))
    heads = ["<th>application</th>"]
    for name in stages:
        stage = info.get(name, {})
        notes = [f"{sizes[name]} environments"]
        if stage.get("protected"):
            notes.append("protected")
        soak = stage.get("soakSeconds")
        if isinstance(soak, int) and soak > 0:
            notes.append(f"soak {soak // 3600}h" if soak % 3600 == 0 else f"soak {soak}s")
        if stage.get("promotesFrom"):
            notes.append(f"from {stage['promotesFrom']}")
        heads.append(f'<th data-stage="{esc(name)}">{esc(name)}<br><small>{esc(", ".join(notes))}</small></th>')
    return "<thead><tr>" + "".join(heads) + "</tr></thead>"


def render_stages(snapshot: Mapping[str, Any], query: Mapping[str, str]) -> bytes:
    """The ``/stages`` page; ``query`` may name one application (``app``)."""
    stages = [s for s in stage_names(snapshot) if s != "None"]
    apps = [str(a) for a in snapshot.get("applications") or []]
    chosen = str(query.get("app") or "")
    if chosen:
        apps = [a for a in apps if a == chosen]
    cells = _cells(snapshot)
    stage_docs = [s for s in snapshot.get("stages") or [] if isinstance(s, Mapping)]
    parents = {str(s.get("name")): s.get("promotesFrom") for s in stage_docs}
    rows = []
    for app in apps:

        def upstream(stage: str, app: str = app) -> tuple[str, str | None] | None:
            parent = parents.get(stage)
            return (str(parent), _main(cells.get((app, str(parent))))) if parent else None

        line = "".join(_cell(app, stage, cells.get((app, stage)), upstream(stage)) for stage in stages)
        stuck = any(cells[(app, s)].attention for s in stages if (app, s) in cells)
        rows.append(
            f'<tr data-app="{esc(app)}"{" data-attention=yes" if stuck else ""}>'
            f'<th><a href="/?{esc(urlencode({"app": app}))}">{esc(app)}</a></th>{line}</tr>'
        )
    legend = " ".join(f'<span class="p" data-phase="{p}">{p}</span>' for p in ATTENTION)
    body = [
        f"<header><h1>Stages</h1><span>{len(apps)} applications × {len(stages)} stages, in promotion order</span>"
        f"{views('stages')}</header>",
        banner(snapshot),
        f'<p id="legend">Per stage: the versions running (×environments), <span class="wait">→ the version Git wants'
        "</span> where some environments do not run it yet, <span class=behind>what the stage it promotes from"
        f" runs</span> when that differs, environments that need someone ({legend}, "
        f"{SYMBOLS['Blocked']} a promotion held) with the most frequent reason.</p>",
        f'<table id="stages" class="list">{_header(stages, snapshot)}<tbody>{"".join(rows)}</tbody></table>',
    ]
    if not apps:
        body.append('<p id="empty">No application.</p>')
    return page("stages — reconciler", body)
