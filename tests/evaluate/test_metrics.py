"""Metric definitions on known cases (pure functions: no model)."""
from __future__ import annotations

import pytest

from controller.evaluate import metrics as M
from controller.evaluate.contamination import overlap, train_index
from controller.evaluate.datasets import read_examples, suite_path
from controller.evaluate.reference import secret_env_name
from controller.evaluate.suites.regression import item_score as regression_item_score
from controller.tiny import task


def test_exact_match_normalises_case_punctuation_articles_and_spaces() -> None:
    assert M.exact_match("The  Answer.", "answer") == 1.0
    assert M.exact_match("Ｐaris", "paris") == 1.0  # NFKC folds full-width letters
    assert M.exact_match("Paris, France", "Paris") == 0.0


def test_json_field_match_scores_each_field_and_zero_for_non_json() -> None:
    ref = '{"party": "Acme", "days": 30, "kind": "nda"}'
    assert M.json_field_match('{"party": "Acme", "days": 31, "kind": "nda"}', ref) == pytest.approx(2 / 3)
    assert M.json_field_match('{"party": "Acme", "days": 31}', ref, fields=["party"]) == 1.0
    assert M.json_field_match('```json\n{"party": "Acme", "days": 30, "kind": "nda"}\n```', ref) == 1.0
    assert M.json_field_match("Acme, 30 days", ref) == 0.0
    with pytest.raises(ValueError, match="reference answer is not a JSON object"):
        M.json_field_match("{}", "plain text")


def test_token_f1_and_rouge_l_known_values() -> None:
    # 2 common tokens; precision 2/3, recall 2/4 -> F1 = 4/7
    assert M.token_f1("cat sat down", "the cat sat on mat") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert M.token_f1("", "") == 1.0 and M.token_f1("x", "y") == 0.0
    # LCS("w x y z", "w y x z") = 3 -> P = R = 3/4
    assert M.rouge_l("w x y z", "w y x z") == pytest.approx(0.75)
    # articles are dropped by normalisation: [police, killed, gunman] vs [police, kill, gunman]
    assert M.rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(2 / 3)
    assert M.rouge_l("same words here", "same words here") == 1.0


def test_scorer_rejects_unknown_metrics() -> None:
    with pytest.raises(ValueError, match="unknown task metric"):
        M.scorer("bleu")


def test_win_rates_count_wins_ties_losses() -> None:
    assert M.win_rates([1, 0, 1, 0.5], [0, 0, 1, 1]) == {"win": 0.25, "tie": 0.5, "loss": 0.25}


def test_default_regression_suite_ships_and_parses() -> None:
    suite = read_examples(suite_path("default", None), "suite", answer_key="answer")
    assert len(suite) >= 25 and len({e.meta["id"] for e in suite}) == len(suite)
    assert len({e.meta["skill"] for e in suite}) >= 4
    first = next(e for e in suite if e.meta["skill"] == "first")
    assert regression_item_score(first, f" {first.reference.upper()}.") == 1.0
    assert regression_item_score(first, f'{{"label": "{first.reference}"}}') == 0.0


def test_contamination_finds_planted_copies_and_reports_overlap() -> None:
    train = [e["messages"][1]["content"] for e in task.generate_examples(100, seed=0)]
    fresh = ["A completely unrelated sentence about gardening tomatoes in the spring with friends and family"]
    planted = [train[3], train[40] + " Thanks!"]
    index = train_index(train)
    report = overlap(fresh + planted, index)
    assert report["exactCopies"] == 1 and report["examplesOverHalf"] == 2
    assert [t["index"] for t in report["top"]] == [1, 2]
    assert overlap(fresh, index)["ngramOverlap"] == 0.0


def test_secret_env_names_are_stable() -> None:
    assert secret_env_name("openai", "api-key") == "FTOPS_SECRET_OPENAI_API_KEY"
    assert secret_env_name("big-model.prod", "token") == "FTOPS_SECRET_BIG_MODEL_PROD_TOKEN"
