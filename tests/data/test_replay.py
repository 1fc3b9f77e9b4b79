"""Replay (spec.training.replay): general conversations mixed into the training split only, drawn
by seed, checked like a dataset, never a held-out prompt; its version in the run id and in plan."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from controller.data.pipeline import prepare_spec
from controller.data.prepare import DataInvalid
from controller.errors import PermanentError
from controller.spec.finetune import FineTune
from controller.tiny import skills, task

REPLAY = "data/general.jsonl"


def finetune(replay: dict | None = None, retrieval: bool = False, suite: str = "default", seed: int = 3) -> FineTune:
    training: dict = {"seed": seed}
    if replay is not None:
        training["replay"] = replay
    spec: dict = {
        "baseModel": {"uri": "models/none"},
        "dataset": {"path": "data/tickets.jsonl"},
        "method": {"type": "lora"},
        "training": training,
        "evaluation": {"regression": {"suite": suite, "maxDrop": 0.05}},
    }
    if retrieval:
        training["retrieval"] = {"goldShare": 0.8}
        spec["serving"] = {"corpus": "corpora/kb", "topK": 2}
    return FineTune.model_validate({"apiVersion": "ftops.dev/v1alpha1", "kind": "FineTune",
                                    "metadata": {"name": "tickets", "owner": "support"}, "spec": spec})


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def repo_with(git_repo, replay_rows: list[dict] | None = None, n: int = 240) -> str:
    for name, text in task.kb_documents().items():
        git_repo.write(f"corpora/kb/{name}", text)
    git_repo.write("data/tickets.jsonl", jsonl(task.generate_rag_examples(n, seed=5)))
    git_repo.write(REPLAY, jsonl(replay_rows if replay_rows is not None else skills.replay_lines(300)))
    return git_repo.commit("tickets and general conversations")


def lines(path: Path) -> list[bytes]:
    return [x for x in path.read_bytes().splitlines() if x.strip()]


def test_replay_is_mixed_into_the_training_split_only_at_its_share(git_repo, tmp_path: Path) -> None:
    rev = repo_with(git_repo)
    work = tmp_path / "work"
    plain, _, _ = prepare_spec(git_repo.root, rev, finetune(), work)
    mixed, _, ready = prepare_spec(git_repo.root, rev, finetune({"path": REPLAY, "share": 0.5}), work)
    assert ready.status is False  # no reviews in this repo; replay does not change what DataReady says
    train, plain_train = lines(mixed.train_path), lines(plain.train_path)
    added = round(0.5 * len(plain_train))
    assert len(train) == len(plain_train) + added
    assert set(plain_train) <= set(train)  # every example of the dataset is still trained on
    replay_file = (git_repo.root / REPLAY).read_bytes()
    from controller.data.check import scan_bytes

    replayable = {r.canonical for r in scan_bytes(replay_file, REPLAY).records}
    extra = [x for x in train if x not in set(plain_train)]
    assert len(extra) == added and set(extra) <= replayable and len(set(extra)) == added  # no repeats while it lasts
    assert mixed.test_path.read_bytes() == plain.test_path.read_bytes()  # evaluation sees what it saw
    block = mixed.manifest["replay"]
    assert block["md5"] == hashlib.md5(replay_file).hexdigest() and block["added"] == added
    assert block["unmixedSplit"]["train"] == plain.manifest["splits"]["train"]["sha256"]
    assert mixed.manifest["splits"]["train"]["sha256"] == hashlib.sha256(mixed.train_path.read_bytes()).hexdigest()
    # Deterministic: the same inputs give the same directory, nothing rewritten; another seed draws others.
    mtime = mixed.train_path.stat().st_mtime_ns
    again, _, _ = prepare_spec(git_repo.root, rev, finetune({"path": REPLAY, "share": 0.5}), work)
    assert again.dir == mixed.dir and again.train_path.stat().st_mtime_ns == mtime
    reseeded, _, _ = prepare_spec(git_repo.root, rev, finetune({"path": REPLAY, "share": 0.5}, seed=4), work)
    assert set(lines(reseeded.train_path)) != set(train)


def test_replay_beyond_the_file_repeats_it_in_a_new_order(git_repo, tmp_path: Path) -> None:
    rev = repo_with(git_repo, skills.replay_lines(50))
    mixed, _, _ = prepare_spec(git_repo.root, rev, finetune({"path": REPLAY, "share": 1.0}), tmp_path / "w")
    block = mixed.manifest["replay"]
    assert block["available"] == 50 and block["distinct"] == 50 and block["added"] == block["trainExamples"] > 100


def test_replay_comes_after_raft_and_stays_as_written(git_repo, tmp_path: Path) -> None:
    rev = repo_with(git_repo)
    mixed, _, _ = prepare_spec(git_repo.root, rev, finetune({"path": REPLAY, "share": 0.25}, retrieval=True), tmp_path / "w")
    assert mixed.dir.name.startswith("replay-") and mixed.dir.parent.name.startswith("raft-")
    rows = [json.loads(x) for x in lines(mixed.train_path)]
    from controller.serve.prompt import INSTRUCTION

    served = [r for r in rows if "sources" in r]
    general = [r for r in rows if "sources" not in r]
    assert len(general) == mixed.manifest["replay"]["added"] and len(served) == mixed.manifest["replay"]["trainExamples"]
    assert all(INSTRUCTION in r["messages"][0]["content"] for r in served)
    assert not any(INSTRUCTION in m["content"] for r in general for m in r["messages"])  # no sources put in front


def test_a_broken_replay_line_stops_the_data_step_naming_file_line_and_field(git_repo, tmp_path: Path) -> None:
    rows = skills.replay_lines(100)
    bad = jsonl(rows[:6]) + '{"messages": [{"role": "user", "content": "hi"}]}\n' + "not json\n" + jsonl(rows[6:])
    git_repo.write(REPLAY, "")
    rev = repo_with(git_repo, rows)
    git_repo.write(REPLAY, bad)
    rev = git_repo.commit("a bad export of general conversations")
    with pytest.raises(DataInvalid) as err:
        prepare_spec(git_repo.root, rev, finetune({"path": REPLAY, "share": 0.5}), tmp_path / "w")
    message = str(err.value)
    assert message.startswith("spec.training.replay.path: data/general.jsonl: 2 error(s)")
    assert "data/general.jsonl:7:" in message and "data/general.jsonl:8:" in message


def test_replaying_a_held_out_prompt_is_refused_by_line(git_repo, tmp_path: Path) -> None:
    rows = skills.replay_lines(100)
    suite_item = skills.suite_lines()[3]
    rows.insert(9, {"messages": suite_item["messages"] + [{"role": "assistant", "content": suite_item["answer"]}]})
    rev = repo_with(git_repo, rows)
    with pytest.raises(DataInvalid) as err:
        prepare_spec(git_repo.root, rev, finetune({"path": REPLAY, "share": 0.5}), tmp_path / "w")
    assert "data/general.jsonl:10: messages: this prompt is in the regression suite (default)" in str(err.value)
    # A test-split example replayed would be trained on too.
    plain, _, _ = prepare_spec(git_repo.root, rev, finetune(), tmp_path / "w2")
    test_row = json.loads(lines(plain.test_path)[0])
    git_repo.write(REPLAY, jsonl(skills.replay_lines(100) + [test_row]))
    rev = git_repo.commit("a ticket in the general conversations")
    with pytest.raises(DataInvalid, match=r"data/general.jsonl:101: messages: this prompt is in the test split"):
        prepare_spec(git_repo.root, rev, finetune({"path": REPLAY, "share": 0.5}), tmp_path / "w3")


def test_a_missing_replay_file_is_an_error_naming_the_field(git_repo, tmp_path: Path) -> None:
    rev = repo_with(git_repo)
    git_repo.remove(REPLAY)
    rev = git_repo.commit("general conversations removed")
    with pytest.raises(PermanentError, match=r"spec.training.replay.path data/general.jsonl: not in the repository at"):
        prepare_spec(git_repo.root, rev, finetune({"path": REPLAY, "share": 0.5}), tmp_path / "w")


def test_the_replay_file_version_is_part_of_the_run_id_and_plan_retrains(git_repo) -> None:
    from controller.desired import Action, decide, identities
    from controller.identity import run_id
    from controller.source import GitSource, load_specs_at

    spec_text = """apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {name: tickets, owner: support}
spec:
  baseModel: {uri: models/tiny}
  dataset: {path: data/tickets.jsonl}
  method: {type: lora}
  training:
    replay: {path: data/general.jsonl, share: 0.5}
"""
    git_repo.write("models/tiny/config.json", "{}")
    git_repo.write("specs/tickets.yaml", spec_text)
    first = repo_with(git_repo)
    git_repo.write(REPLAY, jsonl(skills.replay_lines(301)))
    second = git_repo.commit("one more general conversation")
    with GitSource(git_repo.root) as source:
        a, b = (load_specs_at(source, sha)["specs/tickets.yaml"] for sha in (first, second))
    assert a.loaded.issues == () and a.replay is not None and a.replay.source == "git"
    ids_a, ids_b = identities(a, "t1"), identities(b, "t1")
    assert ids_a.run != ids_b.run and decide(ids_b, ids_a, serving=False).action == Action.TRAIN
    # `ftops plan` says why: the replay file's version changed, nothing in the spec did.
    from controller.catalog import load_operator_config
    from controller.plan import plan_change

    plan = plan_change({"specs/tickets.yaml": a}, {"specs/tickets.yaml": b}, load_operator_config(None), "t1", first, second)
    (changed,) = plan.changed()
    assert [c.path for c in changed.diff] == ["replay.md5"], changed.diff
    assert [a.kind for a in changed.actions][:2] == ["PrepareData", "Train"], changed.actions
    assert "replay.md5" in changed.actions[0].reason and changed.run_head == ids_b.run
    # A spec without replay keeps the run id it had before the field existed.
    spec = finetune()
    assert run_id(spec, "0" * 32, "t1") == run_id(spec, "0" * 32, "t1", replay_md5="f" * 32)


def test_a_spec_naming_a_replay_file_that_is_not_in_the_repo_is_invalid_at_its_line(git_repo) -> None:
    from controller.source import GitSource, load_specs_at

    git_repo.write("models/tiny/config.json", "{}")
    git_repo.write("data/tickets.jsonl", jsonl(task.generate_rag_examples(10, seed=5)))
    git_repo.write("specs/tickets.yaml", """apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {name: tickets, owner: support}
spec:
  baseModel: {uri: models/tiny}
  dataset: {path: data/tickets.jsonl}
  method: {type: lora}
  training:
    replay: {path: data/general-skills.jsonl, share: 0.5}
""")
    sha = git_repo.commit("a spec whose replay file was never committed")
    with GitSource(git_repo.root) as source:
        state = load_specs_at(source, sha)["specs/tickets.yaml"]
    errors = [i for i in state.loaded.issues if i.severity == "error"]
    assert [(i.line, i.field) for i in errors] == [(9, "spec.training.replay.path")]
