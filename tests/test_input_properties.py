"""Property tests: generated values in manifest and config files are refused or accepted, never a crash.

Hypothesis writes generated YAML text (durations, numbers, huge ints, strings with odd unicode, YAML 1.1
booleans, dates, deep structures) into one field of the small valid repo of :mod:`tests.minirepo` (or of a
controller config) and feeds it to the loader, ``reconciler validate``, ``reconciler plan`` (base = the valid repo,
head = the generated one, in a real Git repository) and one controller cycle (``reconciler run --once`` on local
and script targets). Whatever the value: no traceback, no "internal error", and every problem names a file of the
repo (or the config file). The CI profile is derandomised and bounded (a few seconds per test); the ``slow`` tests
run the same properties on many more examples.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.cli import main
from reconciler.core.config import parse_config
from reconciler.core.loader import load_repo
from reconciler.core.model import ReleasesRepo
from reconciler.core.policy import Stint, freeze_hold, promotion_hold
from reconciler.core.problems import InvalidInput
from reconciler.core.tree import MemoryTree
from tests.engine import ENVIRONMENTS, Fleet
from tests.minirepo import minimal_repo, write_repo
from tests.source import git

CRASH_MARKS = ("Traceback", "internal error", "OverflowError", "RecursionError")

# --- generated YAML text ---------------------------------------------------------------------------------------------

durations = st.one_of(
    st.from_regex(r"\A([0-9]{1,25}d)?([0-9]{1,25}h)?([0-9]{1,25}m)?([0-9]{1,25}s)?\Z"),
    st.tuples(st.integers(min_value=0, max_value=10**30), st.sampled_from("dhms")).map(lambda t: f"{t[0]}{t[1]}"),
    st.sampled_from(["0s", "3653d", "3654d", "9999999999d", "87660h", "1h30m", "٣d", "24H", "-1d", "9" * 5000 + "d"]),
)
numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**60).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e400", "-1e400", ".inf", "-.inf", ".NaN", "0x1F", "0o17", "010", "1_000", "1:20", "0b101",
                     "-0", "+5", "3.", ".5", "9" * 1200, "0x" + "f" * 900]),
)  # fmt: skip
booleans_as_text = st.sampled_from(
    ["yes", "no", "on", "off", "y", "n", "Yes", "NO", "On", "OFF", "true", "False", "TRUE", "~", "null", "", "=", "<<"]
)
dates = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(["2026-13-45", "2026-02-30", "2026-12-03T25:00:00Z", "0000-01-01", "9999-12-31T23:59:59+14:00",
                     "2026-01-01T00:00:00-23:59", "2026-W01"]),
)  # fmt: skip
odd_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(list("\u202e\u200b\ufeff\u0000\t\x85\u2028 #:{}[],&*!|>'\"%@`-?\\$")),
    ),
    max_size=40,
)
quoted_text = odd_text.map(lambda s: json.dumps(s, ensure_ascii=False))  # a double-quoted YAML scalar
names = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=70)


def _flow(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON is YAML flow style


deep = st.recursive(
    st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=20,
).map(_flow)
very_deep = st.integers(min_value=1, max_value=300).map(lambda n: "[" * n + "]" * n)
scalars = st.one_of(durations, numbers, booleans_as_text, dates, quoted_text, odd_text, names)
values = st.one_of(scalars, deep, very_deep)


# --- where a value goes --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A field of the mini repo: the file, the text to replace and the replacement with ``{v}`` for the value."""

    path: str
    old: str
    new: str
    kind: str = "any"  # which values the field means (KINDS); generic values are drawn too

    def apply(self, files: dict[str, bytes], value: str) -> dict[str, bytes]:
        text = files[self.path].decode()
        assert self.old in text, f"test setup: {self.old!r} not in {self.path}"
        return {**files, self.path: text.replace(self.old, self.new.replace("{v}", value), 1).encode("utf-8")}


SLOTS = [
    Slot("stages/production.yaml", "soak: 24h", "soak: {v}", "duration"),
    Slot("stages/production.yaml", "ref: 3.0", "ref: {v}", "version"),
    Slot(
        "stages/production.yaml",
        "promotesFrom: dev",
        "promotesFrom: dev\n  waves: [{name: w, maxParallel: {v}}]",
        "number",
    ),
    Slot("stages/production.yaml", "promotesFrom: dev", "promotesFrom: dev\n  protected: {v}", "bool"),
    Slot("stages/dev.yaml", "ref: 3.10", "ref: {v}", "version"),
    Slot("releases/ref/3.10.yaml", "version: 3.10", "version: {v}", "version"),
    Slot("releases/ref/3.10.yaml", '"registry.example.org/ref/api:3.10"', "{v}", "text"),
    Slot("freezes/year-end.yaml", "duration: 1m", "duration: {v}", "duration"),
    Slot("freezes/year-end.yaml", '"0 2 29 2 *"', "{v}", "text"),
    Slot("freezes/year-end.yaml", "timezone: Europe/Paris", "timezone: {v}", "text"),
    Slot("freezes/year-end.yaml", 'end: "2026-01-05T08:00:00+01:00"', "end: {v}", "date"),
    Slot("freezes/year-end.yaml", 'start: "2025-12-19T18:00:00+01:00"', "start: {v}", "date"),
    Slot(
        "environments/shared.yaml",
        "parameters: {namespace: shared}",
        "parameters: {namespace: shared, x: {v}}",
        "scalar",
    ),
    Slot("environments/shared.yaml", "parameters: {namespace: shared}", "parameters: {namespace: {v}}", "scalar"),
    Slot("environments/shared.yaml", "labels: {scope: shared}", "labels: {scope: {v}}", "scalar"),
    Slot("environments/shared.yaml", "stage: production", "stage: production\n  allowEmpty: {v}", "bool"),
    Slot("environments/branches.yaml", "{branch: lille, region: nord}", "{branch: {v}, region: nord}", "scalar"),
    Slot("environments/branches.yaml", "replicas: 2", "replicas: {v}", "number"),
    Slot(
        "environments/branches.yaml",
        "stage: [dev, production]",
        "stage: [dev, production]\n      extra: [{v}]",
        "scalar",
    ),
    Slot("applications/ref/application.yaml", "owner: team-ref", "owner: {v}", "text"),
    Slot("applications/famille/application.yaml", "dependsOn: [ref]", "dependsOn: {v}"),
    Slot("applications/ref/application.yaml", "name: ref\n", "name: ref\n  labels: {tier: {v}}\n", "scalar"),
]
BASE = minimal_repo()


def head(slot: Slot, value: str, promote: bool) -> dict[str, bytes]:
    """The repo with ``value`` in ``slot``; with ``promote``, production also moves ref 3.0 -> 3.10, so the
    policies (promotion soak, freezes, waves) are evaluated on the generated values, not only loaded."""
    files = slot.apply(BASE, value)
    prod = files["stages/production.yaml"]
    if promote and b"ref: 3.0\n" in prod:
        files["stages/production.yaml"] = prod.replace(b"ref: 3.0\n", b"ref: 3.10\n", 1)
    return files


KINDS = {
    "duration": durations,
    "number": numbers,
    "bool": booleans_as_text,
    "version": st.one_of(numbers, names, booleans_as_text),
    "date": dates,
    "text": st.one_of(quoted_text, odd_text, names),
    "scalar": scalars,
    "any": values,
}


def heads_in(slots: list[Slot]) -> st.SearchStrategy[dict[str, bytes]]:
    """Generated repos: a slot of ``slots``, a value (of its kind or any), production promoted or not."""
    pairs = st.sampled_from(slots).flatmap(lambda slot: st.tuples(st.just(slot), st.one_of(KINDS[slot.kind], values)))
    promote = st.sampled_from([True, False])  # True first: the simplest examples run the policies too
    return st.builds(lambda pair, promoted: head(*pair, promoted), pairs, promote)


heads = heads_in(SLOTS)


def no_crash(text: str) -> None:
    for mark in CRASH_MARKS:
        assert mark not in text, text


# --- the loader and validate ---------------------------------------------------------------------------------------


# when the policies are asked: now, inside the mini repo's absolute freeze, at its leap-day recurring one
MOMENTS = [datetime.now(UTC), datetime(2025, 12, 25, 12, tzinfo=UTC), datetime(2028, 2, 29, 1, 0, 30, tzinfo=UTC)]


def evaluate_policies(repo: ReleasesRepo) -> None:
    """Every freeze and promotion verdict a plan or a cycle could ask of a loaded repo (pure, cheap): whatever the
    values loaded, a verdict is a hold or nothing, never an exception."""
    for now in MOMENTS:
        # every desired version ran in every environment since an hour ago: the soak is computed for each
        history = {
            (env.name, app): [Stint(version, now - timedelta(hours=1))]
            for env in repo.environments.values()
            for app, version in repo.desired_versions(env).items()
        }
        for env in repo.environments.values():
            for app, version in repo.desired_versions(env).items():
                freeze_hold(repo, env, app, now)
                promotion_hold(repo, env, app, version + ".next", history, now)
                promotion_hold(repo, env, app, version, {}, now)


def check_load_and_validate(files: dict[str, bytes], root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = load_repo(MemoryTree(files))
    for problem in result.all_problems():
        assert problem.path in files, problem
    if result.repo is not None:
        evaluate_policies(result.repo)
    repo = root / "repo"
    write_repo(repo, files)
    capsys.readouterr()
    code = main(["validate", str(repo), "--format", "json"])
    out, err = capsys.readouterr()
    no_crash(out + err)
    assert code == (0 if result.ok else 1), out + err
    report = json.loads(out)
    assert report["valid"] is result.ok
    for problem in report["problems"]:
        assert problem["path"] in files and problem["message"], problem


def _loader_body(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> Callable[..., None]:
    root = tmp_path_factory.mktemp("gen")  # one directory: every example writes the same files over

    def body(files: dict[str, bytes]) -> None:
        check_load_and_validate(files, root, capsys)

    return body


CI = settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))


SLOT_IDS = [f"{i:02d}-{Path(s.path).stem}-{s.kind}" for i, s in enumerate(SLOTS)]


@pytest.mark.parametrize("slot", SLOTS, ids=SLOT_IDS)
def test_generated_manifests_are_refused_or_accepted_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], slot: Slot
) -> None:
    settings(CI, max_examples=10)(given(heads_in([slot]))(_loader_body(tmp_path_factory, capsys)))()


@pytest.mark.slow
def test_generated_manifests_long_run(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    LONG(given(heads)(_loader_body(tmp_path_factory, capsys)))()


# --- plan: base = the valid repo, head = the generated one -----------------------------------------------------------


def _plan_body(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., None]:
    repo = write_repo(tmp_path / "plan", BASE)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "valid base", cwd=repo)
    base = git("rev-parse", "HEAD", cwd=repo)

    def body(files: dict[str, bytes]) -> None:
        git("checkout", "-q", "--detach", base, cwd=repo)
        write_repo(repo, files)
        git("commit", "-q", "--allow-empty", "-am", "generated head", cwd=repo)
        capsys.readouterr()
        code = main(["plan", "--repo", str(repo), "--base", base, "--head", "HEAD", "--format", "json"])
        out, err = capsys.readouterr()
        no_crash(out + err)
        assert code in (0, 1), out + err
        if code and out.startswith("{"):
            data = json.loads(out)
            for problem in data.get("problems", []):
                assert problem["path"] in files, problem

    return body


@pytest.mark.parametrize("slot", SLOTS, ids=SLOT_IDS)
def test_plan_of_a_generated_head_never_crashes(tmp_path: Path, capsys: pytest.CaptureFixture[str], slot: Slot) -> None:
    settings(CI, max_examples=3)(given(heads_in([slot]))(_plan_body(tmp_path, capsys)))()


@pytest.mark.slow
def test_plan_of_a_generated_head_long_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings(LONG, max_examples=300)(given(heads)(_plan_body(tmp_path, capsys)))()


# --- one controller cycle -------------------------------------------------------------------------------------------


def _cycle_body(fleet: Fleet, capfd: pytest.CaptureFixture[str]) -> Callable[..., None]:
    assert fleet.once() == 0

    def body(files: dict[str, bytes]) -> None:
        changed: dict[str, bytes | None] = {p: d for p, d in files.items() if d != BASE[p]}
        fleet.commit(changed, "generated head")
        capfd.readouterr()
        code = fleet.once()
        out, err = capfd.readouterr()
        no_crash(out + err)
        assert code in (0, 1), out + err
        for env in ENVIRONMENTS:
            status = fleet.env_status(env)
            no_crash(json.dumps(status))
            if status["phase"] == "Invalid":
                assert any(path in status["message"] for path in files), status
        fleet.commit(dict(BASE), "back to the valid repo")

    return body


def test_one_controller_cycle_on_a_generated_head_never_crashes(
    fleet: Fleet, capfd: pytest.CaptureFixture[str]
) -> None:
    settings(CI, max_examples=6)(given(heads)(_cycle_body(fleet, capfd)))()


@pytest.mark.slow
def test_controller_cycles_on_generated_heads_long_run(fleet: Fleet, capfd: pytest.CaptureFixture[str]) -> None:
    settings(LONG, max_examples=80)(given(heads)(_cycle_body(fleet, capfd)))()


# --- the controller config -------------------------------------------------------------------------------------------

CONFIG_SLOTS = [
    ("source", "interval"),
    ("source", "timeout"),
    ("source", "maxFileSize"),
    ("source", "maxRepoSize"),
    ("source", "branch"),
    ("status", "branch"),
    ("concurrency",),
    ("applyTimeout",),
    ("driftCheckInterval",),
    ("backoff", "initial"),
    ("backoff", "max"),
    ("listen",),
    ("targetPatterns", 0, "timeout"),
    ("targetPatterns", 0, "qps"),
    ("targetPatterns", 0, "burst"),
    ("targetPatterns", 0, "port"),
    ("targetPatterns", 0, "healthTimeout"),
    ("targetPatterns", 0, "fsync"),
    ("webhooks", "maxBodyBytes"),
]


def config_text(where: tuple[str | int, ...], value: str) -> str:
    marker = "__GENERATED__"
    config: dict[str, Any] = {
        "apiVersion": "reconciler.io/v1",
        "kind": "ControllerConfig",
        "source": {"url": "releases.git", "interval": "30s"},
        "status": {},
        "backoff": {},
        "webhooks": {},
        "targets": {},
        "targetPatterns": [{"match": "*", "driver": "local", "path": "t/${target}"}],
    }
    node: Any = config
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = marker
    if not config["webhooks"]:
        del config["webhooks"]
    return yaml.safe_dump(config, sort_keys=False).replace(f"'{marker}'", value).replace(marker, value)


def _config_body(root: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., None]:
    path = root / "controller.yaml"

    def body(where: tuple[str | int, ...], value: str) -> None:
        path.write_text(config_text(where, value), encoding="utf-8")
        try:
            config = parse_config(str(path), path.read_bytes())
        except InvalidInput as exc:
            assert all(p.path == str(path) for p in exc.problems), exc.problems
            capsys.readouterr()
            code = main(["status", "--config", str(path)])
            out, err = capsys.readouterr()
            assert code == 1 and err.startswith(f"reconciler status: {path}:"), err
            no_crash(out + err)
            return
        from reconciler.engine.targets import build_driver

        target = config.target("k8s-nord")
        assert target is not None
        if target.driver == "local":
            build_driver(target)

    return body


config_cases = st.tuples(st.sampled_from(CONFIG_SLOTS), values)


def test_generated_config_values_are_refused_naming_the_config_or_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _config_body(tmp_path, capsys)
    CI(given(config_cases)(lambda case: body(*case)))()


@pytest.mark.slow
def test_generated_config_values_long_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = _config_body(tmp_path, capsys)
    LONG(given(config_cases)(lambda case: body(*case)))()
