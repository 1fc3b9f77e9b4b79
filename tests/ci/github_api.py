"""A local HTTP server that speaks the subset of GitHub's REST API the controller uses:
`POST /repos/{owner}/{repo}/statuses/{sha}` and `POST /repos/{owner}/{repo}/check-runs`, with
GitHub's checks (a bearer token, the JSON Accept header, the API version header, the documented
payload shape: state enum, description within 140 characters, a context; a check run's name,
head_sha, status and conclusion), and GitHub's answers (201 with the created object, 401 Bad
credentials, 404 for an unknown repository, 422 Validation Failed with its errors). A test can
make it answer 5xx for the next N requests, as GitHub does during an incident. Pull-request
comments too (`GET/POST /repos/{owner}/{repo}/issues/{n}/comments`, paginated, and `PATCH
/repos/{owner}/{repo}/issues/comments/{id}`), refusing a body over GitHub's 65,536 characters.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATES = {"pending", "success", "failure", "error"}
CHECK_STATUSES = {"queued", "in_progress", "completed"}
CONCLUSIONS = {"success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required"}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class GitHubAPI:
    token: str
    repository: str
    requests: list[Request] = field(default_factory=list)
    statuses: dict[str, list[dict]] = field(default_factory=dict)
    """sha -> statuses created, oldest first."""
    check_runs: list[dict] = field(default_factory=list)
    comments: dict[int, list[dict]] = field(default_factory=dict)
    """pull request number -> its comments, oldest first."""
    fail_next: list[int] = field(default_factory=list)
    """HTTP codes to answer the next requests with (500, 502, 503 ...)."""
    url: str = ""

    def latest_status(self, sha: str, context: str) -> dict | None:
        return next((s for s in reversed(self.statuses.get(sha, [])) if s["context"] == context), None)


def serve(api: GitHubAPI) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {api.token}":
                self._answer(401, {"message": "Bad credentials"})
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802
            api.requests.append(Request("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, None))
            if not self._authorised():
                return
            m = re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments\?per_page=(\d+)&page=(\d+)", self.path)
            if not m or m.group(1) != api.repository:
                return self._answer(404, {"message": "Not Found"})
            items = api.comments.get(int(m.group(2)), [])
            size, page = int(m.group(3)), int(m.group(4))
            data = json.dumps(items[(page - 1) * size: page * size]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PATCH(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
            api.requests.append(Request("PATCH", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if not self._authorised():
                return
            m = re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/comments/(\d+)", self.path)
            found = [c for items in api.comments.values() for c in items if m and c["id"] == int(m.group(2))]
            if not m or m.group(1) != api.repository or not found:
                return self._answer(404, {"message": "Not Found"})
            if not isinstance(body, dict) or not isinstance(body.get("body"), str) or len(body["body"]) > 65536:
                return self._invalid("body")
            found[0]["body"] = body["body"]
            self._answer(200, found[0])

        def _comment(self, number: int, body: dict) -> None:
            if not isinstance(body.get("body"), str) or len(body["body"]) > 65536:
                return self._invalid("body")
            created = {"id": 1000 + sum(len(v) for v in api.comments.values()), "body": body["body"],
                       "user": {"login": "github-actions[bot]"}}
            api.comments.setdefault(number, []).append(created)
            self._answer(201, created)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            api.requests.append(Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if api.fail_next:
                code = api.fail_next.pop(0)
                return self._answer(code, {"message": "Server Error"})
            if self.headers.get("Authorization") != f"Bearer {api.token}":
                return self._answer(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
            if self.headers.get("Accept") != "application/vnd.github+json" or not self.headers.get("X-GitHub-Api-Version"):
                return self._answer(415, {"message": "Unsupported 'Accept' header"})
            if not isinstance(body, dict):
                return self._answer(400, {"message": "Problems parsing JSON"})
            m = re.fullmatch(r"/repos/([^/]+/[^/]+)/statuses/([0-9a-f]{40})", self.path)
            if m:
                if m.group(1) != api.repository:
                    return self._answer(404, {"message": "Not Found"})
                return self._status(m.group(2), body)
            m = re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments", self.path)
            if m:
                if m.group(1) != api.repository:
                    return self._answer(404, {"message": "Not Found"})
                return self._comment(int(m.group(2)), body)
            m = re.fullmatch(r"/repos/([^/]+/[^/]+)/check-runs", self.path)
            if m:
                if m.group(1) != api.repository:
                    return self._answer(404, {"message": "Not Found"})
                return self._check_run(body)
            return self._answer(404, {"message": "Not Found"})

        def _invalid(self, field_: str, code: str = "invalid") -> None:
            self._answer(422, {"message": "Validation Failed", "errors": [{"resource": "Status", "field": field_, "code": code}]})

        def _status(self, sha: str, body: dict) -> None:
            if body.get("state") not in STATES:
                return self._invalid("state")
            description = body.get("description")
            if description is not None and (not isinstance(description, str) or len(description) > 140):
                return self._invalid("description")
            if not isinstance(body.get("context", "default"), str):
                return self._invalid("context")
            allowed = {"state", "target_url", "description", "context"}
            if set(body) - allowed:
                return self._invalid(sorted(set(body) - allowed)[0], "unexpected")
            created = {"id": sum(len(v) for v in api.statuses.values()) + 1, "state": body["state"],
                       "description": description, "context": body.get("context", "default"),
                       "target_url": body.get("target_url")}
            api.statuses.setdefault(sha, []).append(created)
            self._answer(201, created)

        def _check_run(self, body: dict) -> None:
            if not isinstance(body.get("name"), str) or not re.fullmatch(r"[0-9a-f]{40}", str(body.get("head_sha"))):
                return self._invalid("name" if not isinstance(body.get("name"), str) else "head_sha")
            status = body.get("status", "queued")
            if status not in CHECK_STATUSES:
                return self._invalid("status")
            if status == "completed" and body.get("conclusion") not in CONCLUSIONS:
                return self._invalid("conclusion", "missing_field")
            if status != "completed" and "conclusion" in body:
                return self._invalid("conclusion")
            output = body.get("output")
            if output is not None and (not isinstance(output.get("title"), str) or not isinstance(output.get("summary"), str)
                                       or len(output["summary"]) > 65535):
                return self._invalid("output")
            created = {"id": len(api.check_runs) + 1, **body}
            api.check_runs.append(created)
            self._answer(201, created)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
