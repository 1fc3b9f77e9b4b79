"""Helpers shared by the evaluation tests (imported as `eval_helpers`; conftest puts this folder on sys.path)."""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from controller.tiny import task

N_TRAIN = 240
N_TEST = 45
SPEC_NAME = "tiny-triage"
LABEL_SCHEMA_YAML = """      jsonSchema:
        type: object
        required: [label]
        additionalProperties: false
        properties:
          label: {enum: [billing, bug, account]}"""


def strip_system(example: dict) -> dict:
    return {"messages": [m for m in example["messages"] if m["role"] != "system"]}


@dataclass(frozen=True)
class TrainedRun:
    name: str
    run_dir: Path
    run_id: str
    train: Path
    test: Path
    run_config: Path


def write_spec(path: Path, evaluation: str) -> Path:
    """A FineTune spec file named after its metadata.name, with the given evaluation block (YAML)."""
    text = f"""apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata:
  name: {SPEC_NAME}
  owner: tests
spec:
  baseModel:
    uri: models/tiny
  dataset:
    path: data/tickets.jsonl
  method:
    type: lora
  evaluation:
{evaluation}
"""
    path.mkdir(parents=True, exist_ok=True)
    spec_file = path / f"{SPEC_NAME}.yaml"
    spec_file.write_text(text)
    return spec_file


def load_spec(spec_file: Path):
    from controller.spec import load_spec_text

    loaded = load_spec_text(spec_file.read_text(), str(spec_file))
    assert loaded.spec is not None, [i.format() for i in loaded.issues]
    return loaded.spec


_BILLING = re.compile(r"charg|invoice|refund|payment|bill|receipt|fee|price", re.I)
_BUG = re.compile(r"crash|error|freez|broken|blank|time out|glitch|stack trace", re.I)


def keyword_policy(ticket: str) -> str:
    """Classify a tiny-task ticket by its topic words (right on every generated ticket)."""
    if _BILLING.search(ticket):
        return "billing"
    if _BUG.search(ticket):
        return "bug"
    return "account"


@dataclass
class OracleServer:
    """POST /v1/chat/completions in the OpenAI wire format, answering `{"label": ...}` by
    `keyword_policy`; 401 without the right bearer key. Records every request body."""

    api_key: str
    requests: list = field(default_factory=list)

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                if self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                outer.requests.append(body)
                ticket = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
                answer = task.answer_for(keyword_policy(ticket))
                self._send(200, {
                    "id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
