"""`ftops plan` on a real git repository: add a spec, change the data version, change only
serving, change a gate, change the corpus, change one training field, delete a spec; and an
invalid head. The datasets here are .dvc pointers without data behind them (what the plan reads
from git); tests/plan/test_plan_pr.py runs the same cases on real DVC-versioned data."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from controller.catalog import load_operator_config
from controller.plan import plan_change, to_markdown
from controller.render import template_version
from controller.source import GitSource, SpecCache, load_specs_at

SPEC = textwrap.dedent(
    """\
    apiVersion: ftops.dev/v1alpha1
    kind: FineTune
    metadata:
      name: triage
      owner: support
    spec:
      needs: [consistentFormat]
      baseModel: {uri: models/tiny, parametersBillions: 7}
      dataset: {path: data/tickets.jsonl}
      method: {type: lora, r: 8}
      training: {epochs: 2, learningRate: 1.0e-3}
      hardware: {gpuType: a100-80gb}
      evaluation:
        task: {metric: exact_match, min: 0.9}
        format: {regex: '^\\{.*\\}$'}
      serving: {corpus: corpora/kb, replicas: 1}
      budget: {maxUsd: 100}
    """
)


def dvc_pointer(md5: str, size: int, examples: int) -> str:
    return f"outs:\n- md5: {md5}\n  size: {size}\n  hash: md5\n  path: tickets.jsonl\nmeta:\n  ftops:\n    examples: {examples}\n"


def run_cli(repo, *args):
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "plan", "--repo", str(repo), *args],
        capture_output=True, text=True,
    )


@pytest.fixture
def history(git_repo):
    """A repo with one commit per kind of change; returns (repo, {label: sha})."""
    repo = git_repo
    repo.write("models/tiny/config.json", "{}")
    repo.write("corpora/kb/a.md", "# A\n")
    repo.write("README.md", "gitops repo\n")
    shas = {"empty": repo.commit("empty")}
    repo.write("data/tickets.jsonl.dvc", dvc_pointer("a" * 32, 4_000_000, 1000))
    repo.write("specs/triage.yaml", SPEC)
    shas["added"] = repo.commit("add triage")
    repo.write("data/tickets.jsonl.dvc", dvc_pointer("b" * 32, 4_100_000, 1020))
    shas["data"] = repo.commit("new data version")
    repo.git("checkout", "-q", "-b", "epochs", shas["data"])
    repo.write("specs/triage.yaml", SPEC.replace("epochs: 2", "epochs: 5"))
    shas["epochs"] = repo.commit("train longer")
    repo.git("checkout", "-q", "main")
    repo.write("specs/triage.yaml", SPEC.replace("replicas: 1", "replicas: 3"))
    shas["serving"] = repo.commit("scale serving")
    repo.write("specs/triage.yaml", SPEC.replace("replicas: 1", "replicas: 3").replace("min: 0.9", "min: 0.95"))
    shas["gate"] = repo.commit("raise the bar")
    repo.write("corpora/kb/b.md", "# B\n")
    shas["corpus"] = repo.commit("new document")
    repo.write("specs/triage.yaml", SPEC.replace("replicas: 1", "replicas: 3").replace("min: 0.9", "min: 0.95").replace("owner: support", "owner: support\n  labels: {tier: gold}"))
    shas["labels"] = repo.commit("label only")
    repo.remove("specs/triage.yaml")
    shas["deleted"] = repo.commit("delete triage")
    return repo, shas


def plan_between(repo, base, head):
    source = GitSource(repo.root)
    cache = SpecCache()
    gpus = sorted(load_operator_config().gpus)
    b = load_specs_at(source, base, cache, gpus) if base else {}
    h = load_specs_at(source, head, cache, gpus)
    from controller.source import corpus_version

    corpora = {"specs/triage.yaml": (corpus_version(source, base, "corpora/kb") if base else None, corpus_version(source, head, "corpora/kb"))}
    return plan_change(b, h, load_operator_config(), template_version(), base, head, corpora)


def only(plan):
    changed = plan.changed()
    assert len(changed) == 1, [p.to_dict() for p in plan.specs]
    return changed[0]


def test_added_spec_trains_evaluates_gates_and_deploys(history):
    repo, shas = history
    p = only(plan_between(repo, shas["empty"], shas["added"]))
    assert p.change == "added"
    assert [a.kind for a in p.actions] == ["PrepareData", "Train", "Evaluate", "Gate", "Deploy"]
    assert p.run_head and len(p.run_head) == 12
    # 4,000,000 bytes / 4 bytes per token × 0.85 × 2 epochs = 1.7M tokens at 110 tok/s on an A100 at $2.50/h
    assert p.cost is not None and [ph.phase for ph in p.cost.phases] == ["training", "evaluation"]
    assert p.cost.training is not None
    assert p.cost.training.usd == pytest.approx(1_700_000 / 110 / 3600 * 2.50, rel=1e-6)
    # the evaluation: test split 0.15 × 1M + regression 30 × 1,000 × 2 + 100 samples × 1,000 × 2 tokens at 3 × 110 tok/s, + 0.1 h
    evaluation = p.cost.phases[1]
    assert evaluation.wall_hours == pytest.approx((150_000 + 60_000 + 200_000) / 330 / 3600 + 0.1, rel=1e-6)
    assert p.cost.usd == pytest.approx(p.cost.training.usd + evaluation.wall_hours * 2.50, rel=1e-6)
    assert any("regression suite" in a for a in evaluation.assumptions)
    assert not p.budget_breach


def test_data_version_change_retrains_and_names_the_md5(history):
    repo, shas = history
    p = only(plan_between(repo, shas["added"], shas["data"]))
    assert p.change == "changed"
    assert p.run_base != p.run_head
    assert [a.kind for a in p.actions][:4] == ["PrepareData", "Train", "Evaluate", "Gate"]
    assert p.diff[0].path == "data.md5" and p.diff[0].old == "a" * 32 and p.diff[0].new == "b" * 32
    assert "data.md5" in p.actions[1].reason


def test_serving_only_change_redeploys_without_training(history):
    repo, shas = history
    p = only(plan_between(repo, shas["data"], shas["serving"]))
    assert p.run_base == p.run_head
    assert [a.kind for a in p.actions] == ["Redeploy"]
    assert "spec.serving.replicas 1 → 3" in p.actions[0].reason
    assert [d.path for d in p.diff] == ["spec.serving.replicas"]
    # a rollout trains and evaluates nothing: it costs nothing
    assert p.cost is not None and [ph.phase for ph in p.cost.phases] == ["rollout"] and p.cost.usd == 0


def test_gate_change_reevaluates_without_training(history):
    repo, shas = history
    p = only(plan_between(repo, shas["serving"], shas["gate"]))
    assert p.run_base == p.run_head
    assert [a.kind for a in p.actions] == ["Evaluate", "Gate", "Deploy"]
    assert "spec.evaluation.task.min 0.9 → 0.95" in p.actions[0].reason
    # "re-evaluate without retraining" is priced as that: the evaluation, not a training run
    retrain = only(plan_between(repo, shas["empty"], shas["gate"])).cost
    assert p.cost is not None and [ph.phase for ph in p.cost.phases] == ["evaluation"]
    assert retrain is not None and p.cost.usd == pytest.approx(retrain.phases[1].usd) and p.cost.usd < retrain.usd / 5


def test_corpus_change_reevaluates_the_existing_run_before_it_redeploys(history):
    """A new document changes what the served system answers, so the run is evaluated again on
    the new corpus (no retraining) and redeployed only if it still passes."""
    repo, shas = history
    p = only(plan_between(repo, shas["gate"], shas["corpus"]))
    assert [a.kind for a in p.actions] == ["Evaluate", "Gate", "Deploy"]
    assert p.run_base == p.run_head
    assert p.actions[0].reason.startswith("serving configuration changed (corpus git:")
    assert "without retraining" in p.actions[0].reason
    assert p.cost is not None and [ph.phase for ph in p.cost.phases] == ["evaluation"]


def test_label_change_does_not_retrain(history):
    repo, shas = history
    p = only(plan_between(repo, shas["corpus"], shas["labels"]))
    assert [a.kind for a in p.actions] == ["Update"]
    assert "metadata.labels.tier" in p.actions[0].reason
    assert p.cost is not None and p.cost.phases == () and p.cost.usd == 0


def test_deleted_spec_prunes_but_keeps_artifacts(history):
    repo, shas = history
    p = only(plan_between(repo, shas["labels"], shas["deleted"]))
    assert p.change == "removed"
    assert p.actions[0].kind == "Prune"
    assert "artifacts, checkpoints and the audit ledger are kept" in p.actions[0].reason


def test_unchanged_commit_plans_nothing(history):
    repo, shas = history
    plan = plan_between(repo, shas["serving"], shas["serving"])
    assert plan.changed() == []
    assert "merging does nothing" in to_markdown(plan)


def test_budget_breach_is_flagged(git_repo):
    git_repo.write("models/tiny/config.json", "{}")
    git_repo.write("corpora/kb/a.md", "# A\n")
    git_repo.write("data/tickets.jsonl.dvc", dvc_pointer("c" * 32, 400_000_000, 100_000))
    git_repo.write("specs/triage.yaml", SPEC)
    sha = git_repo.commit("big data")
    p = only(plan_between(git_repo, None, sha))
    assert p.budget_breach
    assert "over budget" in to_markdown(plan_between(git_repo, None, sha))


def test_one_line_change_gives_a_small_readable_plan(history):
    """epochs 2 -> 5: the run id changes, so every object is renamed; paired by role, the manifest
    diff is the one field that changed, and the visible comment stays short."""
    repo, shas = history
    done = run_cli(repo.root, "--base", shas["data"], "--head", shas["epochs"], "--no-data")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    visible = re.sub(r"<details>.*?</details>", "", text, flags=re.S)
    assert len(visible) < 2_500 and visible.count("\n") < 45, visible
    assert "| `data[\"run.json\"].training.epochs` | `2.0` | `5.0` |" in text
    assert "Every object follows run id" in text
    assert text.count("<details>") == 2  # the cost assumptions and the full render at head
    assert len(text) < 20_000


def test_cli_markdown_json_and_detailed_exit_codes(history):
    repo, shas = history
    done = run_cli(repo.root, "--base", shas["empty"], "--head", shas["added"], "--no-data")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<!-- ftops-plan -->\n")
    assert "| triage | added | PrepareData → Train → Evaluate → Gate → Deploy |" in done.stdout
    done = run_cli(repo.root, "--base", shas["added"], "--head", shas["data"], "--output", "json", "--no-data")
    payload = json.loads(done.stdout)
    assert payload["summary"]["changed"] == 1 and payload["specs"][0]["runBase"] != payload["specs"][0]["runHead"]
    assert payload["changes"] is True and payload["valid"] is True
    assert payload["cost"]["usd"] == payload["specs"][0]["cost"]["usd"] > 0
    # --detailed-exitcode, as terraform plan: 2 changes, 0 none, 1 errors (a bad revision included)
    assert run_cli(repo.root, "--base", shas["added"], "--head", shas["data"], "--no-data", "--detailed-exitcode").returncode == 2
    assert run_cli(repo.root, "--base", shas["serving"], "--head", shas["serving"], "--detailed-exitcode").returncode == 0
    done = run_cli(repo.root, "--head", "no-such-branch")
    assert done.returncode == 2 and "revision 'no-such-branch' does not exist" in done.stderr
    assert run_cli(repo.root, "--head", "no-such-branch", "--detailed-exitcode").returncode == 1


def test_a_dataset_that_cannot_be_pulled_fails_the_plan(history):
    """These pointers have no DVC remote behind them: the merge would retrain on data the
    controller cannot pull, so the plan says so and fails, naming the dataset."""
    repo, shas = history
    done = run_cli(repo.root, "--base", shas["added"], "--head", shas["data"], "--output", "json", "--detailed-exitcode")
    assert done.returncode == 1, done.stdout
    payload = json.loads(done.stdout)
    assert payload["valid"] is False
    data = payload["specs"][0]["data"]
    assert data["path"] == "data/tickets.jsonl" and data["unavailable"] and not data["ok"]
    assert any(e["code"] == data["unavailableCode"] and e["file"] == "data/tickets.jsonl" for e in payload["errors"])


def test_invalid_head_exits_nonzero_and_names_the_field(history):
    repo, shas = history
    repo.git("checkout", "-q", shas["added"])
    repo.write("specs/triage.yaml", SPEC.replace("epochs: 2", "epocs: 2"))
    repo.write("specs/other.yaml", SPEC.replace("name: triage", "name: other"))
    head = repo.commit("typo")
    done = run_cli(repo.root, "--base", shas["added"], "--head", head, "--no-data")
    assert done.returncode == 1
    assert "spec.training.epocs" in done.stdout and "Did you mean 'epochs'" in done.stdout
    # the valid spec added in the same commit is still planned: one bad spec hides nothing
    assert "| other | added |" in done.stdout
    # an invalid spec does nothing on merge, and says so in words
    assert "| triage | invalid | nothing (invalid at head) |" in done.stdout
    assert "None" not in done.stdout.split("### ")[0]
    assert "error(s) block this merge" in done.stdout


def test_budget_breach_is_an_error_unless_configured_as_a_warning(git_repo):
    git_repo.write("models/tiny/config.json", "{}")
    git_repo.write("corpora/kb/a.md", "# A\n")
    git_repo.write("data/tickets.jsonl.dvc", dvc_pointer("c" * 32, 400_000_000, 100_000))
    git_repo.write("specs/triage.yaml", SPEC)
    sha = git_repo.commit("big data")
    assert run_cli(git_repo.root, "--head", sha, "--no-data").returncode == 1
    done = run_cli(git_repo.root, "--head", sha, "--no-data", "--budget-breach", "warning", "-o", "json")
    assert done.returncode == 0, done.stdout
    problems = json.loads(done.stdout)["specs"][0]["problems"]
    assert any(p["code"] == "BudgetExceeded" and p["level"] == "warning" for p in problems)


def test_advisor_error_below_200_examples_fails_the_plan(git_repo):
    git_repo.write("models/tiny/config.json", "{}")
    git_repo.write("corpora/kb/a.md", "# A\n")
    git_repo.write("data/tickets.jsonl.dvc", dvc_pointer("d" * 32, 40_000, 150))
    git_repo.write("specs/triage.yaml", SPEC)
    sha = git_repo.commit("tiny data")
    done = run_cli(git_repo.root, "--head", sha, "--no-data")
    assert done.returncode == 1
    assert "150 examples: fine-tuning needs at least 200" in done.stdout


def test_the_comment_stays_under_githubs_limit_and_says_what_it_cut(git_repo):
    """40 specs retrained at once: the full renders, then the long tables, are cut until the
    comment fits GitHub's 65,536 characters, and the comment says so; JSON keeps everything."""
    git_repo.write("models/tiny/config.json", "{}")
    git_repo.write("corpora/kb/a.md", "# A\n")
    for i in range(40):
        git_repo.write(f"data/t{i}.jsonl.dvc", dvc_pointer("ab" * 15 + f"{i:02x}", 4_000_000, 1000).replace("tickets", f"t{i}"))
        git_repo.write(f"specs/s{i}.yaml", SPEC.replace("name: triage", f"name: s{i}").replace("tickets", f"t{i}"))
    base = git_repo.commit("forty specs")
    for i in range(40):
        git_repo.write(f"specs/s{i}.yaml", SPEC.replace("name: triage", f"name: s{i}").replace("tickets", f"t{i}")
                       .replace("epochs: 2", "epochs: 4"))
    head = git_repo.commit("train them all longer")
    done = run_cli(git_repo.root, "--base", base, "--head", head, "--no-data")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert len(text) <= 65_536 - 1_536 < 65_536
    assert "✂️ cut to stay under GitHub's 65,536-character comment limit: the full rendered manifests" in text
    assert text.count("| changed |") >= 40  # the summary table keeps every spec
    full = json.loads(run_cli(git_repo.root, "--base", base, "--head", head, "--no-data", "-o", "json").stdout)
    assert len(full["specs"]) == 40 and all(s["manifests"]["fullRenderAtHead"] for s in full["specs"])


def test_max_hours_is_compared_with_the_training_estimate_and_its_top_of_range():
    from controller.cost import HIGH, max_hours_warnings

    assert max_hours_warnings(30.0, 24) and "exceeds hardware.maxHours 24" in max_hours_warnings(30.0, 24)[0]
    near = max_hours_warnings(20.0, 24)
    assert near and f"({20.0 * HIGH:,.1f} h)" in near[0]  # fits the point estimate, not the range
    assert max_hours_warnings(10.0, 24) == []
