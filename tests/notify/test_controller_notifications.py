"""Notifications from the controller (issue 19): the operator's sinks hear about finished rollouts and phase changes,
coalesced per stage, after the status commit; a hanging sink delays nothing; a restart does not announce again."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from reconciler.core.operations import Action
from tests.engine import Fleet
from tests.engine.test_governance import controller_at
from tests.notify.test_webhook import SECRET, Receiver

APPLICATION_TEMPLATE = "applications/ref/templates/deployment.yaml"


def test_phase_changes_reach_the_subscribed_sinks_once_per_stage(fleet: Fleet, tmp_path: Path) -> None:
    receiver = Receiver([])
    secret = tmp_path / "hook.secret"
    secret.write_text(SECRET.decode())
    with socket.socket() as hanging:  # a sink that accepts and never answers: holds up nothing, not even the other sink
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(16)
        fleet.write_config(notifications={
            "sinks": {
                "ops": {"type": "webhook", "url": receiver.url, "secret": f"file:{secret}"},
                "stuck": {"type": "webhook", "url": f"http://127.0.0.1:{hanging.getsockname()[1]}/",
                          "secret": f"file:{secret}", "timeout": 30},
            },
            "subscriptions": [{"sink": "ops"}, {"sink": "stuck"},
                              {"sink": "ops", "stages": ["production"], "events": ["environment.recovered"]}],
        })  # fmt: skip
        assert fleet.once() == 0
        wait_for(receiver, 2)  # the first deployment: each stage's rollout finished, once per stage
        assert sorted((e["data"]["stage"], e["data"]["kind"]) for e in receiver.received) == [
            ("dev", "stage.rollout-finished"), ("production", "stage.rollout-finished")]  # fmt: skip
        receiver.received.clear()
        good = (fleet.upstream.work / APPLICATION_TEMPLATE).read_text()
        fleet.commit({APPLICATION_TEMPLATE: (good + "  broken: ${nope}\n").encode()}, "a template error")
        started = time.monotonic()
        assert fleet.once() == 1
        assert time.monotonic() - started < 20  # the stuck sink (30 s timeout) held nothing up
        assert fleet.env_status("lille-dev")["phase"] == "Invalid"  # the status commit was made
        wait_for(receiver, 2)
        texts = sorted(e["data"]["text"] for e in receiver.received)
        assert [t.split(" (")[0] for t in texts] == ["dev: 2 environments Invalid",
                                                      "production: 3 environments Invalid"]  # fmt: skip
        assert "unknown template key ${nope}" in texts[0] and SECRET.decode() not in " ".join(texts)
        receiver.received.clear()
        fleet.commit({APPLICATION_TEMPLATE: good.encode()}, "fixed")
        assert fleet.once() == 0
        wait_for(receiver, 2)
        kinds = sorted((e["data"]["stage"], e["data"]["kind"]) for e in receiver.received)
        # ops once per stage although two of its subscriptions match production's; nothing was applied again
        assert kinds == [("dev", "environment.recovered"), ("production", "environment.recovered")]
    receiver.server.shutdown()


def wait_for(receiver: Receiver, count: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while len(receiver.received) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(receiver.received) == count, [e["data"]["text"] for e in receiver.received]


def test_a_subscription_to_an_unknown_sink_is_a_config_error(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.write_config(notifications={"sinks": {}, "subscriptions": [{"sink": "nobody"}]})
    assert fleet.once() == 1
    err = capsys.readouterr().err
    assert "notifications: unknown sink 'nobody'" in err and str(fleet.config) in err and "Traceback" not in err


def test_teams_hear_about_their_application_and_operators_about_drift_and_suspensions(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    team, ops = Receiver([]), Receiver([])
    secret = tmp_path / "hook.secret"
    secret.write_text(SECRET.decode())
    fleet.edit("applications/famille/application.yaml", "  owner: team-famille",
               "  owner: team-famille\n  notify: [famille-team, nobody]", "famille's team hears about it")  # fmt: skip
    fleet.write_config(notifications={
        "dashboardURL": "https://rc.example",
        "sinks": {"famille-team": {"type": "webhook", "url": team.url, "secret": f"file:{secret}"},
                  "ops": {"type": "webhook", "url": ops.url, "secret": f"file:{secret}"}},
        "subscriptions": [{"sink": "ops", "events": ["environment.drift-repaired", "environment.suspended"]}],
    })  # fmt: skip
    assert fleet.once() == 0
    wait_for(team, 1)  # famille runs in dev only: dev's rollout, naming what it deployed; nothing of production
    (rollout,) = [e["data"] for e in team.received]
    assert (rollout["kind"], rollout["stage"], rollout["link"]) == ("stage.rollout-finished", "dev",
                                                                    "https://rc.example/stages")  # fmt: skip
    assert {a["name"]: a["version"] for a in rollout["applications"]} == {"famille": "2.4.0", "ref": "3.10"}
    assert ops.received == []
    err = capsys.readouterr().err
    assert "notification sink the config does not define" in err and '"sink": "nobody"' in err
    deployed = next(p for p in sorted((fleet.targets / "k8s-nord" / "lille-dev").rglob("*")) if p.is_file()
                    and not p.name.startswith("."))  # fmt: skip
    deployed.write_text("edited by hand\n")
    assert fleet.once() == 0
    wait_for(ops, 1)
    (drift,) = [e["data"] for e in ops.received]
    assert (drift["kind"], drift["environments"], drift["link"]) == (
        "environment.drift-repaired", ["lille-dev"], "https://rc.example/environments/lille-dev")  # fmt: skip
    assert drift["applications"] == [{"name": "ref", "version": "3.10"}]
    assert len(team.received) == 1  # ref's drift is not famille's business
    with controller_at(fleet) as controller:  # a restart: nothing told again
        controller.cycle()
        controller.request(Action.SUSPEND, "rennes-dev", None, "token:alice", "incident 4711")
    wait_for(ops, 2)
    suspended = ops.received[1]["data"]
    assert suspended["kind"] == "environment.suspended" and suspended["environments"] == ["rennes-dev"]
    assert suspended["text"].startswith("dev: 1 environment suspended (rennes-dev); by token:alice: incident 4711 at ")
    assert suspended["text"].count("token:alice") == 1
    team.server.shutdown()
    ops.server.shutdown()


@pytest.mark.parametrize(
    ("section", "said"),
    [
        ({"sinks": {"mail": {"type": "email", "host": "smtp.bank.example", "from": "rc@bank.example"}}}, "'to'"),
        ({"commitStatuses": {"forge": "bitbucket", "repository": "a/b", "token": "env:T"}}, "bitbucket"),
        ({"commitStatuses": {"forge": "github", "repository": "a/b", "token": "ghp_inline"}}, "token"),
    ],
)
def test_a_bad_notifications_section_is_a_config_error_naming_the_file(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], section: dict[str, object], said: str
) -> None:
    fleet.write_config(notifications=section)
    assert fleet.once() == 1
    err = capsys.readouterr().err
    assert str(fleet.config) in err and said in err and "Traceback" not in err
    assert "ghp_inline" not in err  # a token written inline is refused without being shown


def test_an_unresolvable_token_reference_stops_the_start_naming_the_reference(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_FORGE_TOKEN", raising=False)
    fleet.write_config(notifications={"commitStatuses": {"forge": "gitlab", "repository": "a/b",
                                                         "token": "env:NO_SUCH_FORGE_TOKEN"}})  # fmt: skip
    assert fleet.once() != 0
    err = capsys.readouterr().err
    assert "notifications.commitStatuses" in err and "NO_SUCH_FORGE_TOKEN" in err and "Traceback" not in err
