"""General skills for the tiny base model: what it is pretrained on, and the held-out suite that
measures whether a fine-tune kept them (`controller/defaults/regression.jsonl`).

Why these skills: each is a general ability a chat model has before anyone fine-tunes it, a
2-layer model learns it in a thousand optimizer steps on a CPU (measured), and a fine-tune on
support tickets can break it. They read the prompt rather than recall facts, so a held-out item
is never a memorised one:

- `copy`: repeat a short span of words exactly ("Repeat exactly: gray tree snow").
- `first` / `last`: pick the first or the last word of a list.
- `reverse`: say three words in reverse order.
- `json` (pretraining only): answer with a JSON object under the key the instruction names, the
  instruction in the user message or, as a fine-tune's instruction usually arrives, in a system
  message that gives the answer's shape and allowed values (`Answer with JSON: {"tag":
  "owl"|"sun"|"cup"}.`). A base that knows this learns the ticket task's `{"label": ...}` in a
  LoRA fine-tune of 60 steps (measured: 91% held-out; 18% for a base pretrained without it).

Why the suite leaves `json` out: a fine-tune whose task is a JSON object re-purposes exactly that
skill (its answers are `{"label": ...}`), so every fine-tune on the ticket task "forgets" it,
the good ones included (measured: 1.0 -> 0.0-0.3 for every LoRA setting tried), and a gate on it
could not tell a good fine-tune from a bad one. The task's own format is what format compliance
measures. The four suite skills are what a well-behaved fine-tune keeps and an over-trained one
loses.

Held out, not memorised: the suite is generated from its own seed, and the pretraining stream
skips every prompt the suite holds (`pretraining_items`), so no suite prompt is ever trained on;
tests/tiny holds the shipped file to this generator and to that disjointness.

Pure Python, no heavy imports.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

WORDS: tuple[str, ...] = tuple(
    "red blue green gold pink gray cat dog fox owl bee cow pig hen ant bat apple plum pear lime fig "
    "kiwi lamp desk door key box cup pen map sun moon star rain snow wind tree leaf rock sand ship car "
    "bus train note file form week plan".split()
)
"""Words the skills move around; each is a token or two of the tiny tokenizer."""
DOMAIN_WORDS: tuple[str, ...] = ("label", "billing", "bug", "account")
"""Support words in the pretraining stream only (never in the held-out suite): a base model knows
the words a fine-tune will answer with, as any pretrained model would. Without them those tokens
are never a target in pretraining and start a fine-tune ~10 nats out of reach (measured)."""
NUMBERS: tuple[str, ...] = tuple(str(n) for n in range(10, 100))
JSON_KEYS: tuple[str, ...] = ("answer", "value", "word", "result", "name", "item", "text", "reply", "code")
JSON_LEADS: tuple[str, ...] = ("Tag the message.", "Pick the word.", "Sort the note.", "Label the text.", "Read the message.")

PRETRAINED_SKILLS: tuple[str, ...] = ("copy", "first", "json", "last", "reverse")
SUITE_SKILLS: tuple[str, ...] = ("copy", "first", "last", "reverse")
PRETRAIN_SEED = 0
"""The pretraining stream's seed (offset by init_tiny_model's seed)."""
SUITE_SEED = 7_000_003
"""The held-out suite's seed: a stream the pretraining never draws from."""
SUITE_PER_SKILL = 10
_ROUND_ROBIN = PRETRAINED_SKILLS


@dataclass(frozen=True)
class SkillItem:
    """One prompt (chat messages without the answer) and the exact answer the skill gives."""

    skill: str
    messages: tuple[tuple[str, str], ...]
    """(role, content) of each prompt message."""
    answer: str

    @property
    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def key(self) -> str:
        """What makes two items the same prompt (for the disjointness of suite and pretraining)."""
        return json.dumps(self.messages)


def _message(role: str, content: str) -> tuple[str, str]:
    return (role, content)


def _words(rng: random.Random, pool: tuple[str, ...], low: int, high: int) -> list[str]:
    return rng.sample(pool, rng.randint(low, high))


def _copy(rng: random.Random, pool: tuple[str, ...]) -> tuple[str, str]:
    words = _words(rng, pool, 2, 3)
    return f"Repeat exactly: {' '.join(words)}", " ".join(words)


def _first(rng: random.Random, pool: tuple[str, ...]) -> tuple[str, str]:
    words = _words(rng, pool, 3, 5)
    return f"Which word comes first: {' '.join(words)}?", words[0]


def _last(rng: random.Random, pool: tuple[str, ...]) -> tuple[str, str]:
    words = _words(rng, pool, 3, 5)
    return f"Which word comes last: {' '.join(words)}?", words[-1]


def _reverse(rng: random.Random, pool: tuple[str, ...]) -> tuple[str, str]:
    words = _words(rng, pool, 3, 3)
    return f"Reverse the words: {' '.join(words)}", " ".join(reversed(words))


def _json(rng: random.Random, pool: tuple[str, ...]) -> tuple[tuple[tuple[str, str], ...], str]:
    """A JSON object under the key the instruction names. In a system message the instruction
    gives the answer's shape, its key and the allowed values, the way a fine-tune's instruction
    does (`Tag the message. Answer with JSON: {"tag": "owl"|"sun"|"cup"}.`), and the user message
    holds the value; in a user message it names the key before the value."""
    key = rng.choice(JSON_KEYS)
    if rng.random() < 0.5:
        value = rng.choice(pool + NUMBERS)
        return (_message("user", f'Answer in JSON with the key "{key}": {value}'),), json.dumps({key: value})
    options = rng.sample(pool, 3)
    value = rng.choice(options)
    shape = "|".join(f'"{o}"' for o in options)
    system = f'{rng.choice(JSON_LEADS)} Answer with JSON: {{"{key}": {shape}}}.'
    return (_message("system", system), _message("user", value)), json.dumps({key: value})


_PLAIN: dict[str, Callable[[random.Random, tuple[str, ...]], tuple[str, str]]] = {
    "copy": _copy, "first": _first, "last": _last, "reverse": _reverse,
}


def make_item(skill: str, rng: random.Random, pool: tuple[str, ...] = WORDS) -> SkillItem:
    """One item of `skill` drawn from `rng`: its prompt messages and exact answer."""
    if skill == "json":
        messages, answer = _json(rng, pool)
        return SkillItem(skill, messages, answer)
    if skill not in _PLAIN:
        raise ValueError(f"unknown skill {skill!r}; expected one of {', '.join(PRETRAINED_SKILLS)}")
    prompt, answer = _PLAIN[skill](rng, pool)
    return SkillItem(skill, (_message("user", prompt),), answer)


def suite_items(per_skill: int = SUITE_PER_SKILL, seed: int = SUITE_SEED) -> list[SkillItem]:
    """The held-out suite: `per_skill` distinct prompts of every skill, from the suite's own seed."""
    rng = random.Random(seed)
    out: list[SkillItem] = []
    for skill in SUITE_SKILLS:
        seen: set[str] = set()
        while len(seen) < per_skill:
            item = make_item(skill, rng)
            if item.key not in seen:
                seen.add(item.key)
                out.append(item)
    return out


def pretraining_items(n: int, seed: int = 0) -> list[SkillItem]:
    """The pretraining stream: `n` items over the words and the support words, with every
    held-out suite prompt skipped (redrawn), so the suite measures skills, not recall."""
    held_out = {item.key for item in suite_items()}
    pool = WORDS + DOMAIN_WORDS
    rng = random.Random(PRETRAIN_SEED + seed)
    out: list[SkillItem] = []
    while len(out) < n:
        item = make_item(_ROUND_ROBIN[len(out) % len(_ROUND_ROBIN)], rng, pool)
        if item.key not in held_out:
            out.append(item)
    return out


def suite_lines(items: Iterable[SkillItem] | None = None) -> list[dict]:
    """The suite as regression-suite lines (`controller.evaluate.datasets.read_examples` with
    `answer_key="answer"`). `"match": "exact"`: the answer must be the whole output (normalised),
    because containment would score `{"label": "plum"}` right for the answer `plum`, which is the
    forgetting this suite exists to catch."""
    rows = []
    counts: dict[str, int] = {}
    for item in items if items is not None else suite_items():
        counts[item.skill] = counts.get(item.skill, 0) + 1
        rows.append({"id": f"{item.skill}-{counts[item.skill]:02d}", "skill": item.skill, "messages": item.chat,
                     "answer": item.answer, "match": "exact"})
    return rows


def write_suite(path: str | Path) -> Path:
    """Write the held-out suite as JSONL (how controller/defaults/regression.jsonl is made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in suite_lines()), encoding="utf-8")
    return path


REPLAY_SEED = 5_000_011
"""The replay file's seed: fresh items from the pretraining distribution, not its stream."""


def replay_lines(n: int, seed: int = REPLAY_SEED) -> list[dict]:
    """`n` general conversations for a fine-tune to replay (spec.training.replay): the skills
    the base was pretrained on, as chat examples (prompt and the assistant's exact answer), none
    of them a held-out suite prompt (`pretraining_items` skips those)."""
    return [{"messages": item.chat + [{"role": "assistant", "content": item.answer}]}
            for item in pretraining_items(n, seed=seed)]
