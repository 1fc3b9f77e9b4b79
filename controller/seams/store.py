"""The ArtifactStore seam: one place per run, `<store>/<spec>/<run-id>/`, addressed by URI.

A local directory on one machine, object storage (`s3://`, `gs://`, `az://`) in a cluster. It
holds the adapter or model (safetensors), `manifest.json` (sha256 of every file plus
provenance), `metrics.jsonl` and the evaluation report. A run without a manifest is not
finished, and every read of a run's file is checked against the manifest: a store that hands
back other bytes than the trainer wrote is an error, never a model that silently serves.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping, Protocol, runtime_checkable

from controller.errors import PermanentError
from controller.seams.json import JsonObject

MANIFEST = "manifest.json"


class ManifestError(PermanentError):
    """A manifest that is missing its fields, or a file that does not match it."""


@dataclass(frozen=True)
class RunManifest:
    """A finished run's manifest: which files it has and their sha256, and where it came from."""

    run_id: str
    files: Mapping[str, str]
    """Relative path -> sha256 of every file the run wrote (and the evaluation added)."""
    data: JsonObject
    """The whole manifest as written (provenance, evaluation, chat template...)."""
    sha256: str
    """Of the manifest file's bytes: what the ledger records as the run's identity on disk."""

    @classmethod
    def parse(cls, raw: bytes, where: str) -> "RunManifest":
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{where}: not valid JSON ({exc}); the run's manifest is damaged") from None
        if not isinstance(data, dict) or not isinstance(data.get("runId"), str) or not isinstance(data.get("files"), dict):
            raise ManifestError(f"{where}: not a run manifest (needs runId and files)")
        files: dict[str, str] = {}
        for rel, entry in data["files"].items():
            sha = entry.get("sha256") if isinstance(entry, dict) else entry
            if not isinstance(sha, str) or len(sha) != 64:
                raise ManifestError(f"{where}: files.{rel} has no sha256")
            files[rel] = sha
        return cls(data["runId"], files, data, hashlib.sha256(raw).hexdigest())

    def verify(self, rel: str, content: bytes, where: str) -> bytes:
        """`content` if it is what the manifest records for `rel`; ManifestError otherwise."""
        expected = self.files.get(rel)
        if expected is None:
            raise ManifestError(f"{where}: {rel} is not in run {self.run_id}'s manifest")
        actual = hashlib.sha256(content).hexdigest()
        if actual != expected:
            raise ManifestError(f"{where}: sha256 {actual[:12]}… of {rel} is not {expected[:12]}… recorded in run "
                                f"{self.run_id}'s manifest; the artifact changed after training")
        return content


@runtime_checkable
class ArtifactStore(Protocol):
    """Files by URI. `put` replaces a file whole (readers never see half of one)."""

    root: str
    """The store's own URI (a directory path, or s3://bucket/prefix)."""

    def run_uri(self, spec: str, run_id: str) -> str:
        """Where a run's files live: `<root>/<spec>/<run-id>`."""
        ...

    def join(self, uri: str, rel: str) -> str:
        ...

    def exists(self, uri: str) -> bool:
        ...

    def get(self, uri: str) -> bytes:
        """The file's bytes; FileNotFoundError when it does not exist."""
        ...

    def put(self, uri: str, data: bytes) -> None:
        ...

    def open(self, uri: str) -> AbstractContextManager[BinaryIO]:
        """A readable binary stream (for large files)."""
        ...

    def list(self, uri: str) -> list[str]:
        """Every file under `uri`, as paths relative to it, sorted."""
        ...

    def local_dir(self, uri: str) -> Path | None:
        """The directory on this machine that holds `uri`, for a local store; None otherwise."""
        ...

    def manifest(self, run_uri: str) -> RunManifest | None:
        """The run's manifest, or None while the run is not finished."""
        ...

    def get_verified(self, run_uri: str, rel: str, manifest: RunManifest) -> bytes:
        """A run's file, checked against its manifest (ManifestError when it does not match)."""
        ...

    def fetch(self, run_uri: str, dest: Path, manifest: RunManifest) -> Path:
        """Every file of the manifest under `dest`, verified; files already there and matching
        are not fetched again. Returns `dest`."""
        ...
