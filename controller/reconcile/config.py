"""How the controller is configured (flags of `ftops reconcile` / `ftops controller`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 600.0


@dataclass
class ControllerConfig:
    repo: str
    home: Path
    rev: str = "main"
    operator_config: str | None = None
    max_concurrent_runs: int = 2
    max_runs_per_owner: int = 1
    allow_delete_all: bool = False
    allowed_signers: Path | None = None
    """Signed-commit mode: only commits signed by a key in this git allowed-signers file act."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_cap_s: float = BACKOFF_CAP_S
    resync_seconds: float = 300
    """A settled spec (Ready, nothing changed) is re-checked against the world this often."""
    store: str | None = None
    """The artifact store's URI (default: `<home>/store`)."""

    def backoff(self, failures: int) -> float:
        """Capped exponential backoff after `failures` consecutive temporary failures."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, failures - 1))
