"""The data step as the controller runs it: one call from (repo, revision, FineTune) to prepared
files, the review status and the DataReady condition.

Everything is read at the exact git revision: the dataset through its `.dvc` pointer (pulled and
verified by `controller.data.dvc`) or, for small datasets committed to git directly, the blob
itself; the reviews file from the same commit. The user's working copy is never read or written.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.status import Reason
from controller.data.params import DataParams, from_finetune
from controller.errors import PermanentError
from controller.source import GitSource

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
        return DataReady(False, Reason.LEAK_DETECTED, "test examples appear in train; see the manifest's leakCheck")
    if not review.ready:
        return DataReady(False, review.reason, review.message)
    c = manifest["counts"]
    return DataReady(True, Reason.DATA_READY, f"{c['train']} train / {c['test']} test examples, {review.message}")


def source_at(repo: str | Path, rev: str, params: DataParams, workdir: str | Path) -> Path:
    """The dataset file as pinned at `rev`, materialised under `<workdir>/sources/` (verified)."""
    return file_at(repo, rev, params.data_path, Path(workdir) / "sources" / params.spec_name, "spec.dataset.path")


def file_at(repo: str | Path, rev: str, rel: str, dest_dir: Path, field: str) -> Path:
    """A data file of the repo as pinned at `rev`: pulled through its `.dvc` pointer (verified by
    controller.data.dvc) or, committed to git directly, its blob; materialised under
    `<dest_dir>/<md5>/` by content, so two passes at one version share one copy. `field` names the
    spec field that points at it, for the error when neither is there."""
    from controller.data import dvc

    pointer_rel = rel + ".dvc"
    with GitSource(Path(repo).resolve()) as source:
        commit = source.resolve(rev)
        pointer = source.show(commit, pointer_rel)
        blob = source.show(commit, rel) if pointer is None else None
    name = Path(rel).name
    if pointer is not None:  # pull decodes it strictly and names a broken one
        md5 = dvc.parse_pointer(pointer.decode("utf-8", errors="replace"), pointer_rel).md5
        return dvc.pull(source.repo, commit, rel, dest_dir / md5 / name).path
    if blob is None:
        raise PermanentError(
            f"{field} {rel}: not in the repository at {commit[:12]} (neither the file nor {rel}.dvc); "
            "commit the file or version it with `ftops data version`"
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
    with GitSource(Path(repo).resolve()) as source:
        commit = source.resolve(rev)  # the dataset and its reviews from one commit, even if `rev` is a moving branch
        reviews_blob = source.show(commit, params.reviews_path)
    data = source_at(repo, commit, params, workdir)
    prepared = prepare(data, workdir, params, tokenizer=tokenizer, tokenizer_name=tokenizer_name)
    reviews = parse_reviews(reviews_blob.decode("utf-8"), params.reviews_path) if reviews_blob is not None else []
    hashes = [h for h in _kept_hashes(prepared)]
    status = review_status(hashes, reviews, params.review_sample_fraction, params.review_min_approval)
    from controller.data.raft import for_spec  # gold sources checked against the corpus; RAFT rendering

    prepared = for_spec(Path(repo), commit, finetune, data, prepared, Path(workdir))
    from controller.data import replay  # general conversations mixed into the training split

    prepared = replay.for_spec(Path(repo), commit, finetune, prepared, Path(workdir))
    return prepared, status, data_ready(prepared.manifest, status)


def _kept_hashes(prepared: "Prepared") -> list[str]:
    import orjson

    from controller.data.normalize import example_hash

    out = []
    for path in (prepared.train_path, prepared.test_path):
        for line in path.read_bytes().splitlines():
            out.append(example_hash(orjson.loads(line)))
    return out
