"""What the gateway and the embedded engine share on their ASGI stack (Starlette on uvicorn):
bounded body reads, errors in OpenAI's shape, server-sent events, and running one or more
uvicorn servers on sockets bound before anything loads.

Why sockets bound first: a process listens at once, so `/healthz` answers (and its port is
written to the endpoint file) while the model loads; a supervisor tells "loading" from "dead".
Why every error is JSON in OpenAI's shape (`{"error": {message, type, param, code}}`): the
official SDK turns it into BadRequestError, NotFoundError, RateLimitError & co., and a client
never has to parse an HTML or plain-text page.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence

from controller.serve.validation import MAX_BODY_BYTES, RequestError

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def log(event: str, **fields: Any) -> None:
    """One JSON line per event on stdout (the server log a supervisor keeps)."""
    print(json.dumps({"event": event, "time": round(time.time(), 3), **fields}), flush=True)


async def read_body(request: Any, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, at most `limit` bytes: a larger Content-Length is refused before
    anything is read, and a body that grows past the limit while streaming in is cut off."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError(400, "invalid Content-Length") from None
        if declared > limit:
            raise RequestError(413, f"request body is {declared} bytes; the limit is {limit}", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(err: RequestError, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def exception_handlers() -> dict[Any, Callable[..., Awaitable[Any]]]:
    """Starlette handlers: RequestError as itself, 404/405 and any bug as OpenAI-shaped JSON."""
    from starlette.exceptions import HTTPException

    async def request_error(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, RequestError)
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return error_response(exc, headers)

    async def http_error(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(RequestError(404, f"no route {request.url.path}; try POST /v1/chat/completions",
                                               code="not_found"))
        if exc.status_code == 405:
            return error_response(RequestError(405, f"{request.url.path} does not take {request.method}",
                                               code="method_not_allowed"))
        return error_response(RequestError(exc.status_code, str(exc.detail)))

    async def bug(request: Any, exc: Exception) -> Any:
        log("request-error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return error_response(RequestError(500, "internal error; see the server log", type_="server_error"))

    return {RequestError: request_error, HTTPException: http_error, Exception: bug}


def sse(events: AsyncIterator[dict], on_close: Callable[[], None] | None = None) -> Any:
    """A text/event-stream response: one `data: {json}` per event, then `data: [DONE]`.

    A client that leaves makes the next send fail; the response then closes the event iterator at
    once (Starlette would leave it to the garbage collector), so its `finally` blocks run: the
    gateway frees the request's slot, the engine drops the sequence. `on_close` runs either way."""
    from starlette.responses import StreamingResponse

    class Response(StreamingResponse):
        async def stream_response(self, send: Any) -> None:
            try:
                await super().stream_response(send)
            finally:
                await body_iterator.aclose()

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
            yield b"data: [DONE]\n\n"
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
            if on_close is not None:
                on_close()

    body_iterator = body()
    return Response(body_iterator, media_type="text/event-stream", headers=SSE_HEADERS)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def write_endpoint(path: str | Path, host: str, ports: dict[str, int]) -> None:
    """`{host, port, ports, pid}` written atomically: how a manager learns ports the OS chose."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    first = next(iter(ports.values()))
    tmp.write_text(json.dumps({"host": host, "port": first, "ports": ports, "pid": os.getpid()}) + "\n")
    tmp.replace(path)


def uvicorn_server(app: Any) -> Any:
    """A uvicorn server that leaves signals to its caller (several run in one process)."""
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30,
                            timeout_graceful_shutdown=10, h11_max_incomplete_event_size=64 << 10)
    return Server(config)


async def _serve_all(servers: list[Any], sockets: list[socket.socket], background: list[Awaitable[None]]) -> None:
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in zip(servers, sockets)]
    extra = [asyncio.ensure_future(job) for job in background]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:  # one stopped: stop the others too
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    for job in extra:
        job.cancel()


def serve(listeners: list[tuple[Any, socket.socket]], background: Sequence[Callable[[], Awaitable[None]]] = ()) -> int:
    """Run one uvicorn server per (app, socket) in this process until SIGTERM/SIGINT: every
    server stops accepting and lets running requests finish; exit code 0."""
    import signal

    servers = [uvicorn_server(app) for app, _sock in listeners]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        def stop() -> None:
            for server in servers:
                server.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await _serve_all(servers, [sock for _app, sock in listeners], [job() for job in background])

    asyncio.run(main())
    sys.stdout.flush()
    return 0


class InThread:
    """The same servers on an event loop in a background thread (tests, benchmarks, the demo):
    `stop()` shuts them down gracefully and waits."""

    def __init__(self, listeners: list[tuple[Any, socket.socket]],
                 background: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:
        import threading

        self.servers = [uvicorn_server(app) for app, _sock in listeners]
        self._sockets = [sock for _app, sock in listeners]
        self._background = list(background)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="asgi", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not all(s.started for s in self.servers) and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await _serve_all(self.servers, self._sockets, [job() for job in self._background])

        asyncio.run(main())

    def stop(self) -> None:
        for server in self.servers:
            server.should_exit = True
        self._thread.join(timeout=30)
