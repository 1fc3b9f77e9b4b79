"""The data step as the controller runs it: one call from (repo, revision, FineTune) to prepared
files, the review status and the DataReady condition.

Everything is read at the exact git revision: the dataset through its `.dvc` pointer (pulled and
verified by `controller.data.dvc`) or, for small datasets committed to git directly, the blob
itself; the reviews file from the same commit. The user's working copy is never read or written.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.data.params import DataParams, from_finetune
from controller.errors import PermanentError

if TYPE_CHECKING:
    from controller.data.prepare import Prepared
    from controller.data.review import ReviewStatus
    from controller.spec.finetune import FineTune


@dataclass(frozen=True)
class DataReady:
    """The DataReady condition: status, CamelCase reason, message for a person."""

    status: bool
    reason: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": "DataReady", "status": "True" if self.status else "False", "reason": self.reason, "message": self.message}


def data_ready(manifest: dict[str, Any], review: "ReviewStatus") -> DataReady:
    """Trainable size first (the seed's 200), then the expert review (10% at 95%)."""
    readiness = manifest["readiness"]
    if not readiness["trainable"]:
        return DataReady(False, readiness["reason"], readiness["message"])
    if not manifest["leakCheck"]["passed"]:
        return DataReady(False, "LeakDetected", "test examples appear in train; see the manifest's leakCheck")
    if not review.ready:
        return DataReady(False, review.reason, review.message)
    c = manifest["counts"]
    return DataReady(True, "DataReady", f"{c['train']} train / {c['test']} test examples, {review.message}")


def _git_blob(repo: Path, rev: str, rel: str) -> bytes | None:
    proc = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=repo, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def source_at(repo: str | Path, rev: str, params: DataParams, workdir: str | Path) -> Path:
    """The dataset file as pinned at `rev`, materialised under `<workdir>/sources/` (verified)."""
    from controller.data import dvc

    root = Path(repo).resolve()
    sha = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root, capture_output=True, text=True)
    if sha.returncode != 0:
        raise PermanentError(f"{root}: revision {rev!r} does not exist")
    commit = sha.stdout.strip()
    dest_dir = Path(workdir) / "sources" / params.spec_name
    name = Path(params.data_path).name
    if _git_blob(root, commit, params.data_path + ".dvc") is not None:
        pointer = dvc.parse_pointer(_git_blob(root, commit, params.data_path + ".dvc").decode("utf-8"), params.data_path + ".dvc")
        return dvc.pull(root, commit, params.data_path, dest_dir / pointer.md5 / name).path
    blob = _git_blob(root, commit, params.data_path)
    if blob is None:
        raise PermanentError(
            f"{params.data_path}: not in the repository at {commit[:12]} (neither the file nor {params.data_path}.dvc); "
            "commit the dataset or version it with `ftops data version`"
        )
    import hashlib

    dest = dest_dir / hashlib.md5(blob).hexdigest() / name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, dest)
    return dest


def prepare_spec(
    repo: str | Path,
    rev: str,
    finetune: "FineTune",
    workdir: str | Path,
    tokenizer=None,
    tokenizer_name: str | None = None,
) -> tuple["Prepared", "ReviewStatus", DataReady]:
    """Prepare the spec's dataset at `rev`, read its reviews at `rev`, and decide DataReady.
    Raises PermanentError (bad data, bad pointer) or TemporaryError (remote down)."""
    from controller.data.prepare import prepare
    from controller.data.review import parse_reviews, review_status

    params = from_finetune(finetune)
    source = source_at(repo, rev, params, workdir)
    prepared = prepare(source, workdir, params, tokenizer=tokenizer, tokenizer_name=tokenizer_name)
    blob = _git_blob(Path(repo).resolve(), rev, params.reviews_path)
    reviews = parse_reviews(blob.decode("utf-8"), params.reviews_path) if blob is not None else []
    hashes = [h for h in _kept_hashes(prepared)]
    status = review_status(hashes, reviews, params.review_sample_fraction, params.review_min_approval)
    return prepared, status, data_ready(prepared.manifest, status)


def _kept_hashes(prepared: "Prepared") -> list[str]:
    import orjson

    from controller.data.normalize import example_hash

    out = []
    for path in (prepared.train_path, prepared.test_path):
        for line in path.read_bytes().splitlines():
            out.append(example_hash(orjson.loads(line)))
    return out
