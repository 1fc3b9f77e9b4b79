"""The real pipeline end to end: git -> DVC -> train (retrieval-aware) -> eval (of the served
system) -> gate -> serve, on the tiny model, driven by `ftops reconcile` subprocesses that are
killed with SIGKILL at every step boundary on the way (the crash matrix). Then the served model
answers through the official OpenAI SDK citing the article it used, the trail is traced and
verified, a corpus-only commit re-evaluates the same run and redeploys it without retraining, and
a bad data commit fails its gate while the first model keeps serving."""
from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from controller import demo
from controller.ledger import Ledger
from controller.serve.deploy import LocalServing
from controller.tiny.task import RAG_SYSTEM_PROMPT, parse_rag_answer
from reconcile_helpers import ftops, reconcile

STEPS = ("observe", "data", "train", "evaluate", "gate", "deploy")
BOUNDARIES = [f"{edge}-{step}" for step in STEPS for edge in ("before", "after")]


@pytest.fixture(scope="module")
def pipeline(demo_template, tmp_path_factory):
    """Run the crash matrix on a fresh copy of the demo repo, then let it settle."""
    root = tmp_path_factory.mktemp("e2e")
    repo, remote = root / "repo", root / "remote"
    import shutil

    shutil.copytree(demo_template.root, repo, symlinks=True)
    shutil.copytree(demo_template.remote, remote)
    config = repo / ".dvc" / "config"
    config.write_text(config.read_text().replace(str(demo_template.remote), str(remote)))
    demo.commit(repo, "point DVC at this copy")
    home = root / "home"
    crashes = {}
    for boundary in BOUNDARIES:
        done = reconcile(repo, home, crash_at=boundary)
        crashes[boundary] = done.returncode
    settled = reconcile(repo, home)
    yield {"repo": repo, "home": home, "crashes": crashes, "settled": settled}
    LocalServing(home / "store").stop(demo.SPEC_NAME)


def test_kill_9_at_every_step_boundary_creates_no_duplicate_and_loses_nothing(pipeline):
    # every boundary was reached once and the process died there by SIGKILL
    assert pipeline["crashes"] == {b: -signal.SIGKILL for b in BOUNDARIES}, pipeline["crashes"]
    assert pipeline["settled"].returncode == 0, pipeline["settled"].stdout + pipeline["settled"].stderr
    home = pipeline["home"]
    status = json.loads((home / "status" / f"{demo.SPEC_NAME}.json").read_text())
    assert status["phase"] == "Ready", status
    run = status["runId"]
    ledger = Ledger(home / "ledger.db")
    kinds = Counter(e.kind for e in ledger.events())
    # one training run, submitted once, finished once; each fact recorded exactly once
    assert [e.run_id for e in ledger.events(kind="run.submitted")] == [run]
    for kind in ("data.versioned", "run.finished", "eval.reported", "gate.decided", "deploy.promoted"):
        assert kinds[kind] == 1, (kind, kinds)
    assert sorted(p.name for p in (home / "runs").iterdir()) == [run]  # the backend started one process
    assert ledger.verify().ok


def test_served_model_answers_with_citations_and_traces_to_its_commit(pipeline):
    from openai import OpenAI

    home, repo = pipeline["home"], pipeline["repo"]
    serving = LocalServing(home / "store").current(demo.SPEC_NAME)
    assert serving and serving.healthy
    client = OpenAI(base_url=serving.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=demo.SPEC_NAME, messages=[{"role": "system", "content": RAG_SYSTEM_PROMPT},
                                         {"role": "user", "content": "Hello, please refund the payment. How many days "
                                                                     "until the refund arrives? Thanks!"}]
    ).model_dump()
    answer = parse_rag_answer(reply["choices"][0]["message"]["content"])
    assert answer == {"label": "billing", "source": "refunds.md"}, reply["choices"][0]["message"]["content"]
    # The citation is what the model cited, and it carries the fact only the corpus knows.
    assert [c["path"] for c in reply["citations"]] == ["refunds.md"] and reply["citations"][0]["retrieved"] is True
    assert "5 to 7 business days" in reply["citations"][0]["text"]
    report = json.loads((home / "store" / demo.SPEC_NAME / serving.run_id / "eval" / "report.json").read_text())
    assert report["servingConfig"]["corpus"].startswith("git:") and report["rag"]["citationAccuracy"] >= 0.9

    trace = json.loads(ftops("trace", demo.SPEC_NAME, "--home", str(home), "-o", "json").stdout)
    chain = trace["runs"][0]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert chain["requestedBy"]["payload"]["commit"] == head
    author = subprocess.run(["git", "log", "-1", "--format=%an"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert chain["requestedBy"]["payload"]["author"] == author
    pointer = (repo / f"{demo.DATA_PATH}.dvc").read_text()
    assert chain["data"]["payload"]["md5"] in pointer
    assert chain["gate"]["payload"]["passed"] is True
    # an artifact's sha256 leads back to the same run, and forward from the data md5 too
    artifact_sha = next(iter(chain["finished"]["payload"]["artifacts"].values()))
    assert json.loads(ftops("trace", artifact_sha, "--home", str(home), "-o", "json").stdout)["runs"][0]["runId"] == chain["runId"]
    forward = json.loads(ftops("trace", chain["data"]["payload"]["md5"], "--home", str(home), "-o", "json").stdout)
    assert forward["matched"] == "data" and [r["runId"] for r in forward["runs"]] == [chain["runId"]]
    statements = json.loads(ftops("audit", "export", "--home", str(home)).stdout)
    assert statements[0]["subject"] and statements[0]["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"]["gitCommit"] == head


def test_a_corpus_commit_re_evaluates_the_same_run_and_redeploys_it_without_retraining(pipeline):
    from openai import OpenAI

    home, repo = pipeline["home"], pipeline["repo"]
    before = json.loads((home / "status" / f"{demo.SPEC_NAME}.json").read_text())
    demo.write_corpus(repo, overrides={"refunds.md": "10 business days"})
    demo.commit(repo, "refunds now take 10 business days")
    plan = ftops("plan", "--repo", str(repo), "--base", "HEAD~1", "--head", "HEAD")
    assert "Evaluate" in plan.stdout and "without retraining" in plan.stdout, plan.stdout + plan.stderr
    done = reconcile(repo, home)
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads((home / "status" / f"{demo.SPEC_NAME}.json").read_text())
    assert status["runId"] == before["runId"] == status["servingRunId"] and status["phase"] == "Ready"
    assert status["evaluationId"] != before["evaluationId"] and status["servingId"] != before["servingId"]
    ledger = Ledger(home / "ledger.db")
    assert [e.run_id for e in ledger.events(kind="run.submitted")] == [before["runId"]]  # nothing retrained
    reports = [e.payload["evalId"] for e in ledger.events(kind="eval.reported")]
    assert reports == [before["evaluationId"], status["evaluationId"]]
    serving = LocalServing(home / "store").current(demo.SPEC_NAME)
    assert serving and serving.healthy and serving.run_id == before["runId"]
    reply = OpenAI(base_url=serving.url + "/v1", api_key="unused").chat.completions.create(
        model=demo.SPEC_NAME, messages=[{"role": "system", "content": RAG_SYSTEM_PROMPT},
                                         {"role": "user", "content": "I was charged twice. When do I get my money back?"}]
    ).model_dump()
    assert [c["path"] for c in reply["citations"]] == ["refunds.md"]
    assert "10 business days" in reply["citations"][0]["text"]  # the new fact, from the same weights


def test_a_bad_data_commit_fails_its_gate_and_the_first_model_keeps_serving(pipeline):
    from controller.data import dvc

    home, repo = pipeline["home"], pipeline["repo"]
    first = json.loads((home / "status" / f"{demo.SPEC_NAME}.json").read_text())["runId"]
    demo.degrade_labels(repo)
    dvc.version(repo, demo.DATA_PATH)
    demo.write_reviews(repo, demo.SPEC_NAME)
    demo.commit(repo, "relabel from the new helpdesk export")
    done = reconcile(repo, home)
    status = json.loads((home / "status" / f"{demo.SPEC_NAME}.json").read_text())
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["runId"] != first
    assert conditions["GatePassed"]["status"] == "False" and conditions["GatePassed"]["reason"] == "GateFailed"
    assert "task" in conditions["GatePassed"]["message"]
    assert status["servingRunId"] == first and conditions["Deployed"]["reason"] == "PreviousRunServing"
    from controller.status import Reason

    assert {c["reason"] for c in status["conditions"]} <= Reason.all()  # every reason is a named constant
    serving = LocalServing(home / "store").current(demo.SPEC_NAME)
    assert serving is not None and serving.healthy and serving.run_id == first
    assert "GateFailed" in done.stdout or "Stalled" in done.stdout
    # the first run passed each of its gates (once per serving configuration: the corpus commit
    # re-evaluated it), the new run failed its one
    decisions = [(e.run_id, e.payload["passed"]) for e in Ledger(home / "ledger.db").events(kind="gate.decided")]
    assert decisions[0] == (first, True) and decisions[-1] == (status["runId"], False)
    assert {passed for run, passed in decisions if run == first} == {True}
    assert [d for d in decisions if d[0] != first] == [(status["runId"], False)]


def test_ledger_tampering_of_one_byte_is_detected(pipeline, tmp_path):
    import shutil

    copy = tmp_path / "ledger.db"
    shutil.copy(pipeline["home"] / "ledger.db", copy)
    for suffix in ("-wal", "-shm"):
        wal = pipeline["home"] / f"ledger.db{suffix}"
        if wal.exists():
            shutil.copy(wal, tmp_path / f"ledger.db{suffix}")
    ledger = Ledger(copy)
    assert ledger.verify().ok
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.close()
    raw = bytearray(copy.read_bytes())
    needle = b'"author":"'
    at = raw.find(needle)
    assert at > 0
    raw[at + len(needle)] ^= 0x01  # one bit of one byte of the first record's author
    copy.write_bytes(bytes(raw))
    result = Ledger(copy).verify(check_artifacts=False)
    assert not result.ok and result.first_bad_seq == 1 and "does not match its hash" in result.problem
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(copy, home / "ledger.db")
    done = ftops("audit", "verify", "--home", str(home))
    assert done.returncode == 1 and "BROKEN at record 1" in done.stdout


def test_a_changed_artifact_is_detected_by_audit_verify(pipeline, tmp_path):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(pipeline["home"], home, ignore=shutil.ignore_patterns("runs", "checkouts", "work"))
    ledger = Ledger(home / "ledger.db")
    finished = next(ledger.events(kind="run.finished"))
    rel = next(r for r in finished.payload["artifacts"] if r.endswith(".safetensors"))
    target = Path(finished.payload["outputDir"]) / rel
    original = target.read_bytes()
    try:
        target.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        result = ledger.verify()
        assert not result.ok and result.first_bad_seq == finished.seq and rel in result.problem
    finally:
        target.write_bytes(original)

