"""The example ``examples/targets/aix-agent`` driven through the script driver: install, drift, prune, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from reconciler.core.problems import PermanentError
from reconciler.drivers.base import ApplyResult, Health, HealthReport
from reconciler.drivers.script import ScriptDriver
from tests.drivers import artifact, make_unit, wait_until

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "examples" / "targets" / "aix-agent"

V1 = {"batch": artifact("RAPBANCA", "1.0.0"), "report": artifact("RAPEDIT", "1.0.0")}
V2 = {"batch": artifact("RAPBANCA", "2.0.0")}


def deploy_log(root: Path) -> list[dict[str, object]]:
    log = root / "deploy.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def agent(tmp_path: Path) -> tuple[ScriptDriver, Path]:
    root = tmp_path / "aix-root"
    return ScriptDriver("aix-1", [str(AGENT), "--root", str(root)], timeout=30), root


def test_agent_apply_observe_health_list_remove(agent: tuple[ScriptDriver, Path]) -> None:
    driver, root = agent
    unit = make_unit(artifacts=V1)
    assert driver.observe("recette", "shop") is None
    assert driver.health("recette", "shop") == HealthReport(Health.MISSING, "not installed")
    assert driver.owned_applications("recette") == []

    result = driver.apply(unit)
    assert result == ApplyResult(True, "install 1.0.0: 2 package(s) written, 0 removed")
    package = root / "recette" / "shop" / "batch" / "rapbanca-1.0.0.tar.gz"
    assert "artifact: rapbanca-1.0.0.tar.gz\nchecksum: sha256:" in package.read_text()
    live = driver.observe("recette", "shop")
    assert live is not None and live.in_sync_with == unit.fingerprint and live.version == "1.0.0"
    assert live.target == "aix-1"
    assert driver.health("recette", "shop") == HealthReport(Health.HEALTHY, "1.0.0 installed")
    assert driver.owned_applications("recette") == ["shop"]
    assert [entry["verb"] for entry in deploy_log(root)] == ["apply"]

    assert driver.remove("recette", "shop") == ApplyResult(True, "removed 1.0.0")
    assert not (root / "recette").exists()
    assert driver.remove("recette", "shop") == ApplyResult(False, "not installed")
    assert [entry["verb"] for entry in deploy_log(root)] == ["apply", "remove"]


def test_agent_reapply_is_a_no_op_without_side_effects(agent: tuple[ScriptDriver, Path]) -> None:
    driver, root = agent
    driver.apply(make_unit(artifacts=V1))
    package = root / "recette" / "shop" / "batch" / "rapbanca-1.0.0.tar.gz"
    before = (package.stat().st_ino, package.stat().st_mtime_ns, files_under(root))
    assert driver.apply(make_unit(artifacts=V1)) == ApplyResult(False, "1.0.0 already installed")
    assert (package.stat().st_ino, package.stat().st_mtime_ns, files_under(root)) == before
    assert len(deploy_log(root)) == 1


def test_agent_update_removes_packages_no_longer_desired(agent: tuple[ScriptDriver, Path]) -> None:
    driver, root = agent
    driver.apply(make_unit(artifacts=V1))
    result = driver.apply(make_unit(artifacts=V2, version="2.0.0"))
    assert result == ApplyResult(True, "install 2.0.0: 1 package(s) written, 2 removed")
    assert set(files_under(root / "recette" / "shop")) == {"installed.json", "batch/rapbanca-2.0.0.tar.gz"}


def test_agent_drift_is_detected_and_repaired(agent: tuple[ScriptDriver, Path]) -> None:
    driver, root = agent
    unit = make_unit(artifacts=V1)
    driver.apply(unit)
    package = root / "recette" / "shop" / "report" / "rapedit-1.0.0.tar.gz"
    package.write_text("patched by hand\n")
    live = driver.observe("recette", "shop")
    assert live is not None and live.drifted == ("report/rapedit-1.0.0.tar.gz",) and live.in_sync_with is None
    trusting = driver.observe("recette", "shop", check_drift=False)
    assert trusting is not None and trusting.drifted == ()
    report = driver.health("recette", "shop")
    assert report.status is Health.DEGRADED and "report/rapedit-1.0.0.tar.gz" in report.message

    assert driver.apply(unit).changed
    assert "artifact: rapedit-1.0.0.tar.gz" in package.read_text()
    assert driver.health("recette", "shop").status is Health.HEALTHY
    installed = ["batch/rapbanca-1.0.0.tar.gz", "report/rapedit-1.0.0.tar.gz"]
    assert [entry["files"] for entry in deploy_log(root)] == [installed, ["report/rapedit-1.0.0.tar.gz"]]


def test_agent_dry_run_changes_nothing(agent: tuple[ScriptDriver, Path]) -> None:
    driver, root = agent
    result = driver.apply(make_unit(artifacts=V1), dry_run=True)
    assert result == ApplyResult(True, "would install 1.0.0: 2 package(s) written, 0 removed")
    assert not root.exists()
    driver.apply(make_unit(artifacts=V1))
    before = files_under(root)
    assert driver.apply(make_unit(artifacts=V2, version="2.0.0"), dry_run=True).changed
    assert driver.remove("recette", "shop", dry_run=True) == ApplyResult(True, "would remove 2 package(s)")
    assert files_under(root) == before


def test_agent_remove_leaves_foreign_files(agent: tuple[ScriptDriver, Path]) -> None:
    driver, root = agent
    driver.apply(make_unit(artifacts=V1))
    foreign = root / "recette" / "shop" / "batch" / "local-patch.cfg"
    foreign.write_text("keep me\n")
    assert driver.remove("recette", "shop").changed
    assert foreign.read_text() == "keep me\n"
    assert set(files_under(root)) == {"deploy.log", "recette/shop/batch/local-patch.cfg"}


def test_agent_refuses_unsafe_names_with_exit_2(agent: tuple[ScriptDriver, Path]) -> None:
    driver, root = agent
    with pytest.raises(PermanentError, match=r"^script target aix-1: apply refused \(exit 2\): aix-agent: refused"):
        driver.apply(make_unit(artifacts=V1, application="../escape"))
    assert not root.exists()


def test_agent_killed_mid_apply_converges_without_duplicate_side_effects(tmp_path: Path) -> None:
    root = tmp_path / "aix-root"
    unit = make_unit(artifacts={f"c{i:03d}": artifact(f"PKG{i:03d}", "1.0.0") for i in range(300)})
    request = json.dumps({**unit.as_json(), "dryRun": False}).encode()
    agent = subprocess.Popen([str(AGENT), "--root", str(root), "apply"], stdin=subprocess.PIPE, start_new_session=True)
    assert agent.stdin is not None
    agent.stdin.write(request)
    agent.stdin.close()
    first = root / "recette" / "shop" / "c000" / "pkg000-1.0.0.tar.gz"
    try:
        wait_until(lambda: first.exists() or agent.poll() is not None, timeout=30, what="the first package")
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
    assert agent.returncode == -signal.SIGKILL, "the agent finished before it could be killed"
    assert not (root / "recette" / "shop" / "installed.json").exists()
    assert deploy_log(root) == []

    driver = ScriptDriver("aix-1", [str(AGENT), "--root", str(root)], timeout=60)
    assert driver.apply(unit).changed
    assert driver.apply(unit).changed is False
    log = deploy_log(root)
    assert [(entry["verb"], entry["fingerprint"]) for entry in log] == [("apply", unit.fingerprint)]
    assert len(list((root / "recette" / "shop").glob("c*/*.tar.gz"))) == 300
    live = driver.observe("recette", "shop")
    assert live is not None and live.in_sync_with == unit.fingerprint


@pytest.mark.parametrize("evil", ["$(touch PWNED)", "-rf", "; touch PWNED", "--root"])
def test_agent_installs_odd_names_literally(
    agent: tuple[ScriptDriver, Path], monkeypatch: pytest.MonkeyPatch, evil: str
) -> None:
    driver, root = agent
    monkeypatch.chdir(root.parent)
    unit = make_unit(artifacts={evil: artifact("RAPBANCA", "1.0.0")}, environment=evil, application=evil)
    assert driver.apply(unit).changed
    assert (root / evil / evil / evil / "rapbanca-1.0.0.tar.gz").is_file()
    assert driver.owned_applications(evil) == [evil]
    assert driver.remove(evil, evil).changed
    assert not list(root.parent.rglob("PWNED"))


def test_agent_refuses_a_corrupt_record_and_bad_requests(agent: tuple[ScriptDriver, Path]) -> None:
    driver, root = agent
    driver.apply(make_unit(artifacts=V1))
    (root / "recette" / "shop" / "installed.json").write_text("{oops")
    with pytest.raises(
        PermanentError, match=r"observe refused \(exit 2\): aix-agent: refused: installed.json .* corrupt"
    ):
        driver.observe("recette", "shop")
    with pytest.raises(PermanentError, match="corrupt"):
        driver.remove("recette", "shop")
    assert (root / "recette" / "shop" / "batch" / "rapbanca-1.0.0.tar.gz").exists()
    for argv, stdin in (
        ([str(AGENT), "--root", str(root), "bogus"], b"{}"),
        ([str(AGENT), "--root", str(root), "apply"], b"[1]"),
    ):
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=30)
        assert done.returncode == 2 and done.stdout == b"", done.stderr
