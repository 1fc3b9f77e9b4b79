"""The fake provider over real HTTP on 127.0.0.1: the routes of OpenAI's API that the official
SDK calls for files, fine-tuning jobs, models and chat completions, with its error shape
(`{"error": {message, type, param, code}}`), multipart uploads and `retry-after` on a 429."""
from __future__ import annotations

import email.parser
import email.policy
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fakeprovider.provider import FakeProvider, ProviderError

JOB = re.compile(r"^/v1/fine_tuning/jobs/(?P<id>[^/]+)(?P<rest>/cancel|/events|/checkpoints)?$")
FILE = re.compile(r"^/v1/files/(?P<id>[^/]+)(?P<content>/content)?$")
MODEL = re.compile(r"^/v1/models/(?P<id>.+)$")


class Served:
    """A running server: `url` is the API root (what `base_url` is set to: .../v1)."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.root + "/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(provider: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # headers and body go out as two writes: without this, Nagle and delayed ACKs hold
            # each answer ~40 ms on a kept-alive connection
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            body = self._body()
            try:
                provider.admit(method, parts.path, self.headers.get("Authorization"))
                result = self._route(method, parts.path, query, body)
            except ProviderError as exc:
                self._send(exc.status, exc.body(), exc.headers)
                return
            if isinstance(result, bytes):
                self._send(200, None, raw=result)
            else:
                self._send(200, result)

        def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> Any:
            limit = int(query.get("limit", "20"))
            after = query.get("after")
            if path == "/v1/files" and method == "POST":
                filename, purpose, content = _multipart(self.headers.get("Content-Type", ""), body)
                return provider.create_file(filename, purpose, content)
            if path == "/v1/files" and method == "GET":
                return provider.list_files(query.get("purpose"), after, int(query.get("limit", "100")),
                                           query.get("order", "desc"))
            if m := FILE.match(path):
                if method == "DELETE":
                    return provider.delete_file(m["id"])
                stored = provider.get_file(m["id"])
                return stored.content if m["content"] else stored.to_json()
            if path == "/v1/fine_tuning/jobs" and method == "POST":
                return provider.create_job(_json(body))
            if path == "/v1/fine_tuning/jobs" and method == "GET":
                metadata = {k[len("metadata["):-1]: v for k, v in query.items() if k.startswith("metadata[")}
                return provider.list_jobs(after, limit, metadata)
            if m := JOB.match(path):
                if m["rest"] == "/cancel" and method == "POST":
                    return provider.cancel_job(m["id"])
                if m["rest"] == "/events":
                    return provider.list_events(m["id"], after, limit)
                if m["rest"] == "/checkpoints":
                    return provider.list_checkpoints(m["id"], after, limit)
                return provider.poll(m["id"]).to_json()
            if path == "/v1/models":
                return {"object": "list", "data": provider.models()}
            if m := MODEL.match(path):
                found = next((x for x in provider.models() if x["id"] == m["id"]), None)
                if found is None:
                    raise ProviderError(404, f"The model '{m['id']}' does not exist", param="model", code="model_not_found")
                return found
            if path == "/v1/chat/completions" and method == "POST":
                request = _json(body)
                if request.get("stream"):
                    raise ProviderError(400, "this fake answers chat completions without streaming", param="stream")
                return provider.chat(request)
            raise ProviderError(404, f"Invalid URL ({method} {path})", param=None, code=None)

        def do_GET(self) -> None:  # noqa: N802 - http.server's names
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._handle("DELETE")

    return Handler


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except json.JSONDecodeError:
        raise ProviderError(400, "We could not parse the JSON body of your request.", param=None) from None
    if not isinstance(value, dict):
        raise ProviderError(400, "The request body must be a JSON object.")
    return value


def _multipart(content_type: str, body: bytes) -> tuple[str, str, bytes]:
    """(filename, purpose, content) of an upload: multipart/form-data with `file` and `purpose`."""
    if not content_type.startswith("multipart/form-data"):
        raise ProviderError(400, "file uploads are multipart/form-data", param="file")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    if "file" not in fields or "purpose" not in fields:
        raise ProviderError(400, "Missing required parameter: 'file' and 'purpose'.", param="file")
    filename, content = fields["file"]
    return filename or "upload.jsonl", fields["purpose"][1].decode(), content
