"""One machine: the gateway and the embedded engine in one process, on two sockets.

`ftops serve --config serve.json` (and the local deployer) runs this. The gateway reaches the
engine over HTTP on 127.0.0.1, exactly as it reaches vLLM in a cluster, so what is tested here is
the same split: the gateway knows only the OpenAI API. The engine starts with the run's adapter
(or its full model) loaded; the local deployer loads further adapters at runtime and switches
the gateway's routes by rewriting gateway.json.

Lifecycle: both sockets listen at once (`/healthz` answers while the model loads, and the
endpoint file names both ports), the engine loads in a thread, the gateway loads the index and
reports ready once the engine lists the routed adapter. A load failure is logged and the process
exits 1, so a supervisor (the local deployer, or Kubernetes) sees the new version fail.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

from controller.serve.config import ServeConfig
from controller.serve.engine_server import EngineApp, EngineConfig
from controller.serve.gateway import Gateway, GatewayConfig, Route, read_config, write_config


def engine_config(config: ServeConfig) -> EngineConfig:
    """The engine for a run: its base (or its full model), its adapter loaded as the run id."""
    from controller.serve.model import open_run

    run = open_run(config.run_dir)
    adapters = {run.run_id: str(run.run_dir)} if run.is_adapter else {}
    return EngineConfig(model_dir=config.base_uri, template_run=str(run.run_dir), base_revision=config.base_revision,
                        name=run.run_id if not run.is_adapter else "base", adapters=adapters, device=config.device)


def gateway_config(config: ServeConfig, engine_url: str, run_id: str) -> GatewayConfig:
    return GatewayConfig(spec_name=config.model_name, routes=(Route(run_id, run_id, 100),), engines=(engine_url,),
                         corpus_dir=config.corpus_dir, retriever=config.retriever, top_k=config.top_k,
                         max_tokens=config.max_tokens, index_cache=config.index_cache)


class Node:
    """Gateway + embedded engine, bound; `serve()` runs them in this process, `start()` in a thread."""

    def __init__(self, config: ServeConfig, gateway_file: str | None = None, threads: int | None = None) -> None:
        from controller.serve.asgi import bind
        from controller.serve.model import read_manifest

        self.config = config
        self.run_id = config.run_id or str(read_manifest(Path(config.run_dir))["runId"])
        self.engine_sock = bind("127.0.0.1", 0)
        self.gateway_sock = bind(config.host, config.port)
        self.engine_url = f"http://127.0.0.1:{self.engine_sock.getsockname()[1]}"
        self.engine = EngineApp()
        self.threads = threads or int(os.environ.get("FTOPS_ENGINE_THREADS", "0") or 0) or None
        gw = gateway_config(config, self.engine_url, self.run_id)
        if gateway_file:
            path = Path(gateway_file)
            # A restart keeps the routes the deployer wrote, with this process's engine.
            gw = replace(read_config(path), engines=(self.engine_url,)) if path.is_file() else gw
            write_config(gw, path)
        self.gateway = Gateway(gw, gateway_file)
        if config.endpoint_file:
            from controller.serve.asgi import write_endpoint

            write_endpoint(config.endpoint_file, config.host, {"gateway": self.port, "engine": self.engine_port})

    @property
    def port(self) -> int:
        return int(self.gateway_sock.getsockname()[1])

    @property
    def engine_port(self) -> int:
        return int(self.engine_sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def _listeners(self) -> list:
        return [(self.engine.app, self.engine_sock), (self.gateway.app, self.gateway_sock)]

    async def _background(self, exit_on_failure: bool = True) -> None:
        from controller.serve.asgi import log
        from controller.serve.gateway import start

        try:
            config = replace(engine_config(self.config), threads=self.threads)
        except Exception as exc:  # noqa: BLE001 - a run that cannot be served: not ready, exit
            self.engine.error = f"{type(exc).__name__}: {exc}"
        else:
            loader = self.engine.load_in_background(config)
            while loader.is_alive():
                await asyncio.sleep(0.05)
        if self.engine.error is not None:
            log("load-failed", error=self.engine.error)
            if exit_on_failure:
                os._exit(1)
            return
        await start(self.gateway)

    def serve(self) -> int:
        from controller.serve.asgi import serve

        return serve(self._listeners(), [self._background])

    def start(self) -> "Node":
        """In a background thread (tests, benchmarks); `stop()` ends it."""
        from controller.serve.asgi import InThread

        self._thread = InThread(self._listeners(), [lambda: self._background(exit_on_failure=False)])
        return self

    def stop(self) -> None:
        self._thread.stop()
        if self.engine.engine is not None:
            self.engine.engine.stop()


def run_forever(config: ServeConfig, gateway_file: str | None = None) -> int:
    """`ftops serve`: this process serves until SIGTERM. The engine loads its base unquantized, so
    bitsandbytes stays out of it (controller.importguard: 1.3 s of CPU off every server's start)."""
    from controller.importguard import without_bitsandbytes

    without_bitsandbytes()
    return Node(config, gateway_file).serve()
