"""Token statistics and length warnings, with the base model's own tokenizer and chat template.

A length limit is only meaningful in the model's tokens, rendered the way the trainer renders
them (the chat template, special tokens and all), so that is what is counted when the base model
is on disk. Without it (an hf:// model not in the local cache, an s3:// model, the benchmark) the
counts are estimates of about four characters a token, and every report says which it is.

`count` is the one token counter: `ftops data check`, `ftops data version` (the count recorded in
the .dvc meta) and `ftops plan` (the cost estimate) all call it, with the tokenizer
`tokenizer_for` finds for the spec's base model, so the same file gives the same count wherever
it is shown. The training-token estimate they print is `training_tokens` of that count.

The tokenizer is loaded with `local_files_only=True` and never with `trust_remote_code`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from controller.data.check import Issue, Record

ESTIMATE = "estimate (characters / 4)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""A model folder without any of these has no tokenizer to load (transformers is not imported to learn that)."""


@dataclass(frozen=True)
class TokenStats:
    count: int
    min: int
    mean: float
    p95: int
    max: int
    total: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "min": self.min, "mean": round(self.mean, 1), "p95": self.p95, "max": self.max, "total": self.total, "method": self.method}


def stats(lengths: Sequence[int], method: str) -> TokenStats:
    if not lengths:
        return TokenStats(0, 0, 0.0, 0, 0, 0, method)
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]
    total = sum(ordered)
    return TokenStats(len(ordered), ordered[0], total / len(ordered), p95, ordered[-1], total, method)


@dataclass(frozen=True)
class TokenCount:
    """Tokens of every record, how they were counted, and the length warnings found on the way."""

    lengths: list[int]
    method: str
    issues: list[Issue]

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @property
    def estimated(self) -> bool:
        return self.method == ESTIMATE

    def stats(self) -> "TokenStats":
        return stats(self.lengths, self.method)


def method_name(tokenizer_name: str | None) -> str:
    return f"tokenizer ({tokenizer_name or 'base model'}) with chat template"


def count(records: Sequence[Record], tokenizer=None, tokenizer_name: str | None = None,
          max_seq_length: int | None = None, progress: bool = False) -> TokenCount:
    """The one token counter. With a tokenizer: each record rendered with the chat template, plus
    the exact `too_long` and `assistant_truncated` warnings (`measure`). Without: the estimate
    each record carries (controller.data.check), and `too_long` warnings that say they are
    estimated."""
    if tokenizer is not None:
        lengths, issues = measure(records, tokenizer, max_seq_length or 10**9, progress=progress)
        return TokenCount(lengths, method_name(tokenizer_name), issues)
    lengths = [r.est_tokens for r in records]
    issues = []
    if max_seq_length is not None:
        issues = [Issue(r.line, "too_long", "messages", f"about {r.est_tokens} tokens (estimated), over maxSeqLength "
                        f"{max_seq_length}; give --base-model for the exact count and truncation", "warning")
                  for r in records if r.est_tokens > max_seq_length]
    return TokenCount(lengths, ESTIMATE, issues)


def tokenizer_for(base_model_uri: str | None, revision: str | None, repo_root: str | Path | None,
                  explicit: str | None = None, required: bool = False):
    """(tokenizer, name, note) for counting a spec's data: an explicit model folder must load;
    the spec's base model is tried best effort (note says why the counts are estimates instead).
    A local folder without tokenizer files, or an hf:// model not in the local hub cache, is
    recognised without importing transformers."""
    from controller.errors import FtopsError

    if explicit:
        return load_tokenizer(explicit), explicit, None
    location = model_location(base_model_uri, repo_root)
    if not location:
        return None, None, "no local base model: token counts are estimates"
    if not _may_have_tokenizer(location, base_model_uri or ""):
        return None, None, f"no tokenizer files for {base_model_uri} on this machine: token counts are estimates"
    try:
        return load_tokenizer(location, revision), location, None
    except FtopsError as exc:
        if required:
            raise
        return None, None, f"tokenizer not available ({str(exc).split(';')[0]}): token counts are estimates"


def _may_have_tokenizer(location: str, uri: str) -> bool:
    if uri.startswith("hf://"):
        import os

        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub")
        return (hub / ("models--" + location.replace("/", "--"))).is_dir()
    folder = Path(location)
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def training_tokens(total_tokens: int, train_share: float, epochs: float) -> int:
    """Tokens the trainer will process: the train share of the data, once per epoch."""
    return round(total_tokens * train_share * epochs)


def model_location(base_model_uri: str | None, repo_root: str | Path | None) -> str | None:
    """Where to load the tokenizer from: a repo path made absolute, or an hf id for the local
    hub cache. None when there is nothing local to try (s3://, or no base model given)."""
    if not base_model_uri:
        return None
    if base_model_uri.startswith("hf://"):
        return base_model_uri[len("hf://") :]
    if "://" in base_model_uri:
        return None
    path = Path(base_model_uri)
    if not path.is_absolute() and repo_root is not None:
        path = Path(repo_root) / path
    return str(path)


def load_tokenizer(location: str, revision: str | None = None):
    """AutoTokenizer from a local directory or the local hub cache; never remote code, never a
    download. Raises FtopsError naming the location and what to do when it cannot be loaded."""
    from controller.errors import PermanentError

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(location, revision=revision, trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, ... depending on what is missing
        raise PermanentError(
            f"{location}: cannot load the base model's tokenizer ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "point --base-model at a local model directory with tokenizer files, or leave it out to use estimates"
        ) from None
    if not getattr(tok, "chat_template", None):
        raise PermanentError(
            f"{location}: the tokenizer has no chat template, so examples cannot be rendered as the trainer will render them; "
            "add `chat_template` to tokenizer_config.json (or use a chat/instruct base model)"
        )
    return tok


def _render(tok, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool = False) -> str:
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    return tok.apply_chat_template(messages, **kwargs)


def _count(tok, texts: list[str]) -> list[int]:
    if not texts:
        return []
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in enc]


def measure(
    records: Sequence[Record],
    tok,
    max_seq_length: int,
    batch: int = 512,
    progress: bool = False,
) -> tuple[list[int], list[Issue]]:
    """Token length of every record as the chat template renders it, plus `too_long` and
    `assistant_truncated` warnings. The truncation count is exact: each assistant turn's token
    span is found by rendering the conversation up to it (only done for examples over the limit)."""
    lengths: list[int] = []
    issues: list[Issue] = []
    steps = range(0, len(records), batch)
    if progress:
        from controller.data.progress import bar

        steps = bar(steps, total=len(steps), desc="tokenize", unit="batch")
    for s in steps:
        chunk = records[s : s + batch]
        texts: list[str] = []
        ok: list[Record] = []
        for rec in chunk:
            ex = rec.example
            try:
                texts.append(_render(tok, ex["messages"], ex.get("tools")))
                ok.append(rec)
            except Exception as exc:  # a Jinja template error is the data's or the template's problem
                issues.append(Issue(rec.line, "template_error", "messages", f"the chat template cannot render this example ({exc}); "
                                    "the trainer will fail on it: fix the example or the template", "warning"))
                lengths.append(rec.est_tokens)
        for rec, n in zip(ok, _count(tok, texts)):
            lengths.append(n)
            if n > max_seq_length:
                issues.extend(_truncation(tok, rec, n, max_seq_length))
    return lengths, issues


def _truncation(tok, rec: Record, total: int, limit: int) -> list[Issue]:
    ex = rec.example
    messages, tools = ex["messages"], ex.get("tools")
    found = [Issue(rec.line, "too_long", "messages", f"{total} tokens with the chat template, over maxSeqLength {limit}; "
                   "shorten the example or raise spec.training.maxSeqLength", "warning")]
    spans: list[tuple[int, int]] = []
    prompts, fulls = [], []
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            try:
                prompts.append(_render(tok, messages[:i], tools, add_generation_prompt=True))
                fulls.append(_render(tok, messages[: i + 1], tools))
            except Exception:
                return found
    starts, ends = _count(tok, prompts), _count(tok, fulls)
    spans = list(zip(starts, ends))
    assistant_total = sum(max(0, e - s) for s, e in spans)
    cut = sum(max(0, e - max(s, limit)) for s, e in spans)
    if cut:
        where = "all of its" if cut >= assistant_total else f"{cut} of its {assistant_total}"
        found.append(Issue(rec.line, "assistant_truncated", "messages", f"{where} assistant tokens fall past maxSeqLength {limit} and would not be learned; "
                           "shorten the prompt or the answer, or raise maxSeqLength", "warning"))
    return found
