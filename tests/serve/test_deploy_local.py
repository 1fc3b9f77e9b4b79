"""The local deploy step: gate-checked promotion, the old version serving until the new one is
ready, automatic rollback on failed readiness, `ftops rollback --to`, and a controller restart
finding the serving process again. Real server processes, real runs, the openai SDK as client."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from serve_helpers import ANSWER_DOC, QUESTION, ROOT, RUN_A, RUN_B, SPEC_NAME, copy_run, write_gate


def _config(env, run_dir: Path):
    from controller.commands.serve_commands import config_from_spec

    return config_from_spec(str(env.spec_file), str(run_dir)).replace(index_cache=str(env.root / "index-cache"))


def _ask(url: str) -> tuple[str, list]:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    resp = client.chat.completions.create(model=SPEC_NAME, messages=[{"role": "user", "content": QUESTION}], max_tokens=4)
    return resp.system_fingerprint, resp.model_extra["sources"]


@pytest.fixture
def serving(env, tmp_path):
    """A LocalServing over a store holding copies of both runs; every server is stopped at the end."""
    from controller.serve.deploy import LocalServing

    store = tmp_path / "store"
    for run_id in (RUN_A, RUN_B):
        copy_run(env.run_dir(run_id), store)
    local = LocalServing(store, ready_timeout=240)
    yield local
    for spawn in store.glob(f"{SPEC_NAME}/serving/node-*/spawn.json"):
        try:
            os.killpg(json.loads(spawn.read_text())["pid"], 9)
        except (ProcessLookupError, PermissionError):
            pass


def test_gate_not_passed_or_for_another_run_refuses_promotion(env, serving):
    from controller.serve import history

    run_b = serving.run_dir(SPEC_NAME, RUN_B)
    write_gate(run_b, passed=False)
    result = serving.deploy(_config(env, run_b))
    assert result.outcome == "refused" and result.serving_run_id is None
    assert "task accuracy (json_field_match) 0.4100 < min 0.9000" in result.message, result.message
    write_gate(run_b, passed=True, run_id=RUN_A)  # a passed decision, but for another run
    result = serving.deploy(_config(env, run_b))
    assert result.outcome == "refused" and "not this run" in result.message
    write_gate(run_b, passed=True)
    report = run_b / "eval" / "report.json"
    report.write_text(report.read_text().replace("0.97", "0.99"))  # edited after the decision
    result = serving.deploy(_config(env, run_b))
    assert result.outcome == "refused" and "changed after the gate decided" in result.message
    (run_b / "eval" / "gate.json").unlink()
    assert serving.deploy(_config(env, run_b)).outcome == "refused"
    # nothing was started, and each refusal is on record
    assert not (serving.store / SPEC_NAME / "serving" / RUN_B).exists()
    kinds = [e["kind"] for e in history.read(serving.store, SPEC_NAME)]
    assert kinds == ["deploy.refused"] * 4
    json.dumps(result.to_dict())


def test_rollout_failing_readiness_keeps_the_old_version_then_rollback_to(env, serving):
    from controller.serve import history
    from controller.serve.deploy import LocalServing

    run_a, run_b = serving.run_dir(SPEC_NAME, RUN_A), serving.run_dir(SPEC_NAME, RUN_B)
    first = serving.deploy(_config(env, run_a))
    assert first.outcome == "promoted", first.message
    url_a = first.url
    assert _ask(url_a) == (RUN_A, _ask(url_a)[1]) and _ask(url_a)[1][0]["path"] == ANSWER_DOC
    pid_a = serving.record(SPEC_NAME)["pid"]

    # Run B passed its gate, but its adapter changed after training: the engine refuses to load
    # it (sha256 against the manifest), and the rollout is rolled back automatically. A keeps answering.
    adapter = run_b / "model" / "adapter_model.safetensors"
    good = adapter.read_bytes()
    adapter.write_bytes(good[:-64] + bytes(64))
    failed = serving.deploy(_config(env, run_b))
    assert failed.outcome == "rolled_back" and failed.serving_run_id == RUN_A
    assert [e["kind"] for e in failed.events] == ["deploy.started", "deploy.rolled_back"]
    assert failed.events[-1]["automatic"] is True and "sha256" in failed.message
    assert _ask(url_a)[0] == RUN_A
    assert serving.record(SPEC_NAME)["pid"] == pid_a

    # The repaired run B rolls out in the same process: its adapter loaded at runtime, the route
    # switched, then A's adapter unloaded. Nothing restarted.
    adapter.write_bytes(good)
    second = serving.deploy(_config(env, run_b))
    assert second.outcome == "promoted" and second.serving_run_id == RUN_B, second.message
    assert _ask(second.url)[0] == RUN_B
    record = serving.record(SPEC_NAME)
    assert record["pid"] == pid_a and _alive(pid_a) and second.url == url_a
    engine = OpenAI(base_url=f"{record['engineUrl']}/v1", api_key="unused", max_retries=0)
    assert {m.id for m in engine.models.list().data} == {"base", RUN_B}
    assert serving.deploy(_config(env, run_b)).outcome == "unchanged"

    # A controller restart (a new LocalServing over the same store) finds the serving process.
    again = LocalServing(serving.store).current(SPEC_NAME)
    assert again.run_id == RUN_B and again.healthy

    # `ftops rollback SPEC --to A` from the command line.
    out = subprocess.run([sys.executable, "-m", "controller.cli", "-o", "json", "rollback", SPEC_NAME, "--to", RUN_A[:8],
                          "--store", str(serving.store)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["servingRunId"] == RUN_A and result["events"][-1]["kind"] == "deploy.rolled_back"
    assert result["events"][-1]["reason"] == "Requested"
    assert _ask(result["url"])[0] == RUN_A
    assert history.serving_run(serving.store, SPEC_NAME) == RUN_A
    kinds = [e["kind"] for e in history.read(serving.store, SPEC_NAME)]
    assert kinds == ["deploy.started", "deploy.promoted", "deploy.started", "deploy.rolled_back",
                     "deploy.started", "deploy.promoted", "deploy.started", "deploy.rolled_back"]


def test_rollback_only_to_runs_that_served_and_passed(env, serving):
    from controller.errors import PermanentError
    from controller.serve import history
    from controller.serve.gatecheck import GateNotPassed

    with pytest.raises(PermanentError, match="never served"):
        serving.rollback(SPEC_NAME, to=RUN_B)
    # a run that served once but whose gate decision is now failing is not a rollback target
    history.append(serving.store, SPEC_NAME, {"kind": "deploy.promoted", "servingRunId": RUN_B, "runId": RUN_B})
    history.append(serving.store, SPEC_NAME, {"kind": "deploy.promoted", "servingRunId": RUN_A, "runId": RUN_A})
    write_gate(serving.run_dir(SPEC_NAME, RUN_B), passed=False)
    with pytest.raises(GateNotPassed):
        serving.rollback(SPEC_NAME)


def _alive(pid: int) -> bool:
    from controller.serve.deploy import process_alive as alive

    return alive(pid)


def test_corpus_change_redeploys_the_retriever_without_retraining(env, serving, tmp_path):
    """Same run, new corpus version (the reconciler extracts one folder per version): refused until
    the run is evaluated on the new corpus; then the same process's gateway takes the new corpus
    (gateway.json rewritten: the index is rebuilt, the engine untouched), and answers cite the new
    document."""
    import shutil

    from controller.commands.serve_commands import config_from_spec
    from controller.serve.corpus import folder_version
    from serve_helpers import served_config

    run_a = serving.run_dir(SPEC_NAME, RUN_A)
    first = serving.deploy(_config(env, run_a))
    assert first.outcome == "promoted", first.message
    assert serving.deploy(_config(env, run_a)).outcome == "unchanged"
    pid = serving.record(SPEC_NAME)["pid"]
    corpus = tmp_path / "corpora" / "v2"
    shutil.copytree(env.repo / "corpora" / "kb", corpus)
    (corpus / ANSWER_DOC).unlink()
    (corpus / "zx.md").write_text("ZX-4417 was retired; the Zorblax cluster now reports error code ZX-5000.\n")
    manifest_before = (run_a / "manifest.json").read_bytes()
    new_config = config_from_spec(str(env.spec_file), str(run_a), str(corpus)).replace(index_cache=str(env.root / "index-cache"))
    unevaluated = serving.deploy(new_config)
    assert unevaluated.outcome == "refused" and unevaluated.serving_run_id == RUN_A, unevaluated.message
    assert "not on the one being deployed" in unevaluated.message
    write_gate(run_a, passed=True, config=served_config(folder_version(corpus)))  # evaluated on the new corpus
    manifest_before = (run_a / "manifest.json").read_bytes()
    changed = serving.deploy(new_config)
    assert changed.outcome == "promoted" and changed.serving_run_id == RUN_A, changed.message
    assert changed.events[-1]["reason"] == "ServingConfigChanged"
    assert changed.events[-1]["corpusVersion"] != first.events[-1]["corpusVersion"]
    assert changed.url == first.url and serving.record(SPEC_NAME)["pid"] == pid  # nothing restarted
    run_id, cites = _ask(changed.url)
    assert run_id == RUN_A and cites[0]["path"] == "zx.md"
    assert (run_a / "manifest.json").read_bytes() == manifest_before  # nothing retrained or rewritten


def _poison(run_dir: Path) -> None:
    """NaN in the run's LoRA weights, with a manifest that matches them: it loads, and then every
    answer fails at the engine (what a diverged run looks like)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    weights = run_dir / "model" / "adapter_model.safetensors"
    tensors = {k: (v * float("nan") if "lora_B" in k else v) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["files"]["model/adapter_model.safetensors"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def test_a_canary_whose_adapter_fails_is_rolled_back_by_the_analysis_while_the_old_one_answers(env, serving):
    """Canary through the gateway: run B gets 50% of the spec's requests beside A. B's adapter
    fails every answer; the gateway retries those on A (users see A's answers only), counts B's
    errors, and the analysis of the gateway's metrics rolls B back by itself, long before its
    window ends. Nothing restarted: B's adapter is unloaded from the same engine."""
    import threading

    from controller.serve import history
    from controller.serve.rollout import Policy

    run_a, run_b = serving.run_dir(SPEC_NAME, RUN_A), serving.run_dir(SPEC_NAME, RUN_B)
    first = serving.deploy(_config(env, run_a))
    assert first.outcome == "promoted", first.message
    pid = serving.record(SPEC_NAME)["pid"]
    _poison(run_b)
    write_gate(run_b, passed=True)  # the gate passed (say, on an evaluation that missed it)
    answers: list[str] = []
    stop = threading.Event()

    def traffic() -> None:  # a failed request is an answer the user did not get: recorded, not lost with the thread
        while not stop.is_set():
            try:
                answers.append(_ask(first.url)[0])
            except Exception as exc:  # noqa: BLE001
                answers.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        result = serving.deploy(_config(env, run_b), canary=50, policy=Policy(window_seconds=600, min_errors=3))
    finally:
        stop.set()
        thread.join(timeout=60)
    assert result.outcome == "rolled_back" and result.serving_run_id == RUN_A, result.message
    assert "analysis" in result.message and "canary failed" in result.message, result.message
    assert [e["kind"] for e in result.events] == ["deploy.started", "deploy.rolled_back"]
    assert result.events[0]["strategy"] == "canary" and result.events[-1]["automatic"] is True
    assert len(answers) >= 3 and set(answers) == {RUN_A}, answers
    record = serving.record(SPEC_NAME)
    assert record["runId"] == RUN_A and record["pid"] == pid
    engine = OpenAI(base_url=f"{record['engineUrl']}/v1", api_key="unused", max_retries=0)
    assert {m.id for m in engine.models.list().data} == {"base", RUN_A}
    assert _ask(first.url)[0] == RUN_A and history.serving_run(serving.store, SPEC_NAME) == RUN_A


def test_a_serving_process_never_loads_bitsandbytes(env, serving):
    """The engine loads its base unquantized, so its process keeps bitsandbytes out (1.3 s of CPU
    off every server's start: controller.importguard). Read from the live server's memory map
    after it answered with the run's adapter: torch's native library is there, bitsandbytes'
    (which importing it loads) is not."""
    promoted = serving.deploy(_config(env, serving.run_dir(SPEC_NAME, RUN_A)))
    assert promoted.outcome == "promoted", promoted.message
    assert _ask(promoted.url)[0] == RUN_A
    maps = Path(f"/proc/{serving.record(SPEC_NAME)['pid']}/maps").read_text()
    assert "libtorch" in maps and "bitsandbytes" not in maps
