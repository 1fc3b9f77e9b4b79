"""`ftops data check`: every error kind planted at a known line, warnings, counts, tokens."""
from __future__ import annotations

import json

import pytest

from data_helpers import chat, line, run_ftops, write_lines

from controller.data.check import ERROR_KINDS, scan_bytes, scan_file

SYS = {"role": "system", "content": "You are helpful."}
USER = {"role": "user", "content": "What is the weather?"}
ASSIST = {"role": "assistant", "content": "Sunny."}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}

# (line text, expected error (kind, field) pairs) -- the line number is the position, from 1.
PLANTED: list[tuple[str, set[tuple[str, str]]]] = [
    (chat("q1", "a1"), set()),
    ('{"messages": [', {("invalid_json", "")}),
    ("[1, 2]", {("not_object", "")}),
    ('{"msgs": []}', {("unknown_key", "msgs"), ("missing_messages", "messages")}),
    (line([{"content": "hi"}, ASSIST]), {("missing_role", "messages[0].role")}),
    (line([SYS, {"role": "user"}, ASSIST]), {("missing_content", "messages[1].content")}),
    (line([SYS, {"role": "user", "content": "q", "conent": "x"}, ASSIST]), {("unknown_key", "messages[1].conent")}),
    (line([SYS, {"role": "bot", "content": "q"}, ASSIST]), {("unknown_role", "messages[1].role")}),
    (line([SYS, USER, {"role": "assistant", "content": "  \n "}]), {("empty_content", "messages[2].content")}),
    (line([SYS, USER]), {("no_assistant", "messages")}),
    (line([SYS, USER, {"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": {"name": "get_weather", "arguments": "{city: Paris"}}]}]),
     {("bad_tool_call", "messages[2].tool_calls[0].function.arguments")}),
    ("", set()),  # blank line: a warning, not an error
    (line([USER, ASSIST]), set()),  # no system: warning
    (line([SYS, ASSIST]), set()),  # no user: warning
    (line([SYS, USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_1", "content": "18C"}, ASSIST],
          tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]), set()),
    (line([SYS, USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_9", "content": "18C"}, ASSIST]),
     {("bad_tool_call", "messages[3].tool_call_id")}),
    (line(["hi", ASSIST]), {("not_object", "messages[0]")}),
    (line([SYS, {"role": "user", "content": 42}, ASSIST]), {("bad_field", "messages[1].content")}),
    (line([SYS, USER, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "", "arguments": "{}"}}]}]),
     {("bad_tool_call", "messages[2].tool_calls[0].id"), ("bad_tool_call", "messages[2].tool_calls[0].function.name")}),
    (line([USER, SYS, ASSIST]), {("bad_order", "messages[1].role")}),  # the order rules: tests/test_chat_format.py
]


def planted_file(tmp_path):
    return write_lines(tmp_path / "planted.jsonl", [text for text, _ in PLANTED])


def test_every_error_kind_is_reported_at_its_line(tmp_path):
    scan = scan_file(planted_file(tmp_path))
    got = {(i.line, i.kind, i.field) for i in scan.errors}
    want = {(n, kind, fld) for n, (_, errs) in enumerate(PLANTED, 1) for kind, fld in errs}
    assert got == want
    # Every kind a file alone can show is covered by the planted file; a gold source missing
    # from the corpus needs the spec's corpus too (tests/data/test_raft.py plants it).
    assert {k for _, k, _ in got} == set(ERROR_KINDS) - {"unknown_source"}
    counts = scan.counts()
    assert counts["unknown_key"] == 2 and counts["bad_tool_call"] == 4 and counts["invalid_json"] == 1
    # Lines without errors become records, and only they.
    assert [r.line for r in scan.records] == [n for n, (text, errs) in enumerate(PLANTED, 1) if not errs and text]


def test_warnings_are_reported_at_their_lines(tmp_path):
    scan = scan_file(planted_file(tmp_path))
    warnings = {(i.line, i.kind) for i in scan.warnings}
    assert (12, "blank_line") in warnings
    assert (13, "missing_system") in warnings
    assert (14, "missing_user") in warnings
    assert not any(i.severity == "warning" and i.line in (1, 15) for i in scan.issues)


def test_messages_say_what_to_write(tmp_path):
    scan = scan_file(planted_file(tmp_path))
    by_line = {i.line: i for i in scan.errors}
    assert "did you mean 'content'" in by_line[7].message
    assert "'bot' is not a recognised role" in by_line[8].message
    text = by_line[2].format("planted.jsonl")
    assert text.startswith("planted.jsonl:2: error [invalid_json]")


def test_unicode_oddities_and_crlf(tmp_path):
    data = ("\ufeff" + chat("cafe\u0301", "ok") + "\r\n" + chat("q", "\u200b\u200b") + "\n").encode()
    scan = scan_bytes(data)
    assert [r.line for r in scan.records] == [1]
    assert scan.records[0].example["messages"][1]["content"] == "caf\u00e9"  # NFC and CR stripped
    assert [(i.line, i.kind) for i in scan.errors] == [(2, "empty_content")]  # only invisible characters


def test_parallel_scan_matches_serial():
    from controller.data.check import PARALLEL_MIN_LINES

    lines = [chat(f"question {i}", f"answer {i}") for i in range(PARALLEL_MIN_LINES + 10)]
    lines[5] = "{broken"
    lines[-1] = line([SYS, USER])
    data = "\n".join(lines).encode()  # no final newline
    serial, parallel = scan_bytes(data, workers=1), scan_bytes(data, workers=2)
    assert [(r.line, r.hash) for r in serial.records] == [(r.line, r.hash) for r in parallel.records]
    assert serial.issues == parallel.issues
    assert [(i.line, i.kind) for i in parallel.errors] == [(6, "invalid_json"), (len(lines), "no_assistant")]


def test_token_warnings_use_the_models_tokenizer_and_template(tmp_path, tiny_tokenizer):
    from controller.data.tokens import measure

    long_answer = " ".join(["the invoice was charged twice"] * 40)
    long_prompt = " ".join(["please look at my account"] * 60)
    path = write_lines(tmp_path / "t.jsonl", [chat("short", "fine"), chat("short", long_answer), chat(long_prompt, "ok")])
    scan = scan_file(path)
    lengths, issues = measure(scan.records, tiny_tokenizer, max_seq_length=128)
    rendered = tiny_tokenizer.apply_chat_template(scan.records[0].example["messages"], tokenize=False)
    assert lengths[0] == len(tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert lengths[1] > 128 and lengths[2] > 128 and lengths[0] < 128
    kinds = {(i.line, i.kind) for i in issues}
    assert kinds == {(2, "too_long"), (2, "assistant_truncated"), (3, "too_long"), (3, "assistant_truncated")}
    msg = {i.line: i.message for i in issues if i.kind == "assistant_truncated"}
    assert "all of its" in msg[3]  # the prompt alone is past the limit
    assert " of its " in msg[2] and "all of" not in msg[2]


def test_cli_check_json_counts_and_exit_code(tmp_path, tiny_model_dir):
    path = planted_file(tmp_path)
    proc = run_ftops("data", "check", str(path), "--output", "json", "--base-model", str(tiny_model_dir), "--max-seq-length", "512", "--epochs", "2")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["counts"]["no_assistant"] == 1
    assert report["errors"] == sum(len(e) for _, e in PLANTED)
    tokens = report["tokens"]
    assert tokens["method"].startswith("tokenizer") and tokens["count"] == report["valid"]
    assert tokens["min"] <= tokens["mean"] <= tokens["p95"] <= tokens["max"]
    assert report["trainingTokens"] == round(tokens["total"] * 0.85 * 2)

    good = write_lines(tmp_path / "good.jsonl", [chat(f"q{i}", f"a{i}") for i in range(5)])
    proc = run_ftops("data", "check", str(good))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 valid examples, 0 error(s)" in proc.stdout
    assert "estimated training tokens" in proc.stdout


def test_check_never_modifies_the_file(tmp_path):
    path = planted_file(tmp_path)
    before = path.read_bytes()
    scan_file(path)
    assert path.read_bytes() == before


def test_missing_file_is_a_clear_error(tmp_path):
    proc = run_ftops("data", "check", str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 1
    assert "nope.jsonl: no such file" in proc.stderr


def test_tokenizer_never_runs_code_from_the_model_dir(tmp_path, tiny_model_dir):
    import shutil

    from controller.data.tokens import load_tokenizer
    from controller.errors import FtopsError

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    marker = tmp_path / "pwned"
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    cfg["tokenizer_class"] = "EvilTokenizer"
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FtopsError, match="custom code"):
        load_tokenizer(str(model))
    assert not marker.exists()  # with trust_remote_code=True transformers would have run evil.py


# Lines aimed at the fast path's edges: (line text, True when it is a plain example the fast path
# must take itself). Every other line goes to the reference check.
FAST_EDGES: list[tuple[str, bool]] = [
    (chat("  padded question  ", "answer\t"), True),  # stripped
    (line([SYS, USER, {"role": "assistant", "content": "one  \r\ntwo\n\n\n\nthree"}]), True),  # escapes: normalised
    (chat("cafe\u0301 \u00a0ok", "d\u00e9j\u00e0 vu \u200b"), True),  # non-ASCII: NFC, spaces, invisible
    (json.dumps({"messages": [USER, {"role": "assistant", "content": "caf\u00e9 \u2028"}]}, ensure_ascii=False), True),  # raw UTF-8
    (line([USER, {"role": "assistant", "content": "del\x7f"}]), True),
    (line([SYS, USER, ASSIST], sources=["refunds.md", "billing/vat.md"]), True),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
     '"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}', True),  # last key wins
    ('{"messages": [{"role": "system", "role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', True),
    (chat("q", "a") + "\r", True),  # a CRLF file's line
    (line([SYS, USER, ASSIST], sources=[]), False),
    (line([SYS, USER, ASSIST], sources=["  "]), False),
    (line([SYS, USER, ASSIST], sources=[3]), False),
    (line([SYS, USER, ASSIST], sources="refunds.md"), False),
    (line([USER, USER, ASSIST]), False),
    (line([SYS, USER, ASSIST, USER]), False),
    (line([SYS, {"role": "user", "content": ""}, ASSIST]), False),
    (line([SYS, {"role": "user", "content": "\u200b\u2060"}, ASSIST]), False),
    (line([]), False),
    (line([{"role": "developer", "content": "x"}, USER, ASSIST]), False),
    (line([SYS, {"role": "user", "content": "q", "name": "ann"}, ASSIST]), False),
    (line([SYS, USER, {"role": "assistant", "content": "a", "weight": 0}]), False),
    (line([SYS, {"role": "user", "content": ["q"]}, ASSIST]), False),
    (line([SYS, {"role": "user", "content": None}, ASSIST]), False),
    ('{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "b"}]}', False),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]} trailing', False),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "x": NaN}', False),
    ("   ", False),
    ("null", False),
]


def reference_scan(data: bytes) -> tuple[list, list]:
    """Every line through the reference check alone (`check_line`), the way scan_bytes numbers them."""
    from controller.data.check import check_line

    body = data[:-1] if data.endswith(b"\n") else data
    records, issues = [], []
    for n, raw in enumerate(body.split(b"\n"), 1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        record = check_line(raw, n, issues)
        if record is not None:
            records.append(record)
    return records, issues


def test_fast_path_and_reference_agree_on_every_line(monkeypatch):
    """A mixed file (valid lines, every planted error, the fast path's edge cases) gives the same
    records (line, canonical bytes, hash, token estimate) and the same issues through the scan as
    through the reference check of each line, and the fast path really took the plain lines."""
    from controller.data import check

    texts = ["\ufeff" + chat("bom first", "ok")] + [t for t, _ in PLANTED] + [t for t, _ in FAST_EDGES]
    plain = {1} | {n for n, (t, errs) in enumerate(PLANTED, 2) if t.startswith('{"messages"') and not errs and "tool" not in t}
    plain |= {n for n, (_, fast) in enumerate(FAST_EDGES, 2 + len(PLANTED)) if fast}
    data = "\n".join(texts).encode("utf-8", "surrogatepass")
    want_records, want_issues = reference_scan(data)

    sent: list[int] = []
    reference = check.check_line
    monkeypatch.setattr(check, "check_line", lambda raw, n, issues: sent.append(n) or reference(raw, n, issues))
    scan = scan_bytes(data, workers=1)

    assert [(r.line, r.canonical, r.hash, r.est_tokens) for r in scan.records] == \
           [(r.line, r.canonical, r.hash, r.est_tokens) for r in want_records]
    assert scan.issues == want_issues
    assert set(sent) == set(range(1, len(texts) + 1)) - plain  # every other line took the reference
    assert plain <= {r.line for r in scan.records}
    # The planted errors are still each at its line and field through the scan.
    assert {(i.line - 1, i.kind, i.field) for i in scan.errors if 1 < i.line <= len(PLANTED) + 1} == \
           {(n, kind, fld) for n, (_, errs) in enumerate(PLANTED, 1) for kind, fld in errs}


def test_fast_path_normalises_like_the_reference():
    """What the fast path writes for a line that needs normalising is the normalised example."""
    from controller.data.normalize import example_hash

    scan = scan_bytes((line([SYS, USER, {"role": "assistant", "content": "one  \r\ntwo\n\n\n\nthree "}]) + "\n").encode())
    (record,) = scan.records
    assert record.example["messages"][2]["content"] == "one\ntwo\n\nthree"
    assert record.hash == example_hash(json.loads(line([SYS, USER, {"role": "assistant", "content": "one\ntwo\n\nthree"}])))
