"""Log helpers shared by the backends."""
from __future__ import annotations


def tail_lines(text: str, tail: int | None) -> str:
    """The last `tail` lines of `text` (all of it when `tail` is None)."""
    if tail is None:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[-tail:]) if tail > 0 else ""
