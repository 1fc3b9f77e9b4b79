"""`python -m controller.podinputs`: a pod's init container materialises what the pod reads.

Pods need neither git nor DVC: the controller pulls the data (DVC), prepares and verifies the
split, and publishes it, with the repository files an evaluation or a server reads, as
content-addressed bundles in the artifact store (controller.artifacts.publish). This step
fetches each bundle into the pod's own volume, every file checked against the bundle's
manifest, and materialises the base model into the model cache:

* `hf://org/name` at the pinned revision (huggingface_hub; HF_TOKEN from a Secret, HF_ENDPOINT
  for a mirror), `s3://...` (or any fsspec URL; a bundle is verified against its manifest), or a
  directory path;
* into `<cache>/<model_cache_key(uri, revision)>/`, written under a temporary name and renamed
  when complete, with `.ftops-model.json` listing every file's sha256 and size. The cache is a
  claim shared by the namespace's pods, mounted read-only by the trainer, the evaluator and the
  server: a model is downloaded once per cache, never per retry or preemption. A directory that
  is there but whose files do not have the recorded sizes is discarded and fetched again.

Everything arrives as environment variables (never spliced into a shell):
FTOPS_INPUTS (JSON list of [uri, dest]), FTOPS_BASE_MODEL (JSON {uri, revision, cache}).
Exit codes: 0 done, 75 the store or hub is away (the pod is retried), 78 a file that does not
match its manifest, or a model that cannot be found at that revision.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from controller import exitcodes
from controller.errors import PermanentError, TemporaryError
from controller.render.names import model_cache_key

INPUTS_ENV = "FTOPS_INPUTS"
MODEL_ENV = "FTOPS_BASE_MODEL"
MARKER = ".ftops-model.json"


def _log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def fetch_inputs(pairs: list[tuple[str, str]]) -> None:
    from controller.artifacts import fetch_bundle, open_store

    for uri, dest in pairs:
        fetch_bundle(open_store(uri), uri, Path(dest))
        _log("fetched", uri=uri, dest=dest)


def _listing(root: Path) -> dict[str, dict[str, object]]:
    from controller.fsutil import sha256_file

    return {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER}


def cached(target: Path) -> bool:
    """The cache entry is complete: its marker is there and every file it lists has its size."""
    try:
        files = json.loads((target / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((target / rel).is_file() and (target / rel).stat().st_size == entry["size"] for rel, entry in files.items())


def _download(uri: str, revision: str | None, dest: Path) -> None:
    if uri.startswith("hf://"):
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
        except ImportError as exc:  # pragma: no cover - huggingface_hub ships with transformers
            raise PermanentError(f"{uri}: huggingface_hub is not installed ({exc})") from None
        try:
            snapshot_download(uri[len("hf://"):], revision=revision, local_dir=str(dest),
                              token=os.environ.get("HF_TOKEN") or None)
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise PermanentError(f"{uri}@{revision}: {exc}") from None
        except (HfHubHTTPError, OSError) as exc:
            raise TemporaryError(f"{uri}@{revision}: the hub did not answer: {exc}") from None
        return
    if "://" in uri:
        from controller.artifacts import fetch_bundle, open_store

        store = open_store(uri)
        if store.manifest(uri) is not None:  # a bundle the controller published: verified file by file
            fetch_bundle(store, uri, dest)
            return
        files = store.list(uri)
        if not files:
            raise PermanentError(f"{uri}: no files there; check spec.baseModel.uri")
        for rel in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get(store.join(uri, rel)))
        return
    src = Path(uri)
    if not src.is_dir():
        raise PermanentError(f"{uri}: not a directory; check spec.baseModel.uri")
    shutil.copytree(src, dest, dirs_exist_ok=True)


def materialise(uri: str, revision: str | None, cache: Path) -> Path:
    """The base model's directory in the cache, downloading it only when it is not there."""
    target = cache / model_cache_key(uri, revision)
    if cached(target):
        _log("model", uri=uri, revision=revision, path=str(target), cached=True)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _download(uri, revision, tmp)
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        (tmp / MARKER).write_text(json.dumps({"uri": uri, "revision": revision, "files": _listing(tmp)}, indent=2,
                                             sort_keys=True))
        if target.exists() and not cached(target):
            shutil.rmtree(target)  # a damaged or half-written entry from before: replaced
        try:
            os.rename(tmp, target)
        except OSError:
            if not cached(target):  # another pod finished first (fine) -- or something else is wrong
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log("model", uri=uri, revision=revision, path=str(target), cached=False)
    return target


def main(argv: list[str] | None = None) -> int:
    try:
        pairs = [(str(u), str(d)) for u, d in json.loads(os.environ.get(INPUTS_ENV) or "[]")]
        model = json.loads(os.environ.get(MODEL_ENV) or "null")
    except (ValueError, TypeError) as exc:
        print(f"error: ${INPUTS_ENV} / ${MODEL_ENV} are not the JSON the controller renders: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    try:
        fetch_inputs(pairs)
        if model:
            materialise(str(model["uri"]), model.get("revision"), Path(model["cache"]))
    except PermanentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    except TemporaryError as exc:
        print(f"error (temporary): {exc}", file=sys.stderr)
        return exitcodes.TEMPORARY
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
