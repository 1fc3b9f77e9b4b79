"""The artifact store (controller.seams.ArtifactStore) on fsspec: a local directory on one
machine, object storage (`s3://`, `gs://`, `az://`, through the fsspec driver for each) in a
cluster. One implementation for all of them, so the local path exercises the same code a
cluster runs.

A local `put` writes a temporary file and renames it (a reader never sees half a file);
object stores replace an object whole by themselves. Reads of a run's files are checked against
its manifest (`get_verified`, `fetch`).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, cast

from controller.errors import PermanentError, TemporaryError
from controller.seams.store import MANIFEST, ManifestError, RunManifest


class FsspecStore:
    """An ArtifactStore rooted at `root` (a path or a URL fsspec understands)."""

    def __init__(self, root: str, storage_options: dict[str, str] | None = None) -> None:
        from fsspec.core import url_to_fs

        try:
            self.fs, self._root = url_to_fs(root, **(storage_options or {}))
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
        except OSError as exc:
            raise TemporaryError(f"artifact store {self.root}: {exc}") from None

    def get(self, uri: str) -> bytes:
        try:
            return cast(bytes, self.fs.cat_file(self._path(uri)))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise TemporaryError(f"artifact store: reading {uri}: {exc}") from None

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
        except OSError as exc:
            raise TemporaryError(f"artifact store: writing {uri}: {exc}") from None

    def open(self, uri: str) -> AbstractContextManager[BinaryIO]:
        return cast(AbstractContextManager[BinaryIO], self.fs.open(self._path(uri), "rb"))

    def list(self, uri: str) -> list[str]:
        base = self._path(uri).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TemporaryError(f"artifact store: listing {uri}: {exc}") from None
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


def _sha256(path: Path) -> str:
    from controller.fsutil import sha256_file

    return sha256_file(path)


def open_store(uri: str, storage_options: dict[str, str] | None = None) -> FsspecStore:
    """The artifact store at `uri`: a directory path, or an object-store URL."""
    return FsspecStore(uri, storage_options)


__all__ = ["FsspecStore", "open_store"]
