"""The dashboard: server-rendered HTML pages over :meth:`Controller.snapshot` (no JavaScript build, works without JS).

- :func:`render_index` (``GET /``): the environment x application matrix, phase counts (links that filter),
  a filter form (``stage``, ``region``, ``app``, ``phase`` GET parameters), the revision banner and a legend.
- :func:`render_environment` (``GET /environments/<name>``): one environment, its applications and recent audit.

Called by :mod:`reconciler.http.handler` with a fresh snapshot per request; pure functions of their arguments.
Every value comes from a Git repository many people write to, so everything is escaped (``html.escape``) and phase
names outside the known set are shown as ``Unknown``.

The matrix is built to show 235 x 60 cells fast in a browser (``python -m bench.dashboard_load`` measures it). It
is not a ``<table>`` but rows of fixed-width cells with the ARIA table roles (``table``, ``row``, ``columnheader``,
``rowheader``, ``cell``): no layout depends on another row, and each row can be ``content-visibility: auto`` (which
has no effect on table rows), so Chromium lays out and paints only the rows near the viewport; screen readers still
get them all. Column widths are fixed (the environment column's from its longest name), and so is the row height.
A cell is one short ``<span>``: the phase as a one-letter class (:data:`CELL_CLASS`; colour *and* a symbol from CSS,
none for Synced), the version as text (at most :data:`CELL_CHARS` characters, the full one then in ``title``); its
application is its column's. ``<link rel=expect blocking=render>`` holds the first paint until the whole page is
parsed (one style, layout and paint instead of one per chunk the parser hands over), and the script renders first
only the rows that can be on screen.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

PHASES = ("Synced", "OutOfSync", "Progressing", "Blocked", "Degraded", "Failed", "Invalid", "Unknown")
SYMBOLS = {
    "Synced": "✓",
    "OutOfSync": "≠",
    "Progressing": "↻",
    "Blocked": "⊘",
    "Degraded": "▽",
    "Failed": "✗",
    "Invalid": "!",
    "Unknown": "?",
}
COLOURS = {  # background, text
    "Synced": ("#c7ecd0", "#0c3b1b"),
    "OutOfSync": ("#ffe98f", "#4a3b00"),
    "Progressing": ("#bcd9f5", "#0b2f55"),
    "Blocked": ("#d8d0e8", "#35284d"),
    "Degraded": ("#ffc58f", "#5a2800"),
    "Failed": ("#f28b82", "#4d0000"),
    "Invalid": ("#7f0000", "#ffffff"),
    "Unknown": ("#e2e2e2", "#333333"),
}
CELL_CLASS = {  # a matrix cell's class per phase: one letter, 14,000 times a page
    "Synced": "s",
    "OutOfSync": "o",
    "Progressing": "g",
    "Blocked": "b",
    "Degraded": "d",
    "Failed": "f",
    "Invalid": "x",
    "Unknown": "u",
}
CELL_CHARS = 7  # longer versions are cut (the full one is in the cell's title): cells have a fixed width
CELL_WIDTH = 36  # px, plus a 1 px gap
ROW_HEIGHT = 15  # px, the 1 px gap included: also the placeholder height of rows skipped by content-visibility
FILTERS = ("stage", "region", "app", "phase")
REFRESH_SECONDS = 10
_BARE = re.compile(r"[A-Za-z0-9._-]+")

_CSS = (
    "body{font:13px/1.35 system-ui,'DejaVu Sans',sans-serif;margin:0 12px 12px;color:#1d1d1d;background:#fff}"
    "header{display:flex;flex-wrap:wrap;gap:6px 18px;align-items:baseline;padding:8px 0}"
    "h1{font-size:17px;margin:0}h2{font-size:14px;margin:14px 0 4px}a{color:#0645ad}"
    "#revision{padding:5px 9px;border-radius:4px;background:#eef3f8;border-left:5px solid #5b7fa6;margin-bottom:6px}"
    "#revision.bad{background:#fbe4e2;border-left-color:#9b1c1c}#revision ul{margin:3px 0;padding-left:20px}"
    "code{font:12px 'DejaVu Sans Mono',monospace}"
    "#counts{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}"
    "#counts a{padding:3px 8px;border-radius:12px;text-decoration:none;border:2px solid transparent}"
    "#counts a.on{border-color:#111}.count{font-weight:700}"
    "form{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:6px 0}select{max-width:15em}"
    "#legend{font-size:12px;color:#444;margin:4px 0 8px}"
    "#legend span.k{display:inline-block;padding:0 5px;border-radius:3px;margin-right:2px}"
    "#matrix{font:10px/14px 'Liberation Sans Narrow','Arial Narrow','DejaVu Sans Condensed',sans-serif-condensed,"
    "sans-serif}"
    "#matrix>div{display:flex;gap:1px;background:#fff;color:inherit}"
    f"#matrix>.r{{height:{ROW_HEIGHT}px;content-visibility:auto;contain-intrinsic-size:auto {ROW_HEIGHT}px}}"
    "#matrix>.l{content-visibility:hidden}#matrix>.r:hover{background:#333}"
    f"#matrix span{{flex:none;width:{CELL_WIDTH}px;height:{ROW_HEIGHT - 1}px;white-space:nowrap;text-align:center;"
    "background:#fafafa}"
    "#matrix>.h{position:sticky;top:0;z-index:2;height:131px;align-items:flex-end}"
    "#matrix>.h>span{height:auto;padding-bottom:3px;background:#fff}"
    "#matrix>.h a{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;display:inline-block;"
    "max-height:125px;overflow:hidden;text-overflow:ellipsis;color:#222;text-decoration:none}"
    "#matrix>div>span:first-child{position:sticky;left:0;z-index:1;width:var(--names);box-sizing:border-box;"
    "padding:0 6px 0 2px;overflow:hidden;text-overflow:ellipsis;text-align:left;font:11px/14px system-ui,"
    "'DejaVu Sans',sans-serif;background:#fff}"
    "#matrix>.h>span:first-child{align-self:stretch;display:flex;align-items:flex-end}"
    "#matrix>.r>span:first-child::before{display:inline-block;width:14px;text-align:center;border-radius:3px;"
    "margin-right:4px}"
    "#matrix .f,#matrix .x{font-weight:700}"
    "i{font-style:italic;opacity:.8}"
    ".p{display:inline-block;padding:0 7px;border-radius:10px}"
    ".list{border:1px solid #ccc}.list th,.list td{border:1px solid #ddd;padding:2px 7px;text-align:left;"
    "vertical-align:top}.list th{background:#f2f2f2}dl{display:grid;grid-template-columns:max-content auto;"
    "gap:2px 14px;margin:4px 0}dt{font-weight:700}dd{margin:0}.msg{max-width:70em;overflow-wrap:anywhere}"
)


def _phase_css() -> str:
    rules = []
    for phase in PHASES:
        bg, fg = COLOURS[phase]
        sym, cls = SYMBOLS[phase], CELL_CLASS[phase]
        rules.append(
            f"[data-phase={phase}],#matrix .{cls}{{background-color:{bg};color:{fg}}}"
            f'.p[data-phase={phase}]::before{{content:"{sym}\\a0"}}'
            f"#matrix>[data-phase={phase}]>span:first-child::before{{content:'{sym}';background:{bg};color:{fg}}}"
        )
        if phase != "Synced":  # the common case has no mark (and so no ::before box on most cells)
            rules.append(f'#matrix .{cls}::before{{content:"{sym}";font-size:8px}}')
    rules.append(".list tr[data-phase]{background:none;color:inherit}")
    return "".join(rules)


CSS = _CSS + _phase_css()

# Without JS the page refreshes through <noscript><meta refresh>. With JS: reload REFRESH_MS after the page has
# loaded, not while a filter is being chosen or the tab is hidden, and keep the scroll position across reloads;
# filters apply on change; a cell's tooltip (application, phase, version) is built on hover from its column's
# header and its class (14,000 title attributes would double the page). And the first paint renders only the matrix
# rows on screen: the script runs before it (the page's end is render-blocking, see render_index), sets every row
# content-visibility: hidden (class "l"), lays the page out (cheap then: rows have a fixed height), shows the rows
# in the viewport and the others right after that paint. As content-visibility: auto rows, Chromium would render
# every row up to one and a half screens below the viewport before painting anything.
_SCRIPT = (
    (
        "(function(){var k='dash-scroll:'+location.pathname+location.search,s=sessionStorage.getItem(k),"
        "m=document.getElementById('matrix'),r=m?m.children:[],n=r.length,i,y;sessionStorage.removeItem(k);"
        "for(i=1;i<n;i++){r[i].classList.add('l');}"
        "if(s){s=s.split(',');scrollTo(+s[0],+s[1]);}"
        "if(n>1){y=r[1].getBoundingClientRect().top;"
        "for(i=Math.max(1,Math.floor(-y/ROW_PX)+1);i<n&&y+(i-1)*ROW_PX<innerHeight;i++){r[i].classList.remove('l');}"
        "requestAnimationFrame(function(){setTimeout(function(){for(i=1;i<n;i++){r[i].classList.remove('l');}});});}"
        "function later(){setTimeout(function(){var a=document.activeElement;"
        "if(document.hidden||(a&&a.tagName==='SELECT')){later();return;}"
        "sessionStorage.setItem(k,scrollX+','+scrollY);location.reload();},REFRESH_MS);}"
        "if(document.readyState==='complete'){later();}else{addEventListener('load',later);}"
        "var f=document.getElementById('filters');if(f){f.addEventListener('change',function(){f.submit();});}"
        "if(m){var P=PHASE_OF;m.addEventListener('mouseover',function(e){"
        "var c=e.target.closest('[role=cell]');if(c&&!c.title&&c.className){var i=Array.prototype.indexOf.call("
        "c.parentNode.children,c);c.title=m.firstElementChild.children[i].dataset.app+' \\u2014 '+P[c.className]+"
        "' \\u2014 '+c.textContent+(c.querySelector('i')?' (desired, not live yet)':'');}});}"
        "var A=document.getElementById('actions');if(A){A.addEventListener('click',function(e){"
        "var b=e.target.closest('button[data-act]');if(!b){return;}e.preventDefault();"
        "var o=document.getElementById('act-result'),r=document.getElementById('reason').value;"
        "if(b.dataset.act==='suspend'&&!r){o.textContent='a reason is required to suspend';return;}"
        "b.disabled=true;fetch('/api/v1/environments/'+encodeURIComponent(A.dataset.env)+'/'+b.dataset.act,"
        "{method:'POST',credentials:'same-origin',headers:{'Content-Type':'application/json'},"
        "body:JSON.stringify({reason:r})}).then(function(x){return x.json().then(function(j){"
        "o.textContent=x.ok?('accepted: '+j.accepted.action+' by '+j.accepted.by):('refused ('+x.status+'): '+j.error);"
        "o.dataset.status=x.status;});}).catch(function(){o.textContent='the controller did not answer';})"
        ".then(function(){b.disabled=false;});});}})();"
    )
    .replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))
    .replace("ROW_PX", str(ROW_HEIGHT))
    .replace("PHASE_OF", json.dumps({c: p for p, c in CELL_CLASS.items()}, separators=(",", ":")))
)


def esc(value: Any) -> str:
    """Text or a quoted attribute value, escaped."""
    return html.escape("" if value is None else str(value), quote=True)


def _bare(value: str) -> str:
    """An attribute value: bare when it only has safe characters (saves bytes on 14,000 cells), else quoted."""
    return value if _BARE.fullmatch(value) else f'"{esc(value)}"'


def phase_of(value: Any) -> str:
    return value if isinstance(value, str) and value in COLOURS else "Unknown"


def env_url(name: str) -> str:
    return "/environments/" + quote(name, safe="")


def short(revision: Any) -> str:
    """The first 12 characters of a revision with the full one in ``title``, or a dash."""
    if not revision:
        return "—"
    text = str(revision)
    return f'<code title="{esc(text)}">{esc(text[:12])}</code>'


def _page(title: str, body: Iterable[str], head: str = "", end: str = "") -> bytes:
    """A page: ``head`` goes in ``<head>``, ``end`` after the script at the end of ``<body>``."""
    start = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title>{head}<style>{CSS}</style>"
        f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript></head><body>'
    )
    return (start + "".join(body) + f"<script>{_SCRIPT}</script>{end}</body></html>\n").encode("utf-8")


def _banner(snapshot: Mapping[str, Any]) -> str:
    invalid = snapshot.get("invalidRevision")
    error = snapshot.get("sourceError")
    parts = [
        f"revision {short(snapshot.get('revision'))}",
        f"last good {short(snapshot.get('lastGoodRevision'))}",
        f"cycle {esc(snapshot.get('cycles', 0))}",
    ]
    if not snapshot.get("ready", True):
        parts.append("<strong>not ready: the source has not been fetched yet</strong>")
    out = [f'<section id="revision" class="{"bad" if invalid or error else "ok"}">', " · ".join(parts)]
    if invalid:
        problems = [p for p in snapshot.get("problems") or [] if p]
        out.append(
            f'<div id="invalid"><strong>revision {short(invalid)} is invalid</strong> ({len(problems)} problem'
            f"{'' if len(problems) == 1 else 's'}); "
            + ("still serving the last good revision:" if snapshot.get("lastGoodRevision") else "nothing is served:")
            + "<ul>"
            + "".join(f"<li><code>{esc(p)}</code></li>" for p in problems)
            + "</ul></div>"
        )
    if error:
        out.append(f'<div id="source-error"><strong>source error:</strong> {esc(error)}</div>')
    out.append("</section>")
    return "".join(out)


def _apps_of(env: Mapping[str, Any]) -> Mapping[str, Any]:
    apps = env.get("applications")
    return apps if isinstance(apps, Mapping) else {}


def _row_phase(env: Mapping[str, Any], app: str) -> str:
    """The phase a row is counted and filtered by: the environment's, or with an ``app`` filter that app's there."""
    if not app:
        return phase_of(env.get("phase"))
    status = _apps_of(env).get(app)
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
        cls = CELL_CLASS[phase_of(status.get("phase"))]
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
        if title:
            return f'<span role=cell class={cls} title="{esc(title)}">{text}</span>'
        return f"<span role=cell class={cls}>{text}</span>"


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
        and (not chosen["app"] or chosen["app"] in _apps_of(env))
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
    """The filter form (stage, region, application, phase) and the legend of the marks."""
    app = chosen["app"]
    stages = sorted({str(e.get("stage")) for e in envs if e.get("stage") is not None})
    regions = sorted({str(_labels(e)["region"]) for e in envs if _labels(e).get("region") is not None})
    return [
        '<form id="filters" method="get" action="/">',
        _select("stage", "stage", stages, chosen["stage"]),
        _select("region", "region", regions, chosen["region"]),
        _select("app", "application", apps, app),
        _select("phase", "phase", PHASES, chosen["phase"]),
        '<button type="submit">filter</button></form>',
        '<p id="legend">'
        + " ".join(f'<span class="k" data-phase="{p}">{SYMBOLS[p]} {p}</span>' for p in PHASES)
        + " — a cell shows the live version, <i>in italics</i> the desired one when nothing is live yet;"
        + " no mark: Synced. Counts: "
        + (f"phase of <strong>{esc(app)}</strong> per environment." if app else "environment phases.")
        + " Click a column header to filter by application, an environment for its details.</p>",
    ]


def _matrix(rows: list[Mapping[str, Any]], columns: list[str], chosen: Mapping[str, str]) -> list[str]:
    """The environment x application matrix: a header row of applications, one row per environment."""
    names = [str(env.get("name")) for env in rows]
    width = _names_width(names)
    out = [
        f'<div id="matrix" role="table" aria-label="phase and version of each application per environment" '
        f'style="--names:{width}px;width:{width + len(columns) * (CELL_WIDTH + 1)}px">'
        '<div class="h" role="row"><span role="columnheader">environment</span>'
    ]
    out += [
        f'<span role=columnheader data-app={_bare(a)} title="{esc(a)}">'
        f'<a href="{esc(_link(chosen, app=a))}">{esc(a)}</a></span>'
        for a in columns
    ]
    out.append("</div>")
    cells = _Cells()
    for name, env in zip(names, rows, strict=True):
        statuses = _apps_of(env)
        phase = phase_of(env.get("phase"))
        hint = f"{phase}: {env.get('message') or ''}"
        out.append(
            f"<div class=r role=row data-env={_bare(name)} data-phase={phase}>"
            f'<span role=rowheader title="{esc(hint)}"><a href="{esc(env_url(name))}">{esc(name)}</a></span>'
            + "".join([cells.cell(a, statuses.get(a)) for a in columns])
            + "</div>"
        )
    out.append("</div>")
    return out


def render_index(snapshot: Mapping[str, Any], query: Mapping[str, str]) -> bytes:
    """The ``/`` page: filters from ``query`` (``stage``, ``region``, ``app``, ``phase``; empty means all)."""
    chosen = {k: str(query.get(k) or "") for k in FILTERS}
    envs = [e for e in snapshot.get("environments") or [] if isinstance(e, Mapping)]
    apps = [str(a) for a in snapshot.get("applications") or []]
    app = chosen["app"]
    scoped = [e for e in envs if _in_scope(e, chosen)]
    counts = dict.fromkeys(PHASES, 0)
    for env in scoped:
        counts[_row_phase(env, app)] += 1
    rows = [e for e in scoped if not chosen["phase"] or _row_phase(e, app) == chosen["phase"]]
    body = [
        f"<header><h1>Release reconciler</h1><span>{len(envs)} environments × {len(apps)} applications</span>"
        f'<span>showing <strong id="shown">{len(rows)}</strong></span>'
        f'<a href="/">clear filters</a><a href="/api/v1/environments">JSON</a><a href="/metrics">metrics</a></header>',
        _banner(snapshot),
        *_counts_nav(chosen, counts),
        *_filters_and_legend(envs, apps, chosen),
        *_matrix(rows, [app] if app else apps, chosen),
    ]
    if not rows:
        body.append('<p id="empty">No environment matches these filters.</p>')
    # no paint until the matrix is parsed and the script has run (Chromium would otherwise lay the page out again
    # and again as it arrives; the script chooses which rows to render first); other browsers ignore this
    expect = '<link rel="expect" href="#end" blocking="render">'
    return _page("reconciler dashboard", body, head=expect, end='<div id="end"></div>')


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
    body = [
        f'<header><a href="/">← all environments</a><h1>{esc(name)}</h1>'
        f'<span class="p" data-phase="{phase}" id="phase">{phase}</span></header>',
        _banner(snapshot),
        '<dl id="environment">',
        f"<dt>stage</dt><dd>{esc(env.get('stage'))}</dd><dt>labels</dt><dd>{labels or '—'}</dd>",
        f"<dt>wave</dt><dd>{esc(wave) if wave is not None else '—'}</dd>",
        f'<dt>phase</dt><dd><span class="p" data-phase="{phase}">{phase}</span></dd>',
        f'<dt>message</dt><dd class="msg" id="message">{esc(env.get("message"))}</dd>',
        f"<dt>last applied</dt><dd>{short(env.get('lastAppliedRevision'))}</dd>",
        f"<dt>last attempted</dt><dd>{short(env.get('lastAttemptedRevision'))}</dd>",
        f"<dt>updated</dt><dd>{esc(env.get('updated') or '—')}</dd></dl>",
        _actions(name),
        _timeline(env),
        '<h2>Applications</h2><table id="applications" class="list"><thead><tr><th>application</th><th>desired</th>'
        "<th>live</th><th>phase</th><th>message</th></tr></thead><tbody>",
    ]
    statuses = _apps_of(env)
    for app in sorted(statuses, key=str):
        status = statuses[app] if isinstance(statuses[app], Mapping) else {}
        app_phase = phase_of(status.get("phase"))
        body.append(
            f'<tr data-app="{esc(app)}" data-phase="{app_phase}"><td><a href="/?app={quote(str(app), safe="")}">'
            f"{esc(app)}</a></td><td>{esc(status.get('desired') or '—')}</td><td>{esc(status.get('live') or '—')}</td>"
            f'<td><span class="p" data-phase="{app_phase}">{app_phase}</span></td>'
            f'<td class="msg">{esc(status.get("message"))}</td></tr>'
        )
    if not statuses:
        body.append('<tr><td colspan="5">no application status yet</td></tr>')
    body.append(
        '</tbody></table><h2>Recent changes</h2><table id="audit" class="list"><thead><tr><th>time</th>'
        "<th>application</th><th>action</th><th>from → to</th><th>result</th><th>author</th><th>revision</th>"
        "<th>message</th></tr></thead><tbody>"
    )
    audit = [a for a in env.get("recentAudit") or [] if isinstance(a, Mapping)]
    for entry in reversed(audit):  # newest first
        body.append(
            f'<tr data-result="{esc(entry.get("result"))}"><td>{esc(entry.get("time"))}</td>'
            f"<td>{esc(entry.get('application'))}</td><td>{esc(entry.get('action'))}</td>"
            f"<td>{esc(entry.get('from') or '—')} → {esc(entry.get('to') or '—')}</td>"
            f"<td>{esc(entry.get('result'))}</td><td>{esc(entry.get('author'))}</td>"
            f'<td>{short(entry.get("revision"))}</td><td class="msg">{esc(entry.get("message"))}</td></tr>'
        )
    if not audit:
        body.append('<tr><td colspan="8">no change recorded since the controller started</td></tr>')
    body.append("</tbody></table>")
    return _page(f"{name} — reconciler", body)
