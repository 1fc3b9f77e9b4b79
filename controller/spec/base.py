"""Shared building blocks for the FineTune spec models.

Every model is strict (no silent coercion: a YAML string never becomes a number)
and forbids unknown keys, so a typo is an error with a "did you mean" instead of
a silently ignored field. Fields use camelCase aliases, as Kubernetes objects do.
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SpecModel(BaseModel):
    """Base of every spec model: strict, closed, camelCase, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
        use_attribute_docstrings=False,
    )


class SecretRef(SpecModel):
    """A reference to a Kubernetes Secret key. Credentials never appear in specs as values."""

    name: Annotated[str, StringConstraints(pattern=RFC1123_LABEL.pattern, max_length=63)] = Field(
        description="Name of the Secret in the spec owner's namespace."
    )
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)] = Field(
        description="Key inside the Secret whose value is the credential."
    )

    @property
    def env_name(self) -> str:
        """The environment variable that holds the credential (`secret_env_name`)."""
        return secret_env_name(self.name, self.key)


def secret_env_name(name: str, key: str) -> str:
    """The environment variable a Secret key reaches a process as: `{name: openai, key: api-key}`
    -> `FTOPS_SECRET_OPENAI_API_KEY`, the same on a laptop (exported) and in a pod (`secretKeyRef`)."""
    return "FTOPS_SECRET_" + re.sub(r"[^A-Z0-9]+", "_", f"{name}_{key}".upper()).strip("_")


def check_repo_path(rel: str) -> str:
    """Lexical checks for a path inside the GitOps repository. Symlinks that lead out are caught
    by the loader, which can see the repository."""
    if not rel or rel.strip() != rel:
        raise ValueError("must be a non-empty path without surrounding spaces")
    if rel.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", rel) or rel.startswith("~"):
        raise ValueError(f"must be relative to the repository root, not absolute ('{rel}'): write e.g. 'data/train.jsonl'")
    if "\\" in rel:
        raise ValueError("must use '/' as the path separator")
    if ".." in PurePosixPath(rel).parts:
        raise ValueError(f"must stay inside the repository: '..' is not allowed ('{rel}')")
    return rel


RepoPath = Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(check_repo_path)]
"""A path relative to the repository root."""
