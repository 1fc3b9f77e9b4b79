"""`ftops get`, `status`, `describe`, `events`, `wait` and `logs` against a home the reconciler
made (tests/cli/homes.py): a first run that passed its gate and serves, a second that failed it
metric by metric, and a spec waiting for its expert review."""
from __future__ import annotations

import io
import json
import re
import sys
import time

import pytest
import yaml

from homes import LOSSES, build_home

from controller import cli
from controller.ledger import Ledger
from tests.conftest import GitRepo

ANSI = re.compile(r"\x1b\[")


def _rows(out: str) -> list[list[str]]:
    return [re.split(r"\s{3,}", line.strip()) for line in out.strip().splitlines()]


# ----------------------------------------------------------------------------- get


def test_get_finetunes_is_a_table_in_kubectl_order_with_review_shown_as_waiting(built, ftops):
    code, out, err = ftops("get", "--home", built.home)
    assert code == 0, err
    header, *rows = _rows(out)
    assert header == ["NAME", "PHASE", "RUN", "SERVING", "GATE", "AGE", "MESSAGE"]
    by_name = {r[0]: r for r in rows}
    triage = by_name["triage"]
    assert triage[1:5] == ["Stalled", built.second_run[:12], built.first_run[:12], "GateFailed"]
    assert re.fullmatch(r"\d+[smhd]", triage[5])
    assert "task accuracy (exact_match) 0.4100 < min 0.9000" in triage[6]
    intake = by_name["intake"]
    assert intake[1] == "ReviewPending" and intake[6].startswith("waiting for a reviewer: ")
    assert "fix the spec" not in intake[6]  # a review is not a mistake to fix
    assert not ANSI.search(out)  # piped: no colour

    code, wide, _ = ftops("get", "finetunes", "-o", "wide", "--home", built.home)
    header = _rows(wide)[0]
    assert header == ["NAME", "PHASE", "RUN", "SERVING", "GATE", "AGE", "REVISION", "EVALUATION", "MESSAGE"]


def test_status_is_an_alias_of_get_finetunes(built, ftops, monkeypatch):
    from fakes import FakeClock

    from controller.commands import status_commands

    monkeypatch.setattr(status_commands, "clock", FakeClock(time.time()))  # the same AGE for both
    assert ftops("status", "--home", built.home) == ftops("get", "finetunes", "--home", built.home)


def test_get_machine_forms_are_the_reconcilers_statuses(built, ftops):
    statuses = {name: s.to_dict() for name, s in built.reconciler.load_statuses().items()}
    code, out, _ = ftops("get", "-o", "json", "--home", built.home)
    assert code == 0 and {s["name"]: s for s in json.loads(out)} == statuses
    code, out, _ = ftops("-o", "yaml", "get", "triage", "--home", built.home)
    assert yaml.safe_load(out) == statuses["triage"]
    code, out, _ = ftops("get", "-o", "name", "--home", built.home)
    assert out.split() == ["finetune/intake", "finetune/triage"]


def test_get_runs_newest_first_and_deployments(built, ftops):
    code, out, _ = ftops("get", "runs", "--home", built.home)
    header, *rows = _rows(out)
    assert header == ["RUN", "SPEC", "STATE", "GATE", "AGE"]
    assert [r[:4] for r in rows] == [[built.second_run, "triage", "Evaluated", "Failed"],
                                     [built.first_run, "triage", "Serving", "Passed"]]
    code, out, _ = ftops("get", "runs", built.first_run[:8], "-o", "wide", "--home", built.home)
    header, *rows = _rows(out)
    assert header[-4:] == ["BACKEND", "JOB", "DATA", "COMMIT"] and len(rows) == 1 and rows[0][5] == "fake"
    code, out, _ = ftops("get", "deployments", "-o", "json", "--home", built.home)
    (deployment,) = json.loads(out)
    # the home's deployer has no record of its own (the fake served it): the controller's record stands
    assert deployment["spec"] == "triage" and deployment["runId"] == built.first_run and deployment["ready"] == "Unknown"


def test_get_unknown_names_and_kinds_are_errors(built, ftops):
    code, _, err = ftops("get", "finetunes", "nope", "--home", built.home)
    assert code == 1 and err == "error: no finetune 'nope' (`ftops get finetunes` lists them)\n"
    code, _, err = ftops("get", "pods", "x", "--home", built.home)
    assert code == 1 and "'pods' is not a kind: write finetunes, runs or deployments" in err
    code, _, err = ftops("get", "-o", "xml", "--home", built.home)
    assert code == 2 and "invalid choice: 'xml'" in err


def test_tables_fit_the_terminal_with_an_ellipsis_and_colour_only_on_a_terminal(built, monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("NO_COLOR", raising=False)
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    assert cli.main(["get", "--home", str(built.home)]) == 0
    text = screen.getvalue()
    assert ANSI.search(text)  # a terminal gets colour
    plain = [ANSI.sub("", re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in text.splitlines()]
    assert all(len(line) <= 100 for line in plain), plain
    assert any(line.endswith("…") for line in plain)  # the message was shortened, visibly

    monkeypatch.setenv("NO_COLOR", "1")
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    cli.main(["get", "--home", str(built.home)])
    assert not ANSI.search(screen.getvalue())


def test_piped_output_keeps_whole_messages_unless_columns_says_otherwise(built, ftops, monkeypatch):
    _, out, _ = ftops("get", "--home", built.home)
    assert "(fix the spec or data; the controller retries when they change)" in out
    monkeypatch.setenv("COLUMNS", "110")
    _, out, _ = ftops("get", "--home", built.home)
    assert max(len(line) for line in out.splitlines()) <= 110 and "…" in out


# ----------------------------------------------------------------------------- describe


def test_describe_shows_conditions_in_pipeline_order_the_gate_metric_by_metric_and_what_next(built, ftops):
    code, out, err = ftops("describe", "finetune", "triage", "--home", built.home)
    assert code == 0, err
    types = [line.split()[0] for line in out.split("Conditions (pipeline order):\n")[1].split("Gate:")[0].splitlines()[1:]]
    assert types == ["DataReady", "Trained", "Evaluated", "GatePassed", "Deployed", "Ready", "Stalled"]
    assert f"Gate:         FAILED for run {built.second_run}" in out
    gate = {line.split()[1]: line.split() for line in out.split("Gate:")[1].split("Artifacts:")[0].splitlines()[2:]}
    assert gate["task.exact_match"] == ["FAIL", "task.exact_match", "min", "0.4100", "0.9000"]
    assert gate["format.compliance"][0] == "PASS"
    assert f"Serving:      {built.first_run}" in out
    assert "gate.decided" in out.split("Events")[1] and "gate failed: task accuracy (exact_match) 0.4100" in out
    assert "Next:         nothing until the spec or its inputs change (GateFailed)" in out
    artifacts = dict(line.split(None, 1) if not line.startswith("  loss") else ("loss curve", line.split(None, 2)[2])
                     for line in out.split("Artifacts:\n")[1].split("Events")[0].strip().splitlines()
                     if not line.strip().startswith("serving"))
    run_dir = built.home / "store" / "triage" / built.second_run
    assert artifacts["report"] == str(run_dir / "eval" / "report.md")
    assert artifacts["chart"] == str(run_dir / "eval" / "chart.png") and (run_dir / "eval" / "chart.png").is_file()
    assert artifacts["loss curve"] == str(run_dir / "eval" / "loss.png")

    code, out, _ = ftops("describe", "triage", "-o", "json", "--home", built.home)
    details = json.loads(out)
    assert [c["type"] for c in details["conditions"]][:5] == ["DataReady", "Trained", "Evaluated", "GatePassed", "Deployed"]
    assert details["gate"]["from"].startswith("ledger record #")
    ledger = Ledger(built.home / "ledger.db")
    decided = ledger.last(kind="gate.decided", run_id=built.second_run)
    assert details["gate"]["from"] == f"ledger record #{decided.seq}"
    assert [ln["metric"] for ln in details["gate"]["lines"]] == [ln["metric"] for ln in decided.payload["lines"]]


def test_describe_a_spec_waiting_for_review_says_what_to_do(built, ftops):
    code, out, _ = ftops("describe", "intake", "--home", built.home)
    assert code == 0
    assert "Phase:        ReviewPending" in out
    assert "Next:         waiting for a reviewer: export the review sample with `ftops data review-sample specs/intake.yaml`" in out
    assert "waiting for a reviewer; the controller continues when the reviews change" in out  # the Stalled condition's hint


def test_describe_with_the_repository_says_what_the_next_pass_will_do(tmp_path, ftops):
    home = build_home(tmp_path, GitRepo)
    code, out, _ = ftops("describe", "triage", "--home", home.home, "--repo", home.repo.root)
    assert "Next:         nothing until the spec or its inputs change" in out  # git wants what the status has
    text = (home.repo.root / "specs" / "triage.yaml").read_text()
    home.repo.write("specs/triage.yaml", text.replace("task: {metric: exact_match, min: 0.9}", "task: {metric: exact_match, min: 0.4}"))
    home.repo.commit("lower the bar")
    code, out, _ = ftops("describe", "triage", "--home", home.home, "--repo", home.repo.root)
    assert code == 0 and "wants more than this status: the next pass will Evaluate: Evaluate -> Gate -> Deploy" in out


def test_describe_unknown_spec(built, ftops):
    code, _, err = ftops("describe", "nope", "--home", built.home)
    assert code == 1 and "no spec 'nope'" in err and "intake, triage" in err


# ----------------------------------------------------------------------------- events


def test_events_are_the_ledger_as_a_timeline(built, ftops):
    ledger = Ledger(built.home / "ledger.db")
    code, out, _ = ftops("events", "triage", "-o", "json", "--home", built.home)
    rows = json.loads(out)
    assert [r["kind"] for r in rows] == [e.kind for e in ledger.events(spec="triage")]
    failed = next(r for r in rows if r["kind"] == "gate.decided" and r["runId"] == built.second_run)
    assert failed["type"] == "Warning" and "0.4100 < min 0.9000" in failed["message"]
    code, out, _ = ftops("events", "--home", built.home)
    assert {r[3] for r in _rows(out)[1:]} == {"triage", "intake"}
    code, out, _ = ftops("events", "triage", "--run", built.first_run, "-o", "name", "--home", built.home)
    assert out.split() == [f"ledger/{e.seq}" for e in ledger.events(run_id=built.first_run)]


# ----------------------------------------------------------------------------- wait


class DrivenClock:
    """A fake clock whose every sleep lets the world move one step (`step()`), so `wait` sees
    the spec change while it waits, without any real waiting."""

    def __init__(self, steps) -> None:
        self.now, self.mono, self.slept = 1_800_000_000.0, 0.0, []
        self.steps = list(steps)

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        self.mono += seconds
        if self.steps:
            self.steps.pop(0)()


def test_wait_returns_once_the_condition_holds(built, ftops, monkeypatch):
    from controller.commands import status_commands

    code, out, _ = ftops("wait", "triage", "--for", "condition=Deployed", "--home", built.home)
    assert code == 0 and out == "finetune/triage condition met: Deployed=True\n"
    clock = DrivenClock([])
    monkeypatch.setattr(status_commands, "clock", clock)
    code, _, err = ftops("wait", "triage", "--for", "condition=Ready", "--timeout", "1m", "--interval", "10s",
                         "--home", built.home)
    assert code == 1 and sum(clock.slept) == 60
    assert err.startswith("error: timed out after 60s waiting for condition=Ready=True on finetune/triage; phase Stalled")
    code, _, err = ftops("wait", "triage", "--for", "Ready", "--home", built.home)
    assert code == 1 and "write condition=TYPE" in err


def test_wait_sees_a_spec_become_ready(tmp_path, ftops, monkeypatch):
    """The world moves while `wait` sleeps: a new commit is trained, evaluated and served."""
    from homes import _report, write_run

    from controller.commands import status_commands
    from controller.seams import Phase, RunReason

    home = build_home(tmp_path, GitRepo)
    text = (home.repo.root / "specs" / "triage.yaml").read_text()
    home.repo.write("specs/triage.yaml", text.replace("epochs: 2", "epochs: 3"))
    home.repo.commit("three epochs")
    r = home.reconciler
    run = r.reconcile_once().statuses["triage"].run_id

    def trained() -> None:
        write_run(r.store, r.store.run_uri("triage", run), run)
        home.backend.set(run, Phase.SUCCEEDED, RunReason.COMPLETE)
        r.reconcile_once()

    def evaluated() -> None:
        request = home.evaluator.submitted[-1]
        home.evaluator.complete(request, _report(request, **{"task.exact_match": 0.97}))
        r.reconcile_once()

    clock = DrivenClock([trained, evaluated])
    monkeypatch.setattr(status_commands, "clock", clock)
    code, out, err = ftops("wait", "triage", "--timeout", "5m", "--home", home.home)
    assert code == 0, err
    assert out == "finetune/triage condition met: Ready=True\n" and clock.slept == [2.0, 2.0]


def test_get_watch_prints_a_row_again_when_it_changes(tmp_path, ftops, monkeypatch):
    from controller.commands import status_commands

    home = build_home(tmp_path, GitRepo)
    text = (home.repo.root / "specs" / "triage.yaml").read_text()
    home.repo.write("specs/triage.yaml", text.replace("epochs: 2", "epochs: 3"))
    home.repo.commit("three epochs")
    clock = DrivenClock([lambda: home.reconciler.reconcile_once()])  # the controller's next pass, during the watch
    monkeypatch.setattr(status_commands, "clock", clock)
    code, out, _ = ftops("get", "-w", "--timeout", "6s", "--interval", "2s", "--home", home.home)
    assert code == 0 and clock.slept == [2.0, 2.0, 2.0]
    header, *rows = _rows(out)
    assert [r[0] for r in rows] == ["intake", "triage", "triage"]  # the table, then triage once more
    new_run = home.reconciler.load_statuses()["triage"].run_id
    assert rows[1][2] == home.second_run[:12] and rows[2][2] == new_run[:12] != rows[1][2]


# ----------------------------------------------------------------------------- logs


STAND_IN = "import sys, time\nfor i, loss in enumerate({losses}):\n    print(f'step {{10 * (i + 1)}} loss {{loss}}', flush=True)\n    time.sleep({pause})\n"


def _local_run(built, run_id: str, pause: float = 0.0):
    """Run `run_id` of `triage` on the real local backend, with a stand-in trainer."""
    from controller.backends.local import LocalBackend

    run = next(r for r in built.backend.submitted if r.run_id == run_id)
    backend = LocalBackend(built.home / "runs", command=[sys.executable, "-c", STAND_IN.format(losses=LOSSES, pause=pause)])
    backend.submit(run)
    return backend, run


def test_logs_of_a_spec_are_its_current_runs_through_the_local_backend(built, ftops):
    backend, run = _local_run(built, built.second_run)
    assert backend.wait(run.run_id, timeout=60).finished
    expected = [f"step {10 * (i + 1)} loss {loss}" for i, loss in enumerate(LOSSES)]
    code, out, _ = ftops("logs", "triage", "--home", built.home)
    assert code == 0 and out.splitlines() == expected
    code, out, _ = ftops("logs", built.second_run[:8], "--tail", "2", "--home", built.home)
    assert out.splitlines() == expected[-2:]
    code, _, err = ftops("logs", "0123456789ab", "--home", built.home)
    assert code == 1 and "run 0123456789ab: not known to the local backend" in err


def test_logs_follow_prints_everything_until_the_run_finishes(built, ftops):
    _local_run(built, built.first_run, pause=0.05)
    started = time.monotonic()
    code, out, _ = ftops("logs", built.first_run, "-f", "--interval", "0.02", "--home", built.home)
    assert code == 0 and len(out.splitlines()) == len(LOSSES), out
    assert time.monotonic() - started < 120  # it stopped on its own (a hung follow would hit pytest's timeout)


def test_logs_of_the_evaluation_through_the_local_evaluator(built, ftops):
    from controller.backends.local import LocalEvaluator

    request = next(q for q in built.evaluator.submitted if q.run_id == built.second_run)
    evaluator = LocalEvaluator(built.home / "evals", command=[sys.executable, "-c", "print('scored 60 held-out examples')"])
    evaluator.submit(request)
    deadline = time.monotonic() + 60
    while "scored" not in evaluator.logs(request) and time.monotonic() < deadline:
        time.sleep(0.05)
    code, out, err = ftops("logs", "triage", "--eval", "--home", built.home)
    assert code == 0, err
    assert out == "scored 60 held-out examples\n"


# ----------------------------------------------------------------------------- a missing home


@pytest.mark.parametrize("argv", [["get"], ["status"], ["get", "runs"], ["describe", "x"], ["events"], ["logs", "x"],
                                  ["wait", "x"]])
def test_a_missing_home_is_an_error_not_an_empty_answer(argv, tmp_path, ftops):
    code, out, err = ftops(*argv, "--home", tmp_path / "nowhere")
    assert (code, out) == (1, "")
    assert err == f"error: no controller home at {tmp_path / 'nowhere'}: run `ftops reconcile` first or pass --home\n"
