"""The operator verbs end to end: the CLI asks a running controller over real HTTP, the controller records and audits
the request with the caller's identity, and only callers allowed to act get through (tokens by reference, roles,
scopes, a trusted proxy's headers); a refused request does nothing and no token reaches the logs. A suspension made
through one replica holds on another (static shards) and across a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.commands.common import load_config
from reconciler.commands.run import build_controller
from reconciler.core.operations import LOG_PATH
from reconciler.engine.sharding import StaticShards
from tests.engine import NEW_REF_RELEASE as REF_311
from tests.engine import Fleet
from tests.http import configure, served

OPS_TOKEN = "ops-token-0123456789abcdef"
VIEW_TOKEN = "viewer-token-0123456789abcdef"
DEV_TOKEN = "dev-only-token-0123456789abcdef"


def with_tokens(fleet: Fleet, tmp_path: Path, **api: Any) -> None:
    tokens = {"ops": OPS_TOKEN, "view": VIEW_TOKEN, "dev": DEV_TOKEN}
    for name, value in tokens.items():
        (tmp_path / f"{name}.token").write_text(value + "\n")
    configure(fleet, branch="main", api={
        "tokens": [
            {"name": "ops", "token": f"file:{tmp_path / 'ops.token'}", "role": "operator"},
            {"name": "view", "token": f"file:{tmp_path / 'view.token'}", "role": "viewer"},
            {"name": "dev", "token": f"file:{tmp_path / 'dev.token'}", "role": "operator", "stages": ["dev"]},
        ],
        **api,
    })  # fmt: skip


def cli(url: str, token: str | None, *argv: str, monkeypatch: pytest.MonkeyPatch) -> int:
    if token is None:
        monkeypatch.delenv("RECONCILER_TOKEN", raising=False)
    else:
        monkeypatch.setenv("RECONCILER_TOKEN", token)
    return main([*argv, "--url", url])


def test_each_verb_through_the_cli_is_recorded_with_the_callers_identity(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with_tokens(fleet, tmp_path)
    with served(fleet) as s:
        s.controller.cycle()
        url = s.url
        assert cli(url, OPS_TOKEN, "suspend", "--env", "lille-dev", "--reason", "incident 4711",
                   monkeypatch=monkeypatch) == 0  # fmt: skip
        assert "accepted: suspend lille-dev by token:ops" in capsys.readouterr().out
        s.controller.cycle()
        env = json.loads(s.get("/api/v1/environments/lille-dev").body)
        assert env["phase"] == "Blocked" and "suspended by token:ops" in env["message"]
        assert cli(url, OPS_TOKEN, "resume", "--env", "lille-dev", monkeypatch=monkeypatch) == 0
        assert cli(url, DEV_TOKEN, "sync", "--env", "lille-dev", "--app", "ref", monkeypatch=monkeypatch) == 0
        assert cli(url, OPS_TOKEN, "refresh", "--env", "rennes-dev", monkeypatch=monkeypatch) == 0
        s.controller.cycle()
        assert json.loads(s.get("/api/v1/environments/lille-dev").body)["phase"] == "Synced"
    made = [(e["action"], e["environment"], e["author"]) for e in fleet.audit() if e["trigger"] == "manual"]
    assert made == [("suspend", "lille-dev", "token:ops"), ("resume", "lille-dev", "token:ops"),
                    ("sync", "lille-dev", "token:dev"), ("refresh", "rennes-dev", "token:ops")]  # fmt: skip
    assert len(fleet.status_file(LOG_PATH).splitlines()) == 4


@pytest.mark.parametrize(
    ("token", "headers", "status", "error"),
    [
        (None, {}, 401, "a bearer token is required"),
        ("wrong-token-0123456789abcdef", {}, 401, "unknown token"),
        (VIEW_TOKEN, {}, 403, "token 'view' is a viewer token: acting needs an operator token"),
        (DEV_TOKEN, {}, 403, "token 'dev' does not cover lille-production"),
        (None, {"X-Forwarded-User": "mallory", "X-Forwarded-Groups": "ops"}, 403, "not a trusted proxy"),
        (OPS_TOKEN, {"Origin": "http://evil.example"}, 403, "cross-origin request from http://evil.example refused"),
        (OPS_TOKEN, {"Content-Type": "text/plain"}, 403, "Content-Type must be application/json"),
    ],
    ids=["no-token", "wrong-token", "viewer-token", "out-of-scope", "untrusted-proxy", "cross-origin", "form-post"],
)
def test_a_refused_request_does_nothing_and_logs_no_token(
    fleet: Fleet, tmp_path: Path, capfd: pytest.CaptureFixture[str], token: str | None, headers: dict[str, str],
    status: int, error: str,
) -> None:  # fmt: skip
    with_tokens(fleet, tmp_path)
    with served(fleet) as s:
        s.controller.cycle()
        audit_before = len(fleet.audit())
        sent = {"Content-Type": "application/json", **headers}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        resp = s.post("/api/v1/environments/lille-production/suspend", b'{"reason": "x"}', sent)
        assert resp.status == status and error in json.loads(resp.body)["error"]
        s.controller.cycle()
        assert json.loads(s.get("/api/v1/environments/lille-production").body)["phase"] == "Synced"
    assert len(fleet.audit()) == audit_before
    with pytest.raises(AssertionError):
        fleet.status_file(LOG_PATH)  # no operation was recorded
    logged = capfd.readouterr()
    for secret in (OPS_TOKEN, VIEW_TOKEN, DEV_TOKEN, "wrong-token-0123456789abcdef"):
        assert secret not in logged.out and secret not in logged.err


def test_a_trusted_proxys_user_in_an_operator_group_may_act(fleet: Fleet, tmp_path: Path) -> None:
    with_tokens(fleet, tmp_path, trustedProxies=["127.0.0.0/8"], proxyRoles={"release-managers": "operator"})
    with served(fleet) as s:
        s.controller.cycle()
        base = {"Content-Type": "application/json", "X-Forwarded-User": "carol@example.org"}
        denied = s.post("/api/v1/environments/lille-dev/sync", b"{}", {**base, "X-Forwarded-Groups": "developers"})
        assert denied.status == 403 and "carol@example.org is not in an operator group" in denied.text
        ok = s.post("/api/v1/environments/lille-dev/sync", b"{}", {**base, "X-Forwarded-Groups": "x, release-managers"})
        assert ok.status == 202 and json.loads(ok.body)["accepted"]["by"] == "proxy:carol@example.org"


def test_bad_requests_are_named(fleet: Fleet, tmp_path: Path) -> None:
    with_tokens(fleet, tmp_path)
    auth = {"Content-Type": "application/json", "Authorization": f"Bearer {OPS_TOKEN}"}
    with served(fleet) as s:
        s.controller.cycle()
        cases = [
            ("/api/v1/environments/nowhere/sync", b"{}", 404, "unknown environment 'nowhere'"),
            ("/api/v1/environments/lille-dev/sync", b'{"application": "nope"}', 404, "'nope' is not deployed"),
            ("/api/v1/environments/lille-dev/sync", b"[1]", 400, "must be a JSON object"),
            ("/api/v1/environments/lille-dev/sync", b"{not json", 400, "must be a JSON object"),
            ("/api/v1/environments/lille-dev/sync", b'{"extra": 1}', 400, 'only "application" and "reason"'),
            ("/api/v1/environments/lille-dev/sync", b'{"reason": 5}', 400, "reason must be a string"),
        ]
        for path, body, status, error in cases:
            resp = s.post(path, body, auth)
            assert resp.status == status and error in json.loads(resp.body)["error"], (path, body, resp.text)
        assert s.get("/api/v1/environments/lille-dev/sync").status == 405


def test_a_suspension_through_one_replica_holds_on_the_other_and_across_a_restart(fleet: Fleet, tmp_path: Path) -> None:
    with_tokens(fleet, tmp_path)
    config = load_config(str(fleet.config))
    shards = StaticShards(0, 2), StaticShards(1, 2)
    owner = next(i for i, shard in enumerate(shards) if shard.owns("lille-dev"))

    def replica(index: int) -> Any:
        controller = build_controller(config.with_overrides(state_dir=str(tmp_path / f"state-{index}")))
        controller.owns, controller.shared = shards[index].owns, True
        controller.restore()
        return controller

    other = replica(owner)
    try:
        other.cycle()
        with served(fleet) as s:  # the replica that does not own lille-dev takes the request
            s.controller.owns, s.controller.shared = shards[1 - owner].owns, True
            s.controller.cycle()
            resp = s.post("/api/v1/environments/lille-dev/suspend", b'{"reason": "hold it"}',
                          {"Content-Type": "application/json", "Authorization": f"Bearer {OPS_TOKEN}"})  # fmt: skip
            assert resp.status == 202
        other.operations.last_poll = float("-inf")  # (it re-reads the branch every 10 s: do not wait for it)
        other.cycle()
        assert fleet.env_status("lille-dev")["phase"] == "Blocked"
        assert "suspended by token:ops" in fleet.env_status("lille-dev")["message"]
    finally:
        other.close()
    restarted = replica(owner)
    try:
        assert ("lille-dev", None) in restarted.gov.suspensions
        fleet.commit({"releases/ref/3.11.yaml": REF_311}, "release ref 3.11")
        fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11", "a change while suspended")
        restarted.cycle()
        assert restarted.states["lille-dev"].phase == "Blocked"
    finally:
        restarted.close()
    assert fleet.env_status("lille-dev")["applications"]["ref"]["live"] == "3.10"
