"""The status branch of the releases repo: per-environment status files and the audit trail (see store)."""

from reconciler.status.store import DEFAULT_BRANCH, StatusSnapshot, StatusStore

__all__ = ["DEFAULT_BRANCH", "StatusSnapshot", "StatusStore"]
