"""Reading evaluation sets: chat JSONL (the held-out split, bias sets) and regression suites.

An example's reference answer is its last assistant message; everything before it is the prompt.
Errors name file:line and what to write instead, as everywhere in ftops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.chat import check_messages, describe, message_text
from controller.errors import PermanentError
from controller.fsutil import json_lines

DEFAULT_SUITE = "default"
_DEFAULT_SUITE_FILE = Path(__file__).resolve().parent.parent / "defaults" / "regression.jsonl"


@dataclass(frozen=True)
class EvalExample:
    """One input with its reference answer. `meta` keeps the other keys of the line (group, id...)."""

    prompt: tuple[dict, ...]
    reference: str
    line: int
    meta: dict = field(default_factory=dict)

    @property
    def messages(self) -> list[dict]:
        return [dict(m) for m in self.prompt]

    def text(self) -> str:
        """Prompt (minus system messages, shared by every example) and answer, for overlap checks."""
        return "\n".join([message_text(m) for m in self.prompt if m["role"] != "system"] + [self.reference])


def read_examples(path: str | Path, what: str, *, answer_key: str | None = None) -> list[EvalExample]:
    """Every example of a JSONL file, its messages checked against the chat format
    (`controller.chat`: the rules `ftops data check` and the trainer apply, so a held-out split
    that passed the check is never refused here). With `answer_key`, a line may give its answer
    under that key (regression suites: `{"messages": [user...], "answer": "..."}`); otherwise the
    last message must be the assistant's reference answer. A last turn that only calls tools is
    compared as the JSON of its calls (`controller.chat.message_text`). Messages are kept whole
    (tool calls included), because the model's chat template renders them."""
    path = Path(path)
    if not path.is_file():
        raise PermanentError(f"{what}: file '{path}' not found")
    examples: list[EvalExample] = []
    for lineno, where, obj in json_lines(path, "example"):
        if not isinstance(obj, dict):
            raise PermanentError(f'{where}: each line must be a JSON object with "messages"')
        messages = obj.get("messages")
        given = answer_key is not None and answer_key in obj
        if given and not isinstance(obj[answer_key], str):
            raise PermanentError(f'{where}: "{answer_key}" must be a string (the expected answer)')
        ends_with_answer = (isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict)
                            and messages[-1].get("role") == "assistant")
        problems = check_messages(messages, "prompt" if given and not ends_with_answer else "example")
        ending = next((p for p in problems if p.kind == "no_assistant"), None)
        if ending is not None:
            hint = f' or an "{answer_key}" key' if answer_key else ""
            raise PermanentError(f"{where}: the last message must be the assistant's reference answer{hint} ({ending.field})")
        if problems:
            raise PermanentError(describe(where, problems))
        meta = {k: v for k, v in obj.items() if k != "messages"}
        if given:
            reference = obj[answer_key]
            prompt = messages[:-1] if ends_with_answer else messages
        else:
            reference, prompt = message_text(messages[-1]), messages[:-1]
        # Never empty: the chat format starts an example with a system or user message.
        examples.append(EvalExample(tuple(prompt), reference, lineno, meta))
    if not examples:
        raise PermanentError(f"{what}: file '{path}' has no examples")
    return examples


def suite_path(suite: str, repo_root: Path | None) -> Path:
    """The shipped default suite, or a repo-relative JSONL path from the spec."""
    if suite == DEFAULT_SUITE:
        return _DEFAULT_SUITE_FILE
    return resolve_repo_path(suite, repo_root, "evaluation.regression.suite")


def resolve_repo_path(rel: str, repo_root: Path | None, field_name: str) -> Path:
    """A spec path (relative to the GitOps repository) on this machine."""
    root = Path(repo_root) if repo_root is not None else Path.cwd()
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise PermanentError(f"{field_name}: '{rel}' leads outside the repository {root}")
    if not path.exists():
        raise PermanentError(f"{field_name}: '{rel}' not found under {root}; pass --repo-root or fix the path in the spec")
    return path
