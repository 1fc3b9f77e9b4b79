"""Structural checks of OpenAI chat JSONL, one pass, every problem with its line number.

A fine-tune learns every error in its data, so `scan` never stops at the first problem: it
reports each one as an `Issue` (line, kind, field, message that says what to write instead) and
counts them per kind. Lines without errors become `Record`s holding the normalised example and
its `example_hash`, which the rest of the pipeline consumes without parsing the file again.

What a valid line is, is not decided here: `controller.chat` owns the chat format (roles, order,
message shape, tool calls), and the trainer, the evaluator and the server read the same rules,
so a file this check accepts is one the trainer accepts. This module adds what only a data file
has: JSON parsing by line, normalisation and hashing, and the data-quality warnings (no system
prompt, no user turn, token lengths).

Two paths, one result. The fast path decodes a line straight into a typed struct of the common
plain example (role + content strings, optional `sources`) with msgspec, checks the order of
turns against `controller.chat.FOLLOWS`, and encodes the struct as the canonical JSON. Every
line it does not accept, well-formed or not, takes the reference path (`check_line`: orjson,
`controller.chat.check_example`, normalisation), which reports each problem at its line and
field. The fast path only decides which lines need the reference; tests compare the two on every
kind of line.
"""
from __future__ import annotations

import hashlib
import os
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import msgspec
import orjson

from controller.chat import FOLLOWS, PROBLEM_KINDS, check_example
from controller.data.normalize import canonical_json, normalize_parsed, normalize_text

ERROR_KINDS: dict[str, str] = {
    "invalid_json": "the line is not valid JSON",
    **PROBLEM_KINDS,
    "unknown_source": "a gold source (`sources`) that is not a document of the spec's corpus",
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
        if type(c) is str:  # exact type, not isinstance: the fast path's hot loop
            chars += len(c)
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            chars += len(fn.get("name", "")) + len(fn.get("arguments", ""))
    return chars // 4 + 4 * len(messages) + 1


def validate_example(obj: Any, line: int, issues: list[Issue]) -> bool:
    """Append every problem of one parsed line to `issues` (the chat format's problems, then the
    data-quality warnings of a valid line); True when it has no errors."""
    problems = check_example(obj)
    if problems:
        issues.extend(Issue(line, p.kind, p.field, p.message) for p in problems)
        return False
    messages = obj["messages"]
    if messages[0]["role"] != "system":  # the chat format puts a system message first or nowhere
        issues.append(Issue(line, "missing_system", "messages", _NO_SYSTEM, "warning"))
    if not any(m["role"] == "user" for m in messages):
        issues.append(Issue(line, "missing_user", "messages", _NO_USER, "warning"))
    return True


_NO_SYSTEM = "no system message; add one if the model will be served with a system prompt"
_NO_USER = "no user message; the assistant answers nothing"


PARALLEL_MIN_LINES = 20_000
"""Below this a second process costs more than it saves."""

_SHARED: bytes = b""  # the file's bytes, inherited by forked workers instead of being pickled


_ROLE_BITS = {"system": 1, "user": 2, "assistant": 4}
_PLAIN_STEPS = {state: {role: _ROLE_BITS[role] for role in FOLLOWS[state] if role in _ROLE_BITS} for state in ("", *_ROLE_BITS)}
"""controller.chat.FOLLOWS for plain text messages: for the previous role (`""` at the start),
each role that may come next and its bit (for the no-system / no-user warnings)."""
_UNSEEN = -1


class _PlainMessage(msgspec.Struct, forbid_unknown_fields=True):
    """A message of the common plain example: a text turn, nothing else. Fields in sorted order,
    so encoding the struct writes the canonical JSON (`canonical_json`'s sorted keys)."""

    content: str
    role: Literal["system", "user", "assistant"]


class _PlainExample(msgspec.Struct, forbid_unknown_fields=True):
    """The shape the fast path accepts: `{"messages": [plain text turns], "sources": [str]?}`.
    msgspec decodes and type-checks it in C in one step; a line of any other shape (tool calls,
    `name`, `weight`, other keys or types, invalid JSON) fails to decode and takes the reference
    check, so this shape only decides which path a line takes, never what it is told."""

    messages: list[_PlainMessage]
    sources: list[str] | msgspec.UnsetType = msgspec.UNSET


_PLAIN_DECODER = msgspec.json.Decoder(_PlainExample)
_CANONICAL_ENCODER = msgspec.json.Encoder()


def _plain_order(roles: tuple[str, ...]) -> int | None:
    """The role bits of a role sequence that `controller.chat.FOLLOWS` allows for plain text
    messages and that ends with the assistant's answer; None for any other sequence (the full
    check then says what is wrong). Memoised per sequence in `_scan_lines`: a file has few."""
    state, bits = "", 0
    for role in roles:
        bit = _PLAIN_STEPS[state].get(role)
        if bit is None:
            return None
        bits |= bit
        state = role
    return bits if state == "assistant" else None


def check_line(raw: bytes, line: int, issues: list[Issue]) -> Record | None:
    """The reference check of one line: parse (orjson), the chat format's full check with every
    problem at its field (`validate_example`), then normalise, canonical JSON and hash. Appends
    the line's issues to `issues`; the Record when the line has no errors. The fast path in
    `_scan_lines` must agree with this on every line (tests/data/test_check.py)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if not raw.strip():
            issues.append(Issue(line, "blank_line", "", "empty line; it is skipped (remove it)", "warning"))
        else:
            issues.append(Issue(line, "invalid_json", "", f"not valid JSON ({exc}); each line must be one complete JSON object"))
        return None
    if not validate_example(obj, line, issues):
        return None
    # The chat format counts invisible-only content as empty, so normalisation (which removes
    # those characters) cannot empty a message that passed.
    norm = normalize_parsed(obj)
    canon = canonical_json(norm)
    return Record(line, canon, hashlib.sha256(canon).hexdigest(), estimate_tokens(norm["messages"]))


def _scan_lines(lines: list[bytes], first: int) -> tuple[list[Record], list[Issue]]:
    """The hot loop. Each line is first decoded as a plain example (`_PlainExample`: typed
    decoding in C, faster than parsing into dicts); one whose role order the chat format allows
    (looked up once per distinct sequence, `_plain_order`), whose every content stays non-empty
    after normalisation and whose sources are non-blank is normalised in place, encoded (the
    struct's field order is the canonical key order) and hashed here. Every other line, and any
    line the fast path has doubts about, takes the reference `check_line` from its raw bytes,
    which reports each problem at its field."""
    issues: list[Issue] = []
    records: list[Record] = []
    append = records.append
    decode = _PLAIN_DECODER.decode
    encode = _CANONICAL_ENCODER.encode
    not_plain = msgspec.DecodeError  # ValidationError (valid JSON, another shape) is a DecodeError
    sha256 = hashlib.sha256
    norm_text = normalize_text
    orders: dict[tuple[str, ...], int | None] = {}
    order_of = orders.get
    for lineno, raw in enumerate(lines, first):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            example = decode(raw)
        except not_plain:
            example = None
        if example is not None:
            messages = example.messages
            roles = tuple([m.role for m in messages])
            roles_bits = order_of(roles, _UNSEEN)
            if roles_bits == _UNSEEN:
                roles_bits = orders[roles] = _plain_order(roles)
            sources = example.sources
            if roles_bits is not None and (sources is msgspec.UNSET or (sources and all([s.strip() for s in sources]))):
                chars = 0
                # ASCII bytes without a backslash (no escapes, and JSON forbids raw control
                # characters) hold only printable ASCII text, which normalisation just strips.
                printable = raw.isascii() and b"\\" not in raw
                for m in messages:
                    content = m.content
                    text = content.strip() if printable or (content.isascii() and content.isprintable()) else norm_text(content)
                    if not text:
                        break
                    if text is not content:
                        m.content = text
                    chars += len(text)
                else:
                    if not roles_bits & 1:
                        issues.append(Issue(lineno, "missing_system", "messages", _NO_SYSTEM, "warning"))
                    if not roles_bits & 2:
                        issues.append(Issue(lineno, "missing_user", "messages", _NO_USER, "warning"))
                    canon = encode(example)
                    append(Record(lineno, canon, sha256(canon).hexdigest(), chars // 4 + 4 * len(messages) + 1))
                    continue
        record = check_line(raw, lineno, issues)
        if record is not None:
            append(record)
    return records, issues


def _scan_chunk(bounds: tuple[int, int, int]) -> tuple[bytes, bytes, bytes, list[tuple]]:
    """One worker's share, packed for the trip back: a few large bytes objects pickle many times
    faster than one object per record. Canonical JSON never holds a raw newline, so the records'
    bytes travel newline-joined; hashes as one ASCII string; lines and token estimates as int32."""
    start, end, first = bounds
    lines = _SHARED[start:end].split(b"\n")
    records, issues = _scan_lines(lines, first)
    numbers = array("i", [r.line for r in records])
    numbers.extend(r.est_tokens for r in records)
    return (b"\n".join([r.canonical for r in records]), "".join([r.hash for r in records]).encode("ascii"),
            numbers.tobytes(), [(i.line, i.kind, i.field, i.message, i.severity) for i in issues])


def _unpack_chunk(canon: bytes, hashes: bytes, numbers_bytes: bytes) -> list[Record]:
    numbers = array("i")
    numbers.frombytes(numbers_bytes)
    n = len(numbers) // 2
    if n == 0:
        return []
    text = hashes.decode("ascii")
    return [Record(line, c, text[64 * k : 64 * k + 64], est)
            for k, (line, c, est) in enumerate(zip(numbers[:n], canon.split(b"\n"), numbers[n:]))]


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


def scan_workers() -> int:
    """Processes for the structural scan: one, unless FTOPS_DATA_WORKERS says otherwise. With the
    typed fast path a second process costs more in fork and transfer than it saves (bench_data on
    2 CPUs: 140k examples/s in one process, 96k in two); near-duplicate search, which computes far
    more per line, keeps `default_workers`."""
    env = os.environ.get("FTOPS_DATA_WORKERS")
    return int(env) if env and env.isdigit() and int(env) > 0 else 1


def scan_bytes(data: bytes, path: str = "<data>", progress: bool = False, workers: int | None = None) -> ScanResult:
    """Check every line of `data` and normalise + hash the valid examples.

    Large inputs may be split at line boundaries over `workers` forked processes (one by default,
    see `scan_workers`); results are identical either way. In one
    process the md5 (what DVC pins) is computed on a thread meanwhile: hashlib releases the GIL
    on large inputs, so it costs the scan nothing on a machine with a second core. (Workers are
    forked, so then it is computed first: no thread runs while a process forks.)"""
    import threading

    body = data[:-1] if data.endswith(b"\n") else data  # the final newline ends a line, it is not one
    lines = body.count(b"\n") + 1 if body else 0
    workers = scan_workers() if workers is None else workers
    parallel = workers > 1 and lines >= PARALLEL_MIN_LINES
    digest: list[str] = []
    md5 = threading.Thread(target=lambda: digest.append(hashlib.md5(data).hexdigest()), daemon=True)
    if parallel:
        md5.run()
    else:
        md5.start()
    result = ScanResult(path=path, md5="", size=len(data), lines=lines)
    try:
        if body:
            from controller.data.progress import gc_paused

            with gc_paused():
                _scan_into(result, body, path, progress, workers if parallel else 1)
    finally:
        if not parallel:
            md5.join()
    result.md5 = digest[0]
    return result


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
            parts: Iterable[tuple[bytes, bytes, bytes, list[tuple[Any, ...]]]] = pool.imap(_scan_chunk, pieces)
            if progress:
                from controller.data.progress import bar

                parts = bar(parts, total=len(pieces), desc=f"check {Path(path).name}", unit="chunk")
            for canon, hashes, numbers, isss in parts:
                result.records.extend(_unpack_chunk(canon, hashes, numbers))
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


def named_sources(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, example) of every line of a chat JSONL file that names gold sources."""
    out = []
    for lineno, raw in enumerate(Path(path).read_bytes().splitlines(), 1):
        if b'"sources"' not in raw:
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # the scan reports it
        if isinstance(obj, dict) and isinstance(obj.get("sources"), list):
            out.append((lineno, obj))
    return out


def gold_source_issues(examples: list[tuple[int, dict[str, Any]]], documents: list[str], corpus: str) -> list[Issue]:
    """An `unknown_source` error for each gold source that is not one of the corpus's documents
    (paths relative to its folder), naming the closest documents to write instead."""
    known = set(documents)
    issues = []
    for line, example in examples:
        for i, doc in enumerate(example.get("sources") or []):
            if isinstance(doc, str) and doc not in known:
                close = sorted(known, key=lambda d: (_distance(d, doc), d))[:3]
                issues.append(Issue(line, "unknown_source", f"sources[{i}]",
                                    f"{doc!r} is not a document of the corpus {corpus}; write its path relative to that "
                                    f"folder, e.g. {', '.join(repr(c) for c in close) or '(the corpus is empty)'}"))
    return issues


def _distance(a: str, b: str) -> int:
    """Edit distance, to suggest the document a misspelt gold source meant."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
