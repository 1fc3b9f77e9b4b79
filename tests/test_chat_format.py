"""One chat format, four readers: `ftops data check`, the trainer's loader, the evaluator's loader and
the server's request validator accept and refuse the same message lists (controller/chat.py).

Each case is one message list. It is written as line 2 of a JSONL file (line 1 is a valid example,
so a reader that names the wrong line fails) and read by the real `ftops data check` CLI, by
`controller.train.data.read_chat_jsonl` and by `controller.evaluate.datasets.read_examples`; the
three must agree on every case, down to the field they name. The server sees the same list as the
history of a request that asks one more question (the list plus a final user message), so every
message keeps its index; where the server's rules differ by design (what OpenAI clients send is
not training data) the case says so and what the server does instead.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.errors import PermanentError

SYS = {"role": "system", "content": "You are a support assistant."}
USER = {"role": "user", "content": "Where is my invoice?"}
ASSIST = {"role": "assistant", "content": "Under Billing, then Invoices."}
CALL = {"id": "call_1", "type": "function", "function": {"name": "find_invoice", "arguments": "{\"month\": \"May\"}"}}
CALLING = {"role": "assistant", "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "invoice 42, paid"}
NEXT = {"role": "user", "content": "And the one before?"}
VALID_LINE = json.dumps({"messages": [SYS, USER, ASSIST]})

SAME = "same"  # the server refuses this request exactly where the data readers refuse the example


@dataclass(frozen=True)
class Case:
    name: str
    messages: object
    problems: tuple[tuple[str, str], ...] = ()  # (kind, field) the chat format reports; () = valid
    server: str | None = SAME  # the field the server refuses (None: it answers), or SAME
    why: str = ""  # why the server differs, where it does


def user(content: object, **extra: object) -> dict:
    return {"role": "user", "content": content, **extra}


CASES = [
    # ---- valid everywhere
    Case("system, user, assistant", [SYS, USER, ASSIST]),
    Case("no system message", [USER, ASSIST]),
    Case("the assistant answers the system prompt", [SYS, ASSIST]),
    Case("several turns", [SYS, USER, ASSIST, user("Thanks, and May?"), ASSIST]),
    Case("a name on a message", [SYS, user("Where is my invoice?", name="ana"), ASSIST]),
    Case("weight 1", [SYS, USER, {**ASSIST, "weight": 1}]),
    Case("non-ASCII text", [SYS, user("Où est ma facture ? ☕"), ASSIST]),
    Case("a tool call, its result, the answer", [SYS, USER, CALLING, RESULT, ASSIST],
         server="messages[2].tool_calls", why="the server takes no tools"),
    Case("ends with a tool call (learn when to call)", [SYS, USER, CALLING],
         server="messages[2].tool_calls", why="the server takes no tools"),
    Case("text beside a tool call", [SYS, USER, {**CALLING, "content": "Let me look."}, RESULT, ASSIST],
         server="messages[2].tool_calls", why="the server takes no tools"),
    Case("two calls, two results", [SYS, USER, {"role": "assistant", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
                                    RESULT, {**RESULT, "tool_call_id": "call_2"}, ASSIST],
         server="messages[2].tool_calls", why="the server takes no tools"),
    # ---- roles
    Case("missing role", [SYS, {"content": "hi"}, ASSIST], (("missing_role", "messages[1].role"),)),
    Case("unknown role", [SYS, {"role": "bot", "content": "hi"}, ASSIST], (("unknown_role", "messages[1].role"),)),
    Case("developer (write system)", [{"role": "developer", "content": "Be brief."}, USER, ASSIST],
         (("unknown_role", "messages[0].role"),)),
    Case("role not a string", [SYS, {"role": ["user"], "content": "hi"}, ASSIST], (("unknown_role", "messages[1].role"),)),
    Case("a message that is not an object", [SYS, "hi", ASSIST], (("not_object", "messages[1]"),)),
    Case("empty messages", [], (("missing_messages", "messages"),)),
    Case("messages not a list", {"role": "user", "content": "hi"}, (("missing_messages", "messages"),)),
    # ---- content
    Case("missing content", [SYS, {"role": "user"}, ASSIST], (("missing_content", "messages[1].content"),)),
    Case("null content", [SYS, user(None), ASSIST], (("missing_content", "messages[1].content"),)),
    Case("number content", [SYS, user(42), ASSIST], (("bad_field", "messages[1].content"),)),
    Case("object content", [SYS, user({"text": "hi"}), ASSIST], (("bad_field", "messages[1].content"),)),
    Case("text parts", [SYS, user([{"type": "text", "text": "Where is my invoice?"}]), ASSIST], (("bad_field", "messages[1].content"),),
         server=None, why="OpenAI clients send text parts; the server joins them into one string"),
    Case("an image part", [SYS, user([{"type": "image_url", "image_url": {"url": "x"}}]), ASSIST], (("bad_field", "messages[1].content"),)),
    Case("empty content", [SYS, user(""), ASSIST], (("empty_content", "messages[1].content"),),
         server=None, why="OpenAI's API accepts an empty message; nothing is trained on a request"),
    Case("whitespace content", [SYS, user(" \n\t "), ASSIST], (("empty_content", "messages[1].content"),),
         server=None, why="as empty content"),
    Case("only invisible characters", [SYS, user("\u200b\u2060"), ASSIST], (("empty_content", "messages[1].content"),),
         server=None, why="as empty content"),
    Case("empty answer", [SYS, USER, {"role": "assistant", "content": ""}], (("empty_content", "messages[2].content"),),
         server=None, why="as empty content"),
    Case("an assistant with neither content nor calls", [SYS, USER, {"role": "assistant"}], (("missing_content", "messages[2].content"),)),
    # ---- keys
    Case("a typo in a key", [SYS, user("q", conent="x"), ASSIST], (("unknown_key", "messages[1].conent"),),
         server=None, why="the server reads role and content and ignores other keys, as OpenAI-compatible servers do"),
    Case("tool_calls on a user message", [SYS, user("q", tool_calls=[CALL]), ASSIST], (("unknown_key", "messages[1].tool_calls"),)),
    Case("weight 0 (would be trained anyway)", [SYS, USER, {**ASSIST, "weight": 0}], (("bad_field", "messages[2].weight"),),
         server=None, why="ignored in a request"),
    Case("weight 2", [SYS, USER, {**ASSIST, "weight": 2}], (("bad_field", "messages[2].weight"),),
         server=None, why="ignored in a request"),
    Case("name not a string", [SYS, user("q", name=7), ASSIST], (("bad_field", "messages[1].name"),),
         server=None, why="ignored in a request"),
    # ---- order
    Case("system not first", [USER, SYS, ASSIST], (("bad_order", "messages[1].role"),),
         server=None, why="a request may order its messages as OpenAI's API allows"),
    Case("two user turns in a row", [SYS, USER, user("Hello?"), ASSIST], (("bad_order", "messages[2].role"),),
         server=None, why="as system not first"),
    Case("two assistant turns in a row", [SYS, USER, ASSIST, ASSIST], (("bad_order", "messages[3].role"),),
         server=None, why="as system not first"),
    Case("starts with the assistant", [ASSIST, USER, ASSIST], (("bad_order", "messages[0].role"),),
         server=None, why="as system not first"),
    Case("no assistant turn", [SYS, USER], (("no_assistant", "messages"),),
         server=None, why="a request ends with the user's message; the model writes the answer"),
    Case("ends with the user", [SYS, USER, ASSIST, NEXT], (("no_assistant", "messages[3].role"),),
         server=None, why="as no assistant turn"),
    # ---- tool messages
    Case("a tool result with no call", [SYS, USER, RESULT, ASSIST],
         (("bad_tool_call", "messages[2].tool_call_id"), ("bad_order", "messages[2].role")),
         server="messages[2].role", why="the server refuses every tool message"),
    Case("a result answering another call", [SYS, USER, CALLING, {**RESULT, "tool_call_id": "call_9"}, ASSIST],
         (("bad_tool_call", "messages[3].tool_call_id"),), server="messages[2].tool_calls", why="the server takes no tools"),
    Case("a tool message without tool_call_id", [SYS, USER, CALLING, {"role": "tool", "content": "x"}, ASSIST],
         (("bad_tool_call", "messages[3].tool_call_id"),), server="messages[2].tool_calls", why="the server takes no tools"),
    Case("a call the next user turn ignores", [SYS, USER, CALLING, NEXT, ASSIST], (("bad_order", "messages[3].role"),),
         server="messages[2].tool_calls", why="the server takes no tools"),
    Case("a user turn right after tool results", [SYS, USER, CALLING, RESULT, NEXT, ASSIST], (("bad_order", "messages[4].role"),),
         server="messages[2].tool_calls", why="the server takes no tools"),
    Case("arguments that are not JSON", [SYS, USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{month: May"}}]}],
         (("bad_tool_call", "messages[2].tool_calls[0].function.arguments"),), server="messages[2].tool_calls", why="the server takes no tools"),
    Case("arguments that are not an object", [SYS, USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]}],
         (("bad_tool_call", "messages[2].tool_calls[0].function.arguments"),), server="messages[2].tool_calls", why="the server takes no tools"),
    Case("a call with no id", [SYS, USER, {"role": "assistant", "tool_calls": [{"type": "function", "function": CALL["function"]}]}],
         (("bad_tool_call", "messages[2].tool_calls[0].id"),), server="messages[2].tool_calls", why="the server takes no tools"),
    Case("empty tool_calls", [SYS, USER, {"role": "assistant", "content": "Sure.", "tool_calls": []}],
         (("bad_tool_call", "messages[2].tool_calls"),), server=None, why="an empty tool_calls calls nothing: the server ignores it"),
]

# Whole lines: the keys around `messages`. The trainer reads exactly what the data check reads;
# an evaluation line's other keys are its metadata (a bias set's group, a suite's id).
LINES = [
    ("tools and parallel_tool_calls", {"messages": [SYS, USER, CALLING, RESULT, ASSIST], "parallel_tool_calls": False,
                                       "tools": [{"type": "function", "function": {"name": "find_invoice", "parameters": {"type": "object"}}}]}, (), True),
    ("a line that is not an object", [SYS, USER, ASSIST], (("not_object", ""),), False),
    ("messages misspelled", {"mesages": [SYS, USER, ASSIST]}, (("unknown_key", "mesages"), ("missing_messages", "messages")), False),
    ("an extra key", {"messages": [SYS, USER, ASSIST], "id": "t-1"}, (("unknown_key", "id"),), True),
    ("tools not a list", {"messages": [SYS, USER, ASSIST], "tools": {"name": "f"}}, (("bad_field", "tools"),), True),
    ("parallel_tool_calls not a boolean", {"messages": [SYS, USER, ASSIST], "parallel_tool_calls": "yes"}, (("bad_field", "parallel_tool_calls"),), True),
]


def _line(case: Case) -> str:
    return json.dumps({"messages": case.messages}, ensure_ascii=False)


@pytest.fixture(scope="module")
def data_check(tmp_path_factory) -> dict[int, list[tuple[str, str]]]:
    """The real `ftops data check --output json` over every case and line (one per JSONL line):
    the errors it reports, by line."""
    from controller.cli import main

    path = tmp_path_factory.mktemp("chat") / "cases.jsonl"
    texts = [_line(c) for c in CASES] + [json.dumps(obj, ensure_ascii=False) for _, obj, _, _ in LINES]
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["data", "check", str(path), "--output", "json"])
    report = json.loads(out.getvalue())
    assert code == 1 and report["lines"] == len(texts)
    errors: dict[int, list[tuple[str, str]]] = {n: [] for n in range(1, len(texts) + 1)}
    for issue in report["issues"]:
        if issue["severity"] == "error":
            errors[issue["line"]].append((issue["kind"], issue["field"]))
    return errors


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(VALID_LINE + "\n" + text + "\n", encoding="utf-8")
    return path


def _trainer(path: Path) -> str | None:
    """None when the trainer's loader accepts the file, else its error."""
    from controller.train.data import read_chat_jsonl

    try:
        read_chat_jsonl(path, "data.train")
    except PermanentError as exc:
        return str(exc)
    return None


def _evaluator(path: Path) -> str | None:
    from controller.evaluate.datasets import read_examples

    try:
        read_examples(path, "test split")
    except PermanentError as exc:
        return str(exc)
    return None


def _server(messages: object) -> str | None:
    """None when the server accepts the request, else the field (`param`) of its 400."""
    from controller.serve.validation import RequestError, parse_chat_request

    history = [*messages, NEXT] if isinstance(messages, list) and messages else messages
    try:
        parse_chat_request(json.dumps({"model": "m", "messages": history}).encode(), 64)
    except RequestError as exc:
        assert exc.status == 400 and exc.body()["error"]["type"] == "invalid_request_error"
        return exc.param
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_reader_accepts_and_refuses_the_same_messages(case: Case, data_check, tmp_path) -> None:
    from controller.chat import check_messages

    number = CASES.index(case) + 1
    assert sorted(data_check[number]) == sorted(case.problems), "ftops data check"
    problems = check_messages(case.messages, "example")
    assert sorted((p.kind, p.field) for p in problems) == sorted(case.problems)

    path = _file(tmp_path, _line(case))
    for reader, error in (("trainer", _trainer(path)), ("evaluator", _evaluator(path))):
        if not case.problems:
            assert error is None, f"the {reader} refuses what the data check accepts: {error}"
        else:
            assert error is not None, f"the {reader} accepts what the data check refuses"
            assert error.startswith(f"{path}:2: ") and problems[0].field in error, f"{reader}: {error}"

    want = (case.problems[0][1] if case.problems else None) if case.server == SAME else case.server
    if case.server != SAME:
        assert case.why or want == (case.problems[0][1] if case.problems else None), "say why the server differs"
    assert _server(case.messages) == want


@pytest.mark.parametrize("name,obj,problems,evaluator_accepts", LINES, ids=[name for name, *_ in LINES])
def test_whole_lines_read_the_same_by_check_and_trainer(name, obj, problems, evaluator_accepts, data_check, tmp_path) -> None:
    number = len(CASES) + [n for n, *_ in LINES].index(name) + 1
    assert sorted(data_check[number]) == sorted(problems)
    path = _file(tmp_path, json.dumps(obj))
    error = _trainer(path)
    assert (error is None) == (not problems), error
    if error is not None:
        assert error.startswith(f"{path}:2: ") and problems[0][1] in error
    assert (_evaluator(path) is None) == evaluator_accepts


def test_developer_is_refused_everywhere_with_what_to_write(tmp_path) -> None:
    """`developer` is OpenAI's newer name for system; every reader says to write `system`."""
    messages = [{"role": "developer", "content": "Be brief."}, USER, ASSIST]
    path = _file(tmp_path, json.dumps({"messages": messages}))
    from controller.data.check import scan_file
    from controller.serve.validation import RequestError, parse_chat_request

    (issue,) = scan_file(path).errors
    assert issue.line == 2 and 'write "system"' in issue.message
    assert 'write "system"' in _trainer(path) and 'write "system"' in _evaluator(path)
    with pytest.raises(RequestError, match='write "system"') as info:
        parse_chat_request(json.dumps({"messages": [messages[0], USER]}).encode(), 64)
    assert info.value.param == "messages[0].role"


def test_evaluation_reference_and_prompt(tmp_path) -> None:
    """The evaluator keeps messages whole (the template renders tool calls); a last turn that only
    calls a tool is scored against the JSON of its call; a suite's "answer" makes the list a prompt."""
    from controller.evaluate.datasets import read_examples

    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join([
        json.dumps({"messages": [SYS, USER, CALLING, RESULT, ASSIST], "group": "a"}),
        json.dumps({"messages": [SYS, USER, CALLING]}),
    ]) + "\n")
    full, calling = read_examples(path, "test split")
    assert full.prompt == (SYS, USER, CALLING, RESULT) and full.reference == ASSIST["content"] and full.meta == {"group": "a"}
    assert json.loads(calling.reference) == {"name": "find_invoice", "arguments": {"month": "May"}}
    assert "find_invoice" in calling.text() and "find_invoice" in full.text()

    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"messages": [USER], "answer": "Billing"}) + "\n"
                     + json.dumps({"messages": [USER, ASSIST], "answer": "Billing"}) + "\n")
    first, second = read_examples(suite, "suite", answer_key="answer")
    assert first.prompt == second.prompt == (USER,) and first.reference == "Billing"
    suite.write_text(json.dumps({"messages": [SYS], "answer": "x"}) + "\n")
    with pytest.raises(PermanentError, match=r"suite.jsonl:1: messages\[0\].role: the prompt ends with a system message"):
        read_examples(suite, "suite", answer_key="answer")


def test_server_joins_text_parts_and_keeps_only_role_and_content() -> None:
    from controller.serve.validation import parse_chat_request

    body = {"messages": [{"role": "system", "content": "Be brief.", "name": "ops"},
                         {"role": "assistant", "content": "Hi.", "refusal": None, "tool_calls": None},
                         {"role": "user", "content": [{"type": "text", "text": "Where is "}, {"type": "text", "text": "my invoice?"}]}]}
    request = parse_chat_request(json.dumps(body).encode(), 64)
    assert request.messages == [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi."},
                                {"role": "user", "content": "Where is my invoice?"}]
    assert request.query == "Where is my invoice?"


def test_the_trainer_reports_the_first_bad_line_and_how_many_problems(tmp_path) -> None:
    bad = {"messages": [{"role": "bot", "content": ""}, {"role": "assistant", "content": "x", "conent": "y"}]}
    path = _file(tmp_path, json.dumps(bad))
    error = _trainer(path)
    assert error.startswith(f"{path}:2: messages[0].role: 'bot' is not a recognised role")
    assert "and 2 more problem(s) on this line" in error and "ftops data check" in error


def test_data_check_fast_path_follows_the_same_order_table() -> None:
    """The data check's loop for plain examples reads controller.chat.FOLLOWS; walking every
    plain role sequence up to four messages through both shows they cannot drift apart."""
    from itertools import product

    from controller.chat import check_messages
    from controller.data.check import scan_bytes

    text = {"system": "Be brief.", "user": "Where is my invoice?", "assistant": "Under Billing."}
    sequences = [seq for n in range(1, 5) for seq in product(text, repeat=n)]
    lines = [json.dumps({"messages": [{"role": r, "content": text[r]} for r in seq]}) for seq in sequences]
    scan = scan_bytes("\n".join(lines).encode())
    accepted = {r.line for r in scan.records}
    for number, seq in enumerate(sequences, 1):
        valid = not check_messages([{"role": r, "content": text[r]} for r in seq], "example")
        assert (number in accepted) == valid, seq
    assert 0 < len(accepted) < len(sequences)
