"""The cases a reviewer tries on a pull request, on a real git history with real DVC-versioned
data (the demo repository: a local DVC remote, 300 chat examples, the tiny model's tokenizer):
broken rows appended to the dataset, a dead DVC remote, a one-line change, a gates-only change,
a label-scrambling relabel, a deleted spec and an invalid head. Each branch starts at the same
base commit; `ftops plan` runs as CI runs it (a subprocess, JSON and markdown)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller import demo

BROKEN_ROWS = ['{"messages": [{"role": "user", "content": "refund?"}]}', '{"messages": [{"role": "user", "content": "x"}, ']


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def pr_history(tmp_path_factory):
    """{label: sha}: base, then one branch from base per case."""
    from controller.data import dvc

    tmp = tmp_path_factory.mktemp("pr")
    repo = demo.build(tmp / "repo", tmp / "remote", examples=300)
    root = repo.root
    data = root / demo.DATA_PATH
    original = data.read_bytes()
    shas = {"base": git(root, "rev-parse", "HEAD")}

    def branch(label: str, change) -> None:
        git(root, "checkout", "-q", "-B", label, shas["base"])
        data.write_bytes(original)
        change()
        shas[label] = demo.commit(root, label)

    def epochs() -> None:
        repo.spec_path.write_text(demo.spec_text(epochs=5))

    def gates() -> None:
        repo.spec_path.write_text(demo.spec_text(task_min=0.95))

    def broken() -> None:
        data.write_bytes(original + ("\n".join(BROKEN_ROWS) + "\n").encode())
        dvc.version(root, demo.DATA_PATH)

    def relabel() -> None:
        demo.degrade_labels(root)
        demo.write_reviews(root, demo.SPEC_NAME)  # the reviews were redone too: DataReady alone would pass
        dvc.version(root, demo.DATA_PATH)

    def deleted() -> None:
        git(root, "rm", "-q", str(repo.spec_path.relative_to(root)))

    def invalid() -> None:
        repo.spec_path.write_text(demo.spec_text().replace("epochs:", "epocs:"))

    for label, change in (("epochs", epochs), ("gates", gates), ("broken", broken), ("relabel", relabel),
                          ("deleted", deleted), ("invalid", invalid)):
        branch(label, change)
    git(root, "checkout", "-q", "main")
    data.write_bytes(original)
    return repo, shas


_PLANS: dict[tuple[str, ...], tuple[int, str, dict]] = {}


def plan(repo, shas, head: str, *extra: str) -> tuple[int, str, dict]:
    """(exit code, the markdown comment, the JSON plan) of one `ftops plan` run, as CI runs it;
    runs are kept per arguments so the cases that read the same plan share one run."""
    key = (head, *extra)
    if key not in _PLANS:
        out = Path(repo.root).parent / f"plan-{len(_PLANS)}.json"
        done = subprocess.run([sys.executable, "-m", "controller.cli", "plan", "--repo", str(repo.root), "--base",
                               shas["base"], "--head", shas[head], "--detailed-exitcode", "--json-out", str(out), *extra],
                              capture_output=True, text=True)
        assert "Traceback" not in done.stderr, done.stderr
        _PLANS[key] = (done.returncode, done.stdout, json.loads(out.read_text()))
    return _PLANS[key]


def only_spec(payload: dict) -> dict:
    assert len(payload["specs"]) == 1, payload
    return payload["specs"][0]


def test_broken_rows_fail_the_plan_with_their_lines_in_the_repo_file(pr_history):
    repo, shas = pr_history
    code, text, payload = plan(repo, shas, "broken")
    assert code == 1
    assert payload["valid"] is False
    data = only_spec(payload)["data"]
    assert data["path"] == demo.DATA_PATH and data["errors"] == 2 and not data["ok"]
    errors = [i for i in data["issues"] if i["severity"] == "error"]
    assert {i["line"] for i in errors} == {301, 302}
    assert all(i["file"] == demo.DATA_PATH for i in data["issues"])  # never a scratch copy's path
    assert {"no_assistant", "invalid_json"} <= set(data["counts"])
    assert any(e["code"] == "DataInvalid" and e["file"] == demo.DATA_PATH and e["line"] == 301 for e in payload["errors"])
    assert "error(s) block this merge" in text and f"`{demo.DATA_PATH}:301`" in text
    assert "/tmp" not in text.split("<details>")[0]


def test_a_dead_dvc_remote_fails_the_plan(pr_history):
    repo, shas = pr_history
    moved = repo.remote.with_name("remote-gone")
    repo.remote.rename(moved)
    try:
        code, _, payload = plan(repo, shas, "epochs", "--workdir", str(moved.parent / "dead-remote-work"))
    finally:
        moved.rename(repo.remote)
    assert code == 1
    data = only_spec(payload)["data"]
    assert data["unavailableCode"] == "RemoteUnreachable" and str(repo.remote) in data["unavailable"]
    assert [e["code"] for e in payload["errors"]] == ["RemoteUnreachable"]


def test_a_one_line_change_is_a_small_readable_plan_priced_as_a_retrain(pr_history):
    repo, shas = pr_history
    code, text, _ = plan(repo, shas, "epochs")
    assert code == 2, text  # valid, and the merge changes something
    visible = re.sub(r"<details>.*?</details>", "", text, flags=re.S)
    assert len(visible) < 3_000 and visible.count("\n") < 50, visible
    assert f'`data["run.json"].training.epochs` | `{float(demo.EPOCHS)}` | `5.0` |' in text
    assert "training + evaluation" in text
    assert "(unchanged since base)" in text  # the data the new run trains on was pulled and checked
    assert len(text) < 20_000


def test_the_plan_counts_the_tokens_data_check_counts(pr_history, tmp_path):
    """One counter: `ftops data check` on the dataset and the plan's cost agree, token for token."""
    repo, shas = pr_history
    _, _, payload = plan(repo, shas, "epochs")
    spec = only_spec(payload)
    training = spec["cost"]["phases"][0]
    assert training["phase"] == "training"
    checked = subprocess.run([sys.executable, "-m", "controller.cli", "data", "check", str(repo.root / demo.DATA_PATH),
                              "--spec", str(repo.spec_path), "-o", "json"], capture_output=True, text=True, cwd=repo.root)
    report = json.loads(checked.stdout)
    assert report["tokens"]["total"] == spec["data"]["tokens"]
    assert report["tokens"]["method"] == spec["data"]["tokensMethod"]
    epochs5 = round(report["tokens"]["total"] * 0.85 * 5)
    assert training["trainingTokens"] == epochs5
    assert any(f"dataset = {report['tokens']['total']:,} tokens" in a for a in training["assumptions"])


def test_a_gates_only_change_costs_its_evaluation_not_a_retrain(pr_history):
    repo, shas = pr_history
    code, _, payload = plan(repo, shas, "gates")
    assert code == 2
    spec = only_spec(payload)
    assert [a["action"] for a in spec["actions"]] == ["Evaluate", "Gate", "Deploy"]
    assert [p["phase"] for p in spec["cost"]["phases"]] == ["evaluation"]
    assert spec["runBase"] == spec["runHead"] and spec["data"] is None  # nothing to pull: no new run
    # the manifest diff shows what the merge applies: the new evaluation's eval.json, paired by role
    manifests = spec["manifests"]
    assert [i["field"] for i in manifests["identities"]] == ["evaluation id"]
    assert [(o["role"], o["change"]) for o in manifests["objects"]] == [("evaluation config (eval.json)", "changed")]


def test_a_label_scrambling_relabel_is_warned_about_and_never_gets_a_tick(pr_history):
    repo, shas = pr_history
    code, text, payload = plan(repo, shas, "relabel")
    spec = only_spec(payload)
    data = spec["data"]
    assert data["ok"] and data["dataReady"]["status"] == "True"  # the reviews were redone: DataReady alone passes
    shift = data["shift"]
    assert shift["sharedPrompts"] >= 250 and shift["relabelledShare"] > 0.3
    assert any("changed their answer" in w for w in data["warnings"])
    assert code == 2  # a warning, not an error: the plan cannot know a relabel is wrong
    data_block = text.split("**Data**", 1)[1].split("**Kubernetes manifests**", 1)[0]
    assert "✅" not in data_block.split("DataReady")[0] and "⚠️" in data_block


def test_a_deleted_spec_prunes_and_costs_nothing(pr_history):
    repo, shas = pr_history
    code, _, payload = plan(repo, shas, "deleted")
    assert code == 2
    spec = only_spec(payload)
    assert spec["change"] == "removed" and [a["action"] for a in spec["actions"]] == ["Prune"]
    assert {o["change"] for o in spec["manifests"]["objects"]} == {"removed"}
    assert payload["cost"]["usd"] == 0


def test_an_invalid_head_fails_and_says_what_happens_in_words(pr_history):
    repo, shas = pr_history
    code, text, _ = plan(repo, shas, "invalid")
    assert code == 1
    assert f"| {demo.SPEC_NAME} | invalid | nothing (invalid at head) |" in text
    assert "on merge: None" not in text and "| None |" not in text
    assert "spec.training.epocs" in text


def test_an_unchanged_head_plans_nothing_and_exits_0(pr_history):
    repo, shas = pr_history
    done = subprocess.run([sys.executable, "-m", "controller.cli", "plan", "--repo", str(repo.root), "--base", shas["base"],
                           "--head", shas["base"], "--detailed-exitcode"], capture_output=True, text=True)
    assert done.returncode == 0 and "merging does nothing" in done.stdout


@pytest.fixture(autouse=True)
def _no_leftover_remote(pr_history):
    repo, _ = pr_history
    yield
    gone = repo.remote.with_name("remote-gone")
    if gone.exists() and not repo.remote.exists():
        shutil.move(str(gone), str(repo.remote))
