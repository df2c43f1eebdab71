"""Fixtures shared across the suite (real git remotes, sshd, the test API server, the small fleet).

``isolated_git`` is autouse: no user or system git config leaks into any test, product code included. Tests that
use ``kube_server`` (a real kube-apiserver, one per session) get the ``kube`` marker.
"""

import pytest

from tests.engine import fleet
from tests.source import git_daemon, isolated_git
from tests.support.kube import kube_server, mark_kube_tests, register_kube_marker
from tests.support.sshd import sshd_server

__all__ = ["fleet", "git_daemon", "isolated_git", "kube_server", "sshd_server"]


def pytest_configure(config: pytest.Config) -> None:
    register_kube_marker(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_kube_tests(items)
