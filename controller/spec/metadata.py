"""`metadata`: who owns the fine-tune and what it is called."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from controller.spec.base import RFC1123_LABEL, SpecModel

MAX_NAME_LENGTH = 40
"""Spec names are short so that every derived object name (name + run hash + suffix) fits in 63."""

LabelKey = Annotated[str, StringConstraints(pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", max_length=316)]
LabelValue = Annotated[str, StringConstraints(pattern=r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$", max_length=63)]


class Metadata(SpecModel):
    """Identity and ownership of a FineTune."""

    name: str = Field(
        description=(
            "Name of the fine-tune: an RFC 1123 label (lowercase letters, digits and '-', starting and "
            f"ending with a letter or digit) of at most {MAX_NAME_LENGTH} characters. It must match the file name."
        )
    )
    owner: Annotated[str, StringConstraints(pattern=RFC1123_LABEL.pattern, max_length=63)] = Field(
        description="Team that owns the fine-tune. Operators map each owner to a Kubernetes namespace."
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="Free-form Kubernetes-style labels copied onto every object ftops creates."
    )

    @field_validator("name")
    @classmethod
    def _name_is_label(cls, value: str) -> str:
        if len(value) > MAX_NAME_LENGTH:
            raise ValueError(
                f"is {len(value)} characters long; use at most {MAX_NAME_LENGTH} so derived Kubernetes names fit in 63"
            )
        if not RFC1123_LABEL.match(value):
            suggestion = RFC1123_LABEL_SUGGEST(value)
            raise ValueError(
                "must be an RFC 1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"
                + (f" (for example '{suggestion}')" if suggestion else "")
            )
        return value


def RFC1123_LABEL_SUGGEST(value: str) -> str:  # noqa: N802 - reads as a constant-like helper
    """A best-effort valid label derived from an invalid one, for error messages."""
    import re

    cleaned = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")
    return cleaned[:MAX_NAME_LENGTH].strip("-")
