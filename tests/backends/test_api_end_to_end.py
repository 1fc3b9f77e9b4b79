"""Managed fine-tuning end to end, against the fake provider over HTTP: a GitOps repo with one
spec of `method.type: api` (DVC-versioned tickets, expert reviews, a corpus), `ftops plan`
pricing it at the provider's rate, then `ftops reconcile` processes killed with SIGKILL at every
step boundary (the crash matrix) until the job has trained at the provider, the evaluation has run
the served configuration against the provider's chat endpoint, the gate has decided and the
gateway serves the fine-tuned model with retrieval in front. Then a second commit retrains and the
gateway's route switches to the new model id; a third one whose model the provider got wrong fails
its gate while the second keeps serving; `ftops rollback` switches the route back to the first."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from fakeprovider import FakeProvider, Served  # noqa: E402
from fakeprovider.answer import Example  # noqa: E402
from fakeprovider.fixtures import KEY_ENV, operator_override  # noqa: E402

from controller.ledger import Ledger  # noqa: E402

SPEC = "support-api"
DATA = "data/tickets.jsonl"
STEPS = ("observe", "data", "train", "evaluate", "gate", "deploy")
BOUNDARIES = [f"{edge}-{step}" for step in STEPS for edge in ("before", "after")]
SOURCES = {"billing": "refunds.md", "account": "login-help.md", "bug": "status-page.md"}
CORPUS = {
    "refunds.md": "# Refund policy\n\nRefunds are available within 30 days of a charge. A refund goes back to the original "
                  "payment method and takes 5 to 7 business days.\n",
    "login-help.md": "# Login help\n\nAfter five failed sign-in attempts an account is locked for 15 minutes. Password "
                     "reset links expire after 1 hour.\n",
    "status-page.md": "# Incidents\n\nKnown outages are posted on the status page within 10 minutes. When the app shows "
                      "a blank page, check the status page and clear the browser cache.\n",
}
SPEC_TEXT = """\
apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {{name: {name}, owner: support-platform}}
spec:
  needs: [consistentFormat, domainBehavior, currentData, citations]
  dataset: {{path: {data}, testFraction: 0.15}}
  method:
    type: api
    provider: fakeai
    model: gpt-4o-mini-2024-07-18
    hyperparameters: {{epochs: {epochs}, learningRateMultiplier: auto, batchSize: auto}}
  evaluation:
    task: {{metric: json_field_match, fields: [label, source], min: 0.9}}
    format:
      jsonSchema:
        type: object
        required: [label, source]
        properties:
          label: {{enum: [billing, bug, account]}}
          source: {{type: string}}
      min: 1.0
    regression: {{maxDrop: 0.05}}
    compare: {{mustBeat: [base], samples: 20}}
  serving: {{corpus: corpora/support, retriever: bm25, topK: 2, maxTokens: 48}}
"""


def spec_text(epochs: int) -> str:
    return SPEC_TEXT.format(name=SPEC, data=DATA, epochs=epochs)


def write_tickets(root: Path, n: int = 240) -> None:
    """The tiny task's tickets, each answered with its label and the article that covers it."""
    from controller.tiny.task import generate_examples

    lines = []
    for example in generate_examples(n, seed=5):
        label = json.loads(example["messages"][-1]["content"])["label"]
        example["messages"][-1]["content"] = json.dumps({"label": label, "source": SOURCES[label]})
        lines.append(json.dumps(example))
    (root / DATA).parent.mkdir(parents=True, exist_ok=True)
    (root / DATA).write_text("\n".join(lines) + "\n")


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def provider():
    knowledge = [json.loads(line) for line in (Path(__file__).resolve().parents[2] / "controller" / "defaults" /
                                               "regression.jsonl").read_text().splitlines() if line.strip()]
    served = Served(FakeProvider(advance_on_poll=True, general_knowledge=[
        Example.from_messages([*k["messages"], {"role": "assistant", "content": k["answer"]}]) for k in knowledge]))
    yield served
    served.close()


@pytest.fixture(scope="module")
def world(provider, tmp_path_factory):
    """The repo at its first commit (no spec) and at the one that adds the api spec."""
    from controller import demo
    from controller.data import dvc

    root = tmp_path_factory.mktemp("api-e2e")
    repo, remote, home = root / "repo", root / "remote", root / "home"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "commit.gpgsign", "false")
    (repo / "README.md").write_text("support fine-tunes\n")
    base = demo.commit(repo, "start")
    write_tickets(repo)
    for name, text in CORPUS.items():
        (repo / "corpora" / "support").mkdir(parents=True, exist_ok=True)
        (repo / "corpora" / "support" / name).write_text(text)
    (repo / "specs").mkdir()
    (repo / "specs" / f"{SPEC}.yaml").write_text(spec_text(epochs=2))
    dvc.version(repo, DATA, remote_url=str(remote))
    demo.write_reviews(repo, SPEC)
    head = demo.commit(repo, "fine-tune the ticket router at the provider")
    operator = root / "operator.yaml"
    operator.write_text(yaml.safe_dump(operator_override(provider.url)))
    env = {**os.environ, "FTOPS_OPERATOR_CONFIG": str(operator), KEY_ENV: provider.provider.api_keys[0],
           "OMP_NUM_THREADS": "1"}
    env.pop("FTOPS_CRASH_AT", None)
    yield {"repo": repo, "home": home, "base": base, "head": head, "env": env, "operator": operator}
    from controller.catalog import load_operator_config
    from controller.serve.api_deploy import ApiServing

    ApiServing(home / "store", load_operator_config(str(operator))).stop(SPEC)


def ftops(world, *args: str, crash_at: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(world["env"])
    if crash_at:
        env["FTOPS_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout + 60)


def reconcile(world, crash_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return ftops(world, "reconcile", "--repo", str(world["repo"]), "--home", str(world["home"]), "--until-settled",
                 str(timeout), crash_at=crash_at, timeout=timeout)


def status(world) -> dict:
    return json.loads((world["home"] / "status" / f"{SPEC}.json").read_text())


@pytest.fixture(scope="module")
def pipeline(world, provider):
    """The plan of the merge, then the crash matrix, then a pass that settles."""
    plan = ftops(world, "plan", "--repo", str(world["repo"]), "--base", world["base"], "--head", world["head"], "-o", "json")
    crashes = {b: reconcile(world, crash_at=b).returncode for b in BOUNDARIES}
    settled = reconcile(world)
    return {"plan": plan, "crashes": crashes, "settled": settled}


def test_plan_prices_the_run_at_the_providers_rate_per_training_token(pipeline):
    plan = pipeline["plan"]
    assert plan.returncode == 0, plan.stdout + plan.stderr
    [spec] = [s for s in json.loads(plan.stdout)["specs"] if s["name"] == SPEC]
    assert spec["decision"] == "Train"
    training = next(p for p in spec["cost"]["phases"] if p["phase"] == "training")
    assert training["gpuHours"] == 0 and training["usd"] > 0
    assert training["usd"] == pytest.approx(training["trainingTokens"] / 1e6 * 3.00, abs=0.01)
    assert any("2 epochs" in a for a in training["assumptions"])
    assert any("$3.00 per million training tokens (fakeai, gpt-4o-mini-2024-07-18)" in a for a in training["assumptions"])


def test_kill_9_at_every_boundary_then_one_job_at_the_provider_and_each_fact_once(pipeline, world, provider):
    assert pipeline["crashes"] == {b: -signal.SIGKILL for b in BOUNDARIES}, pipeline["crashes"]
    settled = pipeline["settled"]
    assert settled.returncode == 0, settled.stdout + settled.stderr
    state = status(world)
    assert state["phase"] == "Ready", state
    run = state["runId"]
    [job] = provider.provider.jobs_for_run(run)
    assert len(provider.provider.jobs) == 1 and provider.provider.count("POST", "/v1/fine_tuning/jobs") == 1
    assert provider.provider.count("POST", "/v1/files") == 2  # the train and test splits, uploaded once each
    ledger = Ledger(world["home"] / "ledger.db")
    kinds = Counter(e.kind for e in ledger.events())
    for kind in ("run.submitted", "run.finished", "eval.reported", "gate.decided", "deploy.promoted"):
        assert kinds[kind] == 1, (kind, kinds)
    submitted = next(ledger.events(kind="run.submitted")).payload
    assert submitted["backend"] == "api" and submitted["job"] == job.id and submitted["trainingFile"] == job.training_file
    assert submitted["baseModel"] == "api://fakeai/gpt-4o-mini-2024-07-18"
    finished = next(ledger.events(kind="run.finished")).payload
    assert finished["provider"]["fineTunedModel"] == job.fine_tuned_model and finished["provider"]["job"] == job.id
    gate = next(ledger.events(kind="gate.decided")).payload
    assert gate["passed"] is True
    report = json.loads((world["home"] / "store" / SPEC / run / "eval" / "report.json").read_text())
    assert report["status"] == "completed" and report["servingConfig"]["sha256"]
    metrics = report["metrics"]  # what the evaluation measured on the provider's answers
    assert metrics["task.json_field_match"] >= 0.9 and metrics["format.compliance"] == 1.0
    assert metrics["compare.fine-tuned.score"] > metrics["compare.base.score"] and metrics["regression.drop"] <= 0.05
    answered = {m for m, p in provider.provider.requests if p == "/v1/chat/completions"}
    assert answered  # the evaluation generated at the provider
    assert ledger.verify().ok


def test_the_gateway_serves_the_fine_tuned_model_with_retrieval_and_citations(pipeline, world, provider):
    from openai import OpenAI

    from controller.catalog import load_operator_config
    from controller.serve.api_deploy import ApiServing

    serving = ApiServing(world["home"] / "store", load_operator_config(str(world["operator"]))).current(SPEC)
    assert serving is not None and serving.healthy and serving.run_id == status(world)["runId"]
    before = provider.provider.count("POST", "/v1/chat/completions")
    reply = OpenAI(base_url=serving.url + "/v1", api_key="unused", max_retries=0).chat.completions.create(
        model=SPEC, messages=[{"role": "system", "content": "Classify the support ticket."},
                              {"role": "user", "content": "Hi, can I get a refund for this charge? It started yesterday."}],
    ).model_dump()
    answer = json.loads(reply["choices"][0]["message"]["content"])
    assert answer == {"label": "billing", "source": "refunds.md"}
    assert reply["citations"][0]["path"] == "refunds.md"  # the article it cited, among those retrieved
    assert provider.provider.count("POST", "/v1/chat/completions") == before + 1  # answered by the provider


def test_a_retrain_switches_the_route_a_bad_model_fails_its_gate_and_rollback_switches_back(pipeline, world, provider):
    from controller import demo
    from controller.catalog import load_operator_config
    from controller.serve.api_deploy import ApiServing

    serving = ApiServing(world["home"] / "store", load_operator_config(str(world["operator"])))
    first = status(world)["runId"]
    pid = json.loads((world["home"] / "store" / SPEC / "serving-api" / "current.json").read_text())["pid"]
    (world["repo"] / "specs" / f"{SPEC}.yaml").write_text(spec_text(epochs=3))
    demo.commit(world["repo"], "three epochs")
    assert reconcile(world).returncode == 0
    second = status(world)["runId"]
    current = json.loads((world["home"] / "store" / SPEC / "serving-api" / "current.json").read_text())
    [job] = provider.provider.jobs_for_run(second)
    assert second != first and status(world)["phase"] == "Ready"
    assert current["runId"] == second and current["model"] == job.fine_tuned_model and current["pid"] == pid  # rerouted

    provider.provider.noise_for_new_models = 1.0  # whatever the provider trains now answers wrong
    (world["repo"] / "specs" / f"{SPEC}.yaml").write_text(spec_text(epochs=4))
    demo.commit(world["repo"], "four epochs")
    reconcile(world)
    bad = status(world)
    conditions = {c["type"]: c for c in bad["conditions"]}
    assert conditions["GatePassed"]["reason"] == "GateFailed" and bad["servingRunId"] == second
    assert serving.current(SPEC).run_id == second  # the gate kept the bad model away from the route

    done = ftops(world, "rollback", SPEC, "--to", first, "--home", str(world["home"]), "-o", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "rolled_back" and result["servingRunId"] == first
    current = json.loads((world["home"] / "store" / SPEC / "serving-api" / "current.json").read_text())
    [first_job] = provider.provider.jobs_for_run(first)
    assert current["model"] == first_job.fine_tuned_model and current["pid"] == pid
    assert serving.current(SPEC).healthy
