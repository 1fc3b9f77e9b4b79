"""Reporting to GitHub: one commit status (or check run) per spec on the reconciled commit.

Statuses (`POST /repos/{owner}/{repo}/statuses/{sha}`) work with any token that may write
statuses (a fine-grained token with "Commit statuses: write", or the Actions GITHUB_TOKEN with
`statuses: write`); check runs (`POST /repos/{owner}/{repo}/check-runs`) need a GitHub App's
token and carry the whole gate summary as their output. Each report is a new status / check
run with the spec's context; GitHub shows the latest per context, so sending the same report
twice is harmless. The token comes from an environment variable (in a cluster: a Secret
referenced by the chart) or a mounted file, never from a flag's value.

GitHub Enterprise Server: `api_url` = `https://HOST/api/v3`.
"""
from __future__ import annotations

import re
from typing import Literal

from controller.errors import PermanentError
from controller.notify._http import TIMEOUT_S, post, request
from controller.seams import CommitReport, JsonObject
from controller.seams.notifier import SUMMARY_LIMIT

API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
CHECK_OUTPUT_LIMIT = 65_535
"""GitHub caps a check run's output summary at 65,535 characters."""
Mode = Literal["statuses", "checks"]


class GitHubNotifier:
    name = "github"

    def __init__(self, repository: str, token: str, *, api_url: str = API_URL, mode: Mode = "statuses",
                 target_url: str | None = None, timeout: float = TIMEOUT_S) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repository):
            raise PermanentError(f"GitHub repository '{repository}' is not OWNER/NAME (e.g. acme/fine-tunes)")
        if not token:
            raise PermanentError("GitHub notifier: the token is empty; set it in the environment variable or file named "
                                 "by --github-token-env / --github-token-file")
        self.repository = repository
        self.api_url = api_url.rstrip("/")
        self.mode = mode
        self.target_url = target_url
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                         "X-GitHub-Api-Version": API_VERSION, "User-Agent": "ftops-controller"}

    def notify(self, report: CommitReport) -> None:
        if not re.fullmatch(r"[0-9a-f]{40}", report.commit):
            raise PermanentError(f"GitHub notifier: '{report.commit}' is not a full commit sha")
        if self.mode == "statuses":
            post(f"{self.api_url}/repos/{self.repository}/statuses/{report.commit}", self._status(report), self._headers,
                 f"GitHub status for {report.spec}", self.timeout)
        else:
            post(f"{self.api_url}/repos/{self.repository}/check-runs", self._check_run(report), self._headers,
                 f"GitHub check run for {report.spec}", self.timeout)

    def _status(self, report: CommitReport) -> JsonObject:
        body: JsonObject = {"state": report.state, "context": report.context, "description": report.summary[:SUMMARY_LIMIT]}
        if self.target_url:
            body["target_url"] = self.target_url
        return body

    def _check_run(self, report: CommitReport) -> JsonObject:
        body: JsonObject = {"name": report.context, "head_sha": report.commit,
                            "external_id": f"{report.spec}:{report.run_id or ''}",
                            "output": {"title": report.summary[:SUMMARY_LIMIT], "summary": report.details[:CHECK_OUTPUT_LIMIT]}}
        if report.state == "pending":
            body["status"] = "in_progress"
        else:
            body["status"] = "completed"
            body["conclusion"] = "success" if report.state == "success" else "failure"
        if self.target_url:
            body["details_url"] = self.target_url
        return body


def upsert_comment(repository: str, token: str, number: int, body: str, marker: str, *, api_url: str = API_URL,
                   timeout: float = TIMEOUT_S) -> str:
    """Post `body` on pull request `number`, or edit the comment posted before: the first one
    whose body starts with `marker` (one sticky comment per pull request, however often the
    plan runs). Returns "created" or "updated"."""
    if not body.startswith(marker):
        raise PermanentError("the comment must start with its marker, or the next run cannot find it")
    api = api_url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
               "X-GitHub-Api-Version": API_VERSION, "User-Agent": "ftops-plan"}
    what = f"comment on {repository}#{number}"
    page = 1
    while True:
        comments = request("GET", f"{api}/repos/{repository}/issues/{number}/comments?per_page=100&page={page}", None,
                           headers, what, timeout)
        if not isinstance(comments, list) or not comments:
            break
        for comment in comments:
            if isinstance(comment, dict) and str(comment.get("body", "")).startswith(marker):
                request("PATCH", f"{api}/repos/{repository}/issues/comments/{comment['id']}", {"body": body}, headers, what,
                        timeout)
                return "updated"
        page += 1
    post(f"{api}/repos/{repository}/issues/{number}/comments", {"body": body}, headers, what, timeout)
    return "created"
