"""The frame every dashboard page shares: phase palette, style sheet, script, escaping, links and the revision banner.

Used by :mod:`reconciler.http.dashboard` (the matrix and the environment page) and :mod:`reconciler.http.stageview`
(the stage pipeline). Pure functions of their arguments. Every value comes from a Git repository many people write
to, so everything is escaped (:func:`esc`) and phase names outside the known set are shown as ``Unknown``.

Colours: phases that need someone (Blocked, Failed, Degraded, Invalid) are saturated with white or black text and a
bold symbol, so that they stand out among hundreds of pale Synced cells; the symbol also says it without colour.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

PHASES = ("Synced", "OutOfSync", "Progressing", "Blocked", "Degraded", "Failed", "Invalid", "Unknown")
ATTENTION = ("Blocked", "Degraded", "Failed", "Invalid")  # someone has to act: they stand out, with their reason
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
COLOURS = {  # background, text (contrast of at least 4.5:1 each)
    "Synced": ("#d3efd9", "#0c3b1b"),
    "OutOfSync": ("#ffe066", "#3d3000"),
    "Progressing": ("#a9d1f7", "#0b2f55"),
    "Blocked": ("#5b2ea6", "#ffffff"),
    "Degraded": ("#ff9a1f", "#1f1000"),
    "Failed": ("#c62828", "#ffffff"),
    "Invalid": ("#6d0000", "#ffffff"),
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
ROW_HEIGHT = 17  # px, the 1 px gap included: also the placeholder height of rows skipped by content-visibility
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
    "#matrix{font:11px/16px 'Liberation Sans Narrow','Arial Narrow','DejaVu Sans Condensed',sans-serif-condensed,"
    "sans-serif}"
    "#matrix>div{display:flex;gap:1px;background:#fff;color:inherit}"
    f"#matrix>.r,#matrix>.sg{{height:{ROW_HEIGHT}px;content-visibility:auto;"
    f"contain-intrinsic-size:auto {ROW_HEIGHT}px}}"
    "#matrix>.l{content-visibility:hidden}#matrix>.r:hover{background:#333}"
    f"#matrix span{{flex:none;width:var(--cell);height:{ROW_HEIGHT - 1}px;white-space:nowrap;text-align:center;"
    "overflow:hidden;background:#fafafa}"
    "#matrix.c [role=cell]{font-size:0}#matrix.c [role=cell]::before{font-size:12px}"
    "#matrix>.h{position:sticky;top:0;z-index:2;height:131px;align-items:flex-end}"
    "#matrix>.h>span{height:auto;padding-bottom:3px;background:#fff}"
    "#matrix>.h a{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;display:inline-block;"
    "max-height:125px;overflow:hidden;text-overflow:ellipsis;color:#222;text-decoration:none;font-size:11px}"
    "#matrix>div>span:first-child{position:sticky;left:0;z-index:1;width:var(--names);box-sizing:border-box;"
    "padding:0 6px 0 2px;overflow:hidden;text-overflow:ellipsis;text-align:left;font:11px/16px system-ui,"
    "'DejaVu Sans',sans-serif;background:#fff}"
    "#matrix>.sg{background:#e9edf3}#matrix>.sg>span:first-child{width:auto;max-width:95vw;background:#e9edf3;"
    "font-weight:700;padding-left:4px}#matrix>.sg small{font-weight:400;color:#333;margin-left:8px}"
    "#matrix>.h>span:first-child{align-self:stretch;display:flex;align-items:flex-end}"
    "#matrix>.r>span:first-child::before{display:inline-block;width:14px;text-align:center;border-radius:3px;"
    "margin-right:4px}"
    "#matrix .b,#matrix .d,#matrix .f,#matrix .x{font-weight:700}"
    "i{font-style:italic;opacity:.8}nav#views{display:flex;gap:12px}nav#views a.on{font-weight:700;color:#111}"
    ".p{display:inline-block;padding:0 7px;border-radius:10px}"
    ".list{border:1px solid #ccc;border-collapse:collapse}.list th,.list td{border:1px solid #ddd;padding:2px 7px;"
    "text-align:left;vertical-align:top}.list th{background:#f2f2f2}dl{display:grid;grid-template-columns:"
    "max-content auto;gap:2px 14px;margin:4px 0}dt{font-weight:700}dd{margin:0}.msg{max-width:70em;"
    "overflow-wrap:anywhere}"
    "#stages th{position:sticky;top:0;z-index:1}#stages td{min-width:9em}#stages ul{list-style:none;margin:0;"
    "padding:0}#stages .why{display:block;font-size:12px;max-width:24em;overflow-wrap:anywhere}"
    "#stages .wait{color:#5b2ea6;font-weight:700}#stages .behind{display:block;font-size:12px;color:#555}"
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
# header and its class (14,000 title attributes would double the page; cells that need someone carry their reason
# in a title from the server). And the first paint renders only the matrix rows on screen: the script runs before
# it (the page's end is render-blocking, see dashboard.render_index), sets every row content-visibility: hidden
# (class "l"), lays the page out (cheap then: rows have a fixed height), shows the rows in the viewport and the
# others right after that paint. As content-visibility: auto rows, Chromium would render every row up to one and a
# half screens below the viewport before painting anything.
SCRIPT = (
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
        "if(m){var P=PHASE_OF,W=document.getElementById('reasons');m.addEventListener('mouseover',function(e){"
        "var c=e.target.closest('[role=cell]');if(c&&!c.dataset.t&&c.className){var i=Array.prototype.indexOf.call("
        "c.parentNode.children,c);c.dataset.t=1;c.title=(c.title||(m.firstElementChild.children[i].dataset.app+"
        "' \\u2014 '+P[c.className]+' \\u2014 '+c.textContent+(c.querySelector('i')?' (desired, not live yet)':'')))"
        "+(c.dataset.r&&W?' \\u2014 '+W.children[+c.dataset.r].textContent:'');}});}"
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


def bare(value: str) -> str:
    """An attribute value: bare when it only has safe characters (saves bytes on 14,000 cells), else quoted."""
    return value if _BARE.fullmatch(value) else f'"{esc(value)}"'


def phase_of(value: Any) -> str:
    return value if isinstance(value, str) and value in COLOURS else "Unknown"


def env_url(name: str) -> str:
    return "/environments/" + quote(name, safe="")


def revision(value: Any, commit_url: Any = None) -> str:
    """The first 12 characters of a revision with the full one in ``title``, a link to the forge when the
    operator configured ``source.commitUrl`` and the value is a commit id; or a dash."""
    if not value:
        return "—"
    text = str(value)
    code = f'<code title="{esc(text)}">{esc(text[:12])}</code>'
    if isinstance(commit_url, str) and commit_url.startswith(("https://", "http://")) and _is_commit(text):
        return f'<a class="rev" href="{esc(commit_url.replace("{revision}", text))}">{code}</a>'
    return code


def _is_commit(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def views(current: str) -> str:
    """Links between the dashboard's views, the current one marked."""
    links = (("/", "matrix"), ("/stages", "stages"), ("/api/v1/environments", "JSON"), ("/metrics", "metrics"))
    return '<nav id="views">' + "".join(
        f'<a href="{href}"{" class=on aria-current=page" if name == current else ""}>{name}</a>' for href, name in links
    ) + "</nav>"  # fmt: skip


def page(title: str, body: Iterable[str], head: str = "", end: str = "") -> bytes:
    """A page: ``head`` goes in ``<head>``, ``end`` after the script at the end of ``<body>``."""
    start = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title>{head}<style>{CSS}</style>"
        f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript></head><body>'
    )
    return (start + "".join(body) + f"<script>{SCRIPT}</script>{end}</body></html>\n").encode("utf-8")


def banner(snapshot: Mapping[str, Any]) -> str:
    """The served revision, the last good one, an invalid head's problems and a source error."""
    invalid = snapshot.get("invalidRevision")
    error = snapshot.get("sourceError")
    link = snapshot.get("commitUrl")
    parts = [
        f"revision {revision(snapshot.get('revision'), link)}",
        f"last good {revision(snapshot.get('lastGoodRevision'), link)}",
        f"cycle {esc(snapshot.get('cycles', 0))}",
    ]
    if not snapshot.get("ready", True):
        parts.append("<strong>not ready: the source has not been fetched yet</strong>")
    out = [f'<section id="revision" class="{"bad" if invalid or error else "ok"}">', " · ".join(parts)]
    if invalid:
        problems = [p for p in snapshot.get("problems") or [] if p]
        out.append(
            f'<div id="invalid"><strong>revision {revision(invalid, link)} is invalid</strong> ({len(problems)} '
            f"problem{'' if len(problems) == 1 else 's'}); "
            + ("still serving the last good revision:" if snapshot.get("lastGoodRevision") else "nothing is served:")
            + "<ul>"
            + "".join(f"<li><code>{esc(p)}</code></li>" for p in problems)
            + "</ul></div>"
        )
    if error:
        out.append(f'<div id="source-error"><strong>source error:</strong> {esc(error)}</div>')
    out.append("</section>")
    return "".join(out)


def apps_of(env: Mapping[str, Any]) -> Mapping[str, Any]:
    apps = env.get("applications")
    return apps if isinstance(apps, Mapping) else {}


def stage_names(snapshot: Mapping[str, Any]) -> list[str]:
    """Stage names in promotion order (the snapshot's ``stages``), then stages only environments name, as found."""
    names = [str(s.get("name")) for s in snapshot.get("stages") or [] if isinstance(s, Mapping)]
    for env in snapshot.get("environments") or []:
        if isinstance(env, Mapping) and str(env.get("stage")) not in names:
            names.append(str(env.get("stage")))
    return names
