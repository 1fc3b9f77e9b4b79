"""Resumable checkpoints, written atomically, without pickle.

Layout: `<checkpointDir>/checkpoint-<step:08d>/` with `trainable.safetensors` (the parameters
being trained: adapter weights, or every weight for a full fine-tune), `optimizer.safetensors`
(AdamW moments keyed by parameter name + every rank's RNG state), `state.json` (step, run id,
optimizer param groups, the fp16 loss scaler's state) and, last,
`COMPLETE` (sha256 of the other files). Files are written into `checkpoint-N.partial/`, the
directory is renamed into place, then the marker is written atomically. A checkpoint without a
valid marker (cut off mid-write by SIGKILL or a node loss) is ignored on resume and removed.

`FTOPS_TEST_KILL_IN_CHECKPOINT=<step>` makes the writer SIGKILL its own process after the
first file of that step's checkpoint, and `<step>:marker` after the rename but before the marker:
the only way to make a kill land mid-write deterministically. Only the tests set it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from controller.fsutil import sha256_file

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d{8})$")
KEEP = 2
KILL_HOOK_ENV = "FTOPS_TEST_KILL_IN_CHECKPOINT"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _test_kill_hook(point: str) -> None:
    if os.environ.get(KILL_HOOK_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)  # die with the checkpoint half written (tests only)


def optimizer_to_tensors(state_dict: dict) -> tuple[dict, dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON (everything else).
    State keys are parameter names (controller.train.distributed) or, for a plain
    `optimizer.state_dict()`, indices; the state's own keys (exp_avg, step, ...) have no dots."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for idx, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict, meta: dict) -> dict:
    state: dict[int | str, dict] = {}

    def param_key(text: str) -> int | str:
        return int(text) if text.isdigit() else text

    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        idx, key = name.removeprefix("state.").rsplit(".", 1)
        state.setdefault(param_key(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.rsplit(".", 1)
        state.setdefault(param_key(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    checkpoint_dir: Path, step: int, *, trainable: dict, optimizer_state: dict, rng: dict, state: dict
) -> Path:
    """Write checkpoint `step` atomically and prune old ones (keeps the newest KEEP)."""
    from safetensors.torch import save_file

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"checkpoint-{step:08d}"
    partial = checkpoint_dir / f"checkpoint-{step:08d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(partial / "trainable.safetensors"))
    _test_kill_hook(f"{step}")
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer_state)
    opt_tensors.update({f"rng.{k}": v for k, v in rng.items()})
    save_file(opt_tensors, str(partial / "optimizer.safetensors"))
    (partial / "state.json").write_text(json.dumps({**state, "step": step, "optimizer": opt_meta}, sort_keys=True))
    for p in partial.iterdir():
        with p.open("rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    _fsync_dir(checkpoint_dir)
    _test_kill_hook(f"{step}:marker")
    files = {p.name: sha256_file(p) for p in sorted(final.iterdir())}
    _write_atomic(final / MARKER, json.dumps({"step": step, "files": files}, sort_keys=True).encode())
    _prune(checkpoint_dir, keep=KEEP)
    return final


def is_complete(path: Path) -> bool:
    marker = path / MARKER
    try:
        meta = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    files = meta.get("files", {})
    expected = {"trainable.safetensors", "optimizer.safetensors", "state.json"}
    if set(files) != expected:
        return False
    return all((path / name).is_file() and sha256_file(path / name) == digest for name, digest in files.items())


def list_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) for every checkpoint directory, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for p in checkpoint_dir.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p, is_complete(p)))
    return sorted(found)


def latest_complete(checkpoint_dir: Path) -> Path | None:
    complete = [p for _, p, ok in list_checkpoints(checkpoint_dir) if ok]
    return complete[-1] if complete else None


def remove_incomplete(checkpoint_dir: Path) -> list[str]:
    """Delete partial checkpoints (cut off mid-write); returns their names for the log."""
    removed = []
    if not checkpoint_dir.is_dir():
        return removed
    for p in sorted(checkpoint_dir.iterdir()):
        if p.is_dir() and (p.name.endswith(".partial") or (_NAME.match(p.name) and not is_complete(p))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def load_checkpoint(path: Path) -> tuple[dict, dict, dict, dict]:
    """(trainable tensors, optimizer state_dict, rng tensors, state.json)."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    trainable = load_file(str(path / "trainable.safetensors"))
    opt_all = load_file(str(path / "optimizer.safetensors"))
    rng = {k.removeprefix("rng."): v for k, v in opt_all.items() if k.startswith("rng.")}
    optimizer = optimizer_from_tensors({k: v for k, v in opt_all.items() if not k.startswith("rng.")}, state["optimizer"])
    return trainable, optimizer, rng, state


def _prune(checkpoint_dir: Path, keep: int) -> None:
    complete = [p for _, p, ok in list_checkpoints(checkpoint_dir) if ok]
    for p in complete[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
