"""Commit statuses on the forge: where the commit being applied is deployed, one context per stage.

:class:`ForgeStatuses` posts a :class:`CommitStatus` (state, description, target URL, context ``reconciler/<stage>``)
to the commit, the way each forge's published API describes it:

- GitHub (and GitHub Enterprise, base ``https://HOST/api/v3``): ``POST /repos/{owner}/{repo}/statuses/{sha}``,
  ``Authorization: Bearer <token>``, body ``{state, target_url, description, context}``, states
  error / failure / pending / success.
- GitLab (base ``https://HOST``): ``POST /api/v4/projects/{id}/statuses/{sha}`` (``id``: the URL-encoded path
  ``group/project`` or the number), ``PRIVATE-TOKEN: <token>``, body ``{state, name, target_url, description}``,
  states pending / running / success / failed / canceled / skipped (pending is sent as running, failure and error
  as failed). GitLab refuses to post the same state twice ("Cannot transition status"), so only a change of state
  is posted there; GitHub and Gitea also get a changed description.
- Gitea / Forgejo (base ``https://HOST``): ``POST /api/v1/repos/{owner}/{repo}/statuses/{sha}``,
  ``Authorization: token <token>``, body ``{state, target_url, description, context}``.

The token comes by reference from the operator's config and appears in no message. Answers are judged as every
HTTP sink's are (:mod:`reconciler.notify.http`). Delivered through an :class:`reconciler.notify.outbox.Outbox`.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.core.notify import StatusState
from reconciler.notify.http import post

DESCRIPTION_MAX = 140  # GitHub refuses longer descriptions


class ForgeKind(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    GITEA = "gitea"  # also Forgejo


DEFAULT_URL = {ForgeKind.GITHUB: "https://api.github.com", ForgeKind.GITLAB: "https://gitlab.com"}
_GITLAB_STATE = {
    StatusState.PENDING: "running",
    StatusState.SUCCESS: "success",
    StatusState.FAILURE: "failed",
    StatusState.ERROR: "failed",
}


@dataclass(frozen=True)
class CommitStatus:
    sha: str
    context: str
    state: StatusState
    description: str
    target_url: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"sha": self.sha, "context": self.context, "state": self.state.value,
                "description": self.description, "target_url": self.target_url}  # fmt: skip


class ForgeStatuses:
    """A sink of commit statuses for one repository of one forge."""

    def __init__(self, name: str, kind: ForgeKind, repository: str, token: str, url: str = "",
                 timeout: float = 10.0) -> None:  # fmt: skip
        self.name = name
        self.kind = kind
        self.repository = repository.strip("/")
        self.token = token
        self.url = (url or DEFAULT_URL.get(kind, "")).rstrip("/")
        self.timeout = timeout

    @property
    def descriptions_update(self) -> bool:
        """Whether a changed description alone is posted (GitLab refuses a second post of the same state)."""
        return self.kind is not ForgeKind.GITLAB

    def request(self, status: CommitStatus) -> tuple[str, dict[str, str], dict[str, str]]:
        """The URL, headers and body of the forge's create-status call."""
        sha = urllib.parse.quote(status.sha, safe="")
        description = status.description[:DESCRIPTION_MAX]
        body = {"state": status.state.value, "context": status.context, "description": description}
        if self.kind is ForgeKind.GITLAB:
            project = urllib.parse.quote(self.repository, safe="")
            url = f"{self.url}/api/v4/projects/{project}/statuses/{sha}"
            headers = {"PRIVATE-TOKEN": self.token}
            body = {"state": _GITLAB_STATE[status.state], "name": status.context, "description": description}
        elif self.kind is ForgeKind.GITEA:
            url = f"{self.url}/api/v1/repos/{self._owner_repo()}/statuses/{sha}"
            headers = {"Authorization": f"token {self.token}"}
        else:
            url = f"{self.url}/repos/{self._owner_repo()}/statuses/{sha}"
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/vnd.github+json",
                       "X-GitHub-Api-Version": "2022-11-28"}  # fmt: skip
        if status.target_url:
            body["target_url"] = status.target_url
        headers |= {"Content-Type": "application/json", "User-Agent": "release-reconciler"}
        return url, headers, body

    def _owner_repo(self) -> str:
        owner, _, repo = self.repository.partition("/")
        return f"{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(repo, safe='')}"

    def send(self, payload: dict[str, Any]) -> None:
        status = CommitStatus(payload["sha"], payload["context"], StatusState(payload["state"]),
                              payload["description"], payload.get("target_url", ""))  # fmt: skip
        url, headers, body = self.request(status)
        post(url, json.dumps(body).encode(), headers, self.timeout, f"{self.kind.value} statuses {self.name}")
