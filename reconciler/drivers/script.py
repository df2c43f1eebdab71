"""The ``script`` and ``ssh`` drivers: an operator-configured executable speaks a small JSON contract.

Created by the driver registry from the operator config (manifests only name targets, never commands); called
by the engine per (environment, application). The full contract, for people writing target scripts, is in
``docs/script-targets.md``; in short:

* argv = the configured ``command`` + one verb: ``observe``, ``apply``, ``health``, ``remove`` or ``list``.
  Never a shell string. The process runs in its own session; on timeout the whole process group is killed
  (SIGKILL) and the call raises :class:`TemporaryError` ("... timed out after Ns").
* stdin: one JSON object. ``apply``: ``DesiredUnit.as_json()`` plus ``"dryRun"``; ``observe``/``health``/
  ``remove``: ``{"environment", "application", "target", "dryRun"}`` (observe adds ``"checkDrift"``); ``list``:
  ``{"environment", "target", "dryRun": false}``.
* environment (local scripts only): ``RECONCILER_VERB``, ``RECONCILER_ENVIRONMENT``, ``RECONCILER_APPLICATION``,
  ``RECONCILER_TARGET``, ``RECONCILER_DRY_RUN`` (0/1), a minimal ``PATH`` and ``LANG`` plus exactly the
  operator's ``env``; nothing of the controller's own environment is inherited.
* stdout: one JSON object (at most ``max_output`` bytes). ``observe``: ``{}``/``null`` when absent, else
  ``{"version", "fingerprint", "drifted": [...]}``; ``apply``/``remove``: ``{"changed": bool, "message": str}``;
  ``health``: ``{"status": "Healthy|Progressing|Degraded|Missing|Unknown", "message": str}``; ``list``:
  ``{"applications": [str, ...]}``; ``show`` (optional, for ``reconciler diff``; stdin as for ``apply``, dry run):
  ``{"files": [{"name": str, "live": str | null, "desired": str}, ...]}``, what the agent would install beside
  what is installed, as the agent sees it (it masks its own secrets; the operator's ``env`` values are redacted).
* exit 0 = success; 2 = refused -> :class:`PermanentError`; any other code -> :class:`TemporaryError`. Invalid
  JSON on stdout -> :class:`PermanentError` naming target and verb with a short sanitized excerpt. Error messages
  carry a bounded (~2 KB), control-character-free tail of stderr with the operator's ``env`` values redacted.

``ssh`` runs the same contract through OpenSSH with ``BatchMode=yes`` and ``StrictHostKeyChecking=yes`` against an
operator-provided known_hosts file. ssh joins the remote argv into one string for the remote shell, so every
element is ``shlex.quote``-d; manifest data travels only as stdin JSON (never argv, never env). Exit 255 is a
connection failure (:class:`TemporaryError`), or a :class:`PermanentError` when the host key did not verify.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.contentdiff import Content
from reconciler.core.desired import DesiredUnit
from reconciler.core.problems import PermanentError, ReconcilerError, TemporaryError
from reconciler.core.yamlsafe import scalar_text
from reconciler.drivers.base import ApplyResult, Health, HealthReport, Identifies, LiveUnit, ShowsContent

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
TAIL_CHARS = 2048
EXCERPT_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CHUNK = 65536


@dataclass(frozen=True)
class Completed:
    """A finished process: exit code, the first ``max_output`` bytes of stdout, the last of stderr."""

    returncode: int
    stdout: bytes
    stdout_size: int  # bytes printed in total (may exceed len(stdout))
    stderr: bytes


class TimedOut(Exception):
    pass


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_bounded(argv: Sequence[str], payload: bytes, env: Mapping[str, str], timeout: float, limit: int) -> Completed:
    """Run ``argv`` in a new session, feed ``payload`` on stdin, read bounded output; :class:`TimedOut` on expiry.

    On timeout (or any other exception) the whole process group is killed before this function returns.
    """
    deadline = time.monotonic() + timeout
    pipe = subprocess.PIPE
    proc = subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=pipe, env=dict(env), start_new_session=True)
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    assert stdin is not None and stdout is not None and stderr is not None
    out, err, out_size, sent = bytearray(), bytearray(), 0, 0
    try:
        with selectors.DefaultSelector() as sel:
            for stream in (stdin, stdout, stderr):
                os.set_blocking(stream.fileno(), False)
            sel.register(stdout, selectors.EVENT_READ)
            sel.register(stderr, selectors.EVENT_READ)
            if payload:
                sel.register(stdin, selectors.EVENT_WRITE)
            else:
                stdin.close()
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimedOut
                for key, _ in sel.select(remaining):
                    if key.fileobj is stdin:
                        try:
                            sent += os.write(key.fd, payload[sent : sent + _CHUNK])
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:  # the script does not read its input: not our problem
                            sent = len(payload)
                        if sent >= len(payload):
                            sel.unregister(stdin)
                            stdin.close()
                        continue
                    chunk = os.read(key.fd, _CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    if key.fileobj is stdout:
                        out += chunk[: max(limit - len(out), 0)]
                        out_size += len(chunk)
                    else:
                        err += chunk
                        del err[: max(len(err) - limit, 0)]
        returncode = proc.wait(timeout=max(deadline - time.monotonic(), 0.001))
    except subprocess.TimeoutExpired:
        raise TimedOut from None
    finally:
        if proc.returncode is None:
            kill_group(proc)
            proc.wait()
        for stream in (stdin, stdout, stderr):
            stream.close()
    return Completed(returncode, bytes(out), out_size, bytes(err))


class ContractDriver(Identifies, ShowsContent):
    """The shared implementation: build argv/env per verb, run, map exit codes and replies to results/errors."""

    kind: str = "script"

    def __init__(self, target: str, timeout: float, max_output: int, secrets: Sequence[str] = ()) -> None:
        self.target = target
        self.timeout = float(timeout)
        self.max_output = int(max_output)
        self._secrets = tuple(sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True))

    # -- what subclasses provide -----------------------------------------------------------------------------
    def argv(self, verb: str) -> list[str]:
        raise NotImplementedError

    def environ(self, verb: str, request: Mapping[str, Any]) -> dict[str, str]:
        return {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}

    # -- sanitising ------------------------------------------------------------------------------------------
    def clean(self, data: bytes | str, limit: int, keep_tail: bool = False) -> str:
        """Text safe for a message: secrets redacted, control characters collapsed, bounded to ``limit``."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = _CONTROL.sub(" ", text).strip()
        if len(text) <= limit:
            return text
        return "..." + text[-limit:] if keep_tail else text[:limit] + "..."

    def _where(self, verb: str) -> str:
        return f"{self.kind} target {self.target}: {verb}"

    # -- running ---------------------------------------------------------------------------------------------
    def call(self, verb: str, request: Mapping[str, Any]) -> Any:
        for key in ("environment", "application"):
            value = request.get(key, "")
            if not isinstance(value, str) or _CONTROL.search(value):
                raise PermanentError(f"{self._where(verb)} refused: {key} contains control characters")
        payload = (json.dumps(request, sort_keys=True, default=str) + "\n").encode()
        argv = self.argv(verb)
        try:
            done = run_bounded(argv, payload, self.environ(verb, request), self.timeout, self.max_output)
        except TimedOut:
            raise TemporaryError(f"{self._where(verb)} timed out after {self.timeout:g}s") from None
        except OSError as exc:
            raise PermanentError(f"{self._where(verb)} cannot run {argv[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            raise self._failure(verb, done)
        if done.stdout_size > self.max_output:
            raise PermanentError(f"{self._where(verb)} printed more than {self.max_output} bytes on stdout")
        try:
            return json.loads(done.stdout)
        except ValueError:
            excerpt = self.clean(done.stdout, EXCERPT_CHARS) or "(nothing)"
            raise PermanentError(f"{self._where(verb)} printed invalid JSON: {excerpt}") from None

    def _failure(self, verb: str, done: Completed) -> ReconcilerError:
        tail = self.clean(done.stderr, TAIL_CHARS, keep_tail=True)
        detail = f": {tail}" if tail else ""
        if done.returncode < 0:
            name = signal.Signals(-done.returncode).name
            return TemporaryError(f"{self._where(verb)} was killed by {name}{detail}")
        if done.returncode == 2:
            return PermanentError(f"{self._where(verb)} refused (exit 2){detail}")
        return TemporaryError(f"{self._where(verb)} failed (exit {done.returncode}){detail}")

    def _unexpected(self, verb: str, expected: str) -> PermanentError:
        return PermanentError(f"{self._where(verb)} printed an unexpected reply (expected {expected})")

    def _request(self, environment: str, application: str, dry_run: bool = False) -> dict[str, Any]:
        return {"environment": environment, "application": application, "target": self.target, "dryRun": dry_run}

    def _change(self, verb: str, reply: Any) -> ApplyResult:
        if not isinstance(reply, dict) or not isinstance(reply.get("changed"), bool):
            raise self._unexpected(verb, '{"changed": bool, "message": str}')
        return ApplyResult(reply["changed"], self.clean(str(reply.get("message", "")), TAIL_CHARS))

    # -- the Driver interface --------------------------------------------------------------------------------
    def observe(self, environment: str, application: str, check_drift: bool = True) -> LiveUnit | None:
        reply = self.call("observe", {**self._request(environment, application), "checkDrift": check_drift})
        if reply is None or reply == {}:
            return None
        shape = '{"version": str, "fingerprint": str, "drifted": [str]}, {} or null'
        if not isinstance(reply, dict) or not all(isinstance(reply.get(k), str) for k in ("version", "fingerprint")):
            raise self._unexpected("observe", shape)
        drifted = reply.get("drifted", [])
        if not isinstance(drifted, list) or not all(isinstance(d, str) for d in drifted):
            raise self._unexpected("observe", shape)
        cleaned = tuple(self.clean(d, EXCERPT_CHARS) for d in drifted[:1000])
        version, fingerprint = (self.clean(reply[k], EXCERPT_CHARS) for k in ("version", "fingerprint"))
        return LiveUnit(environment, application, self.target, version, fingerprint, cleaned)

    def owned_applications(self, environment: str) -> list[str]:
        request = {"environment": environment, "application": "", "target": self.target, "dryRun": False}
        reply = self.call("list", request)
        apps = reply.get("applications") if isinstance(reply, dict) else None
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
            raise self._unexpected("list", '{"applications": [str]}')
        return sorted(set(apps))

    def identity(self, unit: DesiredUnit) -> str:
        """The environment's parameters: ``apply`` hands them to the agent (``as_json``), but the rendered files'
        fingerprint does not cover them, so without this a changed parameter would never reach the host."""
        if not unit.parameters:
            return ""
        return json.dumps(sorted((str(k), scalar_text(v)) for k, v in unit.parameters.items()))

    def apply(self, unit: DesiredUnit, dry_run: bool = False) -> ApplyResult:
        return self._change("apply", self.call("apply", {**unit.as_json(), "dryRun": dry_run}))

    def remove(self, environment: str, application: str, dry_run: bool = False) -> ApplyResult:
        return self._change("remove", self.call("remove", self._request(environment, application, dry_run)))

    def health(self, environment: str, application: str) -> HealthReport:
        reply = self.call("health", self._request(environment, application))
        statuses = {h.value for h in Health}
        if not isinstance(reply, dict) or reply.get("status") not in statuses:
            raise self._unexpected("health", '{"status": "' + "|".join(sorted(statuses)) + '", "message": str}')
        return HealthReport(Health(reply["status"]), self.clean(str(reply.get("message", "")), TAIL_CHARS))

    def contents(self, unit: DesiredUnit) -> list[Content]:
        """The agent's ``show``: each file it would install, installed text beside desired text (``diff``)."""
        reply = self.call("show", {**unit.as_json(), "dryRun": True})
        shape = '{"files": [{"name": str, "live": str or null, "desired": str}]}'
        files = reply.get("files") if isinstance(reply, dict) else None
        if not isinstance(files, list) or not all(_is_shown(f) for f in files):
            raise self._unexpected("show", shape)
        return [Content(self.clean(f["name"], EXCERPT_CHARS), self._text(f["live"]), self._text(f["desired"]) or "")
                for f in files]  # fmt: skip

    def _text(self, value: str | None) -> str | None:
        """A file's text for a diff: the operator's secrets redacted, control characters but newlines and tabs
        shown as ``?``."""
        if value is None:
            return None
        for secret in self._secrets:
            value = value.replace(secret, "***")
        return _CONTROL_BUT_LINES.sub("?", value)

    def close(self) -> None:
        return None


def _is_shown(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and isinstance(entry.get("desired"), str)
        and (entry.get("live") is None or isinstance(entry.get("live"), str))
    )


def _check_command(target: str, command: Sequence[str]) -> list[str]:
    if not command or not all(isinstance(a, str) and a and "\0" not in a for a in command):
        raise PermanentError(f"target {target}: command must be a non-empty list of non-empty strings")
    return list(command)


class ScriptDriver(ContractDriver):
    """Runs ``command`` + verb locally (see the module docstring for the contract)."""

    kind: str = "script"

    def __init__(
        self,
        target: str,
        command: list[str],
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        max_output: int = 64 * 1024,
    ) -> None:
        self.command = _check_command(target, command)
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        super().__init__(target, timeout, max_output, secrets=tuple(self.env.values()))

    def argv(self, verb: str) -> list[str]:
        return [*self.command, verb]

    def environ(self, verb: str, request: Mapping[str, Any]) -> dict[str, str]:
        return {
            **super().environ(verb, request),
            **self.env,
            "RECONCILER_VERB": verb,
            "RECONCILER_ENVIRONMENT": str(request.get("environment", "")),
            "RECONCILER_APPLICATION": str(request.get("application", "")),
            "RECONCILER_TARGET": self.target,
            "RECONCILER_DRY_RUN": "1" if request.get("dryRun") else "0",
        }


_SSH_WORD = re.compile(r"[^\s\x00-\x1f\x7f%-][^\s\x00-\x1f\x7f%]*")


class SshDriver(ContractDriver):
    """Runs ``command`` + verb on ``host`` through OpenSSH with strict host-key checking."""

    kind: str = "ssh"

    def __init__(
        self,
        target: str,
        host: str,
        user: str,
        command: list[str],
        port: int = 22,
        identity_file: Path | None = None,
        known_hosts: Path | None = None,
        timeout: float = 60,
        ssh_options: list[str] | None = None,
        max_output: int = 64 * 1024,
    ) -> None:
        super().__init__(target, timeout, max_output)
        for what, value in (("host", host), ("user", user), ("knownHosts", str(known_hosts or ""))):
            if not _SSH_WORD.fullmatch(value):
                raise PermanentError(f"ssh target {target}: {what} {value!r} is empty or has a space, %, or leading -")
        if not 0 < int(port) < 65536:
            raise PermanentError(f"ssh target {target}: port {port} is out of range")
        self.host, self.user, self.port = host, user, int(port)
        self.command = _check_command(target, command)
        self.identity_file = identity_file
        self.known_hosts = Path(str(known_hosts))
        self.ssh_options = list(ssh_options or [])

    def argv(self, verb: str) -> list[str]:
        identity = ["-i", str(self.identity_file), "-o", "IdentitiesOnly=yes"] if self.identity_file else []
        return [
            "ssh",
            # ssh keeps the first value of an option: these come first so ssh_options cannot weaken them
            *("-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"),
            *("-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "ConnectTimeout=10"),
            *identity,
            *self.ssh_options,
            *("-p", str(self.port), "-l", self.user, self.host, "--"),
            *(shlex.quote(arg) for arg in [*self.command, verb]),
        ]

    def _failure(self, verb: str, done: Completed) -> ReconcilerError:
        """ssh itself exits 255 (so target scripts must not): a connection, authentication or host-key failure."""
        if done.returncode != 255:
            return super()._failure(verb, done)
        tail = self.clean(done.stderr, TAIL_CHARS, keep_tail=True)
        where = f"{self.user}@{self.host}:{self.port}"
        if "Host key verification failed" in tail:
            return PermanentError(
                f"ssh target {self.target}: {verb}: host key verification failed for {where} "
                f"(checked against {self.known_hosts}); nothing was run"
            )
        return TemporaryError(f"ssh target {self.target}: {verb}: ssh to {where} failed (exit 255): {tail}")
