"""The local backend runs real processes and keeps its state on disk, so a restarted
controller (a new LocalBackend, even in another process) finds running and finished runs.

Most tests run a small stand-in program through the backend's `command` (it reads run.json
like the trainer, prints, and exits with the code the test asks for, or 143 on SIGTERM after
"checkpointing"), so each exit path is exercised in well under a second."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controller.backends.local import LocalBackend
from controller.runconfig import RunConfig
from controller.seams import Lineage, Phase, Run, RunNotFound
from render_sample import finetune

REPO = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent(
    """
    import json, pathlib, signal, sys, time
    cfg = json.load(open(sys.argv[sys.argv.index("--config") + 1]))
    out = pathlib.Path(cfg["outputDir"])
    print("training", cfg["runId"], flush=True)
    def term(*_):
        print("checkpoint written", flush=True)
        sys.exit(143)
    signal.signal(signal.SIGTERM, term)
    while True:
        code = out / "exit-code"
        if code.exists():
            print("done", flush=True)
            sys.exit(int(code.read_text()))
        time.sleep(0.01)
    """
)


def run_config(tmp: Path, run_id: str = "abcdef012345") -> RunConfig:
    out = tmp / "out" / run_id
    out.mkdir(parents=True, exist_ok=True)
    return RunConfig.model_validate_json(json.dumps({
        "runId": run_id, "specName": "tiny", "baseModel": {"uri": str(tmp / "model")},
        "method": {"type": "lora"}, "training": {},
        "data": {"train": str(tmp / "train.jsonl"), "test": str(tmp / "test.jsonl"), "md5": "0" * 32},
        "outputDir": str(out), "checkpointDir": str(tmp / "ckpt" / run_id), "device": "cpu",
    }))


def local_run(rc: RunConfig) -> Run:
    """The local backend reads only the run config; the spec and lineage ride along."""
    return Run(rc, finetune(), Lineage("0" * 32, "0" * 40))


@pytest.fixture
def program(tmp_path: Path):
    """The stand-in trainer's argv. At teardown, any run still going is killed (a failed
    assertion must not leave a looping process behind)."""
    path = tmp_path / "fake_trainer.py"
    path.write_text(PROGRAM)
    yield [sys.executable, str(path), "--config", "{config}"]
    for spawn in (tmp_path / "runs").glob("*/spawn.json"):
        try:
            os.killpg(json.loads(spawn.read_text())["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def finish(rc: RunConfig, code: int) -> None:
    (Path(rc.output_dir) / "exit-code").write_text(str(code))


def wait_started(backend: LocalBackend, run_id: str) -> None:
    """Until the program has printed its first line (so its SIGTERM handler is installed)."""
    for _ in range(6000):
        if "training" in backend.logs(run_id):
            return
        backend.wait(run_id, timeout=0.01)
    raise AssertionError(backend.logs(run_id))


def wait_for(backend: LocalBackend, run_id: str, phase: Phase, timeout: float = 60) -> None:
    state = backend.wait(run_id, timeout)
    assert state.phase is phase, state


def test_submit_runs_the_command_and_records_success(tmp_path, program):
    b = LocalBackend(tmp_path / "runs", command=program)
    rc = run_config(tmp_path)
    state = b.submit(local_run(rc))
    assert state.phase in (Phase.PENDING, Phase.RUNNING)
    assert (tmp_path / "runs" / rc.run_id / "run.json").exists()
    finish(rc, 0)
    wait_for(b, rc.run_id, Phase.SUCCEEDED)
    done = b.status(rc.run_id)
    assert done.exit_code == 0 and done.finished and done.started_at and done.finished_at
    assert "training abcdef012345" in b.logs(rc.run_id)
    assert b.logs(rc.run_id, tail=1) == "done\n"


def test_submit_is_idempotent(tmp_path, program):
    b = LocalBackend(tmp_path / "runs", command=program)
    rc = run_config(tmp_path)
    b.submit(local_run(rc))
    pid = json.loads((tmp_path / "runs" / rc.run_id / "spawn.json").read_text())["pid"]
    again = LocalBackend(tmp_path / "runs", command=program).submit(local_run(rc))
    assert again.phase in (Phase.PENDING, Phase.RUNNING)
    assert json.loads((tmp_path / "runs" / rc.run_id / "spawn.json").read_text())["pid"] == pid
    assert json.loads((tmp_path / "runs" / rc.run_id / "attempts.json").read_text())["attempts"] == 1
    finish(rc, 0)
    wait_for(b, rc.run_id, Phase.SUCCEEDED)
    assert b.submit(local_run(rc)).phase is Phase.SUCCEEDED  # a finished run is not started again


def test_a_restarted_controller_finds_running_and_finished_runs(tmp_path, program):
    """The controller that submitted dies at once (another process, os._exit); a new backend
    instance sees the run running, and later finished, from the files on disk."""
    rc = run_config(tmp_path)
    (tmp_path / "rc.json").write_text(rc.model_dump_json(by_alias=True))
    code = (
        f"import os, sys; sys.path.insert(0, {str(REPO / 'tests' / 'render')!r}); "
        "from controller.backends.local import LocalBackend; from controller.seams import Lineage, Run; "
        "from controller.runconfig import RunConfig; from render_sample import finetune; "
        f"b = LocalBackend({str(tmp_path / 'runs')!r}, command={program!r}); "
        f"rc = RunConfig.model_validate_json(open({str(tmp_path / 'rc.json')!r}).read()); "
        "b.submit(Run(rc, finetune(), Lineage('0' * 32, '0' * 40))); "
        "os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    restarted = LocalBackend(tmp_path / "runs", command=program)
    assert restarted.runs() == [rc.run_id]
    wait_started(restarted, rc.run_id)
    assert restarted.status(rc.run_id).phase is Phase.RUNNING
    finish(rc, 0)
    wait_for(restarted, rc.run_id, Phase.SUCCEEDED)
    assert LocalBackend(tmp_path / "runs").status(rc.run_id).phase is Phase.SUCCEEDED


@pytest.mark.parametrize("code,phase,reason", [
    (78, Phase.FAILED, "ConfigError"),
    (1, Phase.FAILED, "NonZeroExit"),
    (75, Phase.FAILED, "TemporaryFailure"),
    (3, Phase.FAILED, "NonZeroExit"),
    (143, Phase.PREEMPTED, "Preempted"),
])
def test_exit_codes_map_to_states(tmp_path, program, code, phase, reason):
    b = LocalBackend(tmp_path / "runs", command=program)
    rc = run_config(tmp_path)
    b.submit(local_run(rc))
    finish(rc, code)
    wait_for(b, rc.run_id, phase)
    state = b.status(rc.run_id)
    assert state.reason == reason and state.exit_code == code


def test_a_preempted_run_resumes_when_submitted_again(tmp_path, program):
    b = LocalBackend(tmp_path / "runs", command=program)
    rc = run_config(tmp_path)
    b.submit(local_run(rc))
    finish(rc, 143)
    wait_for(b, rc.run_id, Phase.PREEMPTED)
    (Path(rc.output_dir) / "exit-code").unlink()
    assert b.submit(local_run(rc)).phase in (Phase.PENDING, Phase.RUNNING)
    assert json.loads((tmp_path / "runs" / rc.run_id / "attempts.json").read_text())["attempts"] == 2
    finish(rc, 0)
    wait_for(b, rc.run_id, Phase.SUCCEEDED)
    assert b.logs(rc.run_id).count("training abcdef012345") == 2  # one log across attempts


def test_cancel_sends_sigterm_and_records_cancelled(tmp_path, program):
    b = LocalBackend(tmp_path / "runs", command=program)
    rc = run_config(tmp_path)
    b.submit(local_run(rc))
    wait_started(b, rc.run_id)
    state = b.cancel(rc.run_id)
    assert state.phase is Phase.FAILED and state.reason == "Cancelled" and state.exit_code == 143
    assert "checkpoint written" in b.logs(rc.run_id)
    assert b.cancel(rc.run_id) == state  # cancelling again changes nothing


def test_a_killed_keeper_is_reported_lost(tmp_path, program):
    b = LocalBackend(tmp_path / "runs", command=program)
    rc = run_config(tmp_path)
    b.submit(local_run(rc))
    pid = json.loads((tmp_path / "runs" / rc.run_id / "spawn.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)  # no chance to record an exit code (like a reboot)
    state = b.wait(rc.run_id, timeout=60)
    assert state.phase is Phase.FAILED and state.reason == "ProcessLost"


def test_unknown_runs(tmp_path):
    b = LocalBackend(tmp_path / "runs")
    with pytest.raises(RunNotFound):
        b.status("feedfacefeed")
    with pytest.raises(RunNotFound):
        b.logs("feedfacefeed")
    assert b.runs() == []


# ----------------------------------------------------------------------------- the real trainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama and the synthetic ticket task (controller.tiny): real training in seconds."""
    from controller.tiny.model import init_tiny_model
    from controller.tiny.task import write_task

    root = tmp_path_factory.mktemp("tiny")
    model = init_tiny_model(root / "model")
    train, test = write_task(root / "data", n_train=64, n_test=16)
    return model, train, test


@pytest.mark.slow
def test_real_trainer_survives_a_controller_restart_and_resumes_after_preemption(tiny, tmp_path):
    model, train, test = tiny
    rc = RunConfig.model_validate_json(json.dumps({
        "runId": "0badc0ffee00", "specName": "tiny", "baseModel": {"uri": str(model)},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"epochs": 6, "batchSize": 8, "maxSeqLength": 256, "checkpointEverySteps": 1},
        "data": {"train": str(train), "test": str(test), "md5": "0" * 32},
        "outputDir": str(tmp_path / "out"), "checkpointDir": str(tmp_path / "ckpt"), "device": "cpu",
    }))
    runs = tmp_path / "runs"
    LocalBackend(runs).submit(local_run(rc))  # the default command: python -m controller.train
    restarted = LocalBackend(runs)  # the controller came back: only the files are left
    for _ in range(60000):  # until the first optimizer step is logged
        if '"event": "step"' in restarted.logs(rc.run_id) or restarted.status(rc.run_id).finished:
            break
        restarted.wait(rc.run_id, timeout=0.01)
    assert restarted.status(rc.run_id).phase is Phase.RUNNING, restarted.logs(rc.run_id)

    # The node is being drained: SIGTERM, as the kubelet would send. The trainer checkpoints.
    os.killpg(json.loads((runs / rc.run_id / "spawn.json").read_text())["pid"], signal.SIGTERM)
    state = restarted.wait(rc.run_id, timeout=300)
    assert state.phase is Phase.PREEMPTED and state.exit_code == 143, restarted.logs(rc.run_id)
    assert any((tmp_path / "ckpt").iterdir())
    assert not (tmp_path / "out" / "manifest.json").exists()

    assert restarted.submit(local_run(rc)).phase in (Phase.PENDING, Phase.RUNNING)
    state = restarted.wait(rc.run_id, timeout=600)
    assert state.phase is Phase.SUCCEEDED, restarted.logs(rc.run_id)
    assert '"event": "resume"' in restarted.logs(rc.run_id)
    assert (tmp_path / "out" / "manifest.json").exists()  # a run without a manifest is not finished
