"""Helpers shared by the data tests (imported as `data_helpers`; conftest puts this folder on sys.path)."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path


def line(messages: list[dict], **extra) -> str:
    return json.dumps({"messages": messages, **extra})


def chat(user: str, assistant: str, system: str | None = "You are a support assistant.") -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]
    return line(msgs)


WORDS = [w.strip() for w in (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo "
    "sierra tango uniform victor whiskey xray yankee zulu amber basil cedar dune ember fjord grove harbor iris jade "
    "kelp lotus maple nectar olive pearl quartz reef sage thyme umber violet willow yarrow zinnia anchor beacon canyon "
    "delta1 estuary falcon glacier heron island jaguar kestrel lagoon meadow nebula orchid prairie quail raven savanna "
    "tundra upland valley walrus xenon yucca zephyr"
).split()]


def diverse_examples(n: int, seed: int = 0) -> list[str]:
    """n distinct chat lines whose texts share almost no word 3-grams (random word sequences)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choices(WORDS, k=25))
        a = " ".join(rng.choices(WORDS, k=25))
        out.append(chat(f"ticket {i}: {q}", a))
    return out


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path





def run_ftops(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=cwd, capture_output=True, text=True)


def md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()
