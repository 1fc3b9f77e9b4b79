"""The Notifier seam's conformance suite, run against every implementation: GitHub commit
statuses and check runs (against a local server that speaks the subset of GitHub's REST API the
controller uses, tests/ci/github_api.py), the signed webhook (against a local receiver) and
tests/fakes' FakeNotifier. Each must deliver a report, turn a 5xx into a TemporaryError (the
reconciler retries it with backoff) and a refusal into a PermanentError."""
from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fakes
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakes import FakeNotifier  # noqa: E402
from github_api import GitHubAPI, serve  # noqa: E402

from controller.errors import PermanentError, TemporaryError  # noqa: E402
from controller.notify import GitHubNotifier, WebhookNotifier  # noqa: E402
from controller.seams import CommitReport, Notifier  # noqa: E402

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "ghs_test_token"
REPO = "acme/fine-tunes"


def report(state: str = "success", summary: str = "Ready: run 676fb786607b serves; gate passed: task 0.95 >= 0.9",
           spec: str = "triage") -> CommitReport:
    return CommitReport(spec, SHA, state, summary, "| condition | status |\n|---|---|\n| Ready | True |\n", "676fb786607b")  # type: ignore[arg-type]


@pytest.fixture
def github():
    api = GitHubAPI(TOKEN, REPO)
    server, thread = serve(api)
    yield api
    server.shutdown()
    server.server_close()


class Receiver:
    """A webhook endpoint: records each body, checks the signature, answers what it is told."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.bodies: list[dict] = []
        self.fail_next: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = receiver.fail_next.pop(0) if receiver.fail_next else 204
                expected = "sha256=" + hmac.new(receiver.secret, raw, hashlib.sha256).hexdigest()
                if code == 204 and not hmac.compare_digest(self.headers.get("X-Ftops-Signature-256", ""), expected):
                    code = 401
                if code == 204:
                    receiver.bodies.append(json.loads(raw))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ftops"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(b"s3cret")
    yield r
    r.close()


# Each harness: (notifier, delivered() -> [(spec, commit, state, summary)], fail(n codes), refuse())
Harness = tuple[Notifier, Callable[[], list[tuple]], Callable[[list[int]], None], Callable[[], Notifier]]


@pytest.fixture(params=["github-statuses", "github-checks", "webhook", "fake"])
def harness(request, github, receiver) -> Harness:
    kind = request.param
    if kind.startswith("github"):
        mode = "statuses" if kind == "github-statuses" else "checks"
        notifier = GitHubNotifier(REPO, TOKEN, api_url=github.url, mode=mode)

        def delivered() -> list[tuple]:
            if mode == "statuses":
                return [(s["context"].removeprefix("ftops/"), sha, s["state"], s["description"])
                        for sha, items in github.statuses.items() for s in items]
            return [(c["name"].removeprefix("ftops/"), c["head_sha"],
                     "pending" if c["status"] == "in_progress" else c["conclusion"], c["output"]["title"])
                    for c in github.check_runs]

        return (notifier, delivered, lambda codes: github.fail_next.extend(codes),
                lambda: GitHubNotifier(REPO, "ghs_revoked", api_url=github.url, mode=mode))
    if kind == "webhook":
        return (WebhookNotifier(receiver.url, "s3cret"),
                lambda: [(b["spec"], b["commit"], b["state"], b["summary"]) for b in receiver.bodies],
                lambda codes: receiver.fail_next.extend(codes), lambda: WebhookNotifier(receiver.url, "wrong-secret"))
    fake = FakeNotifier()
    refusing = FakeNotifier(failures=[PermanentError("bad credentials")])
    return (fake, lambda: [(r.spec, r.commit, r.state, r.summary) for r in fake.reports],
            lambda codes: fake.failures.extend(TemporaryError(f"{c}") for c in codes), lambda: refusing)


def test_is_a_notifier(harness):
    notifier, *_ = harness
    assert isinstance(notifier, Notifier) and notifier.name


def test_a_report_is_delivered_per_spec_and_state(harness):
    notifier, delivered, _, _ = harness
    notifier.notify(report("pending", "Training: run 676fb786607b"))
    notifier.notify(report("success"))
    notifier.notify(report("failure", "gate failed: task.exact_match 0.41 < 0.9", spec="other"))
    got = delivered()
    assert ("triage", SHA, "pending", "Training: run 676fb786607b") in got
    assert ("triage", SHA, "success", report().summary) in got
    assert ("other", SHA, "failure", "gate failed: task.exact_match 0.41 < 0.9") in got


def test_a_server_error_is_temporary_and_the_next_try_arrives(harness):
    notifier, delivered, fail, _ = harness
    fail([502])
    with pytest.raises(TemporaryError):
        notifier.notify(report())
    assert delivered() == []
    notifier.notify(report())
    assert len(delivered()) == 1


def test_a_refusal_is_permanent(harness):
    *_, refuse = harness
    with pytest.raises(PermanentError):
        refuse().notify(report())


# ----------------------------------------------------------------------------- GitHub specifics


def test_github_status_request_has_githubs_path_headers_and_shape(github):
    GitHubNotifier(REPO, TOKEN, api_url=github.url, target_url="https://ftops.example/specs/triage").notify(
        report(summary="x" * 300))
    request = github.requests[-1]
    assert request.path == f"/repos/{REPO}/statuses/{SHA}"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "application/vnd.github+json" and request.headers["x-github-api-version"]
    assert set(request.body) == {"state", "context", "description", "target_url"}
    assert len(request.body["description"]) == 140  # GitHub's limit; longer is a 422
    assert github.latest_status(SHA, "ftops/triage")["state"] == "success"


def test_github_check_run_carries_the_whole_summary(github):
    GitHubNotifier(REPO, TOKEN, api_url=github.url, mode="checks").notify(report("failure", "gate failed: task 0.41 < 0.9"))
    run = github.check_runs[-1]
    assert run["status"] == "completed" and run["conclusion"] == "failure" and run["head_sha"] == SHA
    assert run["output"]["summary"].startswith("| condition | status |")


def test_github_unknown_repository_and_rate_limit(github):
    with pytest.raises(PermanentError, match="404"):
        GitHubNotifier("acme/other", TOKEN, api_url=github.url).notify(report())
    github.fail_next.append(429)
    with pytest.raises(TemporaryError, match="429"):
        GitHubNotifier(REPO, TOKEN, api_url=github.url).notify(report())


def test_an_unreachable_forge_is_temporary():
    with pytest.raises(TemporaryError, match="cannot connect"):
        GitHubNotifier(REPO, TOKEN, api_url="http://127.0.0.1:9").notify(report())


def test_bad_configuration_is_refused_before_any_request():
    with pytest.raises(PermanentError, match="OWNER/NAME"):
        GitHubNotifier("not a repo", TOKEN)
    with pytest.raises(PermanentError, match="token is empty"):
        GitHubNotifier(REPO, "")
    with pytest.raises(PermanentError, match="http"):
        WebhookNotifier("ftp://example.invalid/hook")
