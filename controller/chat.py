"""The chat format: one definition of the messages ftops checks, trains on, evaluates and serves.

`ftops data check`, the trainer's loader, the evaluator's loader and the server's request
validator all call `check_messages` (or `check_example` for a whole data line), so what the data
check accepts is exactly what the trainer and the evaluator accept. Each problem comes back as a
`Problem` (kind, field path such as `messages[2].role`, a message that says what to write
instead); callers add the file and line.

Three purposes, because a message list means something different in each place:

- `"example"`: a line of training or evaluation data. The model learns the assistant turns,
  and evaluation takes the last message as the reference answer, so it must end with an
  assistant message.
- `"prompt"`: an evaluation input whose answer is given elsewhere (a regression suite's
  `"answer"`): the same rules, but it ends with the user's message or tool results, which the
  model answers.
- `"request"`: the `messages` of a `/v1/chat/completions` request. The server takes what
  OpenAI clients send and refuses only what it cannot answer (see below).

Data (`"example"` and `"prompt"`):

- Roles: system, user, assistant, tool.
- Order: a system message only first; then user and assistant alternate, starting with the
  user (the assistant may answer the system prompt directly); an assistant message with
  `tool_calls` is followed by the tool messages that answer it (each naming an earlier call's id
  in `tool_call_id`), and tool results are followed by the assistant. The fine-tuned model is served through its own chat
  template, and many templates (Mistral, Gemma, Llama 2) refuse turns that do not alternate or a
  system message that is not first: such an example would fail to render, or train on a layout
  serving never produces.
- Content is a non-empty string. Lists of content parts (`[{"type": "text", "text": ...}]`) are
  refused with "write the text as one string": they are a second spelling of the same text, and
  the example hash (dedupe, review verdicts, the leak check) must have one spelling to be an
  identity; the chat templates of text models concatenate `content` as a string. Only an
  assistant message with `tool_calls` may have no content (`null`, `""` or absent).
- Tool calls are part of the format (OpenAI's fine-tuning format has them, and a model learns
  when to call a tool from examples that end in a call): `{"id", "type": "function", "function":
  {"name", "arguments": "<JSON object as a string>"}}`.
- `weight` (OpenAI's per-turn switch) may only be 1: the trainer learns every assistant turn, so
  a `weight: 0` would be silently trained on; it is refused with what to do instead.
- Unknown keys are errors, so a typo such as `"conent"` is caught instead of training on an
  empty turn.

Requests (`"request"`): roles system, user and assistant, in any order OpenAI's API allows, the
last one the user's (retrieval searches it and the model answers it). Content is a string or a
list of text parts (what OpenAI clients send; `content_text` joins them), and may be empty. The
server takes no `tools`, so tool messages and assistant `tool_calls` are refused. Other keys
(`name`, or the `refusal: null` a client copies back from a response) are ignored.

`developer` (OpenAI's newer name for the system role) is refused everywhere, with a message
saying to write `system`: the chat templates of open-weight models define `system`, not
`developer`, and mapping one to the other would either change the example hash of data that
spells it `developer` or leave two spellings of one example. One name, one meaning.

This module is a low layer: it imports nothing from controller, so spec-level code, the data
check and the server's hot path can all use it without pulling in anything heavy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

Purpose = Literal["example", "prompt", "request"]

ROLES = ("system", "user", "assistant", "tool")
REQUEST_ROLES = ("system", "user", "assistant")
REFUSED_ROLES: Mapping[str, str] = {
    "developer": "'developer' is OpenAI's newer name for the system role; write \"system\" "
                 "(the chat templates of open-weight models define system, not developer)",
}

EXAMPLE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "sources"})
"""The top-level keys of a data line: OpenAI's fine-tuning format, plus `sources`, the example's
gold source(s): document paths relative to the spec's serving.corpus (`["refunds.md"]`), which
retrieval-aware fine-tuning puts among the distractors and the evaluation's citation and recall
metrics score against (`ftops data check` checks that each one is a document of the corpus)."""
MESSAGE_KEYS: Mapping[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "weight", "refusal"}),
    "tool": frozenset({"role", "content", "tool_call_id", "name"}),
}
_ANY_MESSAGE_KEYS = frozenset().union(*MESSAGE_KEYS.values())
_ROLE_SET = frozenset(ROLES)
_CALL_KEYS = frozenset({"id", "type", "function"})
_FUNCTION_KEYS = frozenset({"name", "arguments"})

CALLED = "assistant+tool_calls"
"""The order state after an assistant message that calls tools (its answers must come next)."""
FOLLOWS: Mapping[str, frozenset[str]] = {
    "": frozenset({"system", "user"}),
    "system": frozenset({"user", "assistant"}),
    "user": frozenset({"assistant"}),
    "assistant": frozenset({"user"}),
    CALLED: frozenset({"tool"}),
    "tool": frozenset({"tool", "assistant"}),
}
"""Which role may follow which in data (`""`: the first message). `check_messages` applies it;
the data check's fast path for plain text examples reads the same table."""
ENDS: Mapping[str, frozenset[str]] = {
    "example": frozenset({"assistant", CALLED}),
    "prompt": frozenset({"user", "tool"}),
}
"""The order states a message list may end in, per purpose."""

INVISIBLE = "\u200b\u2060\ufeff"
"""Characters that carry no text (zero-width space, word joiner, byte-order mark). Content made
only of these and whitespace is empty: normalisation (controller.data.normalize) removes them."""
_INVISIBLE = dict.fromkeys(map(ord, INVISIBLE))

PROBLEM_KINDS: Mapping[str, str] = {
    "not_object": "the line (or a message) is not a JSON object",
    "missing_messages": "the `messages` list is missing, empty or not a list",
    "missing_role": "a message has no `role`",
    "missing_content": "a message has no `content`",
    "unknown_key": "a key that the chat format does not define",
    "unknown_role": "a role other than system, user, assistant, tool",
    "empty_content": "a message whose content is empty or only whitespace",
    "no_assistant": "no assistant message at the end, so nothing to learn there (and no reference answer)",
    "bad_order": "messages in an order the chat format does not allow (a system message not first, turns that do not alternate, a tool message without its call)",
    "bad_tool_call": "a badly formed tool call or tool message",
    "bad_field": "a known key with a value of the wrong type",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a message list. `field` is a path into the line (`messages[2].role`,
    `messages[1].tool_calls[0].function.arguments`, `""` for the whole line); `message` says what
    is wrong and what to write instead."""

    kind: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def describe(where: str, problems: Sequence[Problem]) -> str:
    """One error message for a line with problems (loaders stop at the first bad line): the first
    problem in full, then how many more there are. `where` is "file:line"."""
    text = f"{where}: {problems[0]}"
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem(s) on this line; `ftops data check FILE` lists every one)"
    return text


def is_blank(text: str) -> bool:
    """True when `text` has nothing a reader can see: whitespace and `INVISIBLE` characters only."""
    return not text or text.isspace() or (not text.isascii() and not text.translate(_INVISIBLE).strip())


def content_text(content: str | list) -> str:
    """The text of a checked request message's content: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


def message_text(message: Mapping) -> str:
    """The text of a checked data message: its content, then each tool call as one line of JSON
    `{"name": ..., "arguments": {...}}` (the shape most chat templates render a call in), so a
    turn that only calls a tool still has text to compare."""
    parts = [message["content"]] if isinstance(message.get("content"), str) and message["content"] else []
    for call in message.get("tool_calls") or ():
        fn = call["function"]
        parts.append(json.dumps({"name": fn["name"], "arguments": json.loads(fn["arguments"])}, ensure_ascii=False))
    return "\n".join(parts)


def check_example(obj: object) -> list[Problem]:
    """Every problem of one parsed data line: `{"messages": [...], "tools": [...],
    "parallel_tool_calls": bool}` with the messages checked as an `"example"`."""
    if not isinstance(obj, dict):
        return [Problem("not_object", "", f'each line must be a JSON object {{"messages": [...]}}, not a {type(obj).__name__}')]
    problems: list[Problem] = []
    extra = obj.keys() - EXAMPLE_KEYS
    for key in sorted(extra, key=str) if extra else ():
        problems.append(Problem("unknown_key", str(key), f"unknown key {key!r}; an example has only messages, tools, "
                                "parallel_tool_calls and sources"))
    if "tools" in obj and not isinstance(obj["tools"], list):
        problems.append(Problem("bad_field", "tools", "tools must be a list of tool definitions"))
    if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
        problems.append(Problem("bad_field", "parallel_tool_calls", "parallel_tool_calls must be true or false"))
    if "sources" in obj:
        sources = obj["sources"]
        if not isinstance(sources, list) or not sources or not all(isinstance(x, str) and x.strip() for x in sources):
            problems.append(Problem("bad_field", "sources", 'sources must be a non-empty list of document paths relative '
                                    'to the corpus (spec.serving.corpus), e.g. "sources": ["refunds.md"]'))
    problems.extend(check_messages(obj.get("messages"), "example"))
    return problems


def check_messages(messages: object, purpose: Purpose = "example") -> list[Problem]:
    """Every problem of a message list used for `purpose` (see the module docstring); empty when
    it is valid. Never raises, whatever `messages` is."""
    if not isinstance(messages, list) or not messages:
        if messages is None:
            msg = 'the "messages" list is missing; write {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}'
        elif isinstance(messages, list):
            msg = "messages is empty; " + ("a request needs at least a user message" if purpose == "request"
                                           else "an example needs at least a user and an assistant message")
        else:
            msg = f"messages must be a list of message objects, not a {type(messages).__name__}"
        return [Problem("missing_messages", "messages", msg)]
    if purpose == "request":
        return _check_request(messages)
    return _check_data(messages, purpose)


def _role_problem(role: object, where: str, roles: tuple[str, ...]) -> Problem | None:
    if role is None:
        return Problem("missing_role", f"{where}.role", f"the message has no role; add one of {', '.join(roles)}")
    if isinstance(role, str) and role in roles:
        return None
    hint = REFUSED_ROLES.get(role) if isinstance(role, str) else None
    return Problem("unknown_role", f"{where}.role", hint or f"{role!r} is not a recognised role; use one of {', '.join(roles)}")


def _check_data(messages: list, purpose: Purpose) -> list[Problem]:
    """One pass over the messages. The common case (a known role, string content, no extra keys)
    costs a few lookups per message: the data check runs this on every line that is not plain."""
    problems: list[Problem] = []
    order: list[Problem] = []  # reported only when every message is well formed
    call_ids: set[str] = set()
    well_formed, has_assistant = True, False  # well formed: every message an object with a known role
    state = ""
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(Problem("not_object", f"messages[{i}]", f'each message must be an object {{"role": ..., "content": ...}}, not a {type(m).__name__}'))
            well_formed = False
            continue
        role = m.get("role")
        if role.__class__ is str and role in _ROLE_SET:
            allowed = MESSAGE_KEYS[role]
        else:
            problems.append(_role_problem(role, f"messages[{i}]", ROLES))
            well_formed = False
            role = None
            allowed = _ANY_MESSAGE_KEYS
        extra = m.keys() - allowed
        if extra:
            for key in sorted(extra, key=str):
                hint = " (did you mean 'content'?)" if str(key).lower().startswith(("cont", "conent", "text")) else ""
                problems.append(Problem("unknown_key", f"messages[{i}].{key}", f"unknown key {key!r} in a {role or 'message'} message{hint}; allowed: {', '.join(sorted(allowed))}"))
        calls = None
        if role == "assistant":
            has_assistant = True
            calls = m.get("tool_calls")
            if calls is not None:
                _check_tool_calls(calls, f"messages[{i}].tool_calls", problems, call_ids)
            if "weight" in m:
                _check_weight(m["weight"], f"messages[{i}].weight", problems)
        content = m.get("content")
        if content.__class__ is str:
            if is_blank(content) and not (content == "" and calls):
                problems.append(Problem("empty_content", f"messages[{i}].content", "content is empty; write the text of this turn or remove the message"))
        elif content is None:
            if not calls:
                problems.append(Problem("missing_content", f"messages[{i}].content", "the message has no content; write the text of this turn (only an assistant message with tool_calls may omit it)"))
        elif isinstance(content, list):
            problems.append(Problem("bad_field", f"messages[{i}].content", 'content must be one string: write the text of the parts as a string '
                                                                           '("content": "..."); lists of content parts are for requests, not data'))
        else:
            problems.append(Problem("bad_field", f"messages[{i}].content", f"content must be a string, not {type(content).__name__}"))
        if role == "tool":
            tid = m.get("tool_call_id")
            if tid.__class__ is not str or tid not in call_ids:
                problems.append(Problem("bad_tool_call", f"messages[{i}].tool_call_id", f"a tool message must answer an earlier assistant tool call: tool_call_id {tid!r} matches none of {sorted(call_ids) or 'no calls'}"))
        if "name" in m and not isinstance(m["name"], str):
            problems.append(Problem("bad_field", f"messages[{i}].name", "name must be a string"))
        if "refusal" in m and m["refusal"] is not None and not isinstance(m["refusal"], str):
            problems.append(Problem("bad_field", f"messages[{i}].refusal", "refusal must be a string or null"))
        if well_formed:
            if role not in FOLLOWS[state]:
                order.append(Problem("bad_order", f"messages[{i}].role", _order_message(state, role)))
            state = CALLED if calls else role
    if purpose == "example" and not has_assistant:
        problems.append(Problem("no_assistant", "messages", "no assistant message: add the answer the model should learn to give"))
    elif well_formed:
        problems.extend(order)
        if state not in ENDS[purpose]:
            problems.append(_ending_problem(state, len(messages) - 1, purpose))
    return problems


def _check_weight(weight: object, where: str, problems: list[Problem]) -> None:
    if isinstance(weight, bool) or weight not in (0, 1):
        problems.append(Problem("bad_field", where, "weight must be 1 (learn this turn) or be left out"))
    elif weight == 0:
        problems.append(Problem("bad_field", where, "weight 0 is not supported: ftops learns every assistant turn; "
                                                    "end the example before this turn, or drop the weight to learn it"))


def _ending_problem(state: str, last: int, purpose: Purpose) -> Problem:
    where = f"messages[{last}].role"
    if purpose == "example":
        return Problem("no_assistant", where, f"the example ends with a {state} message; end it with the assistant's answer "
                                              "(nothing after the last assistant turn is learned, and evaluation takes the last message as the reference answer)")
    what = "an assistant tool call" if state == CALLED else f"a {state} message"
    return Problem("bad_order", where, f"the prompt ends with {what}; end it with the user's message (or tool results) "
                                       "that the model answers, and give the expected answer separately")


def _order_message(state: str, role: str) -> str:
    if role == "system":
        return "a system message may only come first; move it to messages[0] or merge it into the system message there"
    if role == "tool":
        return "a tool message must directly follow the assistant message whose tool_calls it answers (or another tool message)"
    if state == "":
        return "an example starts with a system or user message: the assistant's turn answers something"
    if state == CALLED:
        return f"an assistant message with tool_calls must be followed by the tool messages that answer it, not a {role} message"
    if state == "tool":
        return "after tool results the assistant answers: write the assistant turn that uses them before the next user message"
    # What is left is the same role twice (FOLLOWS allows every other step).
    return (f"two {role} messages in a row; merge them into one turn "
            "(turns alternate user/assistant, and many chat templates refuse anything else)")


def _check_tool_calls(calls: object, where: str, problems: list[Problem], ids: set[str]) -> None:
    if not isinstance(calls, list) or not calls:
        problems.append(Problem("bad_tool_call", where, "tool_calls must be a non-empty list of calls; drop the key if the assistant calls no tool"))
        return
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            problems.append(Problem("bad_tool_call", at, 'a tool call must be an object {"id", "type": "function", "function": {"name", "arguments"}}'))
            continue
        extra = call.keys() - _CALL_KEYS
        if extra:
            problems.append(Problem("bad_tool_call", at, f"unknown key(s) {sorted(extra)} in a tool call; allowed: id, type, function"))
        cid = call.get("id")
        if not isinstance(cid, str) or not cid:
            problems.append(Problem("bad_tool_call", f"{at}.id", "each tool call needs a non-empty string id, which the tool message answers with tool_call_id"))
        else:
            ids.add(cid)
        if call.get("type", "function") != "function":
            problems.append(Problem("bad_tool_call", f"{at}.type", f"type must be \"function\", not {call.get('type')!r}"))
        fn = call.get("function")
        if not isinstance(fn, dict):
            problems.append(Problem("bad_tool_call", f"{at}.function", 'function must be an object {"name": "...", "arguments": "<JSON string>"}'))
            continue
        extra = fn.keys() - _FUNCTION_KEYS
        if extra:
            problems.append(Problem("bad_tool_call", f"{at}.function", f"unknown key(s) {sorted(extra)}; allowed: name, arguments"))
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(Problem("bad_tool_call", f"{at}.function.name", "the function name must be a non-empty string"))
        args = fn.get("arguments")
        if not isinstance(args, str):
            problems.append(Problem("bad_tool_call", f"{at}.function.arguments", "arguments must be a string holding a JSON object, e.g. \"{\\\"city\\\": \\\"Paris\\\"}\""))
            continue
        try:
            parsed = json.loads(args)
        except ValueError as exc:
            problems.append(Problem("bad_tool_call", f"{at}.function.arguments", f"arguments are not valid JSON ({exc}); write a JSON object as a string"))
            continue
        if not isinstance(parsed, dict):
            problems.append(Problem("bad_tool_call", f"{at}.function.arguments", "arguments must encode a JSON object, not a " + type(parsed).__name__))


_NO_TOOLS = ("this server does not run tools (it takes no `tools` parameter), so a request cannot carry "
             "tool calls or tool results; send the conversation as system, user and assistant text")


def _check_request(messages: list) -> list[Problem]:
    """The first problem only: a request gets one 4xx answer, naming one field."""
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            return [Problem("not_object", where, f"{where} must be an object with 'role' and 'content'")]
        role = m.get("role")
        if role == "tool":
            return [Problem("unknown_role", f"{where}.role", _NO_TOOLS)]
        bad_role = _role_problem(role, where, REQUEST_ROLES)
        if bad_role is not None:
            return [bad_role]
        if m.get("tool_calls"):
            return [Problem("bad_tool_call", f"{where}.tool_calls", _NO_TOOLS)]
        content = m.get("content")
        if content is None:
            return [Problem("missing_content", f"{where}.content", f"{where}.content is required")]
        if isinstance(content, list):
            for k, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    return [Problem("bad_field", f"{where}.content", f'{where}.content[{k}] must be a text part {{"type": "text", "text": ...}}; '
                                                                     "this server takes text only")]
        elif not isinstance(content, str):
            return [Problem("bad_field", f"{where}.content", f"{where}.content must be a string or a list of text parts")]
    if messages[-1]["role"] != "user":
        return [Problem("bad_order", f"messages[{len(messages) - 1}].role", "the last message must have role 'user'")]
    return []
