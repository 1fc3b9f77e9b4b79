"""The artifact store (controller.seams.ArtifactStore) on fsspec: a local directory on one
machine, object storage (`s3://`, `gs://`, `az://`, through the fsspec driver for each) in a
cluster. One implementation for all of them, so the local path exercises the same code a
cluster runs.

A local `put` writes a temporary file and renames it (a reader never sees half a file);
object stores replace an object whole by themselves. Reads of a run's files are checked against
its manifest (`get_verified`, `fetch`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping, cast

from controller.errors import PermanentError, TemporaryError
from controller.seams.store import MANIFEST, ArtifactStore, ManifestError, RunManifest

INPUTS = "inputs"
"""`<store>/inputs/<sha256>/`: content-addressed bundles the controller publishes for pods."""


class FsspecStore:
    """An ArtifactStore rooted at `root` (a path or a URL fsspec understands)."""

    def __init__(self, root: str, storage_options: Mapping[str, object] | None = None) -> None:
        from fsspec.core import url_to_fs

        try:
            self.fs, self._root = url_to_fs(root, **_driver_options(root, storage_options))
        except (ImportError, ValueError) as exc:
            scheme = root.split("://", 1)[0]
            raise PermanentError(f"artifact store {root!r}: no driver for {scheme}:// ({exc}); install the fsspec "
                                 f"driver for it (s3fs, gcsfs, adlfs)") from None
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.root = str(Path(self._root).resolve()) if self.local else root.rstrip("/")

    # -- addressing

    def run_uri(self, spec: str, run_id: str) -> str:
        return self.join(self.join(self.root, spec), run_id)

    def join(self, uri: str, rel: str) -> str:
        return f"{uri.rstrip('/')}/{rel.lstrip('/')}"

    def _path(self, uri: str) -> str:
        if self.local:
            return str(Path(uri))
        return uri

    def local_dir(self, uri: str) -> Path | None:
        return Path(uri) if self.local else None

    # -- files

    def exists(self, uri: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(uri)))
        except _driver_errors() as exc:  # the store is away (or refuses us)
            raise _unavailable(self.root, "checking", uri, exc) from None

    def get(self, uri: str) -> bytes:
        try:
            return cast(bytes, self.fs.cat_file(self._path(uri)))
        except FileNotFoundError:
            raise
        except _driver_errors() as exc:
            raise _unavailable(self.root, "reading", uri, exc) from None

    def put(self, uri: str, data: bytes) -> None:
        path = self._path(uri)
        try:
            if self.local:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            else:
                self.fs.pipe_file(path, data)
        except _driver_errors() as exc:
            raise _unavailable(self.root, "writing", uri, exc) from None

    def open(self, uri: str) -> AbstractContextManager[BinaryIO]:
        return cast(AbstractContextManager[BinaryIO], self.fs.open(self._path(uri), "rb"))

    def list(self, uri: str) -> list[str]:
        base = self._path(uri).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        except _driver_errors() as exc:
            raise _unavailable(self.root, "listing", uri, exc) from None
        prefix = (base if self.local else self.fs._strip_protocol(base)).rstrip("/") + "/"
        return sorted(str(p)[len(prefix):] for p in found if str(p).startswith(prefix))

    # -- a run's files, verified

    def manifest(self, run_uri: str) -> RunManifest | None:
        uri = self.join(run_uri, MANIFEST)
        try:
            raw = self.get(uri)
        except FileNotFoundError:
            return None
        return RunManifest.parse(raw, uri)

    def get_verified(self, run_uri: str, rel: str, manifest: RunManifest) -> bytes:
        uri = self.join(run_uri, rel)
        if rel not in manifest.files:
            raise ManifestError(f"{uri}: {rel} is not in run {manifest.run_id}'s manifest")
        try:
            return manifest.verify(rel, self.get(uri), uri)
        except FileNotFoundError:
            raise ManifestError(f"{uri}: missing, though run {manifest.run_id}'s manifest lists it") from None

    def fetch(self, run_uri: str, dest: Path, manifest: RunManifest) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        for rel, sha in sorted(manifest.files.items()):
            target = dest / rel
            if target.is_file() and _sha256(target) == sha:
                continue
            data = self.get_verified(run_uri, rel, manifest)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        (dest / MANIFEST).write_bytes(self.get(self.join(run_uri, MANIFEST)))
        return dest


def read_run_manifest(run_dir: Path, then: str) -> dict:
    """The manifest of the finished run in the local directory `run_dir`, as written. The trainer
    writes it last, so a run without one is not finished: the evaluator and the server both refuse
    such a run, and `then` tells the user what to do instead. A damaged manifest is named with its
    line. The files it lists are checked by whoever loads them."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise PermanentError(f"{run_dir}: no {MANIFEST}, so this run is not finished (the trainer writes it last); {then}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(path)
        raise PermanentError(f"{where}: not valid JSON ({exc}); the run's manifest is damaged") from None
    if not isinstance(manifest, dict) or not manifest.get("runId") or not isinstance(manifest.get("provenance"), dict):
        raise PermanentError(f"{path}: not a run manifest (needs runId and provenance)")
    return manifest


def _sha256(path: Path) -> str:
    from controller.fsutil import sha256_file

    return sha256_file(path)


def _driver_errors() -> tuple[type[Exception], ...]:
    """What a driver raises when the store cannot answer: OSError (fsspec's own and s3fs's
    translations), and the AWS SDK's connection and client errors it lets through."""
    errors: list[type[Exception]] = [OSError, TimeoutError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:
        pass
    return tuple(errors)


def _unavailable(root: str, doing: str, uri: str, exc: Exception) -> Exception:
    """A driver error as the reconciler needs it: the store is away (TemporaryError: back off,
    delete nothing), or a permission problem only the operator can fix (PermanentError)."""
    if isinstance(exc, PermissionError):
        return PermanentError(f"artifact store {root}: {doing} {uri}: access denied ({exc}); check the store "
                              "credentials (cluster.artifactStore.credentials in the operator config)")
    return TemporaryError(f"artifact store {root}: {doing} {uri}: {type(exc).__name__}: {exc}")


def _driver_options(root: str, options: Mapping[str, object] | None) -> dict[str, object]:
    """Options for the fsspec driver. For s3:// listings are never cached (a manifest that appears
    must be seen on the next pass) and the SDK gives up quickly: a store that is down is a
    TemporaryError the reconciler backs off on, not a pass that hangs in retries. Endpoint and
    credentials come from the SDK's own environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...,
    which the chart and the rendered pods fill from Secrets) or from `options`."""
    merged: dict[str, object] = dict(options or {})
    if root.startswith(("s3://", "s3a://")):
        merged.setdefault("config_kwargs", {"connect_timeout": 3, "read_timeout": 30,
                                            "retries": {"max_attempts": 2, "mode": "standard"}})
        merged.setdefault("use_listings_cache", False)
        merged.setdefault("skip_instance_cache", True)
    return merged


def open_store(uri: str, storage_options: Mapping[str, object] | None = None) -> FsspecStore:
    """The artifact store at `uri`: a directory path, or an object-store URL."""
    return FsspecStore(uri, storage_options)


def store_options(endpoint_url: str = "", region: str = "") -> dict[str, object]:
    """Driver options from the operator config's cluster.artifactStore (endpoint, region)."""
    client: dict[str, str] = {}
    if endpoint_url:
        client["endpoint_url"] = endpoint_url
    if region:
        client["region_name"] = region
    return {"client_kwargs": client} if client else {}


# ----------------------------------------------------------------------------- bundles for pods


def bundle_manifest(files: Mapping[str, str]) -> tuple[str, bytes]:
    """(key, manifest bytes) of a bundle holding `files` (relative path -> sha256). The key is
    the sha256 of the sorted listing, so the same content always lands at the same URI and a
    bundle is uploaded once, whoever publishes it."""
    listing = json.dumps(sorted(files.items()), separators=(",", ":")).encode()
    key = hashlib.sha256(listing).hexdigest()[:32]
    manifest = {"runId": key, "kind": "InputBundle", "files": {rel: {"sha256": sha} for rel, sha in sorted(files.items())}}
    return key, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def _walk_files(src: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_file() and not path.is_symlink() and not any(part.startswith(".git") for part in rel.split("/")):
            yield rel, path


def publish(store: ArtifactStore, files: Mapping[str, Path]) -> str:
    """Upload `files` (relative path -> local file) as a content-addressed bundle and return
    its URI. The manifest goes last, so a bundle whose manifest exists is complete; one already
    published is not uploaded again."""
    sums = {rel: _sha256(path) for rel, path in files.items()}
    key, manifest = bundle_manifest(sums)
    uri = store.join(store.join(store.root, INPUTS), key)
    if store.exists(store.join(uri, MANIFEST)):
        return uri
    for rel, path in sorted(files.items()):
        store.put(store.join(uri, rel), path.read_bytes())
    store.put(store.join(uri, MANIFEST), manifest)
    return uri


def publish_dir(store: ArtifactStore, src: Path) -> str:
    """A directory (without .git) as a bundle: see `publish`."""
    return publish(store, dict(_walk_files(src)))


def upload_dir(store: ArtifactStore, src: Path, uri: str) -> RunManifest:
    """Upload a finished run directory to `uri`, manifest.json last: a run whose manifest is in
    the store is finished, so no reader ever sees a manifest before the files it lists. Every
    file the manifest lists must be there with its sha256 (checked before anything is uploaded)."""
    raw = (src / MANIFEST).read_bytes()
    manifest = RunManifest.parse(raw, str(src / MANIFEST))
    for rel in manifest.files:
        manifest.verify(rel, (src / rel).read_bytes(), str(src / rel))
    for rel, path in _walk_files(src):
        if rel != MANIFEST:
            store.put(store.join(uri, rel), path.read_bytes())
    store.put(store.join(uri, MANIFEST), raw)
    return manifest


def fetch_bundle(store: ArtifactStore, uri: str, dest: Path) -> Path:
    """A published bundle (or a run) into `dest`, every file verified against its manifest."""
    manifest = store.manifest(uri)
    if manifest is None:
        raise TemporaryError(f"{uri}: no manifest.json; the bundle is not published (yet)")
    return store.fetch(uri, dest, manifest)


__all__ = ["FsspecStore", "bundle_manifest", "fetch_bundle", "open_store", "publish", "publish_dir", "store_options",
           "upload_dir"]

