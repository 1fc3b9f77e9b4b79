"""The general skills: the shipped default regression suite is the generator's held-out suite,
read by the evaluator's own reader, and none of its prompts is ever pretrained on."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from controller.evaluate.datasets import DEFAULT_SUITE, read_examples, suite_path
from controller.tiny import skills
from controller.tiny.model import SETTINGS
from controller.tiny.pretrain import conversations_needed

SHIPPED = Path(__file__).resolve().parents[2] / "controller" / "defaults" / "regression.jsonl"


def _pretraining_stream_size() -> int:
    """As many conversations as the default pretraining draws (steps x conversations per batch)."""
    return conversations_needed(SETTINGS)


def test_the_shipped_default_suite_is_the_generators_held_out_suite() -> None:
    shipped = [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]
    assert shipped == skills.suite_lines(), "regenerate it: python -c 'from controller.tiny.skills import write_suite; " \
                                            "write_suite(\"controller/defaults/regression.jsonl\")'"
    assert suite_path(DEFAULT_SUITE, None) == SHIPPED
    examples = read_examples(SHIPPED, "default suite", answer_key="answer")
    assert Counter(e.meta["skill"] for e in examples) == {s: skills.SUITE_PER_SKILL for s in skills.SUITE_SKILLS}
    assert len({e.meta["id"] for e in examples}) == len(examples)
    assert all(e.meta["match"] == "exact" for e in examples)


def test_no_suite_prompt_is_in_the_pretraining_stream() -> None:
    suite = {item.key for item in skills.suite_items()}
    stream = skills.pretraining_items(_pretraining_stream_size())
    assert len(suite) == len(skills.SUITE_SKILLS) * skills.SUITE_PER_SKILL
    assert not suite & {item.key for item in stream}
    # Not by luck: the suite's prompts are ones the stream's generator does draw, and skips.
    raw = random.Random(skills.PRETRAIN_SEED)
    order = skills.PRETRAINED_SKILLS
    drawn = {skills.make_item(order[i % len(order)], raw, skills.WORDS + skills.DOMAIN_WORDS).key
             for i in range(len(stream) + 5000)}
    assert suite & drawn, "the disjointness check would pass whatever the suite held"


def test_the_suite_never_uses_the_support_words() -> None:
    """The ticket task's answers (`{"label": "billing"}`) are words of the pretraining stream but
    never of the suite, so a fine-tune's habit cannot pass for a skill."""
    for item in skills.suite_items():
        text = " ".join(content for _, content in item.messages) + " " + item.answer
        assert not set(text.replace('"', " ").replace(":", " ").split()) & set(skills.DOMAIN_WORDS), item


def test_every_suite_answer_is_its_prompts_skill() -> None:
    for item in skills.suite_items():
        prompt = item.messages[-1][1]
        words = prompt.rstrip("?").split(": ", 1)[-1].split()
        if item.skill == "copy":
            assert item.answer == " ".join(words)
        elif item.skill == "first":
            assert item.answer == words[0]
        elif item.skill == "last":
            assert item.answer == words[-1]
        else:
            assert item.skill == "reverse" and item.answer == " ".join(reversed(words))
