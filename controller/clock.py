"""Time, injected. Every backoff, lease, retry and rollout wait takes a `Clock`, so tests run on
a fake one that they move by hand and never depend on how loaded the machine is.

`time()` is wall-clock seconds since the epoch (persisted deadlines such as `retryAt`, which
must survive a restart); `monotonic()` measures intervals inside one process (leases, timeouts);
`sleep()` waits. A fake clock's `sleep` advances its own time instead of waiting.
"""
from __future__ import annotations

import time as _time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (comparable across restarts)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals within one process)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a fake clock advances instead)."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            _time.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


def iso(seconds: float) -> str:
    """An RFC 3339 UTC timestamp (seconds precision) for `seconds` since the epoch."""
    return datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
