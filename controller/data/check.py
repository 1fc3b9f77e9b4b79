"""Structural checks of OpenAI chat JSONL, one pass, every problem with its line number.

A fine-tune learns every error in its data, so `scan` never stops at the first problem: it
reports each one as an `Issue` (line, kind, field, message that says what to write instead) and
counts them per kind. Lines without errors become `Record`s holding the normalised example and
its `example_hash`, which the rest of the pipeline consumes without parsing the file again.

Accepted shape (the OpenAI fine-tuning format):

    {"messages": [{"role": "system"|"developer"|"user"|"assistant"|"tool", "content": "..."}, ...],
     "tools": [...], "parallel_tool_calls": true}

Assistant messages may carry `tool_calls` (then `content` may be null) and `weight` (0 or 1);
tool messages carry the `tool_call_id` of an earlier call. Anything else is an error, so a typo
such as `"conent"` is caught instead of silently training on an empty turn.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from controller.data.normalize import canonical_json, normalize_parsed, normalize_text

ERROR_KINDS: dict[str, str] = {
    "invalid_json": "the line is not valid JSON",
    "not_object": "the line (or a message) is not a JSON object",
    "missing_messages": "the `messages` list is missing, empty or not a list",
    "missing_role": "a message has no `role`",
    "missing_content": "a message has no `content`",
    "unknown_key": "a key that the chat format does not define",
    "unknown_role": "a role other than system, developer, user, assistant, tool",
    "empty_content": "a message whose content is empty or only whitespace",
    "no_assistant": "no assistant message, so there is nothing to learn",
    "bad_tool_call": "a badly formed tool call or tool message",
    "bad_field": "a known key with a value of the wrong type",
}
WARNING_KINDS: dict[str, str] = {
    "blank_line": "an empty line (skipped)",
    "missing_system": "no system message",
    "missing_user": "no user message",
    "too_long": "longer than the spec's maxSeqLength in tokens",
    "assistant_truncated": "assistant tokens past maxSeqLength would be cut off",
    "template_error": "the base model's chat template cannot render this example",
    "tokenizer_unavailable": "token counts are estimated (no local tokenizer)",
}

ROLES = ("system", "developer", "user", "assistant", "tool")
_ROLES = frozenset(ROLES)
TOP_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
MESSAGE_KEYS = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "weight", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id", "name"}),
}
_CALL_KEYS = frozenset({"id", "type", "function"})
_FUNCTION_KEYS = frozenset({"name", "arguments"})


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem. `line` is 1-based (0 for a file-level note); `field` is a path such as
    `messages[2].content`."""

    line: int
    kind: str
    field: str
    message: str
    severity: str = "error"

    def format(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        fld = f" {self.field}:" if self.field else ""
        return f"{where}: {self.severity} [{self.kind}]{fld} {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "kind": self.kind, "field": self.field, "message": self.message, "severity": self.severity}


@dataclass(slots=True)
class Record:
    """A valid example: its line, the canonical JSON of its normalised form (what is hashed and
    what the prepared files contain), its `example_hash` and a token estimate. Holding bytes
    rather than dicts keeps 200k records small and cheap to pass between processes."""

    line: int
    canonical: bytes
    hash: str
    est_tokens: int

    @property
    def example(self) -> dict[str, Any]:
        return orjson.loads(self.canonical)


@dataclass
class ScanResult:
    """Everything one pass over a file found. `md5` is the md5 of the bytes (what DVC pins)."""

    path: str
    md5: str
    size: int
    lines: int
    records: list[Record] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def counts(self) -> dict[str, int]:
        """How many of each kind, errors and warnings alike (every kind listed, zeros included)."""
        found = Counter(i.kind for i in self.issues)
        return {kind: found.get(kind, 0) for kind in (*ERROR_KINDS, *WARNING_KINDS)}

    @property
    def examples(self) -> int:
        """Non-blank lines: what a person would call the number of examples in the file."""
        return len(self.records) + len({i.line for i in self.errors})


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """About four characters a token plus a few for each turn's markup. Only an estimate: used
    when no tokenizer is at hand (bench, `ftops plan`), and labelled as such wherever shown."""
    chars = 0
    for m in messages:
        c = m.get("content")
        if c.__class__ is str:
            chars += len(c)
        elif isinstance(c, list):
            chars += sum(len(p.get("text", "")) for p in c if isinstance(p, dict))
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            chars += len(fn.get("name", "")) + len(fn.get("arguments", ""))
    return chars // 4 + 4 * len(messages) + 1


def _validate_tool_calls(calls: Any, where: str, line: int, issues: list[Issue], ids: set[str]) -> bool:
    if not isinstance(calls, list) or not calls:
        issues.append(Issue(line, "bad_tool_call", where, "tool_calls must be a non-empty list of calls; drop the key if the assistant calls no tool"))
        return False
    ok = True
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            issues.append(Issue(line, "bad_tool_call", at, 'a tool call must be an object {"id", "type": "function", "function": {"name", "arguments"}}'))
            ok = False
            continue
        extra = call.keys() - _CALL_KEYS
        if extra:
            issues.append(Issue(line, "bad_tool_call", at, f"unknown key(s) {sorted(extra)} in a tool call; allowed: id, type, function"))
            ok = False
        cid = call.get("id")
        if not isinstance(cid, str) or not cid:
            issues.append(Issue(line, "bad_tool_call", f"{at}.id", "each tool call needs a non-empty string id, which the tool message answers with tool_call_id"))
            ok = False
        else:
            ids.add(cid)
        if call.get("type", "function") != "function":
            issues.append(Issue(line, "bad_tool_call", f"{at}.type", f"type must be \"function\", not {call.get('type')!r}"))
            ok = False
        fn = call.get("function")
        if not isinstance(fn, dict):
            issues.append(Issue(line, "bad_tool_call", f"{at}.function", 'function must be an object {"name": "...", "arguments": "<JSON string>"}'))
            ok = False
            continue
        extra = fn.keys() - _FUNCTION_KEYS
        if extra:
            issues.append(Issue(line, "bad_tool_call", f"{at}.function", f"unknown key(s) {sorted(extra)}; allowed: name, arguments"))
            ok = False
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            issues.append(Issue(line, "bad_tool_call", f"{at}.function.name", "the function name must be a non-empty string"))
            ok = False
        args = fn.get("arguments")
        if not isinstance(args, str):
            issues.append(Issue(line, "bad_tool_call", f"{at}.function.arguments", "arguments must be a string holding a JSON object, e.g. \"{\\\"city\\\": \\\"Paris\\\"}\""))
            ok = False
        else:
            try:
                parsed = orjson.loads(args)
            except orjson.JSONDecodeError as exc:
                issues.append(Issue(line, "bad_tool_call", f"{at}.function.arguments", f"arguments are not valid JSON ({exc}); write a JSON object as a string"))
                ok = False
            else:
                if not isinstance(parsed, dict):
                    issues.append(Issue(line, "bad_tool_call", f"{at}.function.arguments", "arguments must encode a JSON object, not a " + type(parsed).__name__))
                    ok = False
    return ok


def _validate_content(content: Any, where: str, line: int, issues: list[Issue]) -> bool:
    if isinstance(content, str):
        if not content.strip():
            issues.append(Issue(line, "empty_content", where, "content is empty; write the text of this turn or remove the message"))
            return False
        return True
    if isinstance(content, list):
        text = False
        for k, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                issues.append(Issue(line, "bad_field", f"{where}[{k}]", 'only text parts {"type": "text", "text": "..."} are supported in training data'))
                return False
            text = text or bool(part["text"].strip())
        if not text:
            issues.append(Issue(line, "empty_content", where, "content has no text; write the text of this turn or remove the message"))
            return False
        return True
    issues.append(Issue(line, "bad_field", where, f"content must be a string, not {type(content).__name__}"))
    return False


_PLAIN_ROLES = frozenset({"system", "developer", "user", "assistant"})


def validate_example(obj: Any, line: int, issues: list[Issue]) -> bool:
    """Append every problem of one parsed line to `issues`; True when it has no errors.

    Most lines are plain {"messages": [{"role", "content"}, ...]}: they are accepted by a tight
    loop, and anything unusual goes through the full check, which reports every problem."""
    if obj.__class__ is dict and len(obj) == 1:
        messages = obj.get("messages")
        if messages.__class__ is list and messages:
            roles = set()
            for m in messages:
                if m.__class__ is not dict or len(m) != 2:
                    break
                role = m.get("role")
                content = m.get("content")
                if role not in _PLAIN_ROLES or content.__class__ is not str or not content or content.isspace():
                    break
                roles.add(role)
            else:
                if "assistant" in roles:
                    if "system" not in roles and "developer" not in roles:
                        issues.append(Issue(line, "missing_system", "messages", "no system message; add one if the model will be served with a system prompt", "warning"))
                    if "user" not in roles:
                        issues.append(Issue(line, "missing_user", "messages", "no user message; the assistant answers nothing", "warning"))
                    return True
    return _validate_full(obj, line, issues)


def _validate_full(obj: Any, line: int, issues: list[Issue]) -> bool:
    if not isinstance(obj, dict):
        issues.append(Issue(line, "not_object", "", f'each line must be a JSON object {{"messages": [...]}}, not a {type(obj).__name__}'))
        return False
    ok = True
    if len(obj) != 1 or "messages" not in obj:
        extra = obj.keys() - TOP_KEYS
        if extra:
            for key in sorted(extra):
                issues.append(Issue(line, "unknown_key", str(key), f"unknown key {key!r}; an example has only messages, tools and parallel_tool_calls"))
            ok = False
        if "tools" in obj and not isinstance(obj["tools"], list):
            issues.append(Issue(line, "bad_field", "tools", "tools must be a list of tool definitions"))
            ok = False
        if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
            issues.append(Issue(line, "bad_field", "parallel_tool_calls", "parallel_tool_calls must be true or false"))
            ok = False
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        if messages is None:
            msg = 'the "messages" list is missing; write {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}'
        elif isinstance(messages, list):
            msg = "messages is empty; an example needs at least a user and an assistant message"
        else:
            msg = f"messages must be a list of message objects, not a {type(messages).__name__}"
        issues.append(Issue(line, "missing_messages", "messages", msg))
        return False
    has_assistant = has_user = has_system = False
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            issues.append(Issue(line, "not_object", where, f'each message must be an object {{"role": ..., "content": ...}}, not a {type(m).__name__}'))
            ok = False
            continue
        role = m.get("role")
        if role is None:
            issues.append(Issue(line, "missing_role", f"{where}.role", f"the message has no role; add one of {', '.join(ROLES)}"))
            ok = False
            allowed = MESSAGE_KEYS["assistant"] | MESSAGE_KEYS["tool"]
        elif not isinstance(role, str) or role not in _ROLES:
            issues.append(Issue(line, "unknown_role", f"{where}.role", f"{role!r} is not a recognised role; use one of {', '.join(ROLES)}"))
            ok = False
            allowed = MESSAGE_KEYS["assistant"] | MESSAGE_KEYS["tool"]
        else:
            allowed = MESSAGE_KEYS[role]
            if role == "assistant":
                has_assistant = True
            elif role == "user":
                has_user = True
            elif role == "system" or role == "developer":
                has_system = True
        extra = m.keys() - allowed
        if extra:
            for key in sorted(extra, key=str):
                hint = " (did you mean 'content'?)" if str(key).lower().startswith(("cont", "conent", "text")) else ""
                issues.append(Issue(line, "unknown_key", f"{where}.{key}", f"unknown key {key!r} in a {role or 'message'} message{hint}; allowed: {', '.join(sorted(allowed))}"))
            ok = False
        calls = m.get("tool_calls")
        if calls is not None and role == "assistant":
            ok = _validate_tool_calls(calls, f"{where}.tool_calls", line, issues, call_ids) and ok
        if "content" not in m or m["content"] is None:
            if not (role == "assistant" and calls):
                issues.append(Issue(line, "missing_content", f"{where}.content", "the message has no content; write the text of this turn (only an assistant message with tool_calls may omit it)"))
                ok = False
        elif not (role == "assistant" and calls and m["content"] == ""):
            ok = _validate_content(m["content"], f"{where}.content", line, issues) and ok
        if role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str) or tid not in call_ids:
                issues.append(Issue(line, "bad_tool_call", f"{where}.tool_call_id", f"a tool message must answer an earlier assistant tool call: tool_call_id {tid!r} matches none of {sorted(call_ids) or 'no calls'}"))
                ok = False
        if "weight" in m and (isinstance(m["weight"], bool) or m["weight"] not in (0, 1)):
            issues.append(Issue(line, "bad_field", f"{where}.weight", "weight must be 0 (do not learn this turn) or 1"))
            ok = False
        if "name" in m and not isinstance(m["name"], str):
            issues.append(Issue(line, "bad_field", f"{where}.name", "name must be a string"))
            ok = False
    if not has_assistant:
        issues.append(Issue(line, "no_assistant", "messages", "no assistant message: add the answer the model should learn to give"))
        ok = False
    if ok:
        if not has_system:
            issues.append(Issue(line, "missing_system", "messages", "no system message; add one if the model will be served with a system prompt", "warning"))
        if not has_user:
            issues.append(Issue(line, "missing_user", "messages", "no user message; the assistant answers nothing", "warning"))
    return ok


PARALLEL_MIN_LINES = 20_000
"""Below this a second process costs more than it saves."""

_SHARED: bytes = b""  # the file's bytes, inherited by forked workers instead of being pickled


_ROLE_BITS = {"system": 1, "developer": 1, "user": 2, "assistant": 4}


def _scan_lines(lines: list[bytes], first: int) -> tuple[list[Record], list[Issue]]:
    """The hot loop. Plain examples (only role + content strings) are validated, normalised and
    measured in one pass over their messages; anything else takes the full check."""
    issues: list[Issue] = []
    records: list[Record] = []
    append = records.append
    loads = orjson.loads
    dumps = orjson.dumps
    sort_keys = orjson.OPT_SORT_KEYS
    decode_error = orjson.JSONDecodeError
    sha256 = hashlib.sha256
    norm_text = normalize_text
    bits_of = _ROLE_BITS.get
    for lineno, raw in enumerate(lines, first):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            obj = loads(raw)
        except decode_error as exc:
            if not raw.strip():
                issues.append(Issue(lineno, "blank_line", "", "empty line; it is skipped (remove it)", "warning"))
                continue
            issues.append(Issue(lineno, "invalid_json", "", f"not valid JSON ({exc}); each line must be one complete JSON object"))
            continue
        if obj.__class__ is dict and len(obj) == 1:
            messages = obj.get("messages")
            if messages.__class__ is list and messages:
                roles = chars = 0
                normalized = []
                for m in messages:
                    if m.__class__ is not dict or len(m) != 2:
                        break
                    role = m.get("role")
                    content = m.get("content")
                    if role.__class__ is not str or content.__class__ is not str:
                        break
                    bit = bits_of(role)
                    if bit is None:
                        break
                    text = content.strip() if content.isascii() and content.isprintable() else norm_text(content)
                    if not text:
                        break
                    normalized.append(text)
                    chars += len(text)
                    roles |= bit
                else:
                    if roles & 4:
                        for m, text in zip(messages, normalized):
                            m["content"] = text
                        if not roles & 1:
                            issues.append(Issue(lineno, "missing_system", "messages", "no system message; add one if the model will be served with a system prompt", "warning"))
                        if not roles & 2:
                            issues.append(Issue(lineno, "missing_user", "messages", "no user message; the assistant answers nothing", "warning"))
                        canon = dumps(obj, option=sort_keys)
                        append(Record(lineno, canon, sha256(canon).hexdigest(), chars // 4 + 4 * len(messages) + 1))
                        continue
        if validate_example(obj, lineno, issues):
            norm = normalize_parsed(obj)
            # Normalisation can empty a message (e.g. only zero-width characters): recheck it.
            for i, m in enumerate(norm["messages"]):
                if m.get("content") == "" and not m.get("tool_calls"):
                    issues.append(Issue(lineno, "empty_content", f"messages[{i}].content", "content is only invisible characters; write the text of this turn"))
                    break
            else:
                canon = canonical_json(norm)
                append(Record(lineno, canon, sha256(canon).hexdigest(), estimate_tokens(norm["messages"])))
    return records, issues


def _scan_chunk(bounds: tuple[int, int, int]) -> tuple[list[tuple], list[tuple]]:
    start, end, first = bounds
    lines = _SHARED[start:end].split(b"\n")
    records, issues = _scan_lines(lines, first)
    # Plain tuples pickle several times faster than dataclass instances.
    return ([(r.line, r.canonical, r.hash, r.est_tokens) for r in records],
            [(i.line, i.kind, i.field, i.message, i.severity) for i in issues])


def _chunks(data: bytes, n: int) -> list[tuple[int, int, int]]:
    """Split at line boundaries into about n pieces: (start, end, first line number)."""
    bounds = []
    start, line = 0, 1
    for k in range(1, n + 1):
        end = len(data) if k == n else data.find(b"\n", max(start, len(data) * k // n))
        if end == -1:
            end = len(data)
        if end > start or k == n:
            bounds.append((start, end, line))
            line += data.count(b"\n", start, end) + 1
            start = end + 1
        if start >= len(data):
            break
    return bounds


def default_workers() -> int:
    """Two processes on a machine with two or more CPUs (the size this runs on), else one. On a
    machine that is already oversubscribed (1-minute load average at or above the CPU count) a
    second process only adds fork and transfer costs, measured in bench_data, so one is used.
    FTOPS_DATA_WORKERS overrides both. Results are identical for any count."""
    env = os.environ.get("FTOPS_DATA_WORKERS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    cpus = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cpus
    except (AttributeError, OSError):
        busy = False
    return 1 if busy else max(1, min(2, cpus))


def scan_bytes(data: bytes, path: str = "<data>", progress: bool = False, workers: int | None = None) -> ScanResult:
    """Check every line of `data` and normalise + hash the valid examples.

    Large inputs are split at line boundaries over `workers` forked processes (two by default:
    the machines this runs on are small and shared); results are identical either way."""
    result = ScanResult(path=path, md5=hashlib.md5(data).hexdigest(), size=len(data), lines=0)
    body = data[:-1] if data.endswith(b"\n") else data  # the final newline ends a line, it is not one
    result.lines = body.count(b"\n") + 1 if body else 0
    if not body:
        return result
    workers = default_workers() if workers is None else workers
    from controller.data.progress import gc_paused

    with gc_paused():
        return _scan_into(result, body, path, progress, workers)


def _scan_into(result: ScanResult, body: bytes, path: str, progress: bool, workers: int) -> ScanResult:
    global _SHARED
    if workers <= 1 or result.lines < PARALLEL_MIN_LINES:
        lines: Any = body.split(b"\n")
        if progress:
            from controller.data.progress import bar

            lines = bar(lines, total=result.lines, desc=f"check {Path(path).name}", unit="line")
        records, issues = _scan_lines(lines, 1)
        result.records, result.issues = records, issues
        return result
    import multiprocessing

    pieces = _chunks(body, workers * 4)
    _SHARED = body
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.imap(_scan_chunk, pieces)
            if progress:
                from controller.data.progress import bar

                parts = bar(parts, total=len(pieces), desc=f"check {Path(path).name}", unit="chunk")
            for recs, isss in parts:
                result.records.extend(Record(*r) for r in recs)
                result.issues.extend(Issue(*i) for i in isss)
    finally:
        _SHARED = b""
    return result


def scan_file(path: str | Path, progress: bool = False) -> ScanResult:
    """Read and check a chat JSONL file. The file is only read, never modified."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        from controller.errors import PermanentError

        raise PermanentError(f"{p}: no such file; check the dataset path (spec.dataset.path) or pull it with `ftops data pull`") from None
    except IsADirectoryError:
        from controller.errors import PermanentError

        raise PermanentError(f"{p}: is a directory; spec.dataset.path must name one chat JSONL file") from None
    return scan_bytes(data, str(path), progress=progress)
