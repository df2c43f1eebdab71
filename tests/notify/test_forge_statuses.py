"""Forge commit statuses (issue 19) against local forge servers that check every request against the forges'
published API descriptions (tests/notify/forge_server.py): GitHub (and an Enterprise base URL), GitLab (a project
path in a subgroup), Gitea; a forge answering 500, 429 with Retry-After, 401, or never; one context per stage,
posted only when it changed; end to end from the controller, whose status commit a hanging forge never delays."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core.notify import StatusState
from reconciler.core.plan import Phase
from reconciler.engine.commit_statuses import StatusPoster
from reconciler.notify.forge import CommitStatus, ForgeKind, ForgeStatuses
from reconciler.notify.outbox import Outbox
from tests.engine import ENVIRONMENTS, Fleet
from tests.notify.forge_server import HANG, ForgeServer

TOKEN = "ghp_not-a-real-token-0123456789"
SHA = "0123456789abcdef0123456789abcdef01234567"
REPOSITORY = {ForgeKind.GITHUB: "bank/releases", ForgeKind.GITLAB: "bank/platform/releases",
              ForgeKind.GITEA: "bank/releases"}  # fmt: skip


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox(capacity=10, attempts=3, backoff=0.05, max_backoff=0.1)
    yield box
    box.close()


def serve(kind: ForgeKind, answers: list[object] | None = None, prefix: str = "") -> Iterator[ForgeServer]:
    server = ForgeServer(kind.value, TOKEN, answers, prefix)
    yield server
    server.close()


def status(state: StatusState = StatusState.PENDING) -> dict[str, object]:
    return CommitStatus(SHA, "reconciler/production", state, "44/47 Synced, 3 Progressing",
                        "https://rc.example/stages").as_json()  # fmt: skip


@pytest.mark.parametrize("kind", list(ForgeKind))
def test_each_forge_gets_the_request_its_description_asks_for(kind: ForgeKind, outbox: Outbox) -> None:
    for server in serve(kind):
        sink = ForgeStatuses("forge", kind, REPOSITORY[kind], TOKEN, server.url)
        outbox.offer(sink, status())
        outbox.offer(sink, status(StatusState.SUCCESS))
        assert outbox.drain(10)
        assert server.violations == []
        assert outbox.results[("forge", "sent")] == 2
        first, second = (r["body"] for r in server.requests)
        params = server.requests[0]["params"]
        assert params["sha"] == SHA
        if kind is ForgeKind.GITLAB:
            assert params["id"] == "bank/platform/releases"  # sent URL-encoded: one path segment
            assert (first["state"], second["state"], first["name"]) == ("running", "success", "reconciler/production")
        else:
            assert (params["owner"], params["repo"]) == ("bank", "releases")
            assert (first["state"], second["state"], first["context"]) == (
                "pending",
                "success",
                "reconciler/production",
            )
        assert first["description"] == "44/47 Synced, 3 Progressing"
        assert first["target_url"] == "https://rc.example/stages"


def test_github_enterprise_answers_under_its_own_base_url(outbox: Outbox) -> None:
    for server in serve(ForgeKind.GITHUB, prefix="/api/v3"):
        outbox.offer(ForgeStatuses("ghe", ForgeKind.GITHUB, "bank/releases", TOKEN, f"{server.url}/api/v3/"), status())
        assert outbox.drain(10)
        assert server.violations == [] and len(server.requests) == 1


def test_a_description_longer_than_github_takes_is_cut(outbox: Outbox) -> None:
    for server in serve(ForgeKind.GITHUB):
        long = dict(status(), description="x" * 500)
        outbox.offer(ForgeStatuses("forge", ForgeKind.GITHUB, "bank/releases", TOKEN, server.url), long)
        assert outbox.drain(10)
        assert len(server.requests[0]["body"]["description"]) == 140


def test_a_forge_error_is_retried_and_a_refusal_is_not(outbox: Outbox) -> None:
    for server in serve(ForgeKind.GITHUB, [(500, {}), (201, {}), (401, {})]):
        sink = ForgeStatuses("forge", ForgeKind.GITHUB, "bank/releases", TOKEN, server.url)
        outbox.offer(sink, status())
        outbox.offer(sink, status(StatusState.SUCCESS))
        assert outbox.drain(10)
        assert len(server.requests) == 3  # 500, then delivered; the 401 given up at once
        assert (outbox.results[("forge", "retried")], outbox.results[("forge", "sent")]) == (1, 1)
        assert outbox.results[("forge", "failed")] == 1 and outbox.dead_letters == 1


def test_429_is_retried_after_the_delay_the_forge_asked_for(outbox: Outbox) -> None:
    for server in serve(ForgeKind.GITEA, [(429, {"Retry-After": "1"}), (201, {})]):
        outbox.offer(ForgeStatuses("forge", ForgeKind.GITEA, "bank/releases", TOKEN, server.url), status())
        assert server.wait_for(1)
        asked = time.monotonic()
        assert outbox.drain(10)
        assert server.wait_for(2) and time.monotonic() - asked >= 0.9  # not the 0.05 s backoff: Retry-After
        assert outbox.results[("forge", "sent")] == 1


def test_a_forge_that_never_answers_delays_nothing_and_is_retried() -> None:
    box = Outbox(capacity=10, attempts=2, backoff=0.05, max_backoff=0.1)
    for server in serve(ForgeKind.GITLAB, [HANG, (201, {})]):
        sink = ForgeStatuses("forge", ForgeKind.GITLAB, "bank/releases", TOKEN, server.url, timeout=0.5)
        started = time.monotonic()
        poster = StatusPoster(sink, outbox=box)
        offered = poster.update(SHA, {"p1": "production"}, {"p1": Phase.SYNCED})
        assert [s.state for s in offered] == [StatusState.SUCCESS]
        assert time.monotonic() - started < 0.1  # offering never waits for the forge
        assert box.drain(10)
        assert len(server.requests) == 2 and box.results[("forge", "sent")] == 1
    box.close()


def test_a_context_is_posted_when_it_changed_and_again_on_a_new_commit() -> None:
    for server in serve(ForgeKind.GITHUB):
        box = Outbox()
        poster = StatusPoster(ForgeStatuses("forge", ForgeKind.GITHUB, "bank/releases", TOKEN, server.url),
                              link="https://rc.example", outbox=box)  # fmt: skip
        members = {"p1": "production", "p2": "production", "d1": "dev"}
        phases: dict[str, Phase | None] = {"p1": Phase.SYNCED, "p2": Phase.PROGRESSING, "d1": Phase.SYNCED}
        assert [(s.context, s.state) for s in poster.update(SHA, members, phases)] == [
            ("reconciler/dev", StatusState.SUCCESS), ("reconciler/production", StatusState.PENDING)]  # fmt: skip
        assert poster.update(SHA, members, phases) == []  # nothing changed: nothing posted
        phases["p2"] = Phase.SYNCED
        (done,) = poster.update(SHA, members, phases)
        assert (done.state, done.description, done.target_url) == (StatusState.SUCCESS, "2/2 Synced",
                                                                   "https://rc.example/stages")  # fmt: skip
        assert len(poster.update("f" * 40, members, phases)) == 2  # a new commit: every stage again
        assert poster.update(SHA, {"d1": "dev"}, phases)[0].target_url == "https://rc.example/environments/d1"
        assert box.drain(10) and server.violations == []
        box.close()


def test_gitlab_gets_a_change_of_state_only() -> None:
    box = Outbox()
    for server in serve(ForgeKind.GITLAB):
        poster = StatusPoster(ForgeStatuses("forge", ForgeKind.GITLAB, "bank/releases", TOKEN, server.url), outbox=box)
        members = {"p1": "production", "p2": "production"}
        assert len(poster.update(SHA, members, {"p1": Phase.PROGRESSING, "p2": Phase.PROGRESSING})) == 1
        assert poster.update(SHA, members, {"p1": Phase.SYNCED, "p2": Phase.PROGRESSING}) == []  # still running
        assert len(poster.update(SHA, members, {"p1": Phase.SYNCED, "p2": Phase.SYNCED})) == 1
        assert box.drain(10) and server.violations == []
        assert [r["body"]["state"] for r in server.requests] == ["running", "success"]
    box.close()


def test_the_controller_posts_each_stage_on_the_commit_it_applies(fleet: Fleet, tmp_path: Path) -> None:
    token = tmp_path / "forge.token"
    token.write_text(TOKEN + "\n")
    for server in serve(ForgeKind.GITHUB):
        fleet.write_config(notifications={
            "dashboardURL": "https://rc.example",
            "commitStatuses": {"forge": "github", "url": server.url, "repository": "bank/releases",
                               "token": f"file:{token}"},
        })  # fmt: skip
        assert fleet.once() == 0
        head = fleet.upstream.head()
        assert server.wait_for(2) and server.violations == []
        posted = sorted((r["params"]["sha"], r["body"]["context"], r["body"]["state"], r["body"]["description"])
                        for r in server.requests)  # fmt: skip
        assert posted == [(head, "reconciler/dev", "success", "2/2 Synced"),
                          (head, "reconciler/production", "success", "3/3 Synced")]  # fmt: skip
        assert all(TOKEN not in str(r["body"]) for r in server.requests)


def test_a_hanging_forge_never_delays_the_status_commit(fleet: Fleet, tmp_path: Path) -> None:
    token = tmp_path / "forge.token"
    token.write_text(TOKEN)
    for server in serve(ForgeKind.GITEA, [HANG] * 10):
        fleet.write_config(notifications={
            "commitStatuses": {"forge": "gitea", "url": server.url, "repository": "bank/releases",
                               "token": f"file:{token}", "timeout": 60},
        })  # fmt: skip
        started = time.monotonic()
        assert fleet.once() == 0
        assert time.monotonic() - started < 30  # the forge's 60 s timeout held up nothing (5 s grace at stop)
        assert {fleet.env_status(e)["phase"] for e in ENVIRONMENTS} == {"Synced"}
        assert server.wait_for(1) and server.violations == []


def test_a_dry_run_tells_no_forge_and_no_sink(fleet: Fleet, tmp_path: Path) -> None:
    token = tmp_path / "forge.token"
    token.write_text(TOKEN)
    for server in serve(ForgeKind.GITHUB):
        fleet.write_config(notifications={
            "commitStatuses": {"forge": "github", "url": server.url, "repository": "bank/releases",
                               "token": f"file:{token}"},
        })  # fmt: skip
        assert fleet.once("--dry-run") == 1  # everything would change
        assert server.requests == []  # nothing was applied: nothing to tell
