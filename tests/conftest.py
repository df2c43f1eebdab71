"""Fixtures shared across the suite (real git remotes, sshd, the test API server, the small fleet).

``isolated_git`` is autouse: no user or system git config leaks into any test, product code included.
"""

from tests.engine import fleet
from tests.source import git_daemon, isolated_git
from tests.support.sshd import sshd_server

__all__ = ["fleet", "git_daemon", "isolated_git", "sshd_server"]
