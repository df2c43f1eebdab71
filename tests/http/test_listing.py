"""The light environments list (issue 20): fields, pages and ETag / If-None-Match on a real server, and the pure
selection's refusals."""

from __future__ import annotations

import pytest

from reconciler.http.listing import MAX_LIMIT, BadQuery, fresh, select
from tests.engine import ENVIRONMENTS, Fleet
from tests.http import served

PHASES = frozenset({"Synced", "Failed"})
ENVS = [{"name": f"e{i}", "stage": "dev" if i % 2 else "production", "phase": "Synced", "applications": {"ref": {}},
         "message": "1 application in sync", "recentAudit": [{"id": str(i)}]} for i in range(7)]  # fmt: skip


def test_fields_keep_only_what_was_asked_and_the_name() -> None:
    page = select(ENVS, {"fields": "phase,applications"}, PHASES)
    assert page.environments[0] == {"name": "e0", "phase": "Synced", "applications": {"ref": {}}}
    assert page.count == 7 and page.next is None


def test_pages_walk_the_list_once_each() -> None:
    seen, token, pages = [], None, 0
    while True:
        query = {"limit": "3", "stage": "dev"} | ({"continue": token} if token else {})
        page = select(ENVS, query, PHASES)
        seen += [e["name"] for e in page.environments]
        pages += 1
        assert page.count == 3
        token = page.next
        if token is None:
            break
    assert seen == ["e1", "e3", "e5"] and pages == 1
    first = select(ENVS, {"limit": "2"}, PHASES)
    second = select(ENVS, {"limit": "2", "continue": first.next or ""}, PHASES)
    assert [e["name"] for e in first.environments + second.environments] == ["e0", "e1", "e2", "e3"]
    gone = select(ENVS, {"limit": "2", "continue": "99"}, PHASES)  # the list shrank since: an empty last page
    assert (gone.environments, gone.count, gone.next) == ([], 7, None)


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ({"fields": "phase,secret"}, "unknown field 'secret'"),
        ({"fields": ""}, "comma-separated field names, none empty"),  # found by schemathesis: was "every field"
        ({"fields": "phase,"}, "comma-separated field names, none empty"),
        ({"fields": "phase, stage"}, "unknown field ' stage'"),
        ({"limit": "0"}, f"between 1 and {MAX_LIMIT}"),
        ({"limit": "many"}, "whole numbers"),
        ({"continue": "-1"}, "not a token of this list"),
        ({"phase": "Bogus"}, "unknown phase 'Bogus'"),
    ],
)
def test_a_bad_query_is_refused_with_a_reason(query: dict[str, str], said: str) -> None:
    with pytest.raises(BadQuery, match=said):
        select(ENVS, query, PHASES)


def test_if_none_match_compares_tags_as_the_rfc_says() -> None:
    assert fresh('"abc"', '"abc"') and fresh('W/"abc", "x"', '"abc"') and fresh("*", '"abc"')
    assert not fresh('"abd"', '"abc"') and not fresh(None, '"abc"') and not fresh("", '"abc"')


def test_the_server_answers_fields_pages_and_304(fleet: Fleet) -> None:
    with served(fleet) as s:
        s.controller.cycle()
        full = s.get("/api/v1/environments")
        light = s.get("/api/v1/environments?fields=phase&limit=2")
        data = light.json()
        assert data["count"] == 5 and data["continue"] == "2" and len(data["environments"]) == 2
        assert all(set(e) == {"name", "phase"} for e in data["environments"])
        assert len(light.body) < len(full.body) / 3
        rest = s.get("/api/v1/environments?fields=phase&limit=2&continue=2").json()
        last = s.get("/api/v1/environments?fields=phase&limit=2&continue=4").json()
        names = [e["name"] for page in (data, rest, last) for e in page["environments"]]
        assert sorted(names) == ENVIRONMENTS and last["continue"] is None
        tag = full.headers["etag"]
        again = s.get("/api/v1/environments", headers={"If-None-Match": tag})
        assert (again.status, again.body, again.headers["etag"]) == (304, b"", tag)
        assert s.get("/api/v1/environments?stage=dev", headers={"If-None-Match": tag}).status == 200
        one = s.get("/api/v1/environments/lille-dev")
        assert s.get("/api/v1/environments/lille-dev", headers={"If-None-Match": one.headers["etag"]}).status == 304
        fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.0", "ref back to 3.0 in dev")
        s.controller.cycle()
        changed = s.get("/api/v1/environments", headers={"If-None-Match": tag})
        assert changed.status == 200 and changed.headers["etag"] != tag  # a new revision: a new answer
        bad = s.get("/api/v1/environments?fields=password")
        assert bad.status == 400 and "unknown field 'password'" in bad.json()["error"]
