"""The ssh driver against a real sshd on loopback: the aix-agent end to end, host keys, connection failures."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.drivers.base import ApplyResult, Health, HealthReport
from reconciler.drivers.script import SshDriver
from tests.drivers import artifact, make_unit
from tests.support.sshd import SshServer, free_port, keygen

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "examples" / "targets" / "aix-agent"
SECRET = "s3cr3t-controller-value"
V1 = {"batch": artifact("RAPBANCA", "1.0.0")}


def ssh_driver(server: SshServer, command: list[str], **overrides: object) -> SshDriver:
    settings: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "identity_file": server.identity_file,
        "known_hosts": server.known_hosts,
        "timeout": 30,
    }
    settings.update(overrides)
    return SshDriver("aix-remote", command=command, **settings)  # type: ignore[arg-type]


def test_the_agent_over_ssh_end_to_end(sshd_server: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "aix root; touch PWNED $(touch PWNED) `touch PWNED`"  # operator-configured, quoted for ssh
    driver = ssh_driver(sshd_server, [sys.executable, str(AGENT), "--root", str(root)])
    unit = make_unit(artifacts=V1, application="-rf")
    assert driver.observe("recette", "-rf") is None

    assert driver.apply(unit) == ApplyResult(True, "install 1.0.0: 1 package(s) written, 0 removed")
    assert (root / "recette" / "-rf" / "batch" / "rapbanca-1.0.0.tar.gz").is_file()
    live = driver.observe("recette", "-rf")
    assert live is not None and live.in_sync_with == unit.fingerprint and live.target == "aix-remote"
    assert driver.apply(unit) == ApplyResult(False, "1.0.0 already installed")
    assert driver.health("recette", "-rf") == HealthReport(Health.HEALTHY, "1.0.0 installed")
    assert driver.owned_applications("recette") == ["-rf"]

    [same] = driver.contents(unit)  # reconciler diff: what the agent reports over ssh
    assert same.name == "batch/rapbanca-1.0.0.tar.gz" and same.live == same.desired and "1.0.0" in same.desired
    (root / "recette" / "-rf" / "batch" / "rapbanca-1.0.0.tar.gz").write_text("edited on the host\n")
    drifted = driver.observe("recette", "-rf")
    assert drifted is not None and drifted.drifted == ("batch/rapbanca-1.0.0.tar.gz",)
    [edited] = driver.contents(unit)
    assert edited.live == "edited on the host\n" and edited.desired == same.desired

    assert driver.remove("recette", "-rf") == ApplyResult(True, "removed 1.0.0")
    assert driver.observe("recette", "-rf") is None
    assert [json.loads(line)["verb"] for line in (root / "deploy.log").read_text().splitlines()] == ["apply", "remove"]
    assert not list(tmp_path.rglob("PWNED")) and not (Path.home() / "PWNED").exists()


def test_remote_scripts_get_data_on_stdin_only_and_no_controller_environment(
    sshd_server: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECONCILER_TEST_SECRET", SECRET)
    record = tmp_path / "record.json"
    recorder = tmp_path / "recorder.py"
    recorder.write_text(
        textwrap.dedent(
            """
            import json, os, sys
            with open(sys.argv[1], "w") as fh:
                json.dump({"argv": sys.argv[1:], "stdin": json.load(sys.stdin), "env": dict(os.environ)}, fh)
            print('{"changed": true, "message": "recorded"}')
            """
        )
    )
    driver = ssh_driver(sshd_server, [sys.executable, str(recorder), str(record)])
    evil = "$(touch PWNED); `id` -x"
    unit = make_unit(artifacts=V1, environment=evil, application=evil, parameters={"p": evil})
    assert driver.apply(unit) == ApplyResult(True, "recorded")
    seen = json.loads(record.read_text())
    assert seen["argv"] == [str(record), "apply"]
    assert seen["stdin"] == {**unit.as_json(), "dryRun": False}
    assert not [k for k in seen["env"] if k.startswith("RECONCILER_")]
    assert SECRET not in json.dumps(seen["env"]) and evil not in json.dumps(seen["env"])
    assert not list(tmp_path.rglob("PWNED")) and not (Path.home() / "PWNED").exists()


def test_a_refusal_on_the_host_is_a_permanent_error(sshd_server: SshServer, tmp_path: Path) -> None:
    driver = ssh_driver(sshd_server, [sys.executable, str(AGENT), "--root", str(tmp_path / "root")])
    with pytest.raises(PermanentError, match=r"^ssh target aix-remote: apply refused \(exit 2\): aix-agent: refused"):
        driver.apply(make_unit(artifacts=V1, application=".."))
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("known", ["unknown", "wrong"])
def test_a_host_key_that_does_not_verify_is_refused_and_nothing_runs(
    sshd_server: SshServer,
    tmp_path: Path,
    known: str,
) -> None:
    known_hosts = tmp_path / "known_hosts"
    if known == "unknown":
        known_hosts.write_text("")
    else:  # a key for the right host and port, but not the server's: what a man in the middle looks like
        known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port} {keygen(tmp_path / 'impostor')}\n")
    root = tmp_path / "root"
    driver = ssh_driver(sshd_server, [sys.executable, str(AGENT), "--root", str(root)], known_hosts=known_hosts)
    with pytest.raises(PermanentError) as caught:
        driver.apply(make_unit(artifacts=V1))
    assert str(caught.value) == (
        f"ssh target aix-remote: apply: host key verification failed for {sshd_server.user}@127.0.0.1:"
        f"{sshd_server.port} (checked against {known_hosts}); nothing was run"
    )
    assert not root.exists()
    assert known_hosts.read_text().count("\n") == (0 if known == "unknown" else 1)  # never learns a key


def test_connection_refused_is_a_temporary_error(sshd_server: SshServer, tmp_path: Path) -> None:
    driver = ssh_driver(sshd_server, ["true"], port=free_port())
    with pytest.raises(
        TemporaryError, match=r"^ssh target aix-remote: observe: ssh to .* failed \(exit 255\): .*refused"
    ):
        driver.observe("recette", "shop")


def test_an_unauthorized_key_is_a_temporary_error(sshd_server: SshServer, tmp_path: Path) -> None:
    keygen(tmp_path / "stranger")
    driver = ssh_driver(sshd_server, ["true"], identity_file=tmp_path / "stranger")
    with pytest.raises(TemporaryError, match=r"failed \(exit 255\): .*Permission denied \(publickey\)"):
        driver.health("recette", "shop")


def test_a_hanging_remote_command_times_out(sshd_server: SshServer) -> None:
    driver = ssh_driver(sshd_server, [sys.executable, "-c", "import time; time.sleep(5)"], timeout=1)
    with pytest.raises(TemporaryError, match=r"^ssh target aix-remote: health timed out after 1s$"):
        driver.health("recette", "shop")


def test_ssh_argv_is_strict_and_quotes_every_remote_word() -> None:
    driver = SshDriver(
        "h1",
        host="aix1.example",
        user="deploy",
        command=["/opt/agent/bin/agent", "--root", "/srv/my apps"],
        port=2222,
        identity_file=Path("/etc/reconciler/id_ed25519"),
        known_hosts=Path("/etc/reconciler/known_hosts"),
        ssh_options=["-o", "StrictHostKeyChecking=no"],
    )
    assert driver.argv("apply") == [
        "ssh",
        *("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"),
        *("-o", "UserKnownHostsFile=/etc/reconciler/known_hosts", "-o", "ConnectTimeout=10"),
        *("-i", "/etc/reconciler/id_ed25519", "-o", "IdentitiesOnly=yes"),
        *("-o", "StrictHostKeyChecking=no"),  # after ours: ssh keeps the first value, so this cannot weaken it
        *("-p", "2222", "-l", "deploy", "aix1.example", "--"),
        *("/opt/agent/bin/agent", "--root", "'/srv/my apps'", "apply"),
    ]
    assert driver.kind == "ssh" and driver.target == "h1"


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("host", "-oProxyCommand=touch PWNED", "host"),
        ("host", "", "host"),
        ("user", "root x", "user"),
        ("known_hosts", Path("/etc/known hosts"), "knownHosts"),
        ("known_hosts", None, "knownHosts"),
        ("port", 0, "port 0 is out of range"),
        ("command", [], "command must be"),
    ],
)
def test_unsafe_connection_settings_are_refused(field: str, value: object, text: str) -> None:
    settings: dict[str, object] = {
        "host": "aix1",
        "user": "deploy",
        "command": ["agent"],
        "known_hosts": Path("/etc/reconciler/known_hosts"),
        field: value,
    }
    with pytest.raises(PermanentError, match=f"ssh target h1: {text}|target h1: {text}"):
        SshDriver("h1", **settings)  # type: ignore[arg-type]
