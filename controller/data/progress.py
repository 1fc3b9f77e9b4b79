"""Progress bars for long passes, shown only when a person is watching (stderr is a TTY), so
logs, CI output and `--output json` stay clean."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterable[T]:
    if not interactive():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=True, leave=False, mininterval=0.5)
