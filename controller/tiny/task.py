"""A deterministic synthetic task: support tickets -> `{"label": "billing"|"bug"|"account"}`.

Why this task: a tiny model learns it to 100% held-out accuracy in seconds on a CPU, the answer
is JSON (so format compliance can be measured), and the label is a pure function of the ticket
(each ticket names topic words from exactly one label), so accuracy is a meaningful signal.
Pure Python, no heavy imports: data prep, evaluation and serving tests use it freely.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable

LABELS: tuple[str, ...] = ("billing", "bug", "account")

SYSTEM_PROMPT = 'Classify the support ticket. Answer with JSON: {"label": "billing"|"bug"|"account"}.'

# Each ticket is two sentences about its label's topic between shared openers, fillers and closers.
# Two label sentences (not one keyword) on purpose: with a frozen random base, LoRA learns from a
# signal spread over several tokens in a couple of epochs, while one keyword among ~60 tokens keeps
# it at chance for hundreds of steps (measured on the tiny model).
_PHRASES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for my subscription.",
        "Where is the invoice for last month?",
        "Please refund the payment.",
        "My credit card was billed the wrong price.",
        "The receipt shows an extra fee.",
        "Can I get a refund for this charge?",
        "The payment failed but the money left my bank.",
        "Why did the subscription fee go up?",
    ),
    "bug": (
        "The app crashes when I open settings.",
        "I get an error message on the dashboard.",
        "The page freezes after I click save.",
        "The upload button is broken.",
        "I only see a blank page.",
        "Requests time out all the time.",
        "There is a glitch in the chart.",
        "Here is the stack trace from the crash.",
    ),
    "account": (
        "I forgot my password.",
        "I cannot log in to my account.",
        "How do I change my username?",
        "My two-factor code never arrives.",
        "Please update the email address on my profile.",
        "My account is locked.",
        "I cannot sign in since yesterday.",
        "Can you delete my profile?",
    ),
}
_OPENERS = ("Hi,", "Hello team,", "Hey,", "Good morning,", "Dear support,", "Hi there,", "")
_FILLERS = (
    "It started yesterday.",
    "This is urgent.",
    "I am using the mobile app.",
    "Thanks in advance.",
    "My colleague has the same thing.",
    "I tried again later.",
    "",
)
_CLOSERS = ("Thanks!", "Regards, Sam", "Best, Alex", "Cheers", "")


def make_ticket(label: str, rng: random.Random) -> str:
    """One ticket text whose label is `label`."""
    if label not in _PHRASES:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    first, second = rng.sample(_PHRASES[label], 2)
    parts = [rng.choice(_OPENERS), first, rng.choice(_FILLERS), second, rng.choice(_CLOSERS)]
    return " ".join(p for p in parts if p)


def answer_for(label: str) -> str:
    """The exact assistant answer for a label (what a perfectly trained model generates)."""
    return json.dumps({"label": label})


def make_example(label: str, rng: random.Random) -> dict:
    """One chat example in OpenAI format: system, user ticket, assistant JSON answer."""
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": make_ticket(label, rng)},
            {"role": "assistant", "content": answer_for(label)},
        ]
    }


def generate_examples(n: int, seed: int = 0) -> list[dict]:
    """`n` examples, labels balanced round-robin then shuffled; the same (n, seed) always gives the
    same list, so tests and the demo can regenerate identical data without storing it."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    rng = random.Random(seed)
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    rng.shuffle(labels)
    return [make_example(label, rng) for label in labels]


def write_jsonl(path: str | Path, examples: Iterable[dict]) -> Path:
    """Write chat examples as JSONL (one object per line), creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for example in examples:
            fh.write(json.dumps(example, ensure_ascii=False) + "\n")
    return path


def write_task(out_dir: str | Path, n_train: int = 600, n_test: int = 120, seed: int = 0) -> tuple[Path, Path]:
    """Write `train.jsonl` and `test.jsonl` under `out_dir` from disjoint seeds (the test split is
    generated from seed + 1_000_003, so it is never a copy of the train split's random stream)."""
    out_dir = Path(out_dir)
    train = write_jsonl(out_dir / "train.jsonl", generate_examples(n_train, seed))
    test = write_jsonl(out_dir / "test.jsonl", generate_examples(n_test, seed + 1_000_003))
    return train, test


def expected_label(example: dict) -> str:
    """The label of an example, read from its assistant answer."""
    label = parse_label(example["messages"][-1]["content"])
    if label is None:
        raise ValueError("example's last message is not a label answer")
    return label


def parse_label(text: str) -> str | None:
    """The label in a generated answer, or None if the answer is not `{"label": <known label>}`.
    Strict on purpose: an answer that is not valid JSON counts as wrong (format compliance)."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(value, dict) or set(value) != {"label"}:
        return None
    label = value["label"]
    return label if label in LABELS else None


def corpus_texts(seed: int = 0, n: int = 300) -> list[str]:
    """Texts the tiny tokenizer is trained on: tickets, prompts and answers of this task."""
    texts = [SYSTEM_PROMPT]
    for example in generate_examples(n, seed):
        texts.extend(m["content"] for m in example["messages"][1:])
    return texts
