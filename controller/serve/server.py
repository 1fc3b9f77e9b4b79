"""The OpenAI-compatible RAG server: `POST /v1/chat/completions` (JSON or server-sent events),
`GET /v1/models`, `/healthz`, `/readyz`, `/metrics` (Prometheus text format).

Why the standard library's ThreadingHTTPServer: no new dependency, and the work per request is
dominated by generation, which is serialised behind one lock anyway (one model, CPU or one GPU).
HTTP/1.1 keep-alive is on, so a client pays the connection once; SSE uses chunked encoding.

Robustness rules: every request is validated before retrieval or generation
(controller.serve.validation); every handler catches everything and answers JSON (4xx for the
client's mistakes, 500 for ours) so no request can kill the process; a socket timeout stops a
slow client from holding a thread; at most MAX_IN_FLIGHT requests wait for the model, more get a
429 instead of piling up.

Lifecycle: the socket listens at once (so /healthz answers while the model loads), `/readyz` is
503 until the model and the index are loaded, then 200. A load failure (missing manifest,
tampered adapter, bad corpus) is logged and the process exits 1: a supervisor (the local deploy
step, or Kubernetes) sees the new version fail readiness and keeps the old one.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator

from controller.serve.config import ServeConfig
from controller.serve.prompt import citations, with_context
from controller.serve.validation import MAX_BODY_BYTES, ChatRequest, RequestError, parse_chat_request

if TYPE_CHECKING:  # loaded lazily: /healthz answers before torch is imported
    from controller.serve.corpus import Chunk
    from controller.serve.index import CorpusIndex
    from controller.serve.model import LoadedModel

    Hits = list[tuple[Chunk, float]]

MAX_IN_FLIGHT = 16
DRAIN_LIMIT = 16 << 20
SOCKET_TIMEOUT = 60


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ftops_serve_requests", "HTTP requests", ["path", "code"], registry=r)
        self.latency = Histogram("ftops_serve_request_seconds", "Request latency", ["path"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.retrieval = Histogram("ftops_serve_retrieval_seconds", "Retrieval latency", registry=r,
                                   buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
        self.prompt_tokens = Counter("ftops_serve_prompt_tokens", "Prompt tokens", registry=r)
        self.completion_tokens = Counter("ftops_serve_completion_tokens", "Generated tokens", registry=r)
        self.ready = Gauge("ftops_serve_ready", "1 when the model and index are loaded", registry=r)
        self.in_flight = Gauge("ftops_serve_in_flight", "Chat requests being handled", registry=r)
        self.info = Gauge("ftops_serve_info", "What is served", ["run_id", "corpus_version", "retriever"], registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class RagServer:
    """Holds the model, the index and the HTTP server. `start()` listens and loads in the
    background; `load()` does the loading synchronously (tests, benchmarks)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = _Metrics()
        self.model: LoadedModel | None = None
        self.index: CorpusIndex | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._index_lock = threading.Lock()
        self._stop = threading.Event()
        self.httpd: ThreadingHTTPServer | None = None
        self.created = int(time.time())

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        from controller.serve.model import load_run

        cfg = self.config
        model = self.model = load_run(cfg.run_dir, cfg.base_uri, cfg.base_revision, cfg.device)
        if cfg.run_id and cfg.run_id != model.run_id:
            from controller.errors import PermanentError

            raise PermanentError(f"serve config names run {cfg.run_id} but {cfg.run_dir} holds run {model.run_id}")
        self.reload_index()
        self.ready.set()
        self.metrics.ready.set(1)

    def reload_index(self) -> bool:
        """(Re)build or load the index for the corpus as it is now; True when the version changed."""
        cfg = self.config
        if not cfg.corpus_dir:
            return False
        from controller.serve.index import load_or_build

        new = load_or_build(cfg.corpus_dir, cfg.retriever, index_cache_dir(cfg, cfg.corpus_dir))
        with self._index_lock:
            old = self.index
            self.index = new
        if old is not None:
            self.metrics.info.remove(self.model.run_id if self.model else "", old.version, cfg.retriever)
        self.metrics.info.labels(self.model.run_id if self.model else "", new.version, cfg.retriever).set(1)
        return old is None or old.version != new.version

    def _load_in_background(self) -> None:
        try:
            self.load()
            _log("ready", runId=self.loaded().run_id, corpusVersion=self.index.version if self.index else None,
                 port=self.port)
        except BaseException as exc:  # noqa: BLE001 - any load failure means "not ready, exit"
            self.error = f"{type(exc).__name__}: {exc}"
            _log("load-failed", error=self.error)
            self.shutdown()
            os._exit(1)
        if self.config.corpus_poll_seconds > 0 and self.config.corpus_dir:
            while not self._stop.wait(self.config.corpus_poll_seconds):
                self._safe_reload()

    def _safe_reload(self) -> None:
        try:
            if self.reload_index():
                _log("index-reloaded", corpusVersion=self.index.version if self.index else None)
        except Exception as exc:  # a bad corpus edit keeps the last good index serving
            _log("index-reload-failed", error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ http
    def bind(self) -> ThreadingHTTPServer:
        handler = type("Handler", (_Handler,), {"app": self})
        httpd = self.httpd = ThreadingHTTPServer((self.config.host, self.config.port), handler)
        httpd.daemon_threads = True
        if self.config.endpoint_file:
            path = Path(self.config.endpoint_file)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"host": self.config.host, "port": self.port, "pid": os.getpid()}) + "\n")
            tmp.replace(path)
        return httpd

    @property
    def port(self) -> int:
        return self.httpd.server_address[1] if self.httpd else self.config.port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def start(self, load: bool = True) -> "RagServer":
        """Listen in a background thread; load the model in another unless `load` is False."""
        httpd = self.httpd or self.bind()
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        if load:
            threading.Thread(target=self._load_in_background, daemon=True).start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        if self.httpd is not None:
            threading.Thread(target=self.httpd.shutdown, daemon=True).start()

    # ------------------------------------------------------------------ chat
    def loaded(self) -> LoadedModel:
        """The model; only asked for once `ready` is set (requests before that get a 503)."""
        if self.model is None:
            raise RuntimeError("the model is not loaded yet")
        return self.model

    def retrieve(self, query: str) -> Hits:
        with self._index_lock:
            index = self.index
        if index is None:
            return []
        started = time.perf_counter()
        hits = index.search(query, self.config.top_k)
        self.metrics.retrieval.observe(time.perf_counter() - started)
        return hits

    def prepare(self, request: ChatRequest) -> tuple[list[int], Hits]:
        """Prompt ids with as many retrieved chunks as fit the model's context (best first)."""
        model = self.loaded()
        hits = self.retrieve(request.query)
        budget = model.max_positions - request.max_tokens
        while True:
            ids = model.prompt_ids(with_context(request.messages, hits))
            if len(ids) <= budget or not hits:
                break
            hits = hits[:-1]
        if len(ids) > budget:
            raise RequestError(400, f"the prompt is {len(ids)} tokens and max_tokens {request.max_tokens}; together they "
                                    f"exceed the model's context of {model.max_positions}", "messages",
                               "context_length_exceeded")
        return ids, hits

    def completion(self, request: ChatRequest) -> dict[str, Any]:
        model = self.loaded()
        ids, hits = self.prepare(request)
        new, finish = model.generate(ids, request.max_tokens)
        self.metrics.prompt_tokens.inc(len(ids))
        self.metrics.completion_tokens.inc(len(new))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.config.model_name, "system_fingerprint": model.run_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": model.decode(new)},
                         "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new), "total_tokens": len(ids) + len(new)},
            "citations": citations(hits),
        }

    def stream_events(self, request: ChatRequest) -> Generator[dict[str, Any], None, None]:
        model = self.loaded()
        ids, hits = self.prepare(request)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.config.model_name, "system_fingerprint": model.run_id}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
               "citations": citations(hits)}
        stream = model.stream(ids, request.max_tokens)
        try:
            yield from self._stream_chunks(stream, base, ids, request)
        finally:
            stream.close()  # a client that left stops the generation (controller.serve.model)

    def _stream_chunks(self, stream: Iterator[str | tuple[list[int], str]], base: dict[str, Any], ids: list[int],
                       request: ChatRequest) -> Iterator[dict[str, Any]]:
        for item in stream:
            if isinstance(item, tuple):
                new, finish = item
                self.metrics.prompt_tokens.inc(len(ids))
                self.metrics.completion_tokens.inc(len(new))
                yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
                if request.include_usage:
                    yield {**base, "choices": [], "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new),
                                                          "total_tokens": len(ids) + len(new)}}
            else:
                yield {**base, "choices": [{"index": 0, "delta": {"content": item}, "finish_reason": None}]}

    def models(self) -> dict[str, Any]:
        run_id = self.model.run_id if self.model else self.config.run_id
        return {"object": "list", "data": [{"id": self.config.model_name, "object": "model", "created": self.created,
                                            "owned_by": "ftops", "runId": run_id}]}


def index_cache_dir(cfg: ServeConfig, corpus_dir: str) -> str:
    """Where `corpus_dir`'s indexes are kept: the configured folder, else `.ftops-index/` beside
    the corpus when that is writable, else the temp dir (a serving pod's root filesystem is
    read-only; /tmp is its emptyDir)."""
    if cfg.index_cache:
        return cfg.index_cache
    corpus = Path(corpus_dir).resolve()
    if os.access(corpus.parent, os.W_OK):
        return str(corpus.parent / ".ftops-index" / corpus.name)
    import tempfile

    return str(Path(tempfile.gettempdir()) / "ftops-index" / corpus.name)


class _Handler(BaseHTTPRequestHandler):
    app: RagServer
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT
    # Headers and body leave in one write (buffered wfile, flushed per response by http.server and
    # per event when streaming) with Nagle off: no delayed-ACK stalls between small writes.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server_version = "ftops-serve"
    sys_version = ""

    def log_message(self, *args: Any) -> None:  # access logs would drown the useful ones
        pass

    # -- plumbing
    def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
        body = payload if isinstance(payload, bytes) else (json.dumps(payload) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._code = code

    def _error(self, err: RequestError) -> None:
        self._send(err.status, err.body())

    def _read_body(self) -> bytes:
        self._body_read = True
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise RequestError(411, "send the body with Content-Length (chunked request bodies are not accepted)")
        try:
            n = int(length) if length is not None else 0
        except ValueError:
            self.close_connection = True
            raise RequestError(400, "invalid Content-Length") from None
        if n < 0:
            self.close_connection = True
            raise RequestError(400, "invalid Content-Length")
        if n > MAX_BODY_BYTES:
            # Read and drop a moderately large body, so the client finishes sending and reads the
            # 413 (closing mid-upload makes it see a broken pipe instead); beyond DRAIN_LIMIT, close.
            if n <= DRAIN_LIMIT:
                left = n
                while left > 0:
                    got = self.rfile.read(min(left, 1 << 16))
                    if not got:
                        break
                    left -= len(got)
            else:
                self.close_connection = True
            raise RequestError(413, f"request body is {n} bytes; the limit is {MAX_BODY_BYTES}", code="request_too_large")
        return self.rfile.read(n)

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        self._code = 500
        self._body_read = False
        started = time.perf_counter()
        label = path if path in ("/v1/chat/completions", "/v1/models", "/healthz", "/readyz", "/metrics") else "other"
        try:
            self._dispatch(method, path)
        except RequestError as err:
            self._safe(lambda: self._error(err))
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug in one request must not stop the server
            _log("request-error", path=path, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=5))
            self._safe(lambda: self._error(RequestError(500, "internal error; see the server log", type_="server_error")))
        finally:
            if not self._body_read and self.headers.get("Content-Length", "0") not in ("", "0"):
                self.close_connection = True  # an unread body would be parsed as the next request
            self.app.metrics.requests.labels(label, str(self._code)).inc()
            self.app.metrics.latency.labels(label).observe(time.perf_counter() - started)

    def _safe(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except (BrokenPipeError, ConnectionResetError, socket.timeout, ValueError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    # -- routes
    def _dispatch(self, method: str, path: str) -> None:
        app = self.app
        routes = {"/healthz": "GET", "/readyz": "GET", "/metrics": "GET", "/v1/models": "GET",
                  "/v1/chat/completions": "POST"}
        if path not in routes:
            raise RequestError(404, f"no route {path}; try POST /v1/chat/completions", code="not_found")
        if method != routes[path]:
            raise RequestError(405, f"{path} takes {routes[path]}, not {method}", code="method_not_allowed")
        if path == "/healthz":
            self._send(200, {"status": "ok"})
        elif path == "/readyz":
            if app.ready.is_set():
                self._send(200, {"status": "ready", "runId": app.loaded().run_id,
                                 "corpusVersion": app.index.version if app.index else None})
            else:
                self._send(503, {"status": "loading" if app.error is None else "failed", "error": app.error})
        elif path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            self._send(200, app.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/v1/models":
            self._send(200, app.models())
        else:
            self._chat()

    def _chat(self) -> None:
        app = self.app
        body = self._read_body()
        request = parse_chat_request(body, app.config.max_tokens)
        if not app.ready.is_set():
            raise RequestError(503, "the model is still loading; retry when /readyz is 200", type_="server_error",
                               code="not_ready")
        if request.model not in (None, app.config.model_name, app.loaded().run_id):
            raise RequestError(404, f"model '{request.model}' is not served here; this server serves "
                                    f"'{app.config.model_name}' (GET /v1/models)", "model", "model_not_found")
        if not app._slots.acquire(blocking=False):
            raise RequestError(429, f"more than {MAX_IN_FLIGHT} requests are waiting for the model; retry later",
                               type_="rate_limit_error", code="overloaded")
        app.metrics.in_flight.inc()
        try:
            if request.stream:
                self._stream(request)
            else:
                self._send(200, app.completion(request))
        finally:
            app.metrics.in_flight.dec()
            app._slots.release()

    def _stream(self, request: ChatRequest) -> None:
        events = self.app.stream_events(request)
        first = next(events)  # validation/context errors surface here, before any bytes are sent
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._code = 200

        def chunk(data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        try:
            chunk(f"data: {json.dumps(first)}\n\n".encode())
            for event in events:
                chunk(f"data: {json.dumps(event)}\n\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            events.close()
            return
        except Exception as exc:  # noqa: BLE001 - headers are sent; report the error in the stream
            _log("stream-error", error=f"{type(exc).__name__}: {exc}")
            err = RequestError(500, "internal error while generating; see the server log", type_="server_error")
            self._safe(lambda: chunk(f"data: {json.dumps(err.body())}\n\n".encode()))
        def done() -> None:
            chunk(b"data: [DONE]\n\n")
            chunk(b"")  # the chunked encoding's last, empty chunk

        self._safe(done)


def _log(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "time": round(time.time(), 3), **fields}), flush=True)


def run_forever(config: ServeConfig) -> int:
    """Run the server in this process until SIGTERM/SIGINT (graceful: stop accepting, exit 0).
    SIGHUP re-checks the corpus and swaps in a new index when its version changed."""
    server = RagServer(config)
    try:
        httpd = server.bind()
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    _log("listening", host=config.host, port=server.port, pid=os.getpid(), runDir=config.run_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=server._safe_reload, daemon=True).start())
    server.start()
    while not stop.wait(0.5):
        pass
    _log("stopping", port=server.port)
    httpd.shutdown()
    return 0
