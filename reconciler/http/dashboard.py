"""The dashboard: server-rendered HTML pages over :meth:`Controller.snapshot` (no JavaScript build, works without JS).

- :func:`render_index` (``GET /``): the environment x application matrix, rows grouped by stage (in promotion
  order) and wave, phase counts (links that filter), a filter form (``stage``, ``region``, ``app``, ``phase``,
  ``cells`` GET parameters), the revision banner and a legend.
- :func:`render_environment` (``GET /environments/<name>``): one environment: its phase and reason, the operator
  buttons, its recent audit entries and phase timeline, then its applications.
- :func:`render_stages` (``GET /stages``, from :mod:`reconciler.http.stageview`): the promotion pipeline.

Called by :mod:`reconciler.http.handler` with a fresh snapshot per request; pure functions of their arguments.
The page frame (palette, style, script, escaping, banner) is :mod:`reconciler.http.pages`.

The matrix is built to show 235 x 60 cells fast in a browser (``python -m bench.dashboard_load`` measures it). It is
not a ``<table>`` but rows of fixed-width cells with the ARIA table roles (``table``, ``row``, ``columnheader``,
``rowheader``, ``cell``): no layout depends on another row, and each row can be ``content-visibility: auto`` (which
has no effect on table rows), so Chromium lays out and paints only the rows near the viewport; screen readers still
get them all. A stage (and wave) starts with a group line of the same height (``role=presentation``), its name and
what in it needs someone. Columns have a fixed width: with more than :data:`COMPACT_OVER` applications the cells are
compact (:data:`COMPACT_WIDTH` px: 60 applications fit 1600 px; the phase symbol only, the version on hover), else
(or with ``cells=versions``) wide enough for the version. A cell is one short ``<span>``: the phase as a one-letter
class (colour *and* a symbol from CSS, none for Synced), the version as text (at most :data:`CELL_CHARS` characters,
the full one then in ``title``); cells that need someone (Blocked, Failed, Degraded, Invalid) carry their reason as
an index into the page's list of distinct reasons (``data-r``; the script makes it the tooltip: a fleet-wide freeze
would otherwise repeat one sentence 2,800 times). ``<link rel=expect blocking=render>`` holds the first paint until
the whole page is parsed, and the script renders first only the rows that can be on screen."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import groupby
from typing import Any
from urllib.parse import quote, urlencode

from reconciler.http.pages import (
    ATTENTION,
    CELL_CLASS,
    PHASES,
    SYMBOLS,
    apps_of,
    banner,
    bare,
    env_url,
    esc,
    page,
    phase_of,
    revision,
    stage_names,
    views,
)
from reconciler.http.stageview import render_stages

__all__ = ["CELL_CHARS", "CELL_CLASS", "PHASES", "render_environment", "render_index", "render_stages"]

CELL_CHARS = 7  # longer versions are cut (the full one is in the cell's title): cells have a fixed width
CELL_WIDTH = 40  # px, plus a 1 px gap: a version of CELL_CHARS characters at 11 px condensed
COMPACT_WIDTH = 21  # px, plus a 1 px gap: the phase symbol only
COMPACT_OVER = 30  # more applications than this: compact cells unless cells=versions
FILTERS = ("stage", "region", "app", "phase", "cells")


def _row_phase(env: Mapping[str, Any], app: str) -> str:
    """The phase a row is counted and filtered by: the environment's, or with an ``app`` filter that app's there."""
    if not app:
        return phase_of(env.get("phase"))
    status = apps_of(env).get(app)
    return phase_of(status.get("phase")) if isinstance(status, Mapping) else "Unknown"


def _labels(env: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = env.get("labels")
    return labels if isinstance(labels, Mapping) else {}


def _select(name: str, label: str, options: Iterable[str], chosen: str) -> str:
    opts = [f'<option value=""{" selected" if not chosen else ""}>all</option>']
    values = list(options)
    if chosen and chosen not in values:
        values.append(chosen)  # keep an unknown value visible, so the user sees why nothing matches
    opts += [f'<option value="{esc(v)}"{" selected" if v == chosen else ""}>{esc(v)}</option>' for v in values]
    return f'<label>{label} <select name="{name}">{"".join(opts)}</select></label>'


class _Cells:
    """Renders matrix cells (``<span role=cell>``); escaped versions are cached (14,000 cells in ~20 ms)."""

    def __init__(self) -> None:
        self.text: dict[str, tuple[str, bool]] = {}
        self.reasons: dict[str, int] = {}  # distinct reasons of cells that need someone -> index in #reasons

    def reason(self, phase: str, status: Mapping[str, Any]) -> str:
        """`` data-r=N``: the cell's reason is the page's N-th (``#reasons``), shown on hover; one copy per text."""
        text = f"{phase}: {status.get('message') or 'no reason given'}"
        index = self.reasons.setdefault(text, len(self.reasons))
        return f" data-r={index}"

    def reasons_list(self) -> str:
        """The page's distinct reasons, for the cells' ``data-r`` (hidden; the script puts them in tooltips)."""
        items = "".join(f"<li>{esc(text)}</li>" for text in self.reasons)
        return f'<ol id="reasons" hidden>{items}</ol>'

    def version(self, value: Any) -> tuple[str, bool]:
        """The escaped text of a version, cut to :data:`CELL_CHARS` characters, and whether it was cut."""
        text = value if isinstance(value, str) else str(value)  # YAML may hold numbers, lists or mappings
        found = self.text.get(text)
        if found is None:
            cut = len(text) > CELL_CHARS
            found = self.text[text] = (esc(text[: CELL_CHARS - 1] + "…" if cut else text), cut)
        return found

    def cell(self, app: str, status: Any) -> str:
        if not isinstance(status, Mapping):
            return "<span role=cell></span>"
        phase = phase_of(status.get("phase"))
        cls = CELL_CLASS[phase]
        live, desired = status.get("live"), status.get("desired")
        title = ""
        if live is not None:
            text, cut = self.version(live)
            if desired is not None and live != desired:
                title = f"{app}: live {live}, desired {desired}"
            elif cut:
                title = f"{app}: {live}"
        elif desired is not None:
            text, cut = self.version(desired)
            title = f"{app}: desired {desired}, nothing live yet" if cut else ""
            text = f"<i>{text}</i>"
        else:
            text = ""
        why = self.reason(phase, status) if phase in ATTENTION else ""  # where someone has to act
        if title:
            return f'<span role=cell class={cls}{why} title="{esc(title)}">{text}</span>'
        return f"<span role=cell class={cls}{why}>{text}</span>"


def _names_width(names: Iterable[str]) -> int:
    """Pixels for the environment column: its longest name (up to 40 characters) at 11 px, and the phase mark."""
    return 26 + round(6.6 * min(40, max((len(n) for n in names), default=11)))


def _link(chosen: Mapping[str, str], **changes: str) -> str:
    """The ``/`` page with the filters ``chosen`` changed by ``changes`` (an empty value drops a filter)."""
    params = {k: v for k, v in {**chosen, **changes}.items() if v}
    return "/?" + urlencode(params) if params else "/"


def _in_scope(env: Mapping[str, Any], chosen: Mapping[str, str]) -> bool:
    """``env`` passes the stage, region and application filters (the phase filter applies to rows only)."""
    return (
        (not chosen["stage"] or str(env.get("stage")) == chosen["stage"])
        and (not chosen["region"] or str(_labels(env).get("region")) == chosen["region"])
        and (not chosen["app"] or chosen["app"] in apps_of(env))
    )


def _counts_nav(chosen: Mapping[str, str], counts: Mapping[str, int]) -> list[str]:
    """The phase counts, each a link that toggles the phase filter."""
    label = "application " if chosen["app"] else ""
    nav = [f'<nav id="counts" aria-label="{label}phase counts">']
    for phase in PHASES:
        on = chosen["phase"] == phase
        nav.append(
            f'<a href="{esc(_link(chosen, phase="" if on else phase))}" class="p{" on" if on else ""}" '
            f'data-phase={phase}><span class="count" data-phase="{phase}">{counts[phase]}</span> {phase}</a>'
        )
    nav.append("</nav>")
    return nav


def _filters_and_legend(envs: list[Mapping[str, Any]], apps: list[str], chosen: Mapping[str, str]) -> list[str]:
    """The filter form (stage, region, application, phase, cells) and the legend of the marks."""
    app = chosen["app"]
    stages = [s for s in stage_names({"environments": envs}) if s != "None"]
    regions = sorted({str(_labels(e)["region"]) for e in envs if _labels(e).get("region") is not None})
    return [
        '<form id="filters" method="get" action="/">',
        _select("stage", "stage", stages, chosen["stage"]),
        _select("region", "region", regions, chosen["region"]),
        _select("app", "application", apps, app),
        _select("phase", "phase", PHASES, chosen["phase"]),
        _select("cells", "cells", ("compact", "versions"), chosen["cells"]),
        '<button type="submit">filter</button></form>',
        '<p id="legend">'
        + " ".join(f'<span class="k" data-phase="{p}">{SYMBOLS[p]} {p}</span>' for p in PHASES)
        + " — a cell shows the live version (compact cells: on hover), <i>in italics</i> the desired one when"
        + " nothing is live yet; no mark: Synced; hover a Blocked, Failed or Degraded cell for its reason. Counts: "
        + (f"phase of <strong>{esc(app)}</strong> per environment." if app else "environment phases.")
        + " Click a column header to filter by application, an environment for its details.</p>",
    ]


def _grouped(rows: list[Mapping[str, Any]], snapshot: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Rows by stage in promotion order, then by wave in the stage's order (stable: names stay sorted within)."""
    stages = {name: i for i, name in enumerate(stage_names(snapshot))}
    waves = {
        str(s.get("name")): {str(w): i for i, w in enumerate(s.get("waves") or [])}
        for s in snapshot.get("stages") or []
        if isinstance(s, Mapping)
    }

    def key(env: Mapping[str, Any]) -> tuple[int, int]:
        stage = str(env.get("stage"))
        order = waves.get(stage, {})
        return stages.get(stage, len(stages)), order.get(str(env.get("wave")), len(order))

    return sorted(rows, key=key)


def _group_key(env: Mapping[str, Any]) -> tuple[str, str]:
    return str(env.get("stage")), str(env.get("wave"))


def _group_line(stage: str, wave: Any, members: list[Mapping[str, Any]], app: str) -> str:
    """A stage's (and wave's) line above its rows: its name, size, and how many need someone."""
    found = {p: 0 for p in PHASES}
    for env in members:
        found[_row_phase(env, app)] += 1
    attention = ", ".join(f"{n} {SYMBOLS[p]} {p}" for p, n in found.items() if n and p in (*ATTENTION, "OutOfSync"))
    label = f"stage {esc(stage)}" + (f" · wave {esc(wave)}" if wave is not None else "")
    summary = f"{len(members)} environment{'' if len(members) == 1 else 's'}" + (f": {attention}" if attention else "")
    return (
        f"<div class=sg role=presentation data-stage={bare(stage)}><span>{label}<small>{esc(summary)}</small></span>"
        "</div>"
    )


def _matrix(rows: list[Mapping[str, Any]], columns: list[str], chosen: Mapping[str, str]) -> list[str]:
    """The environment x application matrix: a header row of applications, one row per environment."""
    names = [str(env.get("name")) for env in rows]
    width = _names_width(names)
    compact = chosen["cells"] == "compact" or (chosen["cells"] != "versions" and len(columns) > COMPACT_OVER)
    cell = COMPACT_WIDTH if compact else CELL_WIDTH
    out = [
        f'<div id="matrix" role="table" aria-label="phase and version of each application per environment"'
        f'{" class=c" if compact else ""} style="--names:{width}px;--cell:{cell}px;'
        f'width:{width + len(columns) * (cell + 1)}px"><div class="h" role="row"><span role="columnheader">'
        "environment</span>"
    ]
    out += [
        f'<span role=columnheader data-app={bare(a)} title="{esc(a)}">'
        f'<a href="{esc(_link(chosen, app=a))}">{esc(a)}</a></span>'
        for a in columns
    ]
    out.append("</div>")
    cells = _Cells()
    for (stage, _), group in groupby(rows, key=_group_key):  # rows are sorted by stage and wave (_grouped)
        members = list(group)
        out.append(_group_line(stage, members[0].get("wave"), members, chosen["app"]))
        for env in members:
            name = str(env.get("name"))
            statuses = apps_of(env)
            phase = phase_of(env.get("phase"))
            hint = f"{phase}: {env.get('message') or ''}"
            out.append(
                f"<div class=r role=row data-env={bare(name)} data-phase={phase}>"
                f'<span role=rowheader title="{esc(hint)}"><a href="{esc(env_url(name))}">{esc(name)}</a></span>'
                + "".join([cells.cell(a, statuses.get(a)) for a in columns])
                + "</div>"
            )
    out.append("</div>")
    out.append(cells.reasons_list())
    return out


def render_index(snapshot: Mapping[str, Any], query: Mapping[str, str]) -> bytes:
    """The ``/`` page: filters from ``query`` (``stage``, ``region``, ``app``, ``phase``; empty means all) and
    ``cells`` (``compact`` or ``versions``; by default compact over :data:`COMPACT_OVER` applications)."""
    chosen = {k: str(query.get(k) or "") for k in FILTERS}
    envs = [e for e in snapshot.get("environments") or [] if isinstance(e, Mapping)]
    apps = [str(a) for a in snapshot.get("applications") or []]
    app = chosen["app"]
    scoped = [e for e in envs if _in_scope(e, chosen)]
    counts = dict.fromkeys(PHASES, 0)
    for env in scoped:
        counts[_row_phase(env, app)] += 1
    rows = _grouped([e for e in scoped if not chosen["phase"] or _row_phase(e, app) == chosen["phase"]], snapshot)
    body = [
        f"<header><h1>Release reconciler</h1><span>{len(envs)} environments × {len(apps)} applications</span>"
        f'<span>showing <strong id="shown">{len(rows)}</strong></span>'
        f'<a href="/">clear filters</a>{views("matrix")}</header>',
        banner(snapshot),
        *_counts_nav(chosen, counts),
        *_filters_and_legend(envs, apps, chosen),
        *_matrix(rows, [app] if app else apps, chosen),
    ]
    if not rows:
        body.append('<p id="empty">No environment matches these filters.</p>')
    # no paint until the matrix is parsed and the script has run (Chromium would otherwise lay the page out again
    # and again as it arrives; the script chooses which rows to render first); other browsers ignore this
    expect = '<link rel="expect" href="#end" blocking="render">'
    return page("reconciler dashboard", body, head=expect, end='<div id="end"></div>')


def _actions(name: str) -> str:
    """Sync / refresh / suspend / resume buttons (POST to the API, same origin, JSON: see ``handler._csrf``);
    the API decides who may (an operator token, a trusted proxy's user, or anyone with ``api.auth: none``)."""
    buttons = "".join(
        f'<button type="button" data-act="{act}" title="{esc(why)}">{act}</button> '
        for act, why in (("sync", "reconcile now"), ("refresh", "observe and drift-check now, apply nothing"),
                         ("suspend", "hold every change and drift repair until resumed"),
                         ("resume", "lift the suspension"))
    )  # fmt: skip
    return (
        f'<section id="actions" data-env="{esc(name)}"><h2>Actions</h2>{buttons}'
        '<label>reason <input id="reason" maxlength="500" size="40"></label> '
        '<output id="act-result" aria-live="polite"></output></section>'
    )


def _timeline(env: Mapping[str, Any]) -> str:
    """The environment's phase transitions, newest first (from its status document)."""
    phases = [p for p in env.get("phases") or [] if isinstance(p, Mapping)]
    rows = "".join(
        f'<tr data-phase="{phase_of(p.get("phase"))}"><td>{esc(p.get("since"))}</td>'
        f'<td><span class="p" data-phase="{phase_of(p.get("phase"))}">{phase_of(p.get("phase"))}</span></td>'
        f'<td class="msg">{esc(p.get("message"))}</td></tr>'
        for p in reversed(phases)
    )
    return (
        '<h2>Phase timeline</h2><table id="timeline" class="list"><thead><tr><th>since</th><th>phase</th>'
        f"<th>why</th></tr></thead><tbody>{rows or '<tr><td colspan=3>no transition recorded yet</td></tr>'}"
        "</tbody></table>"
    )


def _audit(env: Mapping[str, Any], commit_url: Any) -> list[str]:
    """The environment's recent audit entries, newest first."""
    out = [
        '<h2>Recent changes</h2><table id="audit" class="list"><thead><tr><th>time</th><th>application</th>'
        "<th>action</th><th>from → to</th><th>result</th><th>author</th><th>revision</th><th>message</th></tr>"
        "</thead><tbody>"
    ]
    audit = [a for a in env.get("recentAudit") or [] if isinstance(a, Mapping)]
    for entry in reversed(audit):  # newest first
        out.append(
            f'<tr data-result="{esc(entry.get("result"))}"><td>{esc(entry.get("time"))}</td>'
            f"<td>{esc(entry.get('application'))}</td><td>{esc(entry.get('action'))}</td>"
            f"<td>{esc(entry.get('from') or '—')} → {esc(entry.get('to') or '—')}</td>"
            f"<td>{esc(entry.get('result'))}</td><td>{esc(entry.get('author'))}</td>"
            f'<td>{revision(entry.get("revision"), commit_url)}</td><td class="msg">{esc(entry.get("message"))}</td>'
            "</tr>"
        )
    if not audit:
        out.append('<tr><td colspan="8">no change recorded since the controller started</td></tr>')
    out.append("</tbody></table>")
    return out


def _applications(env: Mapping[str, Any]) -> list[str]:
    out = [
        '<h2>Applications</h2><table id="applications" class="list"><thead><tr><th>application</th><th>desired</th>'
        "<th>live</th><th>phase</th><th>message</th></tr></thead><tbody>"
    ]
    statuses = apps_of(env)
    for app in sorted(statuses, key=str):
        status = statuses[app] if isinstance(statuses[app], Mapping) else {}
        app_phase = phase_of(status.get("phase"))
        out.append(
            f'<tr data-app="{esc(app)}" data-phase="{app_phase}"><td><a href="/?app={quote(str(app), safe="")}">'
            f"{esc(app)}</a></td><td>{esc(status.get('desired') or '—')}</td><td>{esc(status.get('live') or '—')}</td>"
            f'<td><span class="p" data-phase="{app_phase}">{app_phase}</span></td>'
            f'<td class="msg">{esc(status.get("message"))}</td></tr>'
        )
    if not statuses:
        out.append('<tr><td colspan="5">no application status yet</td></tr>')
    out.append("</tbody></table>")
    return out


def render_environment(snapshot: Mapping[str, Any], name: str) -> bytes | None:
    """The ``/environments/<name>`` page, or None when the snapshot has no such environment."""
    env = next(
        (e for e in snapshot.get("environments") or [] if isinstance(e, Mapping) and e.get("name") == name), None
    )
    if env is None:
        return None
    phase = phase_of(env.get("phase"))
    labels = ", ".join(f"{esc(k)}={esc(v)}" for k, v in sorted(_labels(env).items(), key=lambda kv: str(kv[0])))
    wave = env.get("wave")
    link = snapshot.get("commitUrl")
    stage = str(env.get("stage"))
    body = [
        f'<header><a href="/">← all environments</a><h1>{esc(name)}</h1>'
        f'<span class="p" data-phase="{phase}" id="phase">{phase}</span>{views("")}</header>',
        banner(snapshot),
        '<dl id="environment">',
        f'<dt>stage</dt><dd><a href="/?stage={quote(stage, safe="")}">{esc(stage)}</a></dd>'
        f"<dt>labels</dt><dd>{labels or '—'}</dd>",
        f"<dt>wave</dt><dd>{esc(wave) if wave is not None else '—'}</dd>",
        f'<dt>phase</dt><dd><span class="p" data-phase="{phase}">{phase}</span></dd>',
        f'<dt>message</dt><dd class="msg" id="message">{esc(env.get("message"))}</dd>',
        f"<dt>last applied</dt><dd>{revision(env.get('lastAppliedRevision'), link)}</dd>",
        f"<dt>last attempted</dt><dd>{revision(env.get('lastAttemptedRevision'), link)}</dd>",
        f"<dt>updated</dt><dd>{esc(env.get('updated') or '—')}</dd></dl>",
        _actions(name),
        *_audit(env, link),
        _timeline(env),
        *_applications(env),
    ]
    return page(f"{name} — reconciler", body)
