"""The repository's files on the controller's machine, and its data: the adapters behind
`RepoFiles` and `DataPreparer`. Everything is read at an exact commit and materialised by
content (a commit, a git tree hash), so two passes at the same commit share one copy and a
crash never leaves a half-written folder that a later pass would trust."""
from __future__ import annotations

from pathlib import Path

from controller.errors import PermanentError
from controller.home import Home
from controller.reconcile.context import PreparedData
from controller.source import GitSource, corpus_version
from controller.spec.finetune import FineTune


class GitRepoFiles:
    def __init__(self, source: GitSource, home: Home) -> None:
        self.source = source
        self.home = home

    def checkout(self, commit: str) -> Path:
        target = self.home.checkouts / commit
        if not target.exists():
            self.source.extract(commit, target)
        return target

    def folder(self, commit: str, rel: str, field: str) -> Path:
        entry = self.source.tree(commit).get(rel)
        if entry is None or entry.kind != "tree":
            raise PermanentError(f"{field} {rel!r} is not a folder at {commit[:12]}")
        target = self.home.trees / entry.sha
        if not target.exists():
            self.source.extract(entry.sha, target)
        return target

    def corpus_version(self, commit: str, rel: str) -> str | None:
        return corpus_version(self.source, commit, rel)


class DvcDataPreparer:
    """The data pipeline (controller.data.pipeline): DVC pull at the commit, clean, split, review."""

    def __init__(self, source: GitSource, home: Home) -> None:
        self.source = source
        self.home = home

    def prepare(self, commit: str, finetune: FineTune) -> PreparedData:
        from controller.data.pipeline import prepare_spec

        prepared, review, ready = prepare_spec(self.source.repo, commit, finetune, self.home.work)
        return PreparedData(prepared, review, ready)
