"""Shared plumbing of the commands that work from a controller config: load it, build the Git source/store.

Called by ``run``, ``status``, ``history`` and ``demo``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reconciler.core.config import ControllerConfig, parse_config
from reconciler.core.problems import InvalidInput


class ConfigError(Exception):
    """The config could not be used; the message is ready to print."""


def load_config(path: str) -> ControllerConfig:
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        return parse_config(str(file.resolve()), data)
    except InvalidInput as exc:
        raise ConfigError(str(exc)) from None


def status_store(config: ControllerConfig):  # type: ignore[no-untyped-def]
    from reconciler.status.store import StatusStore

    return StatusStore(
        config.source_url,
        config.status_branch,
        Path(config.state_dir) / "status",
        author_name=config.author_name,
        author_email=config.author_email,
        timeout=config.source_timeout,
        tracked_branch=config.branch,
    )


COMMAND = {"name": ""}  # the running subcommand, set by the CLI: errors are prefixed by it


def fail(message: str) -> int:
    """Print ``message`` as the running command's error (``reconciler <command>: message``); exit code 1."""
    print(prefixed(message), file=sys.stderr)
    return 1


def prefixed(message: str) -> str:
    name = COMMAND["name"]
    if not name or message.startswith("reconciler "):
        return message
    return f"reconciler {name}: {message}"
