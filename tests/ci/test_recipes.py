"""The CI recipes a platform team copies (deploy/ci/, .pre-commit-hooks.yaml), each tested: the
workflow files against their schemas (GitHub's workflow schema and GitLab CI's, vendored by
check-jsonschema, nothing fetched), their shell steps through `bash -n`, the sticky comment
against local servers that speak GitHub's and GitLab's APIs, and the pre-commit hook run by
pre-commit itself in a fresh git repository."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plan"))

from github_api import GitHubAPI, serve  # noqa: E402
from test_plan_git import SPEC, dvc_pointer  # noqa: E402

from controller.plan import MARKER  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / "deploy/ci/github/ftops-plan.yml"
GITLAB = ROOT / "deploy/ci/gitlab/ftops-plan.gitlab-ci.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
BIN = Path(sys.executable).parent


def check_schema(schema: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("schema,path", [("vendor.github-workflows", GITHUB), ("vendor.gitlab-ci", GITLAB)])
def test_the_workflow_files_match_their_schemas(schema, path, tmp_path):
    done = check_schema(schema, path)
    assert done.returncode == 0, done.stdout + done.stderr
    # the check can fail: the same file with one wrong value is refused
    broken = tmp_path / path.name
    text = path.read_text()
    broken.write_text(text.replace("timeout-minutes: 30", "timeout-minutes: thirty") if path == GITHUB
                      else text.replace("when: always", "when: sometimes"))
    assert broken.read_text() != text
    assert check_schema(schema, broken).returncode != 0


def test_the_github_workflow_plans_with_full_history_dvc_secrets_and_one_comment():
    workflow = yaml.safe_load(GITHUB.read_text())
    job = workflow["jobs"]["plan"]
    steps = job["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "ftops validate" in runs
    assert re.search(r"ftops plan --base \"\$BASE_SHA\" --head HEAD --detailed-exitcode --github-comment \"\$PR_NUMBER\"", runs)
    assert "--json-out plan.json" in runs
    plan = next(s for s in steps if "--github-comment" in s.get("run", ""))
    assert plan["env"]["AWS_ACCESS_KEY_ID"] == "${{ secrets.DVC_AWS_ACCESS_KEY_ID }}"
    assert plan["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert job["container"]["image"].startswith("ghcr.io/ftops/controller:")
    assert any(s.get("uses", "").startswith("actions/cache@") and s["with"]["path"] == ".ftops-cache" for s in steps)
    assert job["env"]["FTOPS_CACHE_DIR"].endswith("/.ftops-cache")


def test_the_gitlab_job_plans_with_full_history_and_one_note():
    job = yaml.safe_load(GITLAB.read_text())["ftops-plan"]
    assert job["variables"]["GIT_DEPTH"] == "0"
    script = "\n".join(job["script"])
    assert "ftops validate" in script and "--detailed-exitcode" in script and MARKER in script
    assert "$DVC_AWS_ACCESS_KEY_ID" in script and job["rules"][0]["if"] == '$CI_PIPELINE_SOURCE == "merge_request_event"'


def _shell_blocks() -> list[str]:
    github = [s["run"] for s in yaml.safe_load(GITHUB.read_text())["jobs"]["plan"]["steps"] if "run" in s]
    gitlab = yaml.safe_load(GITLAB.read_text())["ftops-plan"]
    return github + ["\n".join(gitlab["before_script"] + gitlab["script"])]


@pytest.mark.parametrize("index", range(len(_shell_blocks())))
def test_every_shell_step_parses(index):
    done = subprocess.run(["bash", "-n"], input=_shell_blocks()[index], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------- the sticky comments


@pytest.fixture
def github():
    api = GitHubAPI("ghs_job_token", "acme/fine-tunes")
    server, _ = serve(api)
    yield api
    server.shutdown()
    server.server_close()


@pytest.fixture
def two_commits(git_repo):
    git_repo.write("models/tiny/config.json", "{}")
    git_repo.write("corpora/kb/a.md", "# A\n")
    git_repo.write("data/tickets.jsonl.dvc", dvc_pointer("a" * 32, 4_000_000, 1000))
    git_repo.write("specs/triage.yaml", SPEC)
    base = git_repo.commit("base")
    git_repo.write("specs/triage.yaml", SPEC.replace("epochs: 2", "epochs: 5"))
    return git_repo, base, git_repo.commit("train longer")


def test_the_plan_keeps_one_sticky_comment_on_the_pull_request(github, two_commits):
    repo, base, head = two_commits
    github.comments[7] = [{"id": 1, "body": "LGTM", "user": {"login": "dana"}}]
    env = {**os.environ, "GITHUB_TOKEN": "ghs_job_token", "GITHUB_REPOSITORY": "acme/fine-tunes", "GITHUB_API_URL": github.url}
    cmd = [sys.executable, "-m", "controller.cli", "plan", "--repo", str(repo.root), "--base", base, "--head", head,
           "--no-data", "--detailed-exitcode", "--github-comment", "7"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 2, first.stderr
    assert "created the plan comment on acme/fine-tunes#7" in first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert "updated the plan comment" in second.stderr
    comments = github.comments[7]
    assert [c["body"] for c in comments if c["body"].startswith(MARKER)] == [first.stdout]  # one, and it is the plan
    assert comments[0]["body"] == "LGTM"
    posts = [r for r in github.requests if r.method in ("POST", "PATCH")]
    assert [r.method for r in posts] == ["POST", "PATCH"]
    assert all(r.headers["authorization"] == "Bearer ghs_job_token" for r in posts)
    denied = subprocess.run(cmd, capture_output=True, text=True, env={**env, "GITHUB_TOKEN": "revoked"})
    assert denied.returncode == 1 and "401" in denied.stderr


class GitLabNotes:
    """GitLab's merge request notes API (GET list, POST, PUT), as the recipe's script uses it."""

    def __init__(self, token: str) -> None:
        self.notes: list[dict] = [{"id": 1, "body": "please retrain", "author": {"username": "dana"}}]
        self.methods: list[str] = []
        notes = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, code: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self) -> tuple[bool, int | None]:
                m = re.fullmatch(r"/api/v4/projects/42/merge_requests/9/notes(?:/(\d+))?(?:\?.*)?", self.path)
                return bool(m), int(m.group(1)) if m and m.group(1) else None

            def _handle(self) -> None:
                notes.methods.append(self.command)
                if self.headers.get("PRIVATE-TOKEN") != token:
                    return self._answer(401, {"message": "401 Unauthorized"})
                ok, note_id = self._route()
                if not ok:
                    return self._answer(404, {"message": "404 Not found"})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                if self.command == "GET":
                    return self._answer(200, notes.notes)
                if self.command == "POST":
                    note = {"id": len(notes.notes) + 1, "body": body["body"], "author": {"username": "ftops-bot"}}
                    notes.notes.append(note)
                    return self._answer(201, note)
                note = next((n for n in notes.notes if n["id"] == note_id), None)
                if note is None:
                    return self._answer(404, {"message": "404 Note Not Found"})
                note["body"] = body["body"]
                return self._answer(200, note)

            do_GET = do_POST = do_PUT = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v4"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_gitlab_job_keeps_one_sticky_note_on_the_merge_request(tmp_path):
    script = next(line for line in yaml.safe_load(GITLAB.read_text())["ftops-plan"]["script"] if "<<'PY'" in line)
    api = GitLabNotes("glpat-test")
    try:
        env = {**os.environ, "CI_API_V4_URL": api.url, "CI_PROJECT_ID": "42", "CI_MERGE_REQUEST_IID": "9",
               "FTOPS_GITLAB_TOKEN": "glpat-test"}
        for plan in (f"{MARKER}\n## ftops plan: first\n", f"{MARKER}\n## ftops plan: second\n"):
            (tmp_path / "plan.md").write_text(plan)
            done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
    finally:
        api.server.shutdown()
        api.server.server_close()
    assert [n["body"] for n in api.notes] == ["please retrain", f"{MARKER}\n## ftops plan: second\n"]
    assert api.methods == ["GET", "POST", "GET", "PUT"]


# ----------------------------------------------------------------------------- pre-commit


def test_the_pre_commit_manifest_is_valid():
    done = subprocess.run([str(BIN / "pre-commit"), "validate-manifest", str(HOOKS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    hook = yaml.safe_load(HOOKS.read_text())[0]
    assert hook["id"] == "ftops-validate" and hook["entry"] == "ftops validate" and hook["pass_filenames"] is False


def test_the_pre_commit_hook_runs_ftops_validate_in_a_fresh_repository(git_repo, tmp_path):
    """pre-commit's own `try-repo` against this checkout (uncommitted changes included), offline:
    the hook is `language: system`, so it runs the ftops installed here."""
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    git_repo.write("models/tiny/config.json", "{}")
    git_repo.write("corpora/kb/a.md", "# A\n")
    git_repo.write("data/tickets.jsonl.dvc", dvc_pointer("a" * 32, 4_000_000, 1000))
    git_repo.write("specs/triage.yaml", SPEC)
    git_repo.git("add", "-A")

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "pre-commit"), "try-repo", str(ROOT), "ftops-validate", "--all-files"],
                              cwd=git_repo.root, env=env, capture_output=True, text=True, timeout=600)

    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"ftops validate\.+Passed", ok.stdout)
    git_repo.write("specs/triage.yaml", SPEC.replace("epochs: 2", "epocs: 2"))
    git_repo.git("add", "-A")
    bad = run()
    assert bad.returncode == 1
    assert re.search(r"ftops validate\.+Failed", bad.stdout) and "spec.training.epocs" in bad.stdout
