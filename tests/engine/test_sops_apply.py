"""SOPS-encrypted templates decrypted at apply time (issue 16), end to end: a real releases repo, the controller as
``reconciler run --once`` runs it, local targets. The target gets the plaintext; the status branch, the audit
trail, the logs, ``plan`` and ``diff`` never do. A tampered value, MAC or wrapped data key, a wrong or a missing
identity each fail that application with an error naming the file, nothing applied, the other applications going
on. The real ``sops`` CLI's files (tests/secrets/fixtures) decrypt the same way."""

from __future__ import annotations

import re
from pathlib import Path

import pyrage
import pytest

from reconciler.cli import main
from tests.engine import Fleet
from tests.source import git
from tests.support.sops_encrypt import encrypt_yaml

PASSWORD = "correct-horse-battery-staple-42"
SECRET = f"""apiVersion: v1
kind: Secret
metadata:
  name: ref-db
  namespace: ns-nord
stringData:
  password: {PASSWORD}
  user: ref_app
"""
FIXTURES = Path(__file__).resolve().parents[1] / "secrets" / "fixtures"
APPLICATION = "applications/ref/application.yaml"
DEPLOYED = ("k8s-nord", "lille-dev", "ref", "api", "secret.yaml")


def identity(tmp_path: Path, name: str = "age.key") -> tuple[Path, str]:
    key = pyrage.x25519.Identity.generate()
    path = tmp_path / name
    path.write_text(f"# public key: {key.to_public()}\n{key}\n")
    return path, str(key.to_public())


def with_secret(fleet: Fleet, text: str) -> str:
    app = (fleet.upstream.work / APPLICATION).read_text()
    if "templates/secret.yaml" not in app:
        app = app.replace(
            "templates: [templates/deployment.yaml]", "templates: [templates/deployment.yaml, templates/secret.yaml]"
        )
    return fleet.commit(
        {APPLICATION: app.encode(), "applications/ref/templates/secret.yaml": text.encode()}, "db secret"
    )


def deployed(fleet: Fleet) -> Path:
    return fleet.targets.joinpath(*DEPLOYED)


def everything_written(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> str:
    """The status branch (every file of every commit), the logs so far, and what plan prints."""
    status = git("log", "-p", "--all", "--format=%H %s", cwd=fleet.upstream.bare)
    logs = capsys.readouterr()
    main(["plan", "--repo", str(fleet.upstream.work), "--base", "HEAD~1", "--head", "HEAD", "--format", "json"])
    return status + logs.out + logs.err + capsys.readouterr().out


def test_the_target_gets_the_plaintext_and_nothing_else_does(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, recipient = identity(tmp_path)
    fleet.write_config(secrets={"ageIdentity": f"file:{key}"})
    with_secret(fleet, encrypt_yaml(SECRET, [recipient]))
    assert fleet.once() == 0
    written = deployed(fleet).read_text()
    assert f"password: {PASSWORD}" in written and "sops:" not in written and "ENC[" not in written
    assert fleet.env_status("lille-dev")["applications"]["ref"]["phase"] == "Synced"
    assert fleet.once() == 0 and deployed(fleet).read_text() == written  # stable: no perpetual re-apply
    assert not [e for e in fleet.audit() if e["result"] != "succeeded"]
    assert PASSWORD not in everything_written(fleet, capsys)
    # diff: the value as a digest, and a hand edit of it shows as a changed digest, never as text
    deployed(fleet).write_text(written.replace(PASSWORD, "hand-typed-password-99"))
    capsys.readouterr()
    assert main(["diff", "--config", str(fleet.config), "--env", "lille-dev", "--app", "ref"]) == 1
    out = capsys.readouterr().out
    assert PASSWORD not in out and "<secret sha256:" in out and "hand-typed-password-99" not in out, out


def test_the_real_sops_clis_files_decrypt_at_apply_time(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write_config(secrets={"ageIdentity": f"file:{FIXTURES / 'keys' / 'age.txt'}"})
    with_secret(fleet, (FIXTURES / "algorithms" / "age.yaml").read_text())
    assert fleet.once() == 0
    assert "name: age" in deployed(fleet).read_text() and "sops" not in deployed(fleet).read_text()


def _tamper_value(text: str) -> str:
    return re.sub(r"(password: ENC\[AES256_GCM,data:)(.)", lambda m: m[1] + ("A" if m[2] != "A" else "B"), text)


def _tamper_mac(text: str) -> str:
    return re.sub(r"(mac: ENC\[AES256_GCM,data:)(.)", lambda m: m[1] + ("A" if m[2] != "A" else "B"), text)


def _tamper_key(text: str) -> str:
    lines = text.splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if "BEGIN AGE ENCRYPTED FILE" in line) + 2
    line = lines[i]
    at = len(line) // 2
    lines[i] = line[:at] + ("A" if line[at] != "A" else "B") + line[at + 1 :]
    return "".join(lines)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("value", "ref/api/secret.yaml: stringData.password: authentication failed: the value was changed"),
        ("mac", "ref/api/secret.yaml: sops.mac: authentication failed"),
        ("data-key", "ref/api/secret.yaml: none of the configured age identities can decrypt it"),
        ("wrong-identity", "ref/api/secret.yaml: none of the configured age identities can decrypt it"),
        ("no-identity", "ref/api/secret.yaml: encrypted with sops, but no age identity is configured"),
    ],
)
def test_a_file_that_does_not_decrypt_fails_its_application_and_applies_nothing(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    key, recipient = identity(tmp_path)
    fleet.write_config(secrets={"ageIdentity": f"file:{key}"})
    good = encrypt_yaml(SECRET, [recipient])
    with_secret(fleet, good)
    assert fleet.once() == 0
    before = deployed(fleet).read_text()
    bad = {"value": _tamper_value, "mac": _tamper_mac, "data-key": _tamper_key}.get(case, lambda t: t)(good)
    if case in ("value", "mac", "data-key"):
        assert bad != good
        with_secret(fleet, bad.replace("user: ENC", "user: ENC", 1) + "# tampered\n")
    else:
        with_secret(fleet, good.replace("name: ref-db", "name: ref-db2"))  # a new unit to apply, same keys
        if case == "wrong-identity":
            other, _ = identity(tmp_path, "other.key")
            fleet.write_config(secrets={"ageIdentity": f"file:{other}"})
        else:
            fleet.write_config()
    assert fleet.once() == 1
    status = fleet.env_status("lille-dev")
    ref = status["applications"]["ref"]
    assert ref["phase"] == "Failed" and expected in ref["message"], ref
    assert status["applications"]["famille"]["phase"] == "Synced"  # the other application goes on
    assert deployed(fleet).read_text() == before  # nothing applied
    assert PASSWORD not in everything_written(fleet, capsys)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("file:missing.key", "secrets.ageIdentity: cannot read secret file"),
        ("file:{bad}", "bad.key:1: not a valid age identity"),
    ],
)
def test_an_unreadable_identity_is_a_clear_refusal_to_start(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], reference: str, expected: str
) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("AGE-SECRET-KEY-1 is what goes here, but this is prose\n")
    fleet.write_config(secrets={"ageIdentity": reference.replace("{bad}", str(bad))})
    capsys.readouterr()
    assert fleet.once() == 1  # refused before anything runs
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and "prose" not in err, err


def test_a_cycle_decrypts_each_distinct_file_once_and_keeps_no_plaintext_after_it(fleet: Fleet, tmp_path: Path) -> None:
    from tests.engine.test_governance import controller_at

    key, recipient = identity(tmp_path)
    fleet.write_config(secrets={"ageIdentity": f"file:{key}"})
    with_secret(fleet, encrypt_yaml(SECRET, [recipient]))  # the same file in the 5 environments that deploy ref
    with controller_at(fleet) as controller:
        report = controller.cycle("manual")
        assert sum(1 for o in report.outcomes.values() if o.phase == "Synced") == 5
        assert controller.decryptor.decryptions == 1  # (5 applies; verified and decrypted once)
        assert controller.decryptor._memo == {}  # nothing decrypted outlives its cycle
    written = [p.read_text() for p in sorted(fleet.targets.rglob("secret.yaml"))]
    assert len(written) == 5 and all(f"password: {PASSWORD}" in w for w in written)
