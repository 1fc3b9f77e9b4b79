"""The controller's home: every file the controller owns on the machine it runs on.

One layout for the reconciler and every command that reads what it did (`ftops status`,
`trace`, `audit`, `rollback`), so no command guesses a path. Artifacts live in the artifact
store, which is `store/` here by default and object storage in a cluster.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def ledger(self) -> Path:
        """The append-only, hash-chained audit ledger (SQLite)."""
        return self.root / "ledger.db"

    @property
    def store(self) -> Path:
        """The default (local) artifact store: `<store>/<spec>/<run-id>/`."""
        return self.root / "store"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def runs(self) -> Path:
        """Local training processes (controller.backends.local)."""
        return self.root / "runs"

    @property
    def evals(self) -> Path:
        """Local evaluation processes (controller.backends.local.LocalEvaluator)."""
        return self.root / "evals"

    @property
    def work(self) -> Path:
        """Prepared data and DVC scratch workspaces."""
        return self.root / "work"

    @property
    def trees(self) -> Path:
        """Folders of the repo (base models, RAG corpora) materialised by git tree hash."""
        return self.root / "trees"

    @property
    def checkouts(self) -> Path:
        """The repo's files at a commit (git only), by commit."""
        return self.root / "checkouts"

    @property
    def status(self) -> Path:
        """One JSON status per spec (what `ftops status` prints)."""
        return self.root / "status"

    @property
    def state(self) -> Path:
        """Per-spec retry/backoff and settle state."""
        return self.root / "state"

    @property
    def git(self) -> Path:
        """Mirrors of remote git URLs."""
        return self.root / "git"

    def run_dir(self, spec: str, run: str) -> Path:
        return self.store / spec / run
