"""A real OpenSSH server on a free loopback port, for the ssh driver's tests.

Usage in a test module::

    from tests.support.sshd import SshServer, sshd_server  # noqa: F401  (fixture)

    def test_something(sshd_server: SshServer) -> None:
        driver = SshDriver("t", host=sshd_server.host, port=sshd_server.port, user=sshd_server.user, ...)

One ``sshd`` is started per test session (``-D -e -f <generated sshd_config>``) with its own ed25519 host key,
public-key authentication only, for the current user (root in CI), and stopped at the end. The fixture also
generates a client key and a ``known_hosts`` that trusts the server's host key for ``[127.0.0.1]:PORT``. It needs
Debian's ``openssh-server`` (``./dev deps`` installs it); when ``sshd`` is missing the fixture FAILS and says so.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    identity_file: Path  # the client's private key (authorized on the server)
    known_hosts: Path  # trusts exactly the server's host key for [host]:port
    host_public_key: str  # "ssh-ed25519 AAAA..."
    state_dir: Path

    @property
    def log(self) -> Path:
        return self.state_dir / "sshd.log"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> str:
    """Generate an ed25519 key pair at ``path``; return the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def find_sshd() -> str:
    found = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/sbin/sshd") if os.access(p, os.X_OK)), None)
    if found is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.fail(
            "OpenSSH is not installed: run `./dev deps` (or `apt-get install -y openssh-server openssh-client`)"
        )
    return found


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    sshd = find_sshd()
    state = tmp_path_factory.mktemp("sshd")
    with contextlib.suppress(PermissionError):  # the privilege separation directory (absent in containers)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key = state / "ssh_host_ed25519_key"
    host_public = keygen(host_key)
    client_key = state / "client_ed25519"
    (state / "authorized_keys").write_text(keygen(client_key) + "\n")
    port = free_port()
    (state / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_public}\n")
    config = state / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {state / 'authorized_keys'}",
                f"PidFile {state / 'sshd.pid'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "PrintMotd no",
                "LogLevel VERBOSE",
            ]
        )
        + "\n"
    )
    log = (state / "sshd.log").open("wb")
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start on 127.0.0.1:{port}:\n{(state / 'sshd.log').read_text()}")
            time.sleep(0.05)
        yield SshServer(
            host="127.0.0.1",
            port=port,
            user=pwd.getpwuid(os.getuid()).pw_name,
            identity_file=client_key,
            known_hosts=state / "known_hosts",
            host_public_key=host_public,
            state_dir=state,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
