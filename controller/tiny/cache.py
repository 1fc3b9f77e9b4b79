"""The tiny model's cache: pretrained once per content key, then copied out in milliseconds.

Why a cache: pretraining takes about two minutes on one CPU thread (1,000 steps), and every test area, the demo and the
benchmarks build the same model. The key is a sha256 over everything that decides the weights
(`controller.tiny.model.build_key`), so a stale entry is never used: change the architecture,
the skills, the corpus, the steps, the seed, the code or a library version and the key changes.

Why it is safe to trust an entry:
- Built in a private temporary folder next to the entries, then published by one `os.rename`
  (atomic on one filesystem). A crash leaves only a temporary folder, which no lookup reads
  and the next build of that key removes.
- Each entry holds `ftops-tiny.json` (written last, before the rename) with the sha256 of every
  file; a lookup checks them all (about a megabyte), so a truncated or edited entry is rebuilt.
- One build per key at a time (a file lock): two test sessions starting together do not both
  pretrain; the second waits and reads the first one's entry.

Location: `$FTOPS_TINY_CACHE`, else `$XDG_CACHE_HOME/ftops/tiny`, else `~/.cache/ftops/tiny`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from controller.fsutil import sha256_file

MARKER = "ftops-tiny.json"
"""The entry's index: its key, what built it, and the sha256 of every other file."""
ENV = "FTOPS_TINY_CACHE"
LOCK_TIMEOUT_S = 1800


def cache_root(explicit: str | Path | None = None) -> Path:
    """Where entries live: `explicit`, `$FTOPS_TINY_CACHE`, `$XDG_CACHE_HOME/ftops/tiny`, `~/.cache/ftops/tiny`."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "ftops" / "tiny"


@dataclass(frozen=True)
class Entry:
    """A verified cache entry and whether this call built it."""

    path: Path
    built: bool
    info: dict


def lookup(root: Path, key: str) -> Entry | None:
    """The entry for `key` if it is complete and every file matches its recorded sha256."""
    path = root / key
    marker = path / MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    files = info.get("files") if isinstance(info, dict) else None
    if info.get("key") != key or not isinstance(files, dict) or not files:
        return None
    present = {p.name for p in path.iterdir() if p.is_file()} - {MARKER}
    if present != set(files):
        return None
    for name, digest in files.items():
        if sha256_file(path / name) != digest:
            return None
    return Entry(path, False, info)


def get_or_build(root: Path, key: str, build: Callable[[Path], dict]) -> Entry:
    """The entry for `key`, building it with `build(folder) -> info` when it is missing or damaged.
    `build` writes the model files into the folder it is given; the marker is added here."""
    found = lookup(root, key)
    if found is not None:
        return found
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{key}.lock"), timeout=LOCK_TIMEOUT_S):
        found = lookup(root, key)  # another process may have built it while we waited
        if found is not None:
            return found
        _discard(root / key)  # damaged: never trusted, replaced below
        for stale in root.glob(f".tmp-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a build that crashed
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            info = dict(build(tmp))
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            info.update(key=key, files=files)
            (tmp / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.rename(tmp, root / key)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return Entry(root / key, True, info)


def copy_out(entry: Entry, out_dir: Path) -> Path:
    """The entry's model files (not its marker) copied into `out_dir` (created), which callers
    may change freely: the entry itself is never handed out."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in entry.info["files"]:
        shutil.copyfile(entry.path / name, out_dir / name)
    return out_dir


def _discard(path: Path) -> None:
    if path.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-broken-", dir=path.parent))
        os.rename(path, aside / path.name)
        shutil.rmtree(aside, ignore_errors=True)
