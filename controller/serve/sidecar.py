"""The adapter sidecar: keeps one engine replica's LoRA adapters equal to the desired set.

Why a sidecar (vllm-project/vllm#12174): `/v1/load_lora_adapter` reaches the one replica that
receives the call and is forgotten when that replica restarts, so loading by API from the
controller leaves a scaled-up or restarted replica without the adapters its routes need. As in
the Kubernetes Gateway API inference extension's dynamic-LoRA sidecar, each engine pod runs this
loop beside the engine: it reads the desired adapter set (`adapters.json` in the artifact store,
written by the deployer: `{"adapters": {name: run uri}}`), fetches each missing adapter from the
store (every file verified against the run's manifest) into a folder the engine can read, loads
it through the engine's own API, and unloads what is no longer desired. Level-triggered: every
pass compares what the engine reports (`/v1/models`) with what is desired, so a restarted
engine is refilled on the next pass.

The gateway routes a request only to replicas whose `/v1/models` lists its adapter, so a replica
that is still catching up is never asked for an adapter it does not hold. The pod is also kept
out of its Service until it caught up: after each pass the sidecar writes `<cache>/.synced` when
every desired adapter was loaded (or failed to load: one broken adapter must not take the pool's
other adapters off every replica) and removes it otherwise; its readiness probe checks that file
(controller.render.vllm), so a restarted or added replica joins only with its adapters, and a
rolling update of the pool never trades a replica holding them for one that does not.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from controller.clock import SYSTEM_CLOCK, Clock
from controller.seams import ArtifactStore
from controller.serve.asgi import log
from controller.serve.engine_client import EngineClient, EngineError


@dataclass
class SyncReport:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def desired_set(store: ArtifactStore, uri: str) -> dict[str, str]:
    """name -> run uri; an absent file is the empty set."""
    try:
        data = json.loads(store.get(uri))
    except FileNotFoundError:
        return {}
    adapters = data.get("adapters") if isinstance(data, dict) else None
    if not isinstance(adapters, dict):
        raise ValueError(f"{uri}: 'adapters' must map adapter names to run URIs")
    return {str(k): str(v) for k, v in adapters.items()}


def write_desired_set(store: ArtifactStore, uri: str, adapters: dict[str, str]) -> None:
    store.put(uri, (json.dumps({"adapters": dict(sorted(adapters.items()))}, indent=2) + "\n").encode())


SYNCED = ".synced"
"""Written into the cache folder while the engine holds every desired adapter (readiness; the
same name as controller.render.vllm.SYNCED, which the probe checks)."""


class AdapterSidecar:
    def __init__(self, store: ArtifactStore, desired_uri: str, engine: EngineClient, cache_dir: str | Path,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.store, self.desired_uri, self.engine = store, desired_uri, engine
        self.cache_dir = Path(cache_dir)
        self.clock = clock
        self.in_sync = False
        """After the last pass: every desired adapter is loaded (or failed to load)."""

    def _fetch(self, name: str, run_uri: str) -> Path:
        """The run's files on this machine, verified (a local store's own folder is used as it is)."""
        manifest = self.store.manifest(run_uri)
        if manifest is None:
            raise FileNotFoundError(f"{run_uri} has no manifest: the run is not finished")
        local = self.store.local_dir(run_uri)
        if local is not None:
            return local
        return self.store.fetch(run_uri, self.cache_dir / name, manifest)

    async def sync_once(self) -> SyncReport:
        report = SyncReport()
        desired = await asyncio.to_thread(desired_set, self.store, self.desired_uri)
        cards = await self.engine.models()
        loaded = {c.id for c in cards if c.parent is not None}
        for name in sorted(set(desired) - loaded):
            try:
                path = await asyncio.to_thread(self._fetch, name, desired[name])
                await self.engine.load_adapter(name, str(path / "model"))
                report.loaded.append(name)
            except Exception as exc:  # noqa: BLE001 - one broken adapter (files that do not match its
                # manifest: ManifestError; refused by the engine) must not stop the others' sync
                report.failed[name] = f"{type(exc).__name__}: {exc}"
        for name in sorted(loaded - set(desired)):
            try:
                await self.engine.unload_adapter(name)
                report.unloaded.append(name)
            except EngineError as exc:
                report.failed[name] = f"{type(exc).__name__}: {exc}"
        self.in_sync = set(desired) <= loaded | set(report.loaded) | set(report.failed)
        return report

    def _mark(self, synced: bool) -> None:
        marker = self.cache_dir / SYNCED
        try:
            if synced:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                marker.write_text("ok\n")
            else:
                marker.unlink(missing_ok=True)
        except OSError as exc:
            log("adapters-marker-failed", error=f"{type(exc).__name__}: {exc}")

    async def run(self, interval: float = 5.0) -> None:
        self._mark(False)  # a restarted sidecar (the emptyDir outlives it) has not synced yet
        while True:
            try:
                report = await self.sync_once()
                if report.loaded or report.unloaded or report.failed:
                    log("adapters-synced", loaded=report.loaded, unloaded=report.unloaded, failed=report.failed)
            except Exception as exc:  # noqa: BLE001 - the engine is still starting, the store is down, a bad
                # desired set: the loop goes on (a dead sidecar would leave the replica unsynced for good)
                self.in_sync = False
                log("adapters-sync-failed", error=f"{type(exc).__name__}: {exc}")
            self._mark(self.in_sync)
            await asyncio.to_thread(self.clock.sleep, interval)


def run_sidecar(store_uri: str, desired_uri: str, engine_url: str, cache_dir: str, interval: float) -> int:
    """`ftops serve sidecar`: sync until SIGTERM."""
    import signal

    from controller.artifacts import open_store

    sidecar = AdapterSidecar(open_store(store_uri), desired_uri, EngineClient(engine_url), cache_dir)

    async def main() -> None:
        task = asyncio.create_task(sidecar.run(interval))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    return 0
