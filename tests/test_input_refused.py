"""Input that used to crash instead of being refused (issue 14, finding 5), as regression tests.

Durations and counts that match the schema but overflow, YAML 1.1 booleans coerced in parameters and labels, and
``history --since/--until`` dates that could not be read. Each is checked through the real entry points
(``reconciler validate``, ``plan``, ``run --once``, ``history``) on real Git repositories and local targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reconciler.cli import main
from reconciler.core.config import parse_config
from reconciler.core.desired import render_unit
from reconciler.core.loader import load_repo
from reconciler.core.problems import InvalidInput
from reconciler.core.tree import MemoryTree
from tests.engine import Fleet
from tests.minirepo import minimal_repo, write_repo
from tests.source import git

PROD = "stages/production.yaml"
FREEZE = "freezes/year-end.yaml"
SHARED = "environments/shared.yaml"
HUGE = "99999999999999999999999s"


def edited(path: str, old: str, new: str) -> dict[str, bytes]:
    files = minimal_repo()
    text = files[path].decode()
    assert old in text, f"test setup: {old!r} not in {path}"
    files[path] = text.replace(old, new, 1).encode()
    return files


def validate(tmp_path: Path, files: dict[str, bytes], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    write_repo(tmp_path / "repo", files)
    capsys.readouterr()
    code = main(["validate", str(tmp_path / "repo")])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


OVERFLOWS = [
    ("soak-days", PROD, "soak: 24h", "soak: 9999999999d", f"{PROD}:7:", "soak"),
    ("soak-seconds", PROD, "soak: 24h", f"soak: {HUGE}", f"{PROD}:7:", "soak"),
    ("soak-11-years", PROD, "soak: 24h", "soak: 4018d", f"{PROD}:7:", "soak"),
    ("freeze-duration", FREEZE, "duration: 1m", "duration: 9999999999d", f"{FREEZE}:10:", "duration"),
    ("max-parallel", PROD, "soak: 24h", "soak: 24h\n  waves: [{name: w, maxParallel: 99999999999999999999}]",
     f"{PROD}:8:", "maxParallel"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "path", "old", "new", "where", "field"), OVERFLOWS, ids=[c[0] for c in OVERFLOWS])
def test_an_overflowing_value_is_refused_by_validate_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, path: str, old: str, new: str, where: str,
    field: str,
) -> None:  # fmt: skip
    code, out = validate(tmp_path, edited(path, old, new), capsys)
    assert code == 1, out
    line = next((x for x in out.splitlines() if x.startswith(where)), None)
    assert line is not None, out
    assert field in line and "maximum" in line, line
    assert "internal error" not in out and "Traceback" not in out


@pytest.mark.parametrize("zone", ["9" * 300, "Europe/" + "x" * 300, "Europe/../../etc", "Mars/Olympus"])
def test_an_impossible_time_zone_is_refused_naming_the_freeze_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], zone: str
) -> None:  # found by the property test: a long name made ZoneInfo raise OSError (File name too long)
    code, out = validate(tmp_path, edited(FREEZE, "timezone: Europe/Paris", f"timezone: '{zone}'"), capsys)
    assert code == 1, out
    assert out.startswith(f"{FREEZE}:") and ("time zone" in out or "timezone" in out), out
    assert len(out.splitlines()[0]) < 300, out  # the value is shortened, not echoed whole
    assert "internal error" not in out and "Traceback" not in out


def test_ten_years_is_still_a_valid_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = validate(tmp_path, edited(PROD, "soak: 24h", "soak: 3652d"), capsys)
    assert code == 0, out


def test_plan_refuses_an_overflowing_soak_instead_of_crashing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = write_repo(tmp_path / "repo", minimal_repo())
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "valid", cwd=repo)
    # production promotes ref 3.0 -> 3.10 (which ran in dev): the promotion check reads the soak
    (repo / PROD).write_text((repo / PROD).read_text().replace("soak: 24h", "soak: 9999999999d").replace("3.0", "3.10"))
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "overflow", cwd=repo)
    capsys.readouterr()
    code = main(["plan", "--repo", str(repo), "--base", "HEAD~1", "--head", "HEAD"])
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 1, out
    assert "internal error" not in out and f"{PROD}:7:" in out, out


def test_run_once_serves_the_last_good_revision_when_the_head_has_an_overflowing_soak(fleet: Fleet) -> None:
    assert fleet.once() == 0
    fleet.edit(PROD, "soak: 24h", "soak: 9999999999d", "overflowing soak")
    fleet.edit(PROD, "ref: 3.0", "ref: 3.10", "promote ref 3.10 to production")
    fleet.once()  # returns (no exception); the invalid head is reported, the last good revision served
    status = fleet.env_status("lille-production")
    assert status["phase"] == "Invalid", status
    assert f"{PROD}:7" in status["message"], status
    assert "internal error" not in json.dumps(status)


CONFIG_OVERFLOWS = [
    ("interval", {"source": {"interval": HUGE}}, "source.interval"),
    ("interval-days", {"source": {"interval": "9999999999d"}}, "source.interval"),
    ("timeout", {"source": {"timeout": HUGE}}, "source.timeout"),
    ("apply-timeout", {"applyTimeout": HUGE}, "applyTimeout"),
    ("drift", {"driftCheckInterval": HUGE}, "driftCheckInterval"),
    ("backoff", {"backoff": {"initial": "1s", "max": HUGE}}, "backoff.max"),
    ("target-timeout", {"targetPatterns": [{"match": "*", "driver": "script", "command": ["/bin/true"],
                                            "timeout": HUGE}]}, "timeout"),
    ("max-repo-size", {"source": {"maxRepoSize": 10**30}}, "maxRepoSize"),
]  # fmt: skip


def _config(tmp_path: Path, extra: dict[str, object]) -> Path:
    config: dict[str, object] = {
        "apiVersion": "reconciler.io/v1",
        "kind": "ControllerConfig",
        "source": {"url": str(tmp_path / "releases.git"), "interval": "30s"},
        "stateDir": str(tmp_path / "state"),
        "targets": {},
        "targetPatterns": [{"match": "*", "driver": "local", "path": str(tmp_path / "t")}],
    }
    for key, value in extra.items():
        old = config.get(key)
        config[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize(("case", "extra", "field"), CONFIG_OVERFLOWS, ids=[c[0] for c in CONFIG_OVERFLOWS])
def test_an_overflowing_config_value_is_an_error_naming_the_config_file(
    tmp_path: Path, case: str, extra: dict[str, object], field: str
) -> None:
    path = _config(tmp_path, extra)
    with pytest.raises(InvalidInput) as info:
        parse_config(str(path), path.read_bytes())
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    assert field in message and "maximum" in message, message


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "localhost", "::1:8080", "127.0.0.1:" + "9" * 5000])
def test_a_bad_listen_address_is_an_error_naming_the_config_file(tmp_path: Path, listen: str) -> None:
    path = _config(tmp_path, {"listen": listen})
    with pytest.raises(InvalidInput) as info:
        parse_config(str(path), path.read_bytes())
    message = str(info.value)
    assert message.startswith(f"{path}:") and "listen" in message and "port 0-65535" in message, message
    assert len(message) < 400, message


def test_run_refuses_an_overflowing_interval_before_starting(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.write_config(source={"url": str(fleet.upstream.bare), "branch": "main", "interval": HUGE})
    capsys.readouterr()
    code = fleet.once()
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code in (1, 2), out
    assert f"{fleet.config}:" in out and "source.interval" in out, out
    assert "internal error" not in out
    assert fleet.status_head() is None  # refused before the first cycle: nothing applied, nothing written


# --- exact text: YAML 1.2 core-schema scalars --------------------------------------------------------------------


def test_parameters_and_labels_keep_the_text_the_user_wrote(tmp_path: Path) -> None:
    files = edited(
        SHARED,
        "parameters: {namespace: shared}",
        "parameters: {namespace: shared, logLevel: no, tls: on, debug: off, confirm: yes, octal: 010, big: 1_000,"
        " time: 1:20, ratio: 1.10}",
    )
    files = {**files, SHARED: files[SHARED].replace(b"labels: {scope: shared}", b"labels: {scope: shared, pci: no}")}
    files["applications/ref/templates/deployment.yaml"] += (
        b"  logLevel: ${params.logLevel}\n  tls: ${params.tls}\n  debug: ${params.debug}\n  confirm: ${params.confirm}\n"
        b"  octal: ${params.octal}\n  big: ${params.big}\n  time: ${params.time}\n  ratio: ${params.ratio}\n"
        b'  pci: "${env.labels.pci}"\n'
    )
    result = load_repo(MemoryTree(files))
    assert result.ok, result.all_problems()
    assert result.repo is not None
    repo = result.repo
    env = repo.environments["shared-production"]
    assert env.labels["pci"] == "no"
    assert env.parameters["logLevel"] == "no" and env.parameters["tls"] == "on"
    app = repo.applications["ref"]
    unit = render_unit(repo, env, app, repo.releases[("ref", "3.0")], "k8s-shared", lambda p: files[p])
    text = unit.components[0].files["deployment.yaml"].decode()
    for expected in ("logLevel: no", "tls: on", "debug: off", "confirm: yes", "octal: 010", "big: 1_000",
                     "time: 1:20", "ratio: 1.10", 'pci: "no"'):  # fmt: skip
        assert f"  {expected}\n" in text, text


def test_labels_written_as_numbers_or_booleans_keep_their_text() -> None:
    files = edited(SHARED, "labels: {scope: shared}", "labels: {scope: shared, tier: 010, generation: 1.10, pci: true}")
    files = {
        **files,
        "applications/ref/application.yaml": files["applications/ref/application.yaml"].replace(
            b"name: ref\n", b"name: ref\n  labels: {tier: 1.0}\n", 1
        ),
    }
    result = load_repo(MemoryTree(files))
    assert result.ok, result.all_problems()
    assert result.repo is not None
    labels = result.repo.environments["shared-production"].labels
    assert labels == {"scope": "shared", "tier": "010", "generation": "1.10", "pci": "true"}
    assert result.repo.applications["ref"].labels == {"tier": "1.0"}


def test_a_yes_where_a_boolean_is_expected_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = validate(tmp_path, edited(PROD, "soak: 24h", "soak: 24h\n  protected: yes"), capsys)
    assert code == 1, out
    assert f"{PROD}:8:" in out and "true or false" in out, out


# --- history --since / --until --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["foo", "2026-13-45", "2026-02-30", "2026-12-03T25:00", ""])
@pytest.mark.parametrize("option", ["--since", "--until"])
def test_history_refuses_an_unreadable_date(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], option: str, bad: str
) -> None:
    assert fleet.once() == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["history", "--config", str(fleet.config), option, bad, "--format", "csv"])
    captured = capsys.readouterr()
    assert info.value.code == 2
    assert captured.out == ""  # no export at all, not an empty one
    assert option in captured.err and repr(bad) in captured.err and "ISO 8601" in captured.err, captured.err


def test_history_compares_instants_not_strings(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet.once() == 0
    entries = fleet.audit()
    assert entries
    first = min(e["time"] for e in entries)  # e.g. 2026-12-03T08:40:34Z
    day = first[:10]

    def count(*args: str) -> int:
        capsys.readouterr()
        assert main(["history", "--config", str(fleet.config), "--format", "json", *args]) == 0
        return len(json.loads(capsys.readouterr().out))

    assert count("--since", day) == len(entries)
    assert count("--until", day) == 0
    # the same instant written with an offset: 'Z' entries are not "before" a '+02:00' string
    hour = int(first[11:13])
    shifted = f"{day}T{(hour + 2) % 24:02d}{first[13:19]}+02:00" if hour < 22 else first
    assert count("--since", shifted) == len(entries)
    assert count("--until", first) == 0


def test_plan_refuses_an_unreadable_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = write_repo(tmp_path / "repo", minimal_repo())
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "valid", cwd=repo)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["plan", "--repo", str(repo), "--base", "HEAD", "--head", "HEAD", "--now", "2026-13-45"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--now" in err and "'2026-13-45'" in err and "internal error" not in err, err


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)//{revision}", "https://forge.example.org/commit/", "ftp://x/{revision}"]
)
def test_a_commit_link_that_is_not_an_http_link_with_revision_is_refused(tmp_path: Path, url: str) -> None:
    path = _config(tmp_path, {"source": {"commitUrl": url}})
    with pytest.raises(InvalidInput) as info:
        parse_config(str(path), path.read_bytes())
    message = str(info.value)
    assert message.startswith(f"{path}:") and "commitUrl" in message, message
    good = _config(tmp_path, {"source": {"commitUrl": "https://github.com/example/releases/commit/{revision}"}})
    assert (
        parse_config(str(good), good.read_bytes()).commit_url == "https://github.com/example/releases/commit/{revision}"
    )
