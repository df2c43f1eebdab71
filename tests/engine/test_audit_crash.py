"""Audit entries survive a crash of the controller at any point and reach the status branch exactly once (issue 14,
finding 4). Real processes: ``reconciler run --once`` as a subprocess, SIGKILLed by a pre-receive hook of the real
bare remote (after the status commit is built, before the push lands) or by a script target right after its first
apply (between the effect and the status commit); then a restart, and every effect on the targets must have exactly
one audit entry on the status branch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from reconciler.core.plan import Phase
from reconciler.status.journal import FILE_NAME, FileJournal
from tests.engine import AGENT, Fleet

KEY = tuple[str, str, str]  # (environment, application, target)


def effects(fleet: Fleet) -> Counter[KEY]:
    """What the targets hold, read from the targets themselves: every local unit deployed, every agent install."""
    found: Counter[KEY] = Counter()
    for path in fleet.targets.glob("k8s-*/*/ref/api/deployment.yaml"):
        found[(path.parents[2].name, "ref", path.parents[3].name)] += 1
    for log in fleet.targets.glob("aix-*/deploy.log"):
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("verb") == "apply":
                found[(entry["environment"], entry["application"], log.parent.name)] += 1
    return found


def audited(fleet: Fleet) -> Counter[KEY]:
    return Counter((e["environment"], e["application"], e["target"]) for e in fleet.audit())


def run_killed(fleet: Fleet, pidfile: Path) -> None:
    """``reconciler run --once`` in its own session, its pid in ``pidfile`` before it starts; returns once it is
    dead, and checks that it was killed (SIGKILL), not that it exited."""
    argv = [sys.executable, "-m", "reconciler", "run", "--config", str(fleet.config), "--once"]
    script = 'echo $$ > "$0"; exec "$@"'  # the pid is written before the controller can reach any target
    proc = subprocess.Popen(["/bin/sh", "-c", script, str(pidfile), *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a git child left behind by the killed controller
    assert proc.returncode == -signal.SIGKILL, err.decode()


def test_sigkill_after_the_status_commit_was_built_loses_no_audit_entry(fleet: Fleet) -> None:
    kill_at_status_push(fleet)
    marker = fleet.root / "killed-once"
    assert marker.exists() and fleet.status_head() is None  # killed at its push: nothing reached the remote
    done = effects(fleet)
    assert sum(done.values()) == 7  # ref in 5 environments, famille in the 2 dev ones: all applied before the push

    assert fleet.once() == 0  # the restart sees everything in place: nothing to apply, but the audit is not lost
    assert audited(fleet) == done
    assert {e["result"] for e in fleet.audit()} == {"succeeded"}
    assert len({e["id"] for e in fleet.audit()}) == 7
    assert fleet.once() == 0  # and nothing is pushed twice
    assert audited(fleet) == done


def test_sigkill_between_an_effect_and_the_status_commit_loses_no_audit_entry(fleet: Fleet) -> None:
    pidfile, marker = fleet.root / "controller.pid", fleet.root / "killed-once"
    wrapper = fleet.root / "killing-agent"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        '"""The example agent; after its first apply it SIGKILLs the controller that ran it (once)."""\n'
        "import os, signal, subprocess, sys\n"
        f"done = subprocess.run([sys.executable, {str(AGENT)!r}, *sys.argv[1:]])\n"
        f"if 'apply' in sys.argv and not os.path.exists({str(marker)!r}):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        f"    os.kill(int(open({str(pidfile)!r}).read()), signal.SIGKILL)\n"
        "sys.exit(done.returncode)\n"
    )
    wrapper.chmod(0o755)
    fleet.write_config(
        concurrency=1,  # one environment at a time: when the controller dies, only the killing apply is in flight
        targetPatterns=[
            {"match": "aix-*", "driver": "script", "timeout": "20s",
             "command": [str(wrapper), "--root", str(fleet.targets / "${target}")]},
            {"match": "*", "driver": "local", "path": str(fleet.targets / "${target}")},
        ],
    )  # fmt: skip
    run_killed(fleet, pidfile)
    assert marker.exists() and fleet.status_head() is None
    killed_at = [k for k in effects(fleet) if k[1] == "famille"]
    assert len(killed_at) == 1  # the controller died right after the first install

    assert fleet.once() == 0
    done = effects(fleet)
    assert sum(done.values()) == 7 and max(done.values()) == 1
    assert audited(fleet) == done  # every effect, before the crash and after it, has exactly one entry
    results = {(e["environment"], e["application"], e["target"]): e["result"] for e in fleet.audit()}
    assert results.pop(killed_at[0]) == "interrupted"  # begun, never known to have ended: recorded as such
    assert set(results.values()) == {"succeeded"}
    assert fleet.once() == 0
    assert audited(fleet) == done


def kill_at_status_push(fleet: Fleet) -> None:
    """The first ``run --once`` applies everything and is SIGKILLed by the remote when it pushes its status."""
    pidfile, marker = fleet.root / "controller.pid", fleet.root / "killed-once"
    hook = fleet.upstream.bare / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        "while read old new ref; do\n"
        f'  if [ "$ref" = refs/heads/reconciler-status ] && [ ! -e "{marker}" ]; then\n'
        f'    touch "{marker}"; kill -9 "$(cat "{pidfile}")"; exit 1\n'
        "  fi\n"
        "done\n"
    )
    hook.chmod(0o755)
    run_killed(fleet, pidfile)


def test_a_crash_after_the_push_but_before_the_journal_forgot_pushes_nothing_twice(fleet: Fleet) -> None:
    kill_at_status_push(fleet)
    journal = fleet.root / "state" / FILE_NAME
    before_push = journal.read_bytes()  # what the journal held when the next run pushed
    assert fleet.once() == 0
    assert sum(audited(fleet).values()) == 7
    assert journal.read_bytes() == b""  # pushed: forgotten
    journal.write_bytes(before_push)  # as if that run had died between its push and the journal's rewrite
    assert fleet.once() == 0
    assert audited(fleet) == effects(fleet)  # the status branch already had them (by id): not pushed again
    assert journal.read_bytes() == b""


def test_an_effect_that_cannot_be_journalled_is_not_made(fleet: Fleet) -> None:
    from reconciler.commands.common import load_config
    from reconciler.commands.run import build_controller

    controller = build_controller(load_config(str(fleet.config)))
    try:
        assert isinstance(controller.journal, FileJournal)
        full = os.open("/dev/full", os.O_WRONLY)  # every write of the journal fails as on a full disk
        os.dup2(full, controller.journal._fd)
        os.close(full)
        report = controller.cycle()
    finally:
        controller.close()
    assert {o.phase for o in report.outcomes.values()} == {Phase.FAILED}
    message = fleet.env_status("lille-dev")["message"]
    assert message.startswith("nothing applied: ") and "No space left on device" in message
    assert sum(effects(fleet).values()) == 0 and fleet.audit() == []
    assert fleet.once() == 0  # the disk has room again: applied, each once
    assert sum(audited(fleet).values()) == 7 and audited(fleet) == effects(fleet)


def test_an_unusable_journal_stops_the_controller_with_a_clear_error(fleet: Fleet) -> None:
    (fleet.root / "state" / FILE_NAME).mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "reconciler", "run", "--config", str(fleet.config), "--once"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert f"{fleet.root / 'state' / FILE_NAME}: cannot read the audit journal: Is a directory" in done.stderr
    assert "Traceback" not in done.stderr
    assert not fleet.targets.exists()
