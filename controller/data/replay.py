"""Replay (rehearsal): general conversations mixed into a run's training split, so a fine-tune on
a narrow task keeps the skills the base model had (spec.training.replay).

Why: a fine-tune that learns one task can overwrite what the base could do before (catastrophic
forgetting). Measured on the demo's tiny base, a retrieval-aware LoRA run on the ticket task took
the general-skills suite from 0.95 to 0.025-0.1, which the regression gate at its guide value
(maxDrop 0.05) blocks; lowering the learning rate or adapting fewer layers either kept the skills
or learned the task, never both. Replaying general conversations, of the kind the base was
trained on, in the same epochs holds both.

What it does, as a pure function of its inputs (written once per key under
`<prepared>/replay-<key>/`, files first and manifest last, like the RAFT rendering):

- the replay file is checked like a dataset (`controller.data.check`: every structural error by
  file and line stops the pass) and its exact duplicates are dropped;
- a replayed prompt may not be a prompt of the test split or of the regression suite: training
  on them would make the evaluation measure recall, not skill (a DataInvalid names each line);
- `share` x (training examples) replayed examples are drawn in an order fixed by the run's seed
  and the file's md5, without repeats while the file lasts (then another pass in a new order);
- they are mixed into the training split, as written: no retrieved sources (they are not served
  prompts), and the test split is left as it was. The manifest's `replay` block records the file,
  its md5 and how many were added, so an auditor sees what the run learned from.

The replay file's version is part of the run id (controller.identity), so a changed file trains a
new run.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from controller.errors import PermanentError

if TYPE_CHECKING:
    from controller.data.prepare import Prepared
    from controller.spec.finetune import FineTune

REPLAY_VERSION = "1"
"""Bump when the mixing of the same inputs changes."""
MAX_LISTED = 20


@dataclass(frozen=True)
class ReplaySettings:
    path: str
    """spec.training.replay.path, as the spec names it (what error messages cite)."""
    share: float
    seed: int


def prompt_key(messages: Sequence[dict]) -> str:
    """What makes two prompts the same: roles and whitespace-normalised text of every message."""
    from controller.chat import message_text

    return json.dumps([(m.get("role"), " ".join(message_text(m).split())) for m in messages])


def draw(n_available: int, n_wanted: int, seed: int, md5: str) -> list[int]:
    """Indices of the replayed examples: a seeded permutation, another one after it is used up."""
    rng = random.Random(hashlib.sha256(f"{seed}:replay:{md5}".encode()).hexdigest())
    out: list[int] = []
    while len(out) < n_wanted and n_available:
        order = list(range(n_available))
        rng.shuffle(order)
        out.extend(order[: n_wanted - len(out)])
    return out


def mix(train_lines: Sequence[bytes], replay_file: bytes, settings: ReplaySettings,
        held_out: Iterable[tuple[str, str]]) -> tuple[list[bytes], dict]:
    """The training split with replayed examples mixed in, and the manifest's `replay` block.
    `held_out`: (prompt key, where it is held out) of every prompt that may not be trained on.
    Raises DataInvalid naming the replay file's lines."""
    from controller.data.check import scan_bytes
    from controller.data.prepare import DataInvalid, invalid_message

    scan = scan_bytes(replay_file, settings.path)
    if scan.errors:
        raise DataInvalid(f"spec.training.replay.path: {invalid_message(scan)}")
    seen: set[str] = set()
    records = []
    for record in scan.records:
        if record.hash not in seen:
            seen.add(record.hash)
            records.append(record)
    if not records:
        raise DataInvalid(f"spec.training.replay.path: {settings.path} holds no examples; add general conversations "
                          "(the same chat JSONL as the dataset) or remove training.replay")
    where_held = dict(held_out)
    leaks = []
    for record in records:
        where = where_held.get(prompt_key(record.example["messages"][:-1]))
        if where is not None:
            leaks.append(f"{settings.path}:{record.line}: messages: this prompt is in {where}")
    if leaks:
        more = f"\n  ... and {len(leaks) - MAX_LISTED} more" if len(leaks) > MAX_LISTED else ""
        raise DataInvalid(
            f"spec.training.replay.path: {len(leaks)} replayed prompt(s) are held out for evaluation; training on them "
            "would make the evaluation measure recall, not skill. Remove these lines from the replay file:\n  "
            + "\n  ".join(leaks[:MAX_LISTED]) + more)
    wanted = round(settings.share * len(train_lines))
    picked = draw(len(records), wanted, settings.seed, scan.md5)
    lines = list(train_lines) + [records[i].canonical for i in picked]
    random.Random(hashlib.sha256(f"{settings.seed}:replay-order:{scan.md5}".encode()).hexdigest()).shuffle(lines)
    block = {"version": REPLAY_VERSION, "path": settings.path, "md5": scan.md5, "share": settings.share,
             "seed": settings.seed, "available": len(records), "added": len(picked),
             "distinct": len(set(picked)), "trainExamples": len(train_lines)}
    return lines, block


def replay_prepared(prepared: "Prepared", replay_file: Path, settings: ReplaySettings,
                    held_out: Iterable[tuple[str, str]]) -> "Prepared":
    """`prepared` (a Prepared, RAFT-rendered or not) with replay mixed into its training split, in
    `<prepared>/replay-<key>/`; an existing complete one is reused. See the module docstring."""
    from controller.data.prepare import Prepared, _write, load_manifest

    data = replay_file.read_bytes()
    train_sha = prepared.manifest["splits"]["train"]["sha256"]
    payload = {"train": train_sha, "replay": hashlib.md5(data).hexdigest(), "share": settings.share,
               "seed": settings.seed, "version": REPLAY_VERSION}
    out = Path(prepared.dir) / f"replay-{hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]}"
    try:
        return Prepared(out, load_manifest(out))
    except (PermanentError, OSError, KeyError):
        pass
    train_lines = [line for line in prepared.train_path.read_bytes().splitlines() if line.strip()]
    lines, block = mix(train_lines, data, settings, held_out)
    train_bytes = b"".join(line + b"\n" for line in lines)
    manifest = json.loads(json.dumps(prepared.manifest))
    manifest["splits"]["train"].update({"sha256": hashlib.sha256(train_bytes).hexdigest(), "examples": len(lines)})
    manifest["replay"] = {**block, "unmixedSplit": {"train": train_sha}}
    _write(out, {"train.jsonl": train_bytes, "test.jsonl": prepared.test_path.read_bytes(),
                 "manifest.json": (json.dumps(manifest, indent=2) + "\n").encode()})
    return Prepared(out, manifest)


def held_out_prompts(test_path: Path, suite: Path, suite_name: str) -> list[tuple[str, str]]:
    """(prompt key, where) of the test split's prompts and the regression suite's."""
    import orjson

    out = []
    for line in test_path.read_bytes().splitlines():
        if line.strip():
            out.append((prompt_key(orjson.loads(line)["messages"][:-1]), "the test split"))
    from controller.evaluate.datasets import read_examples

    for example in read_examples(suite, "evaluation.regression.suite", answer_key="answer"):
        out.append((prompt_key(example.prompt), f"the regression suite ({suite_name})"))
    return out


def for_spec(repo: Path, commit: str, finetune: "FineTune", prepared: "Prepared", workdir: Path) -> "Prepared":
    """The data step's part for a spec with spec.training.replay: the replay file at `commit`
    mixed into the training split (`prepared` as it was when the spec replays nothing)."""
    replay = finetune.spec.training.replay
    if replay is None:
        return prepared
    from controller.data.pipeline import file_at

    replay_file = file_at(repo, commit, replay.path, Path(workdir) / "sources" / finetune.name / "replay",
                          "spec.training.replay.path")
    from controller.evaluate.datasets import DEFAULT_SUITE, suite_path

    suite_name = finetune.spec.evaluation.regression.suite
    suite = suite_path(DEFAULT_SUITE, None) if suite_name == DEFAULT_SUITE else file_at(
        repo, commit, suite_name, Path(workdir) / "sources" / finetune.name / "suite", "spec.evaluation.regression.suite")
    settings = ReplaySettings(replay.path, replay.share, finetune.spec.training.seed)
    return replay_prepared(prepared, replay_file, settings, held_out_prompts(prepared.test_path, suite, suite_name))
