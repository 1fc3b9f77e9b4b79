"""The artifact store on S3 (moto's server on 127.0.0.1 through s3fs, as a cluster uses it):
the same seam as a local directory, verified reads, manifest-last uploads, content-addressed
input bundles, and an outage that is a TemporaryError (never a missing run)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from controller.artifacts import bundle_manifest, fetch_bundle, open_store, publish_dir, upload_dir
from controller.errors import TemporaryError
from controller.ledger import Ledger
from controller.seams import ManifestError


def _run_dir(root: Path, run_id: str = "ab" * 8) -> Path:
    files = {"model/adapter.safetensors": b"\x00weights" * 100, "metrics.jsonl": b'{"step": 1}\n'}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = {"runId": run_id, "files": {rel: {"sha256": hashlib.sha256(d).hexdigest()} for rel, d in files.items()},
                "provenance": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_a_run_uploaded_to_s3_reads_back_verified(s3, tmp_path):
    store = open_store(s3.uri("runs"))
    run_uri = store.run_uri("support-bot", "ab" * 8)
    assert run_uri == f"s3://{s3.name}/runs/support-bot/{'ab' * 8}"
    assert store.manifest(run_uri) is None  # not finished
    upload_dir(store, _run_dir(tmp_path / "out"), run_uri)
    manifest = store.manifest(run_uri)
    assert manifest is not None and set(manifest.files) == {"model/adapter.safetensors", "metrics.jsonl"}
    assert store.list(run_uri) == ["manifest.json", "metrics.jsonl", "model/adapter.safetensors"]
    fetched = store.fetch(run_uri, tmp_path / "copy", manifest)
    assert (fetched / "model/adapter.safetensors").read_bytes() == (tmp_path / "out/model/adapter.safetensors").read_bytes()

    # Someone changes an object behind the manifest's back: every read of it is refused.
    s3.put(f"runs/support-bot/{'ab' * 8}/model/adapter.safetensors", b"other bytes")
    with pytest.raises(ManifestError, match="changed after training"):
        store.get_verified(run_uri, "model/adapter.safetensors", manifest)
    with pytest.raises(ManifestError):
        store.fetch(run_uri, tmp_path / "copy2", manifest)


def test_upload_puts_the_manifest_last_so_a_cut_upload_is_not_a_finished_run(s3, tmp_path):
    store = open_store(s3.uri())
    run_uri = store.run_uri("s", "cd" * 8)
    src = _run_dir(tmp_path / "out", "cd" * 8)
    real_put, puts = store.put, []

    def failing_put(uri: str, data: bytes) -> None:
        if len(puts) == 1:
            raise TemporaryError("connection reset")
        puts.append(uri)
        real_put(uri, data)

    store.put = failing_put  # type: ignore[method-assign]
    with pytest.raises(TemporaryError):
        upload_dir(store, src, run_uri)
    store.put = real_put  # type: ignore[method-assign]
    assert store.manifest(run_uri) is None
    assert not any(k.endswith("manifest.json") for k in s3.keys())

    # A run directory whose files do not match its own manifest is refused before any upload.
    (src / "metrics.jsonl").write_bytes(b"edited\n")
    with pytest.raises(ManifestError):
        upload_dir(store, src, store.run_uri("s", "ef" * 8))
    assert not any(("ef" * 8) in k for k in s3.keys())


def test_input_bundles_are_content_addressed_and_published_once(s3, tmp_path):
    store = open_store(s3.uri("store"))
    src = tmp_path / "split"
    src.mkdir()
    (src / "train.jsonl").write_text('{"messages": []}\n')
    (src / "test.jsonl").write_text('{"messages": [1]}\n')
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    uri = publish_dir(store, src)
    key, _ = bundle_manifest({"train.jsonl": hashlib.sha256(b'{"messages": []}\n').hexdigest(),
                              "test.jsonl": hashlib.sha256(b'{"messages": [1]}\n').hexdigest()})
    assert uri == f"s3://{s3.name}/store/inputs/{key}"
    assert sorted(k.rsplit("/", 1)[1] for k in s3.keys("store/inputs/")) == ["manifest.json", "test.jsonl", "train.jsonl"]
    before = s3.keys()
    assert publish_dir(store, src) == uri and s3.keys() == before  # again: nothing new
    (src / "test.jsonl").write_text("changed\n")
    assert publish_dir(store, src) != uri  # other content, other bundle; the first one stays
    got = fetch_bundle(store, uri, tmp_path / "pod" / "data")
    assert (got / "test.jsonl").read_text() == '{"messages": [1]}\n'


def test_the_store_down_is_a_temporary_error_and_nothing_is_lost(s3, s3_server, tmp_path):
    store = open_store(s3.uri())
    run_uri = store.run_uri("s", "ab" * 8)
    upload_dir(store, _run_dir(tmp_path / "out"), run_uri)
    with s3_server.outage():
        with pytest.raises(TemporaryError, match="artifact store"):
            store.manifest(run_uri)
        with pytest.raises(TemporaryError):
            store.put(store.join(run_uri, "x"), b"x")
        with pytest.raises(TemporaryError):
            store.list(run_uri)
    assert store.manifest(run_uri) is not None


def test_ledger_verify_rehashes_artifacts_at_object_store_uris(s3, tmp_path):
    store = open_store(s3.uri("runs"))
    run_uri = store.run_uri("s", "ab" * 8)
    manifest = upload_dir(store, _run_dir(tmp_path / "out"), run_uri)
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.append("run.finished", spec="s", run_id="ab" * 8,
                  payload={"outputDir": run_uri, "artifacts": dict(manifest.files), "manifestSha256": manifest.sha256})
    assert ledger.verify().ok
    s3.put(f"runs/s/{'ab' * 8}/metrics.jsonl", b"rewritten\n")
    result = ledger.verify()
    assert not result.ok and "metrics.jsonl no longer matches" in result.problem and run_uri in result.problem
    s3.put(f"runs/s/{'ab' * 8}/metrics.jsonl", (tmp_path / "out" / "metrics.jsonl").read_bytes())
    assert ledger.verify().ok
    s3.server.client().delete_object(Bucket=s3.name, Key=f"runs/s/{'ab' * 8}/model/adapter.safetensors")
    assert "is missing" in ledger.verify().problem
