"""Chat JSONL -> token ids + labels (loss only on assistant tokens), cached with `datasets`.

Which tokens are trained is decided by the model's own chat template: with `{% generation %}`
markers transformers returns the assistant mask directly; otherwise each assistant turn's span is
found by rendering the conversation up to that turn with and without it. Either way the
assistant's end-of-turn token is inside the span, and `check_template` refuses a template where
it is not (the model would never learn to stop).

The cache key covers the data (md5 of the dataset version + sha256 of the split file), the
tokenizer (hash of its full definition and special tokens), the chat template (its sha256) and the
max length, so a changed template can never reuse stale token ids.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.chat import check_example, describe
from controller.errors import PermanentError
from controller.fsutil import json_lines, sha256_file

IGNORE_INDEX = -100
CACHE_FORMAT = 1  # bump when the tokenization logic changes


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_chat_jsonl(path: Path, field: str) -> list[list[dict]]:
    """Every conversation of a chat JSONL file, checked against the chat format
    (`controller.chat`, the same rules `ftops data check` applies, so data that passed the check
    is never refused here); the first bad line stops the run with its file:line and field."""
    if not path.is_file():
        raise PermanentError(f"{field}: data file '{path}' not found; run `ftops data prepare` or fix the path in run.json")
    conversations = []
    for _, where, obj in json_lines(path, "chat example"):
        problems = check_example(obj)
        if problems:
            raise PermanentError(describe(where, problems))
        conversations.append(obj["messages"])
    if not conversations:
        raise PermanentError(f"{field}: data file '{path}' has no examples")
    return conversations


def tokenizer_hash(tokenizer) -> str:
    """Hash of everything that decides token ids: the full tokenizer definition + special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = json.dumps(special_tokens(tokenizer), sort_keys=True)
    return sha256_text(definition + "\n" + specials)


def special_tokens(tokenizer) -> dict[str, Any]:
    """Special tokens as serving must use them (recorded in the manifest)."""
    out = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        tok = getattr(tokenizer, name, None)
        if tok is not None:
            out[name] = {"token": str(tok), "id": tokenizer.convert_tokens_to_ids(str(tok))}
    extra = getattr(tokenizer, "additional_special_tokens", None) or []
    out["additional"] = [str(t) for t in extra]
    return out


def _uses_generation_markers(template: str) -> bool:
    return "{% generation %}" in template.replace("{%-", "{%").replace("-%}", "%}")


def encode(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one conversation, labels IGNORE_INDEX outside assistant turns,
    truncated to max_length."""
    template = tokenizer.chat_template
    if _uses_generation_markers(template):
        enc = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(enc["input_ids"])
        mask = list(enc["assistant_masks"])
    else:
        ids, mask = _encode_by_prefix(tokenizer, messages)
    ids, mask = ids[:max_length], mask[:max_length]
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    return ids, labels


def _encode_by_prefix(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Assistant spans found by rendering the prefix before each assistant turn (templates without
    generation markers, e.g. most hub models)."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(upto) or not upto.startswith(before):
            raise PermanentError(
                "chat template: rendering is not prefix-stable, so assistant tokens cannot be located; "
                "add {% generation %} markers to the template"
            )
        end = len(upto)
        while end > len(before) and upto[end - 1].isspace():  # the separator after end-of-turn is not generated
            end -= 1
        spans.append((len(before), end))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= a < e for s, e in spans)) for a, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def end_of_turn_ids(tokenizer, generation_eos: Any = None) -> set[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif isinstance(generation_eos, (list, tuple)):
        ids.update(int(i) for i in generation_eos)
    return ids


def check_template(tokenizer, messages: list[dict], where: str, eot_ids: set[int]) -> None:
    """The template renders the data, marks assistant tokens, and trains the end-of-turn token."""
    try:
        ids, labels = encode(tokenizer, messages, max_length=10**9)
    except PermanentError:
        raise
    except Exception as exc:
        raise PermanentError(f"chat template: cannot render {where}: {type(exc).__name__}: {exc}") from None
    trained = [t for t in labels if t != IGNORE_INDEX]
    if not trained:
        raise PermanentError(f"chat template: no assistant tokens are marked for {where}; the template must mark assistant turns")
    if not eot_ids & set(trained):
        names = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(eot_ids)) or "none"
        raise PermanentError(
            f"chat template: the assistant turn in {where} does not include an end-of-turn token ({names}) among its "
            "trained tokens, so the model would never learn to stop; fix the template or the tokenizer's eos_token"
        )


@dataclass
class TokenizedSplit:
    input_ids: list[list[int]]
    labels: list[list[int]]
    cache_key: str
    cache_hit: bool
    dropped: int
    target_counts: list[int] | None = None  # per example: labelled tokens after the shift (filled by the trainer)


def cache_key(data_md5: str, file_sha256: str, tok_hash: str, template_sha256: str, max_length: int) -> str:
    parts = {"dataMd5": data_md5, "file": file_sha256, "tokenizer": tok_hash, "template": template_sha256,
             "maxLength": max_length, "format": CACHE_FORMAT}
    return sha256_text(json.dumps(parts, sort_keys=True))[:32]


def tokenize_split(
    path: Path, field: str, tokenizer, *, data_md5: str, max_length: int, cache_dir: Path | None,
    expected_sha256: str | None = None,
) -> TokenizedSplit:
    """Tokenize a split (or load it from the cache). Examples with no trained token left after
    truncation are dropped and counted."""
    if not path.is_file():
        raise PermanentError(f"{field}: data file '{path}' not found; run `ftops data prepare` or fix the path in run.json")
    file_sha = sha256_file(path)
    if expected_sha256 and file_sha != expected_sha256:
        raise PermanentError(
            f"{field}: '{path}' has sha256 {file_sha}, but run.json pins {expected_sha256}; the prepared data changed "
            "after the run was planned. Re-run `ftops data prepare` and plan again."
        )
    key = cache_key(data_md5, file_sha, tokenizer_hash(tokenizer), sha256_text(tokenizer.chat_template), max_length)
    target = cache_dir / key if cache_dir else None
    if target is not None and (target / "dataset_info.json").exists():
        from datasets import load_from_disk

        columns = load_from_disk(str(target)).to_dict()  # plain lists: the loop indexes them per step
        meta = json.loads((target / "ftops.json").read_text()) if (target / "ftops.json").exists() else {}
        return TokenizedSplit(columns["input_ids"], columns["labels"], key, True, int(meta.get("dropped", 0)))
    conversations = read_chat_jsonl(path, field)
    input_ids, labels, dropped = [], [], 0
    for messages in conversations:
        ids, labs = encode(tokenizer, messages, max_length)
        if all(t == IGNORE_INDEX for t in labs):
            dropped += 1
            continue
        input_ids.append(ids)
        labels.append(labs)
    if not input_ids:
        raise PermanentError(
            f"{field}: every example in '{path}' lost all assistant tokens to truncation at maxSeqLength={max_length}; raise training.maxSeqLength"
        )
    if target is not None:
        import datasets
        from datasets import Dataset

        datasets.disable_progress_bars()  # the trainer reports its own progress
        # Several ranks may tokenize at once: each writes its own temporary copy, the first
        # rename wins, and a complete entry is never replaced while another rank may read it.
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        Dataset.from_dict({"input_ids": input_ids, "labels": labels}).save_to_disk(str(tmp))
        (tmp / "ftops.json").write_text(json.dumps({"dropped": dropped, "source": str(path)}))
        if not (target / "dataset_info.json").exists():
            shutil.rmtree(target, ignore_errors=True)  # a stale incomplete entry
            try:
                tmp.rename(target)
            except OSError:  # another rank got there first
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenizedSplit(input_ids, labels, key, False, dropped)
