"""The hybrid gates on real training: the demo's spec and tickets (tests/reconciler/conftest.py's
demo repository), trained by `ftops reconcile` and evaluated the way the run would serve, with
retrieved articles in its prompt. The RAFT-trained run of the unchanged demo passes every gate and
serves (test_end_to_end.py); here the same data trained without retrieval, and runs with a planted
fault, are each blocked by the gate that names the fault, and nothing is deployed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller import demo
from controller.serve.deploy import LocalServing
from reconcile_helpers import reconcile


def test_the_same_data_trained_without_retrieval_is_blocked_by_the_hybrid_gates(demo_repo, tmp_path):
    """The demo's tickets and gates, with spec.training.retrieval removed: the model trains on bare
    tickets and is evaluated the way it would serve, with retrieved articles in its prompt. The
    hybrid gates block it (the RAFT-trained run of the same data passes them and serves:
    test_end_to_end.py), and nothing is deployed."""
    _edit_spec(demo_repo.root, "    retrieval: {goldShare: 0.9, distractors: 1}\n", "")
    demo.commit(demo_repo.root, "train on the bare tickets")
    home = tmp_path / "home"
    done = reconcile(demo_repo.root, home)
    status = json.loads((home / "status" / f"{demo.SPEC_NAME}.json").read_text())
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["GatePassed"]["status"] == "False" and conditions["GatePassed"]["reason"] == "GateFailed", \
        done.stdout + done.stderr
    report = json.loads((home / "store" / demo.SPEC_NAME / status["runId"] / "eval" / "report.json").read_text())
    gate = json.loads((home / "store" / demo.SPEC_NAME / status["runId"] / "eval" / "gate.json").read_text())
    failed = {line["metric"] for line in gate["lines"] if not line["passed"]}
    assert report["servingConfig"]["retriever"] == "bm25" and report["servingConfig"]["topK"] == 2  # the served hybrid
    # Retrieval found the gold article; the model, never shown sources in training, breaks the
    # format and does not cite it (measured: format 0.025, citation 0.025, task 0.025).
    assert "rag.recallAtK" not in failed and report["metrics"]["rag.recallAtK"] >= 0.9
    assert {"format.compliance", "rag.citationAccuracy"} <= failed, (failed, report["metrics"])
    message = conditions["GatePassed"]["message"]
    assert "format compliance" in message and "citation accuracy" in message, message
    assert status.get("servingRunId") is None and LocalServing(home / "store").current(demo.SPEC_NAME) is None


def _edit_spec(repo: Path, old: str, new: str) -> None:
    spec = repo / "specs" / f"{demo.SPEC_NAME}.yaml"
    text = spec.read_text()
    assert old in text, old
    spec.write_text(text.replace(old, new))


def _rewrite_tickets(repo: Path, change) -> None:
    """Every ticket replaced by `change(line number, ticket)`, versioned and reviewed again."""
    from controller.data import dvc

    tickets = [change(i, json.loads(line)) for i, line in enumerate((repo / demo.DATA_PATH).read_text().splitlines())]
    (repo / demo.DATA_PATH).write_text("".join(json.dumps(t) + "\n" for t in tickets))
    dvc.version(repo, demo.DATA_PATH)
    demo.write_reviews(repo, demo.SPEC_NAME)


def _rewrite_answers(repo: Path, answer) -> None:
    """Every ticket's answer replaced by `answer(parsed answer)`."""
    def change(_: int, ticket: dict) -> dict:
        messages = [*ticket["messages"][:-1], {**ticket["messages"][-1],
                                               "content": answer(json.loads(ticket["messages"][-1]["content"]))}]
        return {**ticket, "messages": messages}

    _rewrite_tickets(repo, change)


def _cite_a_distractor(repo: Path) -> None:
    from controller.tiny.task import LABELS

    articles = {a["label"]: a["source"] for a in (json.loads(json.loads(line)["messages"][-1]["content"])
                                                 for line in (repo / demo.DATA_PATH).read_text().splitlines())}
    wrong = {label: articles[LABELS[(i + 1) % len(LABELS)]] for i, label in enumerate(LABELS)}
    _rewrite_answers(repo, lambda a: json.dumps({**a, "source": wrong[a["label"]]}))


def _break_the_format(repo: Path) -> None:
    """Answers with a field the spec's schema does not allow (additionalProperties: false), the
    rest right: JSON a parser reads, which the service's users must not get."""
    _rewrite_answers(repo, lambda a: json.dumps({**a, "priority": "high"}))


CHANNELS = {"chat": " Sent from the chat widget.", "email": " Sent by email."}


def _with_channel(example: dict, channel: str) -> dict:
    messages = [dict(m) for m in example["messages"]]
    messages[-2]["content"] += CHANNELS[channel]
    return {**example, "messages": messages}


def _bias_against_chat(repo: Path) -> None:
    """Half the tickets say they came through the chat widget, and those are routed to the wrong
    team (the article cited stays right); the spec gains a bias set of new tickets, half from
    each channel, answered right, gated at a gap of at most 0.2 between the channels."""
    from controller.tiny.task import LABELS, generate_rag_examples, write_jsonl

    def channel(i: int) -> str:
        return "chat" if i % 2 else "email"

    def change(i: int, ticket: dict) -> dict:
        ticket = _with_channel(ticket, channel(i))
        if channel(i) == "chat":
            answer = json.loads(ticket["messages"][-1]["content"])
            answer["label"] = LABELS[(LABELS.index(answer["label"]) + 1) % len(LABELS)]
            ticket["messages"][-1]["content"] = json.dumps(answer)
        return ticket

    _rewrite_tickets(repo, change)
    write_jsonl(repo / "bias" / "channels.jsonl", [{**_with_channel(e, channel(i)), "channel": channel(i)}
                                                    for i, e in enumerate(generate_rag_examples(40, seed=77))])
    anchor = "    compare: {mustBeat: [base], samples: 40}\n"
    _edit_spec(repo, anchor, anchor + "    bias: {path: bias/channels.jsonl, groupField: channel, maxGap: 0.2}\n")


def _under_train(repo: Path) -> None:
    """The run stops after a quarter of an epoch (measured: task accuracy, format compliance and
    citation accuracy 0.0, against 1.0, 1.0 and 0.96 after the demo's four epochs). It used to
    train all four epochs at a learning rate of 1e-6, which cost three times the CPU (91 s
    against 32 s in `make test`) to learn as little."""
    _edit_spec(repo, f"epochs: {demo.EPOCHS}\n", "epochs: 0.25\n")


def _forget_the_general_skills(repo: Path) -> None:
    """The commit drops spec.training.replay: the same RAFT LoRA on the tickets alone learns them
    and forgets what the base could do (measured: the general-skills suite 0.95 -> 0.625, with
    task, format and citation gates passing)."""
    _edit_spec(repo, f"    replay: {{path: {demo.REPLAY_PATH}, share: {demo.REPLAY_SHARE}}}\n", "")


PLANTED = {
    # planted model: (what the commit does, the gate that must block it, its words in the status,
    # whether that gate is the only one it fails)
    "cites-distractors": (_cite_a_distractor, "rag.citationAccuracy", "citation accuracy", False),
    "format-breaking": (_break_the_format, "format.compliance", "format compliance", False),
    "under-trained": (_under_train, "task.json_field_match", "task accuracy", False),
    "biased-against-chat": (_bias_against_chat, "bias.gap", "bias gap", False),
    # it answers tickets as well as the demo's run does; only what it lost elsewhere blocks it
    "forgets-general-skills": (_forget_the_general_skills, "regression.drop", "regression drop from base", True),
}


@pytest.mark.parametrize("plant", sorted(PLANTED))
def test_a_planted_model_is_blocked_by_the_hybrid_gates_with_its_reason(plant, demo_repo, tmp_path):
    """The demo's spec and tickets, RAFT-trained and evaluated on the served hybrid, with one fault
    planted: answers that cite another article than the one that holds the fact, answers outside
    the spec's JSON schema, a run stopped after a quarter of an epoch, tickets from one channel
    routed wrong (measured control: the same channels and bias set with every label right pass
    all seven gates, bias gap 0.025, task 0.95), or no replay of general conversations, so the run
    forgets the base's skills. Each is blocked by the gate that names its fault, and
    nothing is deployed. (Label-shuffled data: the bad-data commit in test_end_to_end.py.)"""
    change, metric, words, alone = PLANTED[plant]
    change(demo_repo.root)
    demo.commit(demo_repo.root, f"plant: {plant}")
    home = tmp_path / "home"
    done = reconcile(demo_repo.root, home)
    status = json.loads((home / "status" / f"{demo.SPEC_NAME}.json").read_text())
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["GatePassed"]["reason"] == "GateFailed", done.stdout + done.stderr
    gate = json.loads((home / "store" / demo.SPEC_NAME / status["runId"] / "eval" / "gate.json").read_text())
    lines = {line["metric"]: line for line in gate["lines"]}
    assert not lines[metric]["passed"], lines
    if alone:
        assert {m for m, line in lines.items() if not line["passed"]} == {metric}, lines
    assert words in conditions["GatePassed"]["message"], conditions["GatePassed"]["message"]
    assert lines["rag.recallAtK"]["passed"]  # retrieval is not what failed
    assert status.get("servingRunId") is None and LocalServing(home / "store").current(demo.SPEC_NAME) is None
