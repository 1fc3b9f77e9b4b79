"""The pods' inputs container (python -m controller.podinputs): bundles fetched verified, the base
model materialised once per cache, keyed by uri@revision, and refused when it does not match."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller import exitcodes, podinputs
from controller.artifacts import open_store, publish_dir
from controller.render import model_cache_key


def _model(root: Path) -> Path:
    (root / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(b"\x01" * 4096)
    return root


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "controller.podinputs"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_a_published_model_is_materialised_once_per_cache_and_verified(s3, tmp_path, monkeypatch):
    store = open_store(s3.uri("ftops"))
    uri = publish_dir(store, _model(tmp_path / "models" / "tiny"))
    cache = tmp_path / "cache"
    target = podinputs.materialise(uri, None, cache)
    assert target == cache / model_cache_key(uri, None)
    assert (target / "model.safetensors").read_bytes() == b"\x01" * 4096
    listing = json.loads((target / podinputs.MARKER).read_text())["files"]
    assert set(listing) == {"config.json", "model.safetensors", "manifest.json"}

    # A retry or a preempted pod finds it: nothing is downloaded again (the store may even be down).
    with s3.server.outage():
        assert podinputs.materialise(uri, None, cache) == target

    # A damaged entry (a file cut short) is discarded and fetched again, verified.
    (target / "model.safetensors").write_bytes(b"\x01" * 10)
    assert not podinputs.cached(target)
    podinputs.materialise(uri, None, cache)
    assert (target / "model.safetensors").read_bytes() == b"\x01" * 4096

    # An object changed behind the bundle's manifest is refused: exit 78, nothing in the cache.
    key = next(k for k in s3.keys("ftops/inputs/") if k.endswith("model.safetensors"))
    s3.put(key, b"\x02" * 4096)
    other = tmp_path / "other-cache"
    done = _run({"FTOPS_BASE_MODEL": json.dumps({"uri": uri, "revision": None, "cache": str(other)})})
    assert done.returncode == exitcodes.CONFIG_ERROR, done.stderr
    assert "manifest" in done.stderr
    assert not (other / model_cache_key(uri, None)).exists()


def test_bundles_are_fetched_into_the_pods_volumes_and_a_store_away_is_temporary(s3, s3_server, tmp_path):
    store = open_store(s3.uri("ftops"))
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.jsonl").write_text('{"messages": []}\n')
    (split / "test.jsonl").write_text('{"messages": [1]}\n')
    uri = publish_dir(store, split)
    dest = tmp_path / "pod" / "data"
    done = _run({"FTOPS_INPUTS": json.dumps([[uri, str(dest)]])})
    assert done.returncode == 0, done.stderr
    assert (dest / "test.jsonl").read_text() == '{"messages": [1]}\n'
    with s3_server.outage():
        away = _run({"FTOPS_INPUTS": json.dumps([[uri, str(tmp_path / "elsewhere")]])})
    assert away.returncode == exitcodes.TEMPORARY, away.stderr
    bad = _run({"FTOPS_INPUTS": "not json"})
    assert bad.returncode == exitcodes.CONFIG_ERROR and "FTOPS_INPUTS" in bad.stderr


def test_a_directory_base_model_and_a_missing_one(tmp_path):
    src = _model(tmp_path / "base")
    assert (podinputs.materialise(str(src), None, tmp_path / "cache") / "config.json").is_file()
    from controller.errors import PermanentError

    with pytest.raises(PermanentError, match="not a directory"):
        podinputs.materialise(str(tmp_path / "nope"), None, tmp_path / "cache")
