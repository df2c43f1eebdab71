"""The script driver with real subprocesses: the contract (argv, stdin, env, replies) and every way it can fail."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.core.problems import PermanentError, TemporaryError
from reconciler.drivers.base import ApplyResult, Health, HealthReport
from reconciler.drivers.script import ScriptDriver
from tests.drivers import artifact, make_unit, wait_until

SECRET = "s3cr3t-controller-value"

V1 = {"batch": artifact("RAPBANCA", "1.0.0"), "report": artifact("RAPEDIT", "1.0.0")}


def script(tmp_path: Path, body: str, name: str = "target.py") -> list[str]:
    """A target script in ``tmp_path``, run by this test's Python (the contract does not care about the language)."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


# -- data is inert, the environment is clean -------------------------------------------------------------------
RECORDER = """
    import json, os, sys
    record, verb = sys.argv[1], sys.argv[-1]
    with open(record, "w") as fh:
        json.dump({"argv": sys.argv[1:], "stdin": json.load(sys.stdin), "env": dict(os.environ)}, fh)
    replies = {"apply": {"changed": True, "message": "ok"}, "remove": {"changed": False, "message": "absent"},
               "observe": None, "health": {"status": "Unknown", "message": "?"}, "list": {"applications": ["b", "a"]}}
    print(json.dumps(replies[verb]))
"""
EVIL = ["; touch PWNED", "$(touch PWNED)", "`touch PWNED`", "-rf", "--help", "a b  c\\", "|| touch PWNED &", "'\""]


@pytest.mark.parametrize("evil", EVIL)
def test_shell_metacharacters_and_leading_dashes_reach_the_script_as_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evil: str
) -> None:
    monkeypatch.chdir(tmp_path)
    record = tmp_path / "record.json"
    command = [*script(tmp_path, RECORDER), str(record)]
    driver = ScriptDriver("legacy", command, env={"OPERATOR_SETTING": "x"})
    unit = make_unit(artifacts=V1, environment=evil, application=evil, parameters={"p": evil, evil: "v"})
    assert driver.apply(unit) == ApplyResult(True, "ok")
    seen = json.loads(record.read_text())
    assert seen["argv"] == [str(record), "apply"]
    assert seen["stdin"] == {**unit.as_json(), "dryRun": False}
    assert seen["env"] == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "OPERATOR_SETTING": "x",
        "RECONCILER_VERB": "apply",
        "RECONCILER_ENVIRONMENT": evil,
        "RECONCILER_APPLICATION": evil,
        "RECONCILER_TARGET": "legacy",
        "RECONCILER_DRY_RUN": "0",
    }
    assert driver.remove(evil, evil, dry_run=True) == ApplyResult(False, "absent")
    seen = json.loads(record.read_text())
    assert seen["stdin"] == {"environment": evil, "application": evil, "target": "legacy", "dryRun": True}
    assert seen["env"]["RECONCILER_DRY_RUN"] == "1" and seen["argv"][-1] == "remove"
    assert driver.observe(evil, evil, check_drift=False) is None
    assert json.loads(record.read_text())["stdin"]["checkDrift"] is False
    assert driver.health(evil, evil) == HealthReport(Health.UNKNOWN, "?")
    assert driver.owned_applications(evil) == ["a", "b"]
    assert json.loads(record.read_text())["stdin"] == {
        "environment": evil,
        "application": "",
        "target": "legacy",
        "dryRun": False,
    }
    assert not list(tmp_path.rglob("PWNED")) and not Path("/PWNED").exists()


def test_the_controller_environment_is_not_inherited_and_secrets_stay_out_of_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_TEST_SECRET", SECRET)
    leak = script(
        tmp_path,
        """
        import os, sys
        print("environment:", dict(os.environ), file=sys.stderr)
        print("token is", os.environ.get("API_TOKEN"), file=sys.stderr)
        print("stdout token", os.environ.get("API_TOKEN"))
        sys.exit(int(sys.argv[-2]))
        """,
    )
    for code, error in ((1, TemporaryError), (2, PermanentError), (0, PermanentError)):
        driver = ScriptDriver("legacy", [*leak, str(code)], env={"API_TOKEN": "operator-token-42"})
        with pytest.raises(error) as caught:
            driver.apply(make_unit(artifacts=V1))
        message = str(caught.value)
        assert SECRET not in message and "RECONCILER_TEST_SECRET" not in message
        assert "operator-token-42" not in message and "***" in message


# -- failures ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "error", "text"),
    [
        (1, TemporaryError, "failed (exit 1)"),
        (3, TemporaryError, "failed (exit 3)"),
        (2, PermanentError, "refused (exit 2)"),
    ],
)
def test_exit_codes(tmp_path: Path, code: int, error: type[Exception], text: str) -> None:
    command = script(
        tmp_path, f"import sys; print('db \\x1b[31mlocked\\x07\\nretry later', file=sys.stderr); sys.exit({code})"
    )
    with pytest.raises(error) as caught:
        ScriptDriver("legacy", command).apply(make_unit(artifacts=V1))
    assert str(caught.value) == f"script target legacy: apply {text}: db  [31mlocked retry later"


def test_a_script_killed_by_a_signal_is_a_temporary_error(tmp_path: Path) -> None:
    command = script(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(TemporaryError, match=r"^script target legacy: health was killed by SIGKILL$"):
        ScriptDriver("legacy", command).health("recette", "shop")


def test_a_missing_executable_is_a_permanent_error(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"script target legacy: observe cannot run .*/nope: No such file"):
        ScriptDriver("legacy", [str(tmp_path / "nope")]).observe("recette", "shop")
    with pytest.raises(PermanentError, match="command must be a non-empty list"):
        ScriptDriver("legacy", [])


def test_control_characters_in_names_are_refused_before_running(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    driver = ScriptDriver("legacy", [*script(tmp_path, RECORDER), str(record)])
    with pytest.raises(PermanentError, match="environment contains control characters"):
        driver.observe("re\0cette", "shop")
    with pytest.raises(PermanentError, match="application contains control characters"):
        driver.apply(make_unit(artifacts=V1, application="sh\nop"))
    assert not record.exists()


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return True


def test_a_hanging_script_is_killed_with_its_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    command = script(
        tmp_path,
        f"""
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "1000"])
        with open({str(pid_file)!r} + ".tmp", "w") as fh:
            fh.write(str(child.pid))
        os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
        time.sleep(1000)
        """,
    )
    started = time.monotonic()
    with pytest.raises(TemporaryError, match=r"^script target legacy: apply timed out after 1.5s$"):
        ScriptDriver("legacy", command, timeout=1.5).apply(make_unit(artifacts=V1))
    assert time.monotonic() - started < 10
    grandchild = int(pid_file.read_text())
    wait_until(lambda: pid_gone(grandchild), timeout=10, what=f"grandchild {grandchild} to die")


def test_a_background_child_holding_stdout_open_ends_in_a_timeout_not_a_hang(tmp_path: Path) -> None:
    command = script(tmp_path, "import subprocess; subprocess.Popen(['sleep', '1000']); print('{}')")
    with pytest.raises(TemporaryError, match="observe timed out after 1s"):
        ScriptDriver("legacy", command, timeout=1).observe("recette", "shop")


@pytest.mark.parametrize(
    ("stdout", "shown"),
    [
        ("Traceback (most recent call last):\\n  oops", "Traceback (most recent call last):   oops"),
        ("", "(nothing)"),
        ("\\x1b[2J{partial", "[2J{partial"),
        ("x" * 5000, "x" * 200 + "..."),
    ],
)
def test_garbage_on_stdout_is_a_permanent_error_with_a_short_clean_excerpt(
    tmp_path: Path, stdout: str, shown: str
) -> None:
    command = script(tmp_path, f"import sys; sys.stdout.write('{stdout}')")
    with pytest.raises(PermanentError) as caught:
        ScriptDriver("legacy", command).apply(make_unit(artifacts=V1))
    assert str(caught.value) == f"script target legacy: apply printed invalid JSON: {shown}"


@pytest.mark.parametrize(
    ("verb", "reply", "expected"),
    [
        ("apply", {"changed": "yes"}, '{"changed": bool, "message": str}'),
        ("remove", ["changed"], '{"changed": bool, "message": str}'),
        ("health", {"status": "Fine"}, '{"status": "Degraded|Healthy|Missing|Progressing|Unknown", "message": str}'),
        ("observe", {"version": "1"}, '{"version": str, "fingerprint": str, "drifted": [str]}, {} or null'),
        ("observe", {"version": "1", "fingerprint": "f", "drifted": "all"}, "drifted"),
        ("list", {"applications": "shop"}, '{"applications": [str]}'),
        ("show", {"files": [{"name": "a", "live": None}]}, '{"files": [{"name": str, "live": str or null'),
        ("show", {"files": [{"name": 1, "live": "x", "desired": "y"}]}, '"desired": str}]}'),
        ("show", ["a"], "files"),
    ],
)
def test_unexpected_replies_are_permanent_errors(tmp_path: Path, verb: str, reply: object, expected: str) -> None:
    driver = ScriptDriver("legacy", script(tmp_path, f"import json; print(json.dumps({reply!r}))"))
    calls: dict[str, Callable[[], object]] = {
        "apply": lambda: driver.apply(make_unit(artifacts=V1)),
        "remove": lambda: driver.remove("recette", "shop"),
        "health": lambda: driver.health("recette", "shop"),
        "observe": lambda: driver.observe("recette", "shop"),
        "list": lambda: driver.owned_applications("recette"),
        "show": lambda: driver.contents(make_unit(artifacts=V1)),
    }
    with pytest.raises(PermanentError, match=f"script target legacy: {verb} printed an unexpected reply") as caught:
        calls[verb]()
    assert expected in str(caught.value)


def test_show_keeps_lines_and_redacts_the_operators_secrets(tmp_path: Path) -> None:
    """``reconciler diff`` on a script target: the agent's texts keep their lines, lose other control characters
    and never carry a value of the operator's ``env``."""
    reply = {"files": [{"name": "conf/app.ini", "live": f"a=1\nkey={SECRET}\x1b[31m\n", "desired": "a=2\n"},
                       {"name": "new.txt", "live": None, "desired": "x\ty\n"}]}  # fmt: skip
    command = script(tmp_path, f"import json, sys; json.load(sys.stdin); print(json.dumps({reply!r}))")
    driver = ScriptDriver("legacy", command, env={"TOKEN": SECRET})
    first, second = driver.contents(make_unit(artifacts=V1))
    assert (first.name, first.live, first.desired) == ("conf/app.ini", "a=1\nkey=***?[31m\n", "a=2\n")
    assert (second.live, second.desired) == (None, "x\ty\n")


def test_observe_of_an_absent_application(tmp_path: Path) -> None:
    for reply in ("{}", "null"):
        driver = ScriptDriver("legacy", script(tmp_path, f"print('{reply}')"))
        assert driver.observe("recette", "shop") is None


def test_huge_stdout_is_bounded_and_refused(tmp_path: Path) -> None:
    command = script(tmp_path, "import sys\nfor _ in range(160): sys.stdout.write('{' * 65536)")
    with pytest.raises(PermanentError, match=r"^script target legacy: apply printed more than 65536 bytes on stdout$"):
        ScriptDriver("legacy", command).apply(make_unit(artifacts=V1))


def test_huge_stderr_keeps_only_a_short_tail(tmp_path: Path) -> None:
    command = script(tmp_path, "import sys\nsys.stderr.write('noise ' * 2_000_000 + 'THE END')\nsys.exit(1)")
    with pytest.raises(TemporaryError) as caught:
        ScriptDriver("legacy", command, max_output=4096).apply(make_unit(artifacts=V1))
    message = str(caught.value)
    assert message.endswith("noise noise THE END") and len(message) < 2200


def test_big_requests_are_streamed_and_scripts_may_ignore_stdin(tmp_path: Path) -> None:
    unit = make_unit(artifacts={f"c{i:04d}": artifact(f"PKG{i:04d}", "1.0.0") for i in range(3000)})
    assert len(json.dumps(unit.as_json())) > 10 * 65536  # far more than a pipe buffer
    counting = script(
        tmp_path,
        "import json, sys; n = len(json.load(sys.stdin)['components']); print(json.dumps({'changed': True, 'message': str(n)}))",
    )
    assert ScriptDriver("legacy", counting).apply(unit) == ApplyResult(True, "3000")
    deaf = script(tmp_path, "print('{\"changed\": false}')", name="deaf.py")
    assert ScriptDriver("legacy", deaf).apply(unit) == ApplyResult(False, "")
