"""Unit tests of the dashboard (:mod:`reconciler.http.dashboard`) on synthetic snapshots: structure, escaping of
hostile names, filters, counts, size and render time at 235 x 60. The snapshots and the :class:`Page` reader are
shared with ``test_dashboard_chromium.py`` (the same pages in a real browser, and the real demo).
"""

from __future__ import annotations

import gzip
import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

from reconciler.http.dashboard import CELL_CLASS, PHASES, render_environment, render_index, render_stages

ROOT = Path(__file__).resolve().parents[2]
EVIL = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">\'&'


# --- synthetic snapshots ---------------------------------------------------------------------------------------------
def app(desired: str | None, live: str | None, phase: str, message: str = "") -> dict[str, Any]:
    return {"desired": desired, "live": live, "phase": phase, "message": message}


def environment(name: str, stage: str, region: str, phase: str, apps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "stage": stage, "labels": {"region": region, "stage": stage}, "wave": extra.get("wave"),
        "phase": phase, "message": extra.get("message", ""), "lastAppliedRevision": "a" * 40,
        "lastAttemptedRevision": "b" * 40, "updated": "2024-03-01T12:00:00Z", "applications": apps,
        "recentAudit": extra.get("audit", []),
    }  # fmt: skip


STAGES = [  # promotion order: dev -> recette -> production
    {"name": "dev", "promotesFrom": None, "protected": False, "soakSeconds": 0, "waves": []},
    {"name": "recette", "promotesFrom": "dev", "protected": False, "soakSeconds": 0, "waves": []},
    {"name": "production", "promotesFrom": "recette", "protected": True, "soakSeconds": 86400, "waves": []},
]
ORDER = ["lille-dev", EVIL, "paris-recette", "lille-production", "nice-production"]  # rows: by stage, then name


def small_snapshot() -> dict[str, Any]:
    audit = [
        {"time": f"2024-03-01T12:0{i}:00Z", "application": "billing", "action": "update", "from": "0.9",
         "to": f"1.{i}", "result": "succeeded", "author": f"Dev {i} {EVIL}", "revision": "c" * 40, "message": EVIL}
        for i in range(3)
    ]  # fmt: skip
    envs = [
        environment("lille-dev", "dev", "nord", "Synced", {
            "billing": app("1.0", "1.0", "Synced"), "portal": app("2.0", "2.0", "Synced"),
            EVIL: app(EVIL, None, "Blocked", EVIL)}, audit=audit, wave=1),
        environment("lille-production", "production", "nord", "Failed", {
            "billing": app("1.0", "0.9", "Failed", "agent exploded"), "portal": app("2.0", "2.0", "Synced")},
            message="billing: agent exploded"),
        environment("nice-production", "production", "sud-est", "OutOfSync", {
            "billing": app("1.0", "0.9", "OutOfSync"), "portal": app("2.0", None, "Progressing")}),
        environment(EVIL, "dev", EVIL, f"Bogus{EVIL}", {"billing": app("1.0", "1.0", f"Weird{EVIL}")}, message=EVIL),
        environment("paris-recette", "recette", "ile-de-france", "Unknown", {}),
    ]  # fmt: skip
    return {
        "revision": "d" * 40, "lastGoodRevision": "e" * 40, "invalidRevision": "f" * 40,
        "problems": [f"stages/dev.yaml:3: {EVIL}"], "sourceError": f"fetch failed: {EVIL}", "cycles": 7,
        "ready": True, "applications": ["billing", "portal", EVIL], "environments": envs, "stages": STAGES,
        "commitUrl": None,
    }  # fmt: skip


def fleet_snapshot() -> dict[str, Any]:
    """235 environments x 60 applications with the example fleet's names: the size of the real demo."""
    apps = sorted(p.name for p in (ROOT / "examples" / "releases-repo" / "applications").iterdir())[:60]
    assert len(apps) == 60
    envs = []
    for i in range(235):
        phase = PHASES[i % 7]
        versions = {a: app(f"{i % 9}.{j % 13}.{j % 7}", f"{i % 9}.{j % 13}.{j % 7}", phase) for j, a in enumerate(apps)}
        message = f"application-{i}: blocked because application-{i} 1.10.0 requires referentiel >=3.2,<4 (+11 more)"
        envs.append(environment(f"branch{i // 5:02d}-{('dev', 'recette', 'production')[i % 3]}-{i}", "dev", "nord",
                                phase, versions, message=message))  # fmt: skip
    return {"revision": "d" * 40, "lastGoodRevision": "d" * 40, "invalidRevision": None, "problems": [],
            "sourceError": None, "cycles": 3, "ready": True, "applications": apps, "environments": envs}  # fmt: skip


# --- reading pages -----------------------------------------------------------------------------------------------------
CELL_ROLES = ("cell", "columnheader", "rowheader")
PHASE_OF_CLASS = {c: p for p, c in CELL_CLASS.items()}


@dataclass
class Row:
    attrs: dict[str, str]
    section: str  # "thead" or "tbody" (ARIA rows: "thead" when their cells are column headers)
    cells: list[tuple[dict[str, str], list[str]]] = field(default_factory=list)  # (attributes, text parts)

    def text(self, i: int) -> str:
        return "".join(self.cells[i][1]).strip()


class Page(HTMLParser):
    """Tables by id (rows, cells), phase counts, scripts, text.

    A table is a ``<table>`` (tolerant of omitted ``</td>`` like browsers) or an element with ``role=table`` whose
    rows and cells are elements with ``role=row`` and ``role=cell`` / ``columnheader`` / ``rowheader``.
    """

    def __init__(self, page: bytes | str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[Row]] = {}
        self.counts: dict[str, int] = {}
        self.scripts: list[str] = []
        self.options: dict[str, list[tuple[str, bool]]] = {}
        self.reasons: list[str] = []  # the matrix's distinct reasons (#reasons), for cells' data-r
        self._reasons = False
        self.text = ""
        self._table: list[Row] | None = None
        self._section = ""
        self._cell: list[str] | None = None
        self._count: str | None = None
        self._select = ""
        self._in = ""
        self._open: list[str] = []  # roles of the open <div> and <span> elements (their end tags are never omitted)
        self.feed(page.decode() if isinstance(page, bytes) else page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        role = a.get("role", "") if tag in ("div", "span") else ""
        if tag in ("div", "span"):
            self._open.append(role)
        if tag == "table" or role == "table":
            self._table = self.tables.setdefault(a.get("id", ""), [])
        elif tag in ("thead", "tbody"):
            self._section = tag
        elif (tag == "tr" or role == "row") and self._table is not None:
            self._table.append(Row(a, self._section if tag == "tr" else "tbody"))
            self._cell = None
        elif (tag in ("td", "th") or role in CELL_ROLES) and self._table:
            self._cell = []
            self._table[-1].cells.append((a, self._cell))
            if role == "columnheader":
                self._table[-1].section = "thead"
        elif tag == "span" and "count" in a.get("class", "").split():
            self._count = a["data-phase"]
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option":
            self.options.setdefault(self._select, []).append((a["value"], "selected" in a))
        elif tag == "ol" and a.get("id") == "reasons":
            self._reasons = True
        elif tag == "li" and self._reasons:
            self.reasons.append("")
        elif tag in ("script", "style"):
            self._in = tag
            self.scripts += [""] if tag == "script" else []

    def handle_endtag(self, tag: str) -> None:
        role = self._open.pop() if tag in ("div", "span") else ""
        if tag in ("td", "th") or role in CELL_ROLES:
            self._cell = None
        elif tag == "table" or role == "table":
            self._table = None
        elif tag == "span":
            self._count = None
        if tag in ("script", "style"):
            self._in = ""
        if tag == "ol":
            self._reasons = False

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts[-1] += data
            return
        if self._in == "style":
            return
        self.text += data
        if self._reasons and self.reasons:
            self.reasons[-1] += data
        if self._cell is not None:
            self._cell.append(data)
        if self._count is not None:
            self.counts[self._count] = int(data)

    def matrix(self) -> tuple[list[str], list[Row]]:
        """The matrix's applications (from the column headers) and its environment rows."""
        rows = self.tables["matrix"]
        header = [c[0]["data-app"] for c in rows[0].cells if "data-app" in c[0]]
        return header, [r for r in rows if r.section == "tbody"]

    def cells(self, row: Row) -> dict[str, tuple[str, str]]:
        """Application -> (phase, text) of a matrix row's cells (not the empty ones of undeployed applications)."""
        header, _ = self.matrix()
        assert len(row.cells) == 1 + len(header), row.attrs
        return {
            app: (PHASE_OF_CLASS[attrs["class"]], "".join(text))
            for app, (attrs, text) in zip(header, row.cells[1:], strict=True)
            if "class" in attrs
        }


def index(snapshot: dict[str, Any], **query: str) -> Page:
    return Page(render_index(snapshot, query))


# --- unit tests ----------------------------------------------------------------------------------------------------
def test_matrix_has_a_row_per_environment_and_a_column_per_application() -> None:
    snap = small_snapshot()
    page = index(snap)
    header, rows = page.matrix()
    assert header == snap["applications"]
    assert [r.attrs["data-env"] for r in rows] == ORDER  # grouped by stage in promotion order, not alphabetical
    assert [r.attrs["data-phase"] for r in rows] == ["Synced", "Unknown", "Unknown", "Failed", "OutOfSync"]
    lille_prod = rows[3]
    assert lille_prod.cells[0][0] == {"role": "rowheader", "title": "Failed: billing: agent exploded"}
    assert '<a href="/environments/lille-production">lille-production</a>' in render_index(snap, {}).decode()
    assert page.cells(lille_prod) == {"billing": ("Failed", "0.9"), "portal": ("Synced", "2.0")}
    assert lille_prod.cells[1][0]["title"] == "billing: live 0.9, desired 1.0"
    # a cell that needs someone points at its reason in the page's list of distinct reasons (shown on hover)
    assert page.reasons[int(lille_prod.cells[1][0]["data-r"])] == "Failed: agent exploded"
    nice = page.cells(rows[4])
    assert nice == {"billing": ("OutOfSync", "0.9"), "portal": ("Progressing", "2.0")}  # desired when not live
    assert "data-r" not in rows[4].cells[1][0]  # OutOfSync: nobody has to act
    assert "<i>2.0</i>" in render_index({**snap, "environments": snap["environments"][2:3]}, {}).decode()
    assert all(len(r.cells) == 1 + len(header) for r in rows)  # empty cells where an application is not deployed
    assert [len(page.cells(r)) for r in rows] == [3, 1, 0, 2, 2]
    assert [c[0]["role"] for c in rows[0].cells] == ["rowheader", "cell", "cell", "cell"]
    assert [c[0]["role"] for c in page.tables["matrix"][0].cells] == ["columnheader"] * 4
    assert page.counts == {"Synced": 1, "OutOfSync": 1, "Progressing": 0, "Blocked": 0, "Degraded": 0,
                           "Failed": 1, "Invalid": 0, "Unknown": 2}  # fmt: skip
    for phase in PHASES:  # the legend shows every phase with its symbol
        assert f'class="k" data-phase="{phase}"' in render_index(snap, {}).decode()


def test_rows_are_grouped_by_stage_and_wave_with_what_needs_someone() -> None:
    snap = small_snapshot()
    raw = render_index(snap, {}).decode()
    groups = re.findall(r"<div class=sg role=presentation data-stage=([^>]+)><span>(.*?)</span></div>", raw)
    assert [g[0] for g in groups] == ["dev", "dev", "recette", "production"]  # lille-dev is in wave 1
    assert groups[0][1].startswith("stage dev · wave 1<small>1 environment<")
    assert [re.sub(r"<[^>]+>", " ", g[1]).split() for g in groups][3] == [
        "stage", "production", "2", "environments:", "1", "≠", "OutOfSync,", "1", "✗", "Failed"]  # fmt: skip
    waves = [{**e, "stage": "production", "wave": w} for e, w in zip(snap["environments"], "bab a", strict=True)]
    waves[3]["wave"] = None
    staged = {**snap, "environments": waves, "stages": [{**STAGES[2], "waves": ["a", "b"]}]}
    rows = [r.attrs["data-env"] for r in index(staged).matrix()[1]]
    assert rows == ["lille-production", "paris-recette", "lille-dev", "nice-production", EVIL]  # wave a, b, none
    labels = re.findall(
        r"data-stage=production><span>(stage production(?: · wave \w+)?)<small>", render_index(staged, {}).decode()
    )
    assert labels == ["stage production · wave a", "stage production · wave b", "stage production"]


def test_compact_cells_fit_sixty_applications_in_1600_pixels() -> None:
    snap = fleet_snapshot()
    text = render_index(snap, {}).decode()
    width = int(re.search(r'id="matrix"[^>]* class=c style="--names:\d+px;--cell:\d+px;width:(\d+)px', text)[1])
    assert width <= 1600 - 24 - 15  # body margins and a scroll bar
    wide = render_index(snap, {"cells": "versions"}).decode()
    assert 'id="matrix" role="table"' in wide and "class=c" not in wide.split('id="matrix"')[1][:200]
    assert "class=c " not in render_index(small_snapshot(), {}).decode()  # three applications: versions shown
    assert "class=c " in render_index(small_snapshot(), {"cells": "compact"}).decode()


def test_hostile_names_messages_and_versions_are_escaped() -> None:
    snap = small_snapshot()
    for raw in (render_index(snap, {}), render_environment(snap, EVIL), render_environment(snap, "lille-dev")):
        assert raw is not None
        text = raw.decode()
        assert text.count("<script") == 1 and "<img" not in text  # only the page's own script
        page = Page(raw)
        assert len(page.scripts) == 1 and "__pwned" not in page.scripts[0]
        assert EVIL in page.text  # shown, as text
    header, rows = index(snap).matrix()
    assert header[2] == EVIL and rows[1].attrs["data-env"] == EVIL
    page = index(snap)
    assert page.cells(rows[0])[EVIL] == ("Blocked", EVIL[:6] + "…")  # a long version is cut, in full in the title
    assert rows[0].cells[3][0]["title"] == f"{EVIL}: desired {EVIL}, nothing live yet"
    assert page.reasons[int(rows[0].cells[3][0]["data-r"])] == f"Blocked: {EVIL}"
    assert f'href="/environments/{quote(EVIL, safe="")}"' in render_index(snap, {}).decode().replace("&amp;", "&")
    assert page.cells(rows[1])["billing"][0] == "Unknown"  # an unknown phase is never echoed into an attribute
    assert rows[1].cells[1][0]["class"] == "u" and rows[1].attrs["data-phase"] == "Unknown"


def test_filters_by_stage_region_application_and_phase() -> None:
    snap = small_snapshot()

    def envs(**query: str) -> list[str]:
        return [r.attrs["data-env"] for r in index(snap, **query).matrix()[1]]

    assert envs(stage="production") == ["lille-production", "nice-production"]
    assert envs(region="nord") == ["lille-dev", "lille-production"]
    assert envs(stage="production", region="nord") == ["lille-production"]
    assert envs(phase="Failed") == ["lille-production"]
    assert envs(stage="", region="", app="", phase="") == envs()  # the form's "all"
    page = index(snap, app="portal", phase="Progressing")  # with an application: its phase per environment
    header, rows = page.matrix()
    assert header == ["portal"] and [r.attrs["data-env"] for r in rows] == ["nice-production"]
    assert page.counts["Synced"] == 2 and page.counts["Progressing"] == 1 and sum(page.counts.values()) == 3
    assert ("Progressing", True) in page.options["phase"] and ("", True) in page.options["stage"]
    empty = render_index(snap, {"stage": "nope<b>"}).decode()
    assert 'id="empty"' in empty and "<b>" not in empty and "nope&lt;b&gt;" in empty
    links = render_index(snap, {"stage": "production"}).decode()
    assert 'href="/?stage=production&amp;phase=Failed"' in links  # count links keep the other filters


def test_revision_banner_shows_invalid_revision_problems_and_source_error() -> None:
    snap = small_snapshot()
    page = Page(render_index(snap, {}))
    assert f"stages/dev.yaml:3: {EVIL}" in page.text and f"fetch failed: {EVIL}" in page.text
    assert "ffffffffffff is invalid" in page.text and "dddddddddddd" in page.text and "eeeeeeeeeeee" in page.text
    calm = {**snap, "invalidRevision": None, "problems": [], "sourceError": None}
    assert 'id="invalid"' not in render_index(calm, {}).decode()
    assert 'id="source-error"' not in render_index(calm, {}).decode()


def test_environment_page() -> None:
    snap = small_snapshot()
    assert render_environment(snap, "nowhere") is None
    raw = render_environment(snap, "lille-dev")
    assert raw is not None
    page = Page(raw)
    apps = {r.attrs["data-app"]: (r.text(1), r.text(2), r.attrs["data-phase"]) for r in page.tables["applications"][1:]}
    assert apps == {
        "billing": ("1.0", "1.0", "Synced"),
        "portal": ("2.0", "2.0", "Synced"),
        EVIL: (EVIL, "—", "Blocked"),
    }
    audit = page.tables["audit"][1:]
    assert [r.text(3) for r in audit] == ["0.9 → 1.2", "0.9 → 1.1", "0.9 → 1.0"]  # newest first
    assert audit[0].text(4) == "succeeded" and audit[0].text(5) == f"Dev 2 {EVIL}" and audit[0].text(6) == "c" * 12
    assert 'href="/"' in raw.decode() and "region=nord" in page.text and "wave" in page.text
    empty = Page(render_environment(snap, "paris-recette") or b"")
    assert "no application status yet" in empty.text and "no change recorded" in empty.text


def test_full_fleet_page_is_small_and_fast() -> None:
    snap = fleet_snapshot()
    started = time.perf_counter()
    raw = render_index(snap, {})
    elapsed = time.perf_counter() - started
    header, rows = Page(raw).matrix()
    assert len(header) == 60 and len(rows) == 235 and all(len(r.cells) == 61 for r in rows)
    print(f"\n235x60 page: {len(raw)} bytes ({len(gzip.compress(raw))} gzipped), rendered in {elapsed * 1000:.0f} ms")
    assert len(raw) < 700_000
    text = raw.decode()  # the first paint waits for the matrix and the script (one layout, not one per parsed chunk)
    assert '<link rel="expect" href="#end" blocking="render">' in text
    assert text.index('<div id="end">') > text.index("</script>") > text.rindex("<span role=cell")
    assert elapsed < 2.0  # ~40 ms on an idle machine; generous for loaded CI machines


def test_stage_view_shows_versions_per_stage_what_waits_and_why() -> None:
    snap = small_snapshot()
    snap["environments"].append(environment("amiens-production", "production", "nord", "Blocked", {
        "billing": app("1.1", "0.9", "Blocked", "1.1 has not run 24h in recette yet"),
        "portal": app("2.0", "2.0", "Synced")}))  # fmt: skip
    raw = render_stages(snap, {})
    page = Page(raw)
    table = page.tables["stages"]
    assert [c[0].get("data-stage") for c in table[0].cells[1:]] == ["dev", "recette", "production"]
    assert table[0].text(3).startswith("production") and "protected, soak 24h, from recette" in table[0].text(3)
    rows = {r.text(0): r for r in table[1:]}
    assert list(rows) == ["billing", "portal", EVIL]
    billing = rows["billing"]
    production = billing.text(3)
    assert "0.9 ×3" in production  # three production environments run 0.9
    assert "→ 1.0, 1.1: 3 waiting" in production
    assert "1.1 has not run 24h in recette yet" in production and "agent exploded" in production
    assert billing.attrs.get("data-attention") == "yes" and "data-attention" not in rows["portal"].attrs
    assert "1.0 ×2" in billing.text(1) and billing.text(2) == "—"  # dev: lille-dev and the hostile one; no recette
    assert 'href="/?stage=production&amp;app=billing"' in raw.decode()
    assert Page(render_stages(snap, {"app": "portal"})).tables["stages"][1].text(0) == "portal"
    text = raw.decode()
    assert text.count("<script") == 1 and "<img" not in text and EVIL in page.text  # escaped


def test_environment_page_puts_audit_and_timeline_first_and_links_revisions_to_the_forge() -> None:
    snap = {**small_snapshot(), "commitUrl": "https://forge.example.org/ops/releases/-/commit/{revision}"}
    raw = (render_environment(snap, "lille-dev") or b"").decode()
    assert (
        raw.index('id="actions"')
        < raw.index('id="audit"')
        < raw.index('id="timeline"')
        < raw.index('id="applications"')
    )
    assert f'href="https://forge.example.org/ops/releases/-/commit/{"a" * 40}"' in raw  # last applied
    assert f'href="https://forge.example.org/ops/releases/-/commit/{"c" * 40}"' in raw  # an audit entry's revision
    hostile = {**snap, "commitUrl": "javascript:alert(1)//{revision}"}
    assert "javascript:" not in (render_environment(hostile, "lille-dev") or b"").decode()
    assert "forge.example.org" not in (render_environment(small_snapshot(), "lille-dev") or b"").decode()


def test_stage_view_says_where_a_stage_is_behind_the_one_it_promotes_from() -> None:
    snap = small_snapshot()
    snap["environments"].append(environment("paris-recette-2", "recette", "nord", "Synced",
                                            {"billing": app("1.0", "1.0", "Synced")}))  # fmt: skip
    rows = {r.text(0): r for r in Page(render_stages(snap, {})).tables["stages"][1:]}
    assert "recette runs 1.0" in rows["billing"].text(3)  # production runs 0.9: a promotion is pending
    assert "runs" not in rows["billing"].text(2)  # recette runs what dev runs
    assert "runs" not in rows["billing"].text(1)  # dev promotes from nothing
