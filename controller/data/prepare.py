"""`ftops data prepare`: from a chat JSONL file to a checked, cleaned, split dataset.

    <workdir>/prepared/<spec>/<data-md5>/train.jsonl   examples the trainer may see
                                         test.jsonl    held out, never trained on
                                         manifest.json counts, hashes, what was dropped and why,
                                                       near-duplicate clusters, leak check, readiness

The source file is only read. Any structural error stops the pass (every error in training data
becomes a learned behaviour) with the list of problems by line. The output is a pure function of
the source bytes and the parameters; writing it again with the same inputs changes no file, and
a changed output replaces each file atomically (manifest last), so a reader never sees a mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.status import Reason
from controller.data import dedupe
from controller.data.check import ERROR_KINDS, ScanResult, scan_bytes
from controller.data.normalize import NORMALIZATION_VERSION
from controller.data.params import DataParams
from controller.data.split import check_leaks, deterministic_split, require_no_leaks
from controller.errors import PermanentError

MANIFEST_KIND = "PreparedData"
PREPARE_VERSION = "1"
"""Bump when the output for the same input and parameters changes."""


class DataInvalid(PermanentError):
    """The source has structural errors; the message lists them by line."""


@dataclass(frozen=True)
class Readiness:
    """The size thresholds from the seed: DataReady is false below `min_examples`."""

    trainable: bool
    reason: str  # CamelCase, for the DataReady condition
    message: str
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"trainable": self.trainable, "reason": self.reason, "message": self.message, "warnings": list(self.warnings)}


def size_readiness(n: int, params: DataParams) -> Readiness:
    warnings = []
    if n < params.warn_examples:
        warnings.append(f"{n} examples after cleaning: {params.warn_examples}-1,000 are needed for reliable results")
    if params.complexity == "complex" and n < params.complex_examples:
        warnings.append(f"{n} examples after cleaning: complex tasks need {params.complex_examples}+ (spec.dataset.complexity is complex)")
    if n < params.min_examples:
        return Readiness(
            False,
            Reason.TOO_FEW_EXAMPLES,
            f"{n} examples after cleaning, fewer than the {params.min_examples} required (spec.dataset.minExamples); "
            "add examples (duplicates do not count) before training",
            tuple(warnings),
        )
    return Readiness(True, Reason.ENOUGH_EXAMPLES, f"{n} examples after cleaning", tuple(warnings))


@dataclass
class Prepared:
    dir: Path
    manifest: dict[str, Any]

    @property
    def train_path(self) -> Path:
        return self.dir / "train.jsonl"

    @property
    def test_path(self) -> Path:
        return self.dir / "test.jsonl"

    @property
    def trainable(self) -> bool:
        return bool(self.manifest["readiness"]["trainable"])


def prepared_dir(workdir: str | Path, spec_name: str, md5: str) -> Path:
    return Path(workdir) / "prepared" / spec_name / md5


def invalid_message(scan: ScanResult, limit: int = 20) -> str:
    errors = scan.errors
    counts = {k: v for k, v in scan.counts().items() if v and k in ERROR_KINDS}
    lines = [e.format(scan.path) for e in errors[:limit]]
    more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
    return (
        f"{scan.path}: {len(errors)} error(s) in the data ({', '.join(f'{k}: {v}' for k, v in counts.items())}); "
        "nothing was prepared. Fix these lines (see `ftops data check`):\n  " + "\n  ".join(lines) + more
    )


def prepare(
    source: str | Path,
    workdir: str | Path,
    params: DataParams,
    tokenizer=None,
    tokenizer_name: str | None = None,
    progress: bool = False,
    scan: ScanResult | None = None,
) -> Prepared:
    """Check, normalise, dedupe, split, leak-check and write. `tokenizer` (optional) counts tokens
    with the base model's chat template; otherwise counts are estimates and say so."""
    if scan is None:
        # The controller calls this on every pass: when the same bytes were already prepared with
        # the same settings (and the files still match their hashes), reuse them without a rescan.
        data = _read_source(source)
        cached = _reusable(prepared_dir(workdir, params.spec_name, hashlib.md5(data).hexdigest()), params, _token_method(tokenizer, tokenizer_name))
        if cached is not None:
            return cached
        scan = scan_bytes(data, str(source), progress=progress)
    from controller.data.progress import gc_paused

    with gc_paused():
        manifest, files = analyse(scan, params, tokenizer, tokenizer_name, progress)
    out = prepared_dir(workdir, params.spec_name, scan.md5)
    _write(out, files)
    return Prepared(out, manifest)


def _read_source(source: str | Path) -> bytes:
    p = Path(source)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise PermanentError(f"{p}: no such file; check the dataset path (spec.dataset.path) or pull it with `ftops data pull`") from None
    except IsADirectoryError:
        raise PermanentError(f"{p}: is a directory; spec.dataset.path must name one chat JSONL file") from None


def _token_method(tokenizer, tokenizer_name: str | None) -> str:
    from controller.data import tokens as tk

    return f"tokenizer ({tokenizer_name or 'base model'}) with chat template" if tokenizer is not None else tk.ESTIMATE


def _params_block(params: DataParams) -> dict[str, Any]:
    return {
        "testFraction": params.test_fraction,
        "nearDuplicateThreshold": params.near_duplicate_threshold,
        "minExamples": params.min_examples,
        "complexity": params.complexity,
        "maxSeqLength": params.max_seq_length,
        "epochs": params.epochs,
    }


def _reusable(out: Path, params: DataParams, token_method: str) -> Prepared | None:
    try:
        manifest = load_manifest(out)
    except (PermanentError, OSError, KeyError, TypeError, ValueError):
        return None
    same = (
        manifest.get("kind") == MANIFEST_KIND
        and manifest.get("spec") == params.spec_name
        and manifest.get("source", {}).get("path") == params.data_path
        and manifest.get("params") == _params_block(params)
        and manifest.get("method", {}).get("prepareVersion") == PREPARE_VERSION
        and manifest.get("method", {}).get("normalization") == NORMALIZATION_VERSION
        and manifest.get("tokens", {}).get("method") == token_method
    )
    return Prepared(out, manifest) if same else None


def analyse(
    scan: ScanResult,
    params: DataParams,
    tokenizer=None,
    tokenizer_name: str | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Everything `prepare` computes, without writing: (manifest, {file name: bytes}). Also used
    at versioning time to record counts in the .dvc meta."""
    if scan.errors:
        raise DataInvalid(invalid_message(scan))
    records = scan.records
    hashes = [r.hash for r in records]

    exact = dedupe.exact_duplicates(hashes)
    exact_idx = {d.index for d in exact}
    unique = [i for i in range(len(records)) if i not in exact_idx]
    texts = [dedupe.example_text(records[i].example) for i in unique]
    near = dedupe.near_duplicates(texts, params.near_duplicate_threshold, progress=progress)

    kept = [unique[k] for k in range(len(unique)) if k not in near.dropped]
    kept_pos = {rec_i: pos for pos, rec_i in enumerate(kept)}
    # Clusters in terms of kept positions: every kept member of a component stays together.
    groups = []
    for members in near.clusters:
        g = [kept_pos[unique[k]] for k in members if unique[k] in kept_pos]
        if len(g) > 1:
            groups.append(g)
    kept_hashes = [hashes[i] for i in kept]
    split = deterministic_split(kept_hashes, groups, params.test_fraction, seed=scan.md5)

    train_recs = [records[kept[p]] for p in split.train]
    test_recs = [records[kept[p]] for p in split.test]
    kept_texts = {unique[k]: texts[k] for k in range(len(unique))}
    row_of = {rec_i: k for k, rec_i in enumerate(unique)}

    def sig_of(rec_indices: list[int]):
        return near.signatures[[row_of[i] for i in rec_indices]] if near.signatures is not None else None

    leaks = check_leaks(
        [r.hash for r in train_recs], [kept_texts[kept[p]] for p in split.train],
        [r.hash for r in test_recs], [kept_texts[kept[p]] for p in split.test],
        params.near_duplicate_threshold,
        signatures=(sig_of([kept[p] for p in split.test]), sig_of([kept[p] for p in split.train])) if near.signatures is not None else None,
    )
    require_no_leaks(leaks, scan.path, [r.line for r in test_recs], [r.line for r in train_recs])

    # Tokens: the model's own count when a tokenizer is given, else the estimate.
    from controller.data import tokens as tk

    warnings = list(scan.warnings)
    if tokenizer is not None:
        lengths, token_issues = tk.measure([records[i] for i in kept], tokenizer, params.max_seq_length, progress=progress)
        warnings.extend(token_issues)
        method = _token_method(tokenizer, tokenizer_name)
    else:
        lengths = [records[i].est_tokens for i in kept]
        method = tk.ESTIMATE
    length_of = dict(zip(kept, lengths))
    token_stats = tk.stats(lengths, method)
    train_tokens = sum(length_of[kept[p]] for p in split.train)

    readiness = size_readiness(len(kept), params)

    train_bytes = b"".join(r.canonical + b"\n" for r in train_recs)
    test_bytes = b"".join(r.canonical + b"\n" for r in test_recs)
    line_of = [r.line for r in records]
    unique_line = [line_of[i] for i in unique]
    side = {kept[p]: "train" for p in split.train} | {kept[p]: "test" for p in split.test}
    dropped = [
        {"line": line_of[d.index], "example": hashes[d.index], "reason": "exactDuplicate", "of": {"line": line_of[d.first], "example": hashes[d.first]}}
        for d in exact
    ] + [
        {
            "line": unique_line[k],
            "example": hashes[unique[k]],
            "reason": "nearDuplicate",
            "similarity": sim,
            "of": {"line": unique_line[twin], "example": hashes[unique[twin]]},
        }
        for k, (twin, sim) in sorted(near.dropped.items())
    ]
    dropped.sort(key=lambda d: d["line"])
    clusters = [
        {
            "lines": [unique_line[k] for k in members],
            "kept": [unique_line[k] for k in members if k not in near.dropped],
            "side": side[unique[next(k for k in members if k not in near.dropped)]],
        }
        for members in near.clusters
    ]
    manifest: dict[str, Any] = {
        "apiVersion": "ftops.dev/v1alpha1",
        "kind": MANIFEST_KIND,
        "spec": params.spec_name,
        "source": {"path": params.data_path, "md5": scan.md5, "bytes": scan.size, "lines": scan.lines},
        "params": _params_block(params),
        "method": {
            "prepareVersion": PREPARE_VERSION,
            "normalization": NORMALIZATION_VERSION,
            "exampleHash": "sha256 of canonical JSON (sorted keys, compact, UTF-8) of the normalised example",
            "nearDuplicates": {"shingles": f"word {dedupe.SHINGLE_WORDS}-grams of non-system turns", "numPerm": dedupe.NUM_PERM, "bands": near.bands, "rows": near.rows, "similarity": "exact Jaccard"},
            "split": "groups ordered by sha256(seed + smallest example hash); seed = source md5",
        },
        "seed": scan.md5,
        "counts": {
            "lines": scan.lines,
            "examples": len(records),
            "exactDuplicates": len(exact),
            "nearDuplicates": len(near.dropped),
            "kept": len(kept),
            "train": len(train_recs),
            "test": len(test_recs),
            "testFraction": round(split.test_fraction, 4),
        },
        "splits": {
            "train": {"path": "train.jsonl", "examples": len(train_recs), "sha256": hashlib.sha256(train_bytes).hexdigest(), "tokens": train_tokens},
            "test": {"path": "test.jsonl", "examples": len(test_recs), "sha256": hashlib.sha256(test_bytes).hexdigest(), "tokens": token_stats.total - train_tokens},
        },
        "tokens": token_stats.to_dict(),
        "trainingTokens": tk.training_tokens(train_tokens, 1.0, params.epochs),
        "warnings": {k: v for k, v in _count_kinds(warnings).items()},
        "warningSamples": [w.format(params.data_path) for w in warnings[:50]],
        "dropped": dropped,
        "clusters": clusters,
        "leakCheck": leaks.to_dict([r.line for r in test_recs], [r.line for r in train_recs]),
        "readiness": readiness.to_dict(),
    }
    return manifest, {"train.jsonl": train_bytes, "test.jsonl": test_bytes, "manifest.json": (json.dumps(manifest, indent=2) + "\n").encode()}


def _count_kinds(issues) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in issues:
        counts[i.kind] = counts.get(i.kind, 0) + 1
    return counts


def _write(out: Path, files: dict[str, bytes]) -> None:
    """Each file is written to a temporary name beside it and renamed over the old one; files
    whose bytes are unchanged are not touched; the manifest goes last (its presence with matching
    hashes is what marks the directory complete)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == "manifest.json"):
        data = files[name]
        target = out / name
        try:
            if target.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """Read a prepared directory's manifest and verify the split files against it."""
    d = Path(directory)
    path = d / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PermanentError(f"{path}: no manifest; the directory was not prepared completely: run `ftops data prepare` again") from None
    except json.JSONDecodeError as exc:
        raise PermanentError(f"{path}:{exc.lineno}: manifest is not valid JSON ({exc.msg}); run `ftops data prepare` again") from None
    for side in ("train", "test"):
        info = manifest["splits"][side]
        actual = hashlib.sha256((d / info["path"]).read_bytes()).hexdigest()
        if actual != info["sha256"]:
            raise PermanentError(f"{d / info['path']}: sha256 {actual} does not match the manifest ({info['sha256']}); the prepared file was changed: run `ftops data prepare` again")
    return manifest
