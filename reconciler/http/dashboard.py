"""The dashboard: server-rendered HTML pages over :meth:`Controller.snapshot` (no JavaScript build, works without JS).

- :func:`render_index` (``GET /``): the environment x application matrix, phase counts (links that filter),
  a filter form (``stage``, ``region``, ``app``, ``phase`` GET parameters), the revision banner and a legend.
- :func:`render_environment` (``GET /environments/<name>``): one environment, its applications and recent audit.

Called by :mod:`reconciler.http.handler` with a fresh snapshot per request; pure functions of their arguments.
Every value comes from a Git repository many people write to, so everything is escaped (``html.escape``) and phase
names outside the known set are shown as ``Unknown``. The matrix is built for 235 x 60 cells: one short cell per
application (the phase is shown by colour *and* a symbol from CSS, the full name is in the column's ``title``),
unquoted attribute values where that is safe and omitted optional ``</td>`` tags keep the page small.
"""

from __future__ import annotations

import html
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
    "table{border-collapse:collapse}"
    "#matrix{font:10px/1.25 'Liberation Sans Narrow','Arial Narrow','DejaVu Sans Condensed',sans-serif-condensed,"
    "sans-serif}"
    "#matrix td{max-width:36px;height:14px;padding:0 1px;border:1px solid #fff;white-space:nowrap;"
    "overflow:hidden;text-overflow:clip;text-align:center}"
    "#matrix td:not([data-phase]){background:#fafafa}"
    "#matrix thead th{position:sticky;top:0;background:#fff;z-index:2;vertical-align:bottom}"
    "#matrix thead th[data-app]{width:36px;height:128px;padding:0 0 3px;font-weight:400}"
    "#matrix thead th[data-app] a{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;"
    "display:inline-block;max-height:125px;overflow:hidden;text-overflow:ellipsis;color:#222;text-decoration:none}"
    "#matrix tbody th{position:sticky;left:0;background:#fff;text-align:left;white-space:nowrap;font-size:11px;"
    "padding:0 6px 0 2px;font-weight:400;z-index:1}"
    "#matrix tbody th::before{display:inline-block;width:14px;text-align:center;border-radius:3px;margin-right:4px}"
    "#matrix td::before{font-size:8px}"
    "#matrix tbody tr:hover th,#matrix tbody tr:hover td{border-bottom-color:#333}"
    "i{font-style:italic;opacity:.8}"
    "#matrix td[data-phase=Failed],#matrix td[data-phase=Invalid]{font-weight:700}"
    ".p{display:inline-block;padding:0 7px;border-radius:10px}"
    ".list{border:1px solid #ccc}.list th,.list td{border:1px solid #ddd;padding:2px 7px;text-align:left;"
    "vertical-align:top}.list th{background:#f2f2f2}dl{display:grid;grid-template-columns:max-content auto;"
    "gap:2px 14px;margin:4px 0}dt{font-weight:700}dd{margin:0}.msg{max-width:70em;overflow-wrap:anywhere}"
)


def _phase_css() -> str:
    rules = []
    for phase in PHASES:
        bg, fg = COLOURS[phase]
        sym = SYMBOLS[phase]
        rules.append(
            f"[data-phase={phase}]{{background-color:{bg};color:{fg}}}"
            f'#matrix td[data-phase={phase}]::before{{content:"{sym}"}}'
            f'.p[data-phase={phase}]::before{{content:"{sym}\\a0"}}'
            f"#matrix tr[data-phase={phase}]>th::before{{content:'{sym}';background:{bg};color:{fg}}}"
        )
    rules.append("#matrix tr[data-phase],.list tr[data-phase]{background:none;color:inherit}")
    return "".join(rules) + "#matrix td[data-phase=Synced]::before{content:none}"  # the common case: no mark


CSS = _CSS + _phase_css()

# Without JS the page refreshes through <noscript><meta refresh>. With JS: reload REFRESH_MS after the page has
# loaded, not while a filter is being chosen or the tab is hidden, and keep the scroll position across reloads;
# filters apply on change; a cell's tooltip is built on hover (14,000 title attributes would double the page).
_SCRIPT = (
    "(function(){var k='dash-scroll:'+location.pathname+location.search,s=sessionStorage.getItem(k);"
    "if(s){sessionStorage.removeItem(k);s=s.split(',');scrollTo(+s[0],+s[1]);}"
    "function later(){setTimeout(function(){var a=document.activeElement;"
    "if(document.hidden||(a&&a.tagName==='SELECT')){later();return;}"
    "sessionStorage.setItem(k,scrollX+','+scrollY);location.reload();},REFRESH_MS);}"
    "if(document.readyState==='complete'){later();}else{addEventListener('load',later);}"
    "var f=document.getElementById('filters');if(f){f.addEventListener('change',function(){f.submit();});}"
    "var m=document.getElementById('matrix');if(m){m.addEventListener('mouseover',function(e){var c=e.target.closest"
    "('td[data-app]');if(c&&!c.title){c.title=c.dataset.app+' \\u2014 '+c.dataset.phase+' \\u2014 '+c.textContent+"
    "(c.querySelector('i')?' (desired, not live yet)':'');}});}})();"
).replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))


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


def _page(title: str, body: Iterable[str]) -> bytes:
    head = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript></head><body>'
    )
    return (head + "".join(body) + f"<script>{_SCRIPT}</script></body></html>\n").encode("utf-8")


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
    """Renders matrix cells; per-column prefixes and escaped versions are cached (14,000 cells in ~20 ms)."""

    def __init__(self, columns: Iterable[str]) -> None:
        self.prefix = {a: f"<td data-app={_bare(a)} data-phase=" for a in columns}
        self.text: dict[str, str] = {}

    def escaped(self, value: Any) -> str:
        key = value if isinstance(value, str) else repr(value)  # YAML may hold lists or mappings: unhashable
        found = self.text.get(key)
        if found is None:
            found = self.text[key] = esc(value)
        return found

    def cell(self, app: str, status: Any) -> str:
        if not isinstance(status, Mapping):
            return "<td>"
        phase = status.get("phase")
        if phase not in COLOURS:
            phase = "Unknown"
        live, desired = status.get("live"), status.get("desired")
        if live is not None:
            text = self.escaped(live)
            if desired is not None and live != desired:
                title = f"{app}: live {live}, desired {desired}"
                return f'{self.prefix[app]}{phase} title="{esc(title)}">{text}'
        else:
            text = "" if desired is None else f"<i>{self.escaped(desired)}</i>"
        return f"{self.prefix[app]}{phase}>{text}"


def render_index(snapshot: Mapping[str, Any], query: Mapping[str, str]) -> bytes:
    """The ``/`` page: filters from ``query`` (``stage``, ``region``, ``app``, ``phase``; empty means all)."""
    chosen = {k: str(query.get(k) or "") for k in FILTERS}
    envs = [e for e in snapshot.get("environments") or [] if isinstance(e, Mapping)]
    apps = [str(a) for a in snapshot.get("applications") or []]
    stages = sorted({str(e.get("stage")) for e in envs if e.get("stage") is not None})
    regions = sorted({str(_labels(e)["region"]) for e in envs if _labels(e).get("region") is not None})
    app = chosen["app"]
    columns = [app] if app else apps
    scoped = [
        e
        for e in envs
        if (not chosen["stage"] or str(e.get("stage")) == chosen["stage"])
        and (not chosen["region"] or str(_labels(e).get("region")) == chosen["region"])
        and (not app or app in _apps_of(e))
    ]
    counts = dict.fromkeys(PHASES, 0)
    for env in scoped:
        counts[_row_phase(env, app)] += 1
    rows = [e for e in scoped if not chosen["phase"] or _row_phase(e, app) == chosen["phase"]]

    def link(**changes: str) -> str:
        params = {k: v for k, v in {**chosen, **changes}.items() if v}
        return "/?" + urlencode(params) if params else "/"

    body = [
        f"<header><h1>Release reconciler</h1><span>{len(envs)} environments × {len(apps)} applications</span>"
        f'<span>showing <strong id="shown">{len(rows)}</strong></span>'
        f'<a href="/">clear filters</a><a href="/api/v1/environments">JSON</a><a href="/metrics">metrics</a></header>',
        _banner(snapshot),
        f'<nav id="counts" aria-label="{"application " if app else ""}phase counts">',
    ]
    for phase in PHASES:
        on = chosen["phase"] == phase
        body.append(
            f'<a href="{esc(link(phase="" if on else phase))}" class="p{" on" if on else ""}" data-phase={phase}>'
            f'<span class="count" data-phase="{phase}">{counts[phase]}</span> {phase}</a>'
        )
    body += [
        "</nav>",
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
        '<table id="matrix"><thead><tr><th>environment</th>',
    ]
    body += [
        f'<th data-app={_bare(a)} title="{esc(a)}"><a href="{esc(link(app=a))}">{esc(a)}</a></th>' for a in columns
    ]
    body.append("</tr></thead><tbody>")
    cells = _Cells(columns)
    for env in rows:
        name = str(env.get("name"))
        statuses = _apps_of(env)
        phase = phase_of(env.get("phase"))
        hint = f"{phase}: {env.get('message') or ''}"
        body.append(
            f"<tr data-env={_bare(name)} data-phase={phase}>"
            f'<th title="{esc(hint)}"><a href="{esc(env_url(name))}">{esc(name)}</a></th>'
            + "".join([cells.cell(a, statuses.get(a)) for a in columns])
            + "</tr>"
        )
    body.append("</tbody></table>")
    if not rows:
        body.append('<p id="empty">No environment matches these filters.</p>')
    return _page("reconciler dashboard", body)


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
