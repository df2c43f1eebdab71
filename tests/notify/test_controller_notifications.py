"""Notifications from the controller (issue 19, first part): the operator's sinks hear about phase changes,
coalesced per stage, after the status commit; a hanging sink delays nothing; a restart does not announce again."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.engine import Fleet
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
        assert receiver.received == []  # a first deployment to Synced is not news
        good = (fleet.upstream.work / APPLICATION_TEMPLATE).read_text()
        fleet.commit({APPLICATION_TEMPLATE: (good + "  broken: ${nope}\n").encode()}, "a template error")
        started = time.monotonic()
        assert fleet.once() == 1
        assert time.monotonic() - started < 20  # the stuck sink (30 s timeout) held nothing up
        assert fleet.env_status("lille-dev")["phase"] == "Invalid"  # the status commit was made
        deadline = time.monotonic() + 10
        while len(receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        texts = sorted(e["data"]["text"] for e in receiver.received)
        assert [t.split(" (")[0] for t in texts] == ["dev: 2 environments Invalid",
                                                      "production: 3 environments Invalid"]  # fmt: skip
        assert "unknown template key ${nope}" in texts[0] and SECRET.decode() not in " ".join(texts)
        receiver.received.clear()
        fleet.commit({APPLICATION_TEMPLATE: good.encode()}, "fixed")
        assert fleet.once() == 0
        deadline = time.monotonic() + 10
        while len(receiver.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        kinds = sorted((e["data"]["stage"], e["data"]["kind"]) for e in receiver.received)
        assert kinds == [
            ("dev", "environment.recovered"),
            ("production", "environment.recovered"),
            ("production", "environment.recovered"),
        ]  # fmt: skip (ops twice: two subscriptions)
    receiver.server.shutdown()


def test_a_subscription_to_an_unknown_sink_is_a_config_error(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.write_config(notifications={"sinks": {}, "subscriptions": [{"sink": "nobody"}]})
    assert fleet.once() == 1
    err = capsys.readouterr().err
    assert "notifications: unknown sink 'nobody'" in err and str(fleet.config) in err and "Traceback" not in err
