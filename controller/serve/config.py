"""What one server process serves: the run, the corpus and the limits (serve.json).

The same shape is rendered into the serving ConfigMap by controller.render (keys runId, specName,
adapter, baseModel, corpus, retriever, topK, maxTokens, port) and written by the local deploy
step, so the process is started the same way on both backends: `ftops serve --config serve.json`.
`adapter` is the run directory (the one holding manifest.json and model/).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from controller.errors import PermanentError


@dataclass(frozen=True)
class ServeConfig:
    run_dir: str
    model_name: str
    corpus_dir: str | None = None
    retriever: str = "bm25"
    top_k: int = 4
    max_tokens: int = 256
    base_uri: str | None = None
    base_revision: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    index_cache: str | None = None
    endpoint_file: str | None = None
    """Written (port, pid) once the socket listens: how a manager learns a port chosen by the OS."""
    corpus_poll_seconds: float = 0
    """Re-check the corpus version this often and swap in a new index when it changed (0: only on SIGHUP)."""
    run_id: str | None = None
    serving_config_sha256: str | None = None
    """The serving configuration this is (controller.identity.serving_config): its run's report must
    have evaluated the same one for it to be promoted or rolled back to."""

    def to_json(self) -> dict:
        return {
            "runId": self.run_id, "specName": self.model_name, "adapter": self.run_dir,
            "baseModel": {"uri": self.base_uri, "revision": self.base_revision} if self.base_uri else None,
            "corpus": self.corpus_dir, "retriever": self.retriever, "topK": self.top_k, "maxTokens": self.max_tokens,
            "host": self.host, "port": self.port, "device": self.device, "indexCache": self.index_cache,
            "endpointFile": self.endpoint_file, "corpusPollSeconds": self.corpus_poll_seconds,
            "servingConfigSha256": self.serving_config_sha256,
        }

    def replace(self, **changes) -> "ServeConfig":
        return ServeConfig(**{**asdict(self), **changes})


def from_json(data: dict, base: Path | None = None) -> ServeConfig:
    """serve.json -> ServeConfig. Relative corpus paths resolve against `base` (the repo)."""
    try:
        base_model = data.get("baseModel") or {}
        corpus = data.get("corpus")
        if corpus and base is not None and not Path(corpus).is_absolute():
            corpus = str(base / corpus)
        uri = base_model.get("uri")
        # A hub id in serve.json (the spec's) is only used when the run's manifest does not say where
        # the base is on this machine; local absolute dirs are used as given.
        return ServeConfig(
            run_dir=data["adapter"], model_name=data["specName"], corpus_dir=corpus,
            retriever=data.get("retriever", "bm25"), top_k=int(data.get("topK", 4)),
            max_tokens=int(data.get("maxTokens", 256)), base_uri=uri if uri and not uri.startswith("hf://") else None,
            base_revision=base_model.get("revision"), host=data.get("host", "127.0.0.1"), port=int(data.get("port", 8000)),
            device=data.get("device", "cpu"), index_cache=data.get("indexCache"), endpoint_file=data.get("endpointFile"),
            corpus_poll_seconds=float(data.get("corpusPollSeconds", 0) or 0), run_id=data.get("runId"),
            serving_config_sha256=data.get("servingConfigSha256"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError(f"serve config: missing or invalid field ({type(exc).__name__}: {exc})") from None


def load_config(path: str | Path, base: Path | None = None) -> ServeConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PermanentError(f"{path}: serve config not found") from None
    except json.JSONDecodeError as exc:
        raise PermanentError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    return from_json(data, base)


def write_config(config: ServeConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
