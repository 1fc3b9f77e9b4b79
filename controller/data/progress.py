"""Helpers for long passes: progress bars shown only when a person is watching (stderr is a TTY,
so logs, CI output and `--output json` stay clean), and pausing the cyclic GC."""
from __future__ import annotations

import gc
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterable[T]:
    if not interactive():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=True, leave=False, mininterval=0.5)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during a pass that allocates hundreds of thousands of
    acyclic objects (parsed lines, records): its repeated full scans of the growing heap cost about
    a quarter of the check's time, and nothing it could collect is created there. Reference
    counting still frees everything as usual."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
