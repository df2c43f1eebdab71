"""Finding 2 of issue 14 for script targets: the parameters a ``script`` agent receives are part of the desired state.

``apply`` hands the agent the environment's parameters (``DesiredUnit.as_json``), but the rendered fingerprint
covers only files, artifacts and the version: a changed parameter (an install directory, a host setting) left
the unit "Synced" and never reached the host. Run through the engine with a real agent process.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from reconciler.core.config import ControllerConfig
from reconciler.core.loader import load_repo
from reconciler.core.tree import MemoryTree
from reconciler.drivers.script import ScriptDriver
from reconciler.engine.reconcile import EnvOutcome, Job, reconcile_environment
from reconciler.engine.targets import DriverPool

# a minimal agent: keeps what it applied (with the parameters it was given) in a JSON file
AGENT = """
    import json, sys
    state_file, verb = sys.argv[1], sys.argv[-1]
    req = json.load(sys.stdin)
    try:
        state = json.load(open(state_file))
    except FileNotFoundError:
        state = {}
    key = req["environment"] + "/" + req["application"]
    reply = None
    if verb == "apply":
        state[key] = {k: req[k] for k in ("version", "fingerprint", "parameters")}
        reply = {"changed": True, "message": "installed"}
    elif verb == "observe":
        got = state.get(key)
        reply = {"version": got["version"], "fingerprint": got["fingerprint"], "drifted": []} if got else None
    elif verb == "list":
        reply = {"applications": [k.split("/", 1)[1] for k in state if k.startswith(req["environment"] + "/")]}
    elif verb == "health":
        reply = {"status": "Healthy", "message": ""}
    elif verb == "remove":
        reply = {"changed": state.pop(key, None) is not None, "message": "removed"}
    json.dump(state, open(state_file, "w"))
    print(json.dumps(reply))
"""


def repo_files(install_dir: str) -> dict[str, bytes]:
    return {
        "applications/paie/application.yaml": b"apiVersion: reconciler.io/v1\nkind: Application\nmetadata: {name: paie}\n"
        b"spec:\n  owner: t\n  components:\n    - {name: batch, target: aix, artifact: {name: PAIE, type: cobol}}\n",
        "releases/paie/1.0.yaml": b"apiVersion: reconciler.io/v1\nkind: Release\nmetadata: {name: paie-1.0}\n"
        b"spec: {application: paie, version: '1.0', components: {batch: {artifact: paie-1.0.tar.gz}}}\n",
        "stages/dev.yaml": b"apiVersion: reconciler.io/v1\nkind: Stage\nmetadata: {name: dev}\n"
        b"spec:\n  releases: {paie: '1.0'}\n",
        "environments/env.yaml": b"apiVersion: reconciler.io/v1\nkind: Environment\nmetadata: {name: lille}\n"
        b"spec: {stage: dev, targets: {aix: aix-lille}, parameters: {installDir: " + install_dir.encode() + b"}}\n",
    }


def test_a_changed_parameter_reaches_the_script_target(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT))
    state = tmp_path / "state.json"
    driver = ScriptDriver("aix-lille", [sys.executable, str(tmp_path / "agent.py"), str(state)], timeout=30)
    config = ControllerConfig(
        path="/etc/reconciler.yaml", source_url="unused", patterns=({"match": "*", "driver": "script"},)
    )
    pool = DriverPool(config, factory=lambda target: driver)

    def run(install_dir: str, revision: str) -> EnvOutcome:
        tree = MemoryTree(repo_files(install_dir))
        repo = load_repo(tree).repo
        assert repo is not None
        return reconcile_environment(Job(env=repo.environments["lille"], repo=repo, tree=tree, revision=revision), pool)

    first = run("/srv/paie", "r1")
    assert first.phase == "Synced" and [e["action"] for e in first.audit] == ["create"], first.message
    changed = run("/opt/paie", "r2")  # only the parameter changed
    assert [e["action"] for e in changed.audit] == ["update"], changed.message
    assert json.loads(state.read_text())["lille/paie"]["parameters"] == {"installDir": "/opt/paie"}
    again = run("/opt/paie", "r3")
    assert again.phase == "Synced" and not again.audit, again.message
