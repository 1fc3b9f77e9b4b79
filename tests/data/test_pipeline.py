"""The controller's entry point: prepare at an exact revision, reviews at that revision, DataReady."""
from __future__ import annotations

import json

import pytest
from data_helpers import diverse_examples, write_lines

from controller.data.pipeline import prepare_spec
from controller.data.review import review_sample
from controller.errors import PermanentError
from controller.spec.finetune import FineTune


def finetune(n_min: int = 200) -> FineTune:
    return FineTune.model_validate({
        "apiVersion": "ftops.dev/v1alpha1", "kind": "FineTune",
        "metadata": {"name": "triage", "owner": "data-team"},
        "spec": {
            "baseModel": {"uri": "models/none"},
            "dataset": {"path": "data/triage.jsonl", "minExamples": n_min},
            "method": {"type": "lora"},
        },
    })


def test_data_ready_follows_size_then_review_at_each_revision(git_repo, tmp_path):
    root = git_repo.root
    write_lines(root / "data" / "triage.jsonl", diverse_examples(150))
    small = git_repo.commit("too small")
    write_lines(root / "data" / "triage.jsonl", diverse_examples(300))
    unreviewed = git_repo.commit("more data")
    work = tmp_path / "work"

    _, _, ready = prepare_spec(root, small, finetune(), work)
    assert (ready.status, ready.reason) == (False, "TooFewExamples")

    prepared, status, ready = prepare_spec(root, unreviewed, finetune(), work)
    assert (ready.status, ready.reason) == (False, "ReviewPending") and status.sample == 30

    hashes = [json.loads(x) for x in (prepared.train_path.read_text() + prepared.test_path.read_text()).splitlines()]
    from controller.data.normalize import example_hash

    sample = review_sample([example_hash(e) for e in hashes], 0.10)
    git_repo.write("reviews/triage.jsonl", "".join(json.dumps({"example": h, "verdict": "approve", "reviewer": "ana", "note": ""}) + "\n" for h in sample))
    reviewed = git_repo.commit("reviews")
    _, status, ready = prepare_spec(root, reviewed, finetune(), work)
    assert ready.status and ready.reason == "DataReady" and ready.to_dict()["status"] == "True"
    # The earlier revision is still judged by what it held then.
    assert prepare_spec(root, unreviewed, finetune(), work)[2].reason == "ReviewPending"
    # The working copy was never needed: change it and nothing at the revision moves.
    (root / "data" / "triage.jsonl").write_text("garbage\n")
    assert prepare_spec(root, reviewed, finetune(), work)[2].status


def test_missing_dataset_at_revision_is_a_clear_error(git_repo, tmp_path):
    git_repo.write("README", "x")
    rev = git_repo.commit("no data")
    with pytest.raises(PermanentError, match=r"data/triage.jsonl: not in the repository at .*version it with `ftops data version`"):
        prepare_spec(git_repo.root, rev, finetune(), tmp_path / "w")
