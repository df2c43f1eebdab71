"""The controller end to end on real Git repositories, local targets and the example legacy agent (subprocess)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from tests.drivers import wait_until
from tests.engine import ENVIRONMENTS, NEW_REF_RELEASE, Fleet
from tests.minirepo import minimal_repo
from tests.source import git


def deployed(fleet: Fleet, target: str, env: str, app: str = "ref", component: str = "api") -> Path:
    return fleet.targets / target / env / app / component / "deployment.yaml"


def test_once_reconciles_every_environment_then_makes_no_status_commit(fleet: Fleet) -> None:
    head = fleet.upstream.head()
    assert fleet.once() == 0
    for env in ENVIRONMENTS:
        status = fleet.env_status(env)
        assert status["phase"] == "Synced", status
        assert status["lastAppliedRevision"] == head and status["lastAttemptedRevision"] == head
    assert "namespace: lille-dev" in deployed(fleet, "k8s-nord", "lille-dev").read_text()
    assert (fleet.targets / "aix-lille" / "lille-dev" / "famille" / "installed.json").is_file()
    first = fleet.status_head()
    assert fleet.once() == 0
    assert fleet.status_head() == first  # nothing changed: no status commit


def test_a_release_bump_in_one_stage_changes_exactly_that_stage(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet.once() == 0
    before = {e: fleet.env_status(e) for e in ENVIRONMENTS}
    fleet.commit({"releases/ref/3.11.yaml": NEW_REF_RELEASE}, "add ref 3.11")
    head = fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11", "promote ref 3.11 to dev",
                      GIT_AUTHOR_NAME="Carol Dev", GIT_AUTHOR_EMAIL="carol@example.org")  # fmt: skip
    audit_before, status_before = len(fleet.audit()), fleet.status_head()
    assert fleet.once() == 0
    new = [e for e in fleet.audit()[audit_before:]]
    # the trail grows by new files only (a status commit never rewrites the trail): audit/YYYY-MM/DD/HHMMSS.micros-x.jsonl
    diff = git(
        "diff", "--name-status", f"{status_before}", "reconciler-status", "--", "audit/", cwd=fleet.upstream.bare
    )
    assert [line.split("\t")[0] for line in diff.splitlines()] == ["A"], diff
    assert re.fullmatch(r"A\taudit/\d{4}-\d\d/\d\d/\d{6}\.\d{6}-[0-9a-f]{8}\.jsonl", diff), diff
    assert sorted({e["environment"] for e in new}) == ["lille-dev", "rennes-dev"]
    assert {(e["application"], e["from"], e["to"], e["result"]) for e in new} == {("ref", "3.10", "3.11", "succeeded")}
    assert all(e["revision"] == head and e["author"] == "Carol Dev <carol@example.org>" for e in new)
    for env in ENVIRONMENTS:
        status = fleet.env_status(env)
        if env.endswith("-dev"):
            assert status["applications"]["ref"]["live"] == "3.11" and status["lastAppliedRevision"] == head
        else:
            assert status == before[env]  # untouched: not even rewritten
    capsys.readouterr()
    assert main(["history", "--config", str(fleet.config), "--app", "ref", "--format", "json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert [e["to"] for e in history if e["environment"] == "lille-dev"][-1] == "3.11"
    assert main(["status", "--config", str(fleet.config), "--env", "lille-dev"]) == 0
    out = capsys.readouterr().out
    assert "phase: Synced" in out and "3.11" in out


def test_drift_is_detected_repaired_and_audited(fleet: Fleet) -> None:
    assert fleet.once() == 0
    path = deployed(fleet, "k8s-ouest", "rennes-production")
    original = path.read_text()
    path.write_text(original.replace("version:", "version: hacked"))
    assert fleet.once() == 0
    assert path.read_text() == original
    repairs = [e for e in fleet.audit() if e["trigger"] == "drift"]
    assert [(e["environment"], e["application"], e["result"]) for e in repairs] == [
        ("rennes-production", "ref", "succeeded")
    ]


def test_self_heal_off_reports_drift_without_repairing(fleet: Fleet) -> None:
    fleet.commit({"stages/production.yaml": (fleet.upstream.work / "stages/production.yaml").read_bytes()
                  .replace(b"soak: 24h", b"soak: 24h\n  selfHeal: false")})  # fmt: skip
    assert fleet.once() == 0
    path = deployed(fleet, "k8s-ouest", "rennes-production")
    path.write_text("hand edit\n")
    assert fleet.once() == 1
    assert path.read_text() == "hand edit\n"
    status = fleet.env_status("rennes-production")
    assert status["phase"] == "OutOfSync" and "selfHeal is off" in status["message"]


def test_invalid_head_keeps_the_last_good_revision(fleet: Fleet) -> None:
    assert fleet.once() == 0
    good = fleet.upstream.head()
    files_before = {p: p.read_bytes() for p in fleet.targets.rglob("*") if p.is_file()}
    bad = fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: [3.10", "broken yaml")
    assert fleet.once() == 1
    assert {p: p.read_bytes() for p in fleet.targets.rglob("*") if p.is_file()} == files_before
    status = fleet.env_status("lille-dev")
    assert status["phase"] == "Invalid"
    assert status["lastAppliedRevision"] == good and status["lastAttemptedRevision"] == bad
    assert "stages/dev.yaml:8: invalid YAML" in status["message"] and f"still serving {good[:12]}" in status["message"]
    assert "stages/dev.yaml:8" in fleet.status_file("controller.yaml")
    fixed = fleet.edit("stages/dev.yaml", "ref: [3.10", "ref: 3.10", "fix")
    assert fleet.once() == 0
    assert fleet.env_status("lille-dev")["lastAttemptedRevision"] == fixed


def test_an_invalid_environment_does_not_stop_the_others(fleet: Fleet) -> None:
    assert fleet.once() == 0
    fleet.edit("environments/shared.yaml", "stage: production", "stage: nope")
    fleet.commit({"releases/ref/3.11.yaml": NEW_REF_RELEASE})
    fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11")
    assert fleet.once() == 1
    assert fleet.env_status("shared-production")["phase"] == "Invalid"
    assert "unknown stage 'nope'" in fleet.env_status("shared-production")["message"]
    assert fleet.env_status("lille-dev")["applications"]["ref"]["live"] == "3.11"


def test_remote_unreachable_is_reported_and_nothing_changes(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet.once() == 0
    files_before = {p: p.read_bytes() for p in fleet.targets.rglob("*") if p.is_file()}
    moved = fleet.upstream.bare.with_name("moved.git")
    fleet.upstream.bare.rename(moved)
    capsys.readouterr()
    assert fleet.once() == 1
    out = capsys.readouterr()
    assert "source error" in out.out and "Traceback" not in out.out + out.err
    assert {p: p.read_bytes() for p in fleet.targets.rglob("*") if p.is_file()} == files_before


def test_force_push_is_followed(fleet: Fleet) -> None:
    assert fleet.once() == 0
    first = fleet.upstream.head()
    fleet.commit({"releases/ref/3.11.yaml": NEW_REF_RELEASE})
    fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11")
    assert fleet.once() == 0
    git("reset", "--hard", first, cwd=fleet.upstream.work)
    rewritten = fleet.upstream.commit({"README.md": b"rewritten history\n"}, "rewrite")
    fleet.upstream.push(force=True)
    assert fleet.once() == 0
    status = fleet.env_status("lille-dev")
    assert status["lastAttemptedRevision"] == rewritten and status["applications"]["ref"]["live"] == "3.10"


def _agent_script(fleet: Fleet, body: str) -> Path:
    script = fleet.root / "bad-agent"
    script.write_text(f"#!{sys.executable}\nimport sys, json, time, os\n{body}\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("sys.stderr.write('agent exploded'); sys.exit(1)", "agent exploded"),
        ("time.sleep(120)", "timed out"),
        ("print('<html>not json</html>')", "invalid JSON"),
    ],
    ids=["fails", "hangs", "garbage"],
)
def test_a_broken_script_target_fails_only_its_environment(fleet: Fleet, body: str, fragment: str) -> None:
    script = _agent_script(fleet, body)
    patterns = [
        {"match": "aix-lille", "driver": "script", "timeout": "2s", "command": [str(script)]},
        {"match": "*", "driver": "local", "path": str(fleet.targets / "${target}")},
    ]
    fleet.write_config(targetPatterns=patterns)
    assert fleet.once() == 1
    for env in ("lille-dev", "lille-production"):  # both map the broken host (production to prune from it)
        assert fleet.env_status(env)["phase"] == "Failed"
        assert fragment in fleet.env_status(env)["message"]
    for env in ("rennes-dev", "rennes-production", "shared-production"):
        assert fleet.env_status(env)["phase"] == "Synced", env


def test_failed_environment_backs_off_then_retries(fleet: Fleet) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller

    script = _agent_script(fleet, "sys.exit(1)")
    fleet.write_config(targetPatterns=[
        {"match": "aix-lille", "driver": "script", "command": [str(script)]},
        {"match": "*", "driver": "local", "path": str(fleet.targets / "${target}")},
    ], backoff={"initial": "1h", "max": "2h"})  # fmt: skip
    controller = build_controller(load_config(str(fleet.config)))
    try:
        first = controller.cycle()
        assert first.outcomes["lille-dev"].phase == "Failed"
        second = controller.cycle()
        assert "lille-dev" not in second.outcomes  # backing off: not retried every cycle
        assert "lille-dev" in controller.cycle("manual").outcomes  # a manual trigger retries at once
    finally:
        controller.close()


def test_manifest_values_reach_scripts_as_inert_data(fleet: Fleet) -> None:
    evil = "$(touch /tmp/reconciler-pwned); `id`; -rf --help"
    fleet.edit("environments/branches.yaml", "replicas: 2}", f"replicas: 2, note: {json.dumps(evil)}}}")
    recorder = _agent_script(fleet, (
        "req = json.load(sys.stdin)\n"
        "open(os.environ['RECORD'], 'a').write(json.dumps([sys.argv[1:], req]) + '\\n')\n"
        "replies = {'observe': {}, 'list': {'applications': []}}\n"
        "print(json.dumps(replies.get(sys.argv[1], {'changed': True, 'message': 'ok', 'status': 'Healthy'})))"
    ))  # fmt: skip
    record = fleet.root / "record.jsonl"
    fleet.write_config(targetPatterns=[
        {"match": "aix-*", "driver": "script", "command": [str(recorder)], "env": {"RECORD": str(record)}},
        {"match": "*", "driver": "local", "path": str(fleet.targets / "${target}")},
    ])  # fmt: skip
    fleet.once()
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    applies = [req for argv, req in calls if argv == ["apply"]]
    assert applies and all(req["parameters"]["note"] == evil for req in applies)
    assert all(argv in (["list"], ["observe"], ["apply"], ["health"]) for argv, _ in calls)
    assert not Path("/tmp/reconciler-pwned").exists()


def test_a_secret_in_the_source_url_never_appears(fleet: Fleet, capfd: pytest.CaptureFixture[str]) -> None:
    fleet.write_config(source={"url": "http://deploy:s3cr3t-t0ken@127.0.0.1:9/releases.git", "timeout": "5s"})
    assert fleet.once() == 1
    out = capfd.readouterr()
    assert "s3cr3t-t0ken" not in out.out + out.err
    assert "deploy:***@127.0.0.1" in out.out + out.err


def test_a_concurrent_human_push_to_the_status_branch_survives(fleet: Fleet) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller

    assert fleet.once() == 0
    human = fleet.root / "human"
    git("clone", "-q", "-b", "reconciler-status", str(fleet.upstream.bare), str(human), cwd=fleet.root)
    controller = build_controller(load_config(str(fleet.config)))
    pushed = []

    def human_push() -> None:
        if not pushed:
            (human / "notes.md").write_text("ops note\n")
            git("add", "notes.md", cwd=human)
            git("commit", "-q", "-m", "human note", cwd=human)
            git("push", "-q", "origin", "reconciler-status", cwd=human)
            pushed.append(git("rev-parse", "HEAD", cwd=human))

    try:
        controller.restore()
        assert controller.store is not None
        controller.store.before_push = human_push  # type: ignore[attr-defined]
        fleet.commit({"releases/ref/3.11.yaml": NEW_REF_RELEASE})
        fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11")
        report = controller.cycle()
        assert report.status_commit
    finally:
        controller.close()
    assert fleet.status_file("notes.md") == "ops note"
    assert fleet.env_status("lille-dev")["applications"]["ref"]["live"] == "3.11"
    git("merge-base", "--is-ancestor", pushed[0], "reconciler-status", cwd=fleet.upstream.bare)


@pytest.mark.slow
def test_sigkill_mid_cycle_then_restart_converges(fleet: Fleet) -> None:
    # many environments so the kill lands mid-cycle: a bigger fleet generated from the same shape
    files = dict(minimal_repo())
    branches = "\n".join(f"      - {{branch: b{i:02d}, region: r{i % 3}}}" for i in range(30))
    files["environments/branches.yaml"] = files["environments/branches.yaml"].replace(
        b"      - {branch: lille, region: nord}\n      - {branch: rennes, region: ouest}", branches.encode()
    )
    fleet.commit(files, "thirty branches")
    fleet.write_config(concurrency=2)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "--config", str(fleet.config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # poll until applies are under way
            installed = list(fleet.targets.glob("aix-*/*/famille/installed.json"))
            if len(installed) >= 5:
                break
            assert proc.poll() is None
            time.sleep(0.05)
        else:
            pytest.fail("controller made no progress")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(list(fleet.targets.glob("aix-*/*/famille/installed.json"))) < 60  # it died mid-cycle
    assert fleet.once() == 0
    log_lines = [
        json.loads(line) for log in fleet.targets.glob("aix-*/deploy.log") for line in log.read_text().splitlines()
    ]
    installs = [(e.get("environment"), e.get("application"), e.get("version")) for e in log_lines]
    assert len(installs) == len(set(installs)), "an artifact was installed twice"
    for env_name in ("b00-dev", "b29-dev", "b15-production"):
        assert fleet.env_status(env_name)["phase"] == "Synced"


def test_dry_run_prints_the_plan_and_changes_nothing(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet.once("--dry-run") == 1  # everything would change: nothing is Synced yet
    out = capsys.readouterr().out
    assert "lille-dev:" in out and "create  ref on k8s-nord: - -> 3.10 (not deployed)" in out
    assert not fleet.targets.exists() and fleet.status_head() is None


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_nothing_half_written(fleet: Fleet) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "--config", str(fleet.config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while fleet.status_head() is None:  # poll until the first cycle has written status
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no status written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.stderr is not None and b"controller stopped" in proc.stderr.read()
    leftovers = [p for p in fleet.targets.rglob("*") if ".tmp" in p.name or "pending" in p.name]
    assert not leftovers


def test_status_that_failed_to_push_is_written_by_the_next_cycle(fleet: Fleet) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller
    from reconciler.core.problems import TemporaryError

    fleet.write_config(driftCheckInterval="1h")  # so the second cycle reconciles nothing
    controller = build_controller(load_config(str(fleet.config)))
    assert controller.store is not None
    real = controller.store.write
    attempts: list[int] = []

    def flaky(replace: dict[str, bytes], append: dict[str, bytes], message: str) -> str | None:
        attempts.append(len(replace))
        if len(attempts) == 1:
            raise TemporaryError("pre-receive hook declined")
        return real(replace, append, message)

    controller.store.write = flaky  # type: ignore[method-assign]
    try:
        first = controller.cycle()
        assert first.status_commit is None and fleet.status_head() is None
        second = controller.cycle()
        assert not second.outcomes  # nothing to reconcile again ...
        assert second.status_commit  # ... but the status and audit of the first cycle are pushed now
    finally:
        controller.close()
    assert all(fleet.env_status(env)["phase"] == "Synced" for env in ENVIRONMENTS)
    assert len(fleet.audit()) == 7  # ref in 5 environments, famille in the 2 dev ones


def test_a_drift_check_renders_only_what_drifted_and_new_inputs_render_again(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller
    from reconciler.engine import reconcile as reconcile_module

    controller = build_controller(load_config(str(fleet.config)))
    try:
        assert all(o.phase == "Synced" for o in controller.cycle().outcomes.values())
        rendered: list[tuple[str, str, str]] = []
        real = reconcile_module.render_unit

        def counting(*args: Any) -> Any:
            rendered.append((args[1].name, args[2].name, args[4]))
            return real(*args)

        monkeypatch.setattr(reconcile_module, "render_unit", counting)
        path = deployed(fleet, "k8s-ouest", "rennes-production")
        original = path.read_text()
        path.write_text(original.replace("version:", "version: hacked"))
        controller.last_drift_check = None  # a drift check is due
        report = controller.cycle()
        assert path.read_text() == original  # repaired from a real render, not from the memo's stub
        assert rendered == [("rennes-production", "ref", "k8s-ouest")]
        assert report.outcomes["rennes-production"].drifted == 1
        assert all(o.phase == "Synced" for o in report.outcomes.values())

        # a template change is a new input: every environment that renders it renders again
        fleet.edit("applications/ref/templates/deployment.yaml", "kind: ConfigMap", "kind: ConfigMap\n# v2")
        rendered.clear()
        controller.cycle()
        assert "# v2" in path.read_text()
        assert {(env, app) for env, app, _ in rendered} == {(env, "ref") for env in ENVIRONMENTS}
    finally:
        controller.close()


def test_a_drift_check_of_an_environment_found_in_sync_before_only_observes_it(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller
    from reconciler.engine import reconcile as reconcile_module

    controller = build_controller(load_config(str(fleet.config)))
    try:
        controller.cycle()  # cold: everything applied
        controller.last_drift_check = None
        first = controller.cycle()  # a drift check finds every environment in sync (and remembers it)
        calls: list[str] = []
        real_render = reconcile_module.render_desired
        monkeypatch.setattr(reconcile_module, "render_desired",
                            lambda job, *a: calls.append(job.env.name) or real_render(job, *a))  # fmt: skip
        observed: list[str] = []
        real_observe = reconcile_module.observe_environment
        monkeypatch.setattr(reconcile_module, "observe_environment",
                            lambda d, env, *a: observed.append(env) or real_observe(d, env, *a))  # fmt: skip

        controller.last_drift_check = None
        again = controller.cycle()
        # observed, and rendered only where a target's health is more than what observing shows (the aix agents)
        assert sorted(calls) == ["lille-dev", "rennes-dev"] and sorted(set(observed)) == sorted(ENVIRONMENTS)
        assert {n: (o.phase, o.message, o.applications) for n, o in again.outcomes.items()} == {
            n: (o.phase, o.message, o.applications) for n, o in first.outcomes.items()
        }

        # a hand edit: that environment (only) is reconciled in full and repaired
        calls.clear()
        path = deployed(fleet, "k8s-ouest", "rennes-production")
        original = path.read_text()
        path.write_text(original + "# hand edit\n")
        controller.last_drift_check = None
        repaired = controller.cycle()
        assert path.read_text() == original and repaired.outcomes["rennes-production"].drifted == 1
        assert sorted(calls) == ["lille-dev", "rennes-dev", "rennes-production"]

        # a new revision of an input: the environments it renders in are reconciled in full again
        calls.clear()
        fleet.edit("applications/ref/templates/deployment.yaml", "kind: ConfigMap", "kind: ConfigMap\n# v2")
        controller.last_drift_check = None
        controller.cycle()
        assert "# v2" in path.read_text() and sorted(calls) == sorted(ENVIRONMENTS)
    finally:
        controller.close()


def test_input_keys_and_render_tokens_are_computed_once_per_revision(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller
    from reconciler.engine.revision import Revisions

    computed: list[str] = []
    real = Revisions._compute_input_key
    monkeypatch.setattr(Revisions, "_compute_input_key",
                        lambda self, loaded, env: computed.append(env.name) or real(self, loaded, env))  # fmt: skip
    controller = build_controller(load_config(str(fleet.config)))
    try:
        controller.cycle()
        assert sorted(computed) == sorted(ENVIRONMENTS)
        computed.clear()
        tokens = dict(controller.revisions._render_tokens)  # the render tokens likewise, by (revision, environment)
        controller.last_drift_check = None
        controller.cycle()  # the same head: every key known (and a drift check: every environment's job built)
        assert computed == []
        known = controller.revisions._render_tokens
        assert len(tokens) == len(ENVIRONMENTS) and all(known[k] is v for k, v in tokens.items())
        fleet.commit({"releases/ref/3.11.yaml": NEW_REF_RELEASE}, "add ref 3.11")
        fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.11")
        report = controller.cycle()  # a new revision: every key again, and the dev environments act on theirs
        assert sorted(computed) == sorted(ENVIRONMENTS)
        assert sorted(n for n, o in report.outcomes.items() if o.changed) == ["lille-dev", "rennes-dev"]
        assert {revision for revision, _ in controller.revisions._render_tokens} == {report.revision}
    finally:
        controller.close()


def test_audit_entries_are_taken_from_outcomes_as_environments_finish(fleet: Fleet) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller

    controller = build_controller(load_config(str(fleet.config)))
    try:
        report = controller.cycle()
        dev = report.outcomes["lille-dev"]
        assert dev.audit == () and dev.changes == 2  # the outcome keeps the count; the entries went to the trail
        assert sorted(
            (e["environment"], e["application"]) for e in fleet.audit() if e["environment"] == "lille-dev"
        ) == [
            ("lille-dev", "famille"),
            ("lille-dev", "ref"),
        ]
        recent = next(e for e in controller.snapshot()["environments"] if e["name"] == "lille-dev")["recentAudit"]
        assert [(e["application"], e["result"]) for e in recent] == [("ref", "succeeded"), ("famille", "succeeded")]
        assert controller.pending_audit == []
    finally:
        controller.close()


def test_status_documents_share_equal_application_entries(fleet: Fleet) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller

    controller = build_controller(load_config(str(fleet.config)))
    try:
        controller.cycle()
        entries = [
            (env, app, entry)
            for env, state in controller.states.items()
            for app, entry in ((state.doc or {}).get("applications") or {}).items()
        ]
        by_content: dict[str, set[int]] = {}
        for _, _, entry in entries:
            by_content.setdefault(json.dumps(entry, sort_keys=True), set()).add(id(entry))
        assert len(entries) > len(by_content)  # some environments run the same version of an application
        assert all(len(ids) == 1 for ids in by_content.values())  # kept once per content (a fleet repeats them)
        assert fleet.env_status("lille-dev")["applications"]["ref"]["phase"] == "Synced"
    finally:
        controller.close()


class SlowRef:
    """A driver whose apply of ``ref`` in lille-dev takes 2.5 s: longer than the ``applyTimeout`` of 1 s."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def apply(self, unit: Any, dry_run: bool = False) -> Any:
        if (unit.environment, unit.application) == ("lille-dev", "ref"):
            threading.Event().wait(2.5)  # the slow target itself, not a synchronisation
        return self.inner.apply(unit, dry_run)


@pytest.fixture
def slow_ref(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    from reconciler.engine.targets import DriverPool

    real = DriverPool.get
    monkeypatch.setattr(DriverPool, "get", lambda pool, name: SlowRef(real(pool, name)))
    fleet.write_config(applyTimeout="1s")
    return fleet


def lille_dev_entries(fleet: Fleet) -> list[tuple[str, str, str]]:
    return sorted(
        (e["application"], e["action"], e["result"]) for e in fleet.audit() if e["environment"] == "lille-dev"
    )


def test_what_an_environment_applies_after_its_timeout_reaches_the_audit_trail(slow_ref: Fleet) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller

    controller = build_controller(load_config(str(slow_ref.config)))
    try:
        report = controller.cycle()
        assert report.outcomes["lille-dev"].message.startswith("timed out after 1s; still running")
        assert lille_dev_entries(slow_ref) == []  # still running when the status was committed
        assert controller.running_late() == ["lille-dev"]
        wait_until(lambda: controller.running_late() == [], what="the slow apply to return")
        controller.cycle()
        assert lille_dev_entries(slow_ref) == [("famille", "create", "succeeded"), ("ref", "create", "succeeded")]
        assert ("lille-dev", "ref") in controller.gov.history  # governance learned it too (promotion, soak)
        controller.cycle()
        assert len(lille_dev_entries(slow_ref)) == 2  # taken once
    finally:
        controller.close()


def test_run_once_waits_for_a_timed_out_environment_and_commits_its_audit(slow_ref: Fleet) -> None:
    assert slow_ref.once() == 1  # lille-dev is reported timed out
    assert lille_dev_entries(slow_ref) == [("famille", "create", "succeeded"), ("ref", "create", "succeeded")]
    assert slow_ref.env_status("lille-dev")["phase"] == "Failed"
    assert slow_ref.env_status("rennes-dev")["phase"] == "Synced"


def test_a_reconcile_that_crashes_after_its_timeout_is_logged_and_its_environment_runs_again(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller
    from reconciler.engine import controller as controller_module

    real = controller_module.reconcile_environment
    crashes = [True]

    def crashing_once(job: Any, pool: Any) -> Any:
        if job.env.name == "lille-dev" and crashes:
            crashes.pop()
            threading.Event().wait(2.5)  # past the 1 s timeout, then an internal error
            raise RuntimeError("engine bug")
        return real(job, pool)

    monkeypatch.setattr(controller_module, "reconcile_environment", crashing_once)
    fleet.write_config(applyTimeout="1s")
    controller = build_controller(load_config(str(fleet.config)))
    try:
        assert controller.cycle().outcomes["lille-dev"].message.startswith("timed out")
        wait_until(lambda: controller.running_late() == [], what="the crash")
        report = controller.cycle(trigger="manual")  # (due whatever the backoff of its timed-out attempt)
        logged = capfd.readouterr()
        assert "environment reconcile crashed after its timeout" in logged.out + logged.err
        assert report.outcomes["lille-dev"].phase == "Synced"  # run again, in full
        assert lille_dev_entries(fleet) == [("famille", "create", "succeeded"), ("ref", "create", "succeeded")]
    finally:
        controller.close()


def _controller_at(fleet: Fleet, clock: list[float]):  # type: ignore[no-untyped-def]
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller

    controller = build_controller(load_config(str(fleet.config)))
    controller.clock = lambda: clock[0]
    return controller


def test_self_heal_off_drift_stays_out_of_sync_on_every_retry_and_is_counted(fleet: Fleet) -> None:
    """Finding 6: with selfHeal off, a hand edit showed OutOfSync once, then Degraded on the next attempt (which
    trusted the inventory), and the drifted-applications gauge stayed 0."""
    fleet.commit({"stages/production.yaml": (fleet.upstream.work / "stages/production.yaml").read_bytes()
                  .replace(b"soak: 24h", b"soak: 24h\n  selfHeal: false")})  # fmt: skip
    fleet.write_config(driftCheckInterval="10h")
    clock = [time.time()]
    controller = _controller_at(fleet, clock)
    try:
        controller.cycle()
        deployed(fleet, "k8s-ouest", "rennes-production").write_text("hand edit\n")
        controller.last_drift_check = None  # the drift check finds it
        for _ in range(3):
            report = controller.cycle()
            outcome = report.outcomes["rennes-production"]
            assert outcome.phase == "OutOfSync" and "selfHeal is off" in outcome.message
            assert outcome.drifted == 1
            clock[0] += 3600  # past the backoff: the next cycle retries
    finally:
        controller.close()
    assert deployed(fleet, "k8s-ouest", "rennes-production").read_text() == "hand edit\n"


def test_a_permanent_error_stalls_until_the_inputs_change_or_a_trigger(fleet: Fleet) -> None:
    """Errors decide what happens next: exit 2 (refused) is a PermanentError: not retried on the backoff, nor
    after a restart; a manual trigger or new inputs retry it."""
    script = _agent_script(fleet, "sys.exit(2)")
    fleet.write_config(targetPatterns=[
        {"match": "aix-lille", "driver": "script", "command": [str(script)]},
        {"match": "*", "driver": "local", "path": str(fleet.targets / "${target}")},
    ], backoff={"initial": "1s", "max": "2s"})  # fmt: skip
    clock = [time.time()]
    controller = _controller_at(fleet, clock)
    try:
        first = controller.cycle()
        assert first.outcomes["lille-dev"].phase == "Failed" and first.outcomes["lille-dev"].stalled
        clock[0] += 3600
        assert "lille-dev" not in controller.cycle().outcomes  # stalled: not retried on the backoff
        assert "lille-dev" in controller.cycle("manual").outcomes  # someone asked
    finally:
        controller.close()
    assert fleet.env_status("lille-dev").get("stalled") is True
    clock[0] += 3600
    restarted = _controller_at(fleet, clock)
    try:
        restarted.restore()
        assert "lille-dev" not in restarted.cycle().outcomes  # a restart is not a trigger
        fleet.edit("stages/dev.yaml", "ref: 3.10", "ref: 3.0", "new inputs")
        assert "lille-dev" in restarted.cycle().outcomes
    finally:
        restarted.close()


def test_a_temporary_error_backs_off_at_least_the_delay_it_carries(fleet: Fleet) -> None:
    from reconciler.core.plan import Phase
    from reconciler.engine.controller import CycleReport
    from reconciler.engine.outcome import EnvOutcome

    clock = [1000.0]
    controller = _controller_at(fleet, clock)
    try:
        controller.cycle()
        outcome = EnvOutcome("lille-dev", Phase.FAILED, "429", {}, transient=True, retry_after=900.0)
        report = CycleReport(revision=controller.head, outcomes={"lille-dev": outcome})
        assert controller.good is not None
        controller.sched.record(controller.good, report.outcomes, {}, clock[0], dry_run=False)
        assert controller.states["lille-dev"].retry_at >= 1000.0 + 900.0  # not the 1s initial backoff
    finally:
        controller.close()
