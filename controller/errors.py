"""The two error classes every step uses (DESIGN: temporary vs permanent).

Temporary errors (a remote that is down, a conflict) are retried with capped exponential
backoff; permanent errors (bad input) stall the spec until its content changes. Both carry a
message written for the person who has to act: what is wrong, where, and what to do.
"""
from __future__ import annotations


class FtopsError(Exception):
    """An error meant for a person. `str(err)` is the whole message; the CLI prints it and exits 1."""

    temporary = False


class PermanentError(FtopsError):
    """Retrying will not help: the input must change."""


class TemporaryError(FtopsError):
    """Retrying later may help (network, remote, conflict). `retry_after`: seconds the remote
    asked to wait (an HTTP 429's Retry-After), which the controller's backoff honours."""

    temporary = True

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
