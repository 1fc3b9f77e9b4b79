"""`dataset`: the chat JSONL a fine-tune learns from, how it is split and how it is reviewed."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from controller.spec.base import RepoPath, SpecModel

MIN_EXAMPLES = 200
"""Below this a dataset is not trainable (the seed: 'Minimum 200 examples')."""
WARN_EXAMPLES = 500
"""Below this a warning: 500-1,000 for reliable results."""
COMPLEX_EXAMPLES = 2000
"""Recommended minimum for complex tasks."""


class ReviewSpec(SpecModel):
    """Expert review: a domain expert checks a random sample before any training starts."""

    file: RepoPath | None = Field(
        default=None,
        description="JSONL file of reviewer verdicts committed to the repo (default: reviews/<spec name>.jsonl).",
    )
    sample_fraction: float = Field(
        default=0.10, ge=0.01, le=1.0, description="Share of examples that must be reviewed before training (seed: 10%)."
    )
    min_approval: float = Field(
        default=0.95, ge=0.5, le=1.0, description="Share of reviewed examples that must be approved (seed: 95%)."
    )


class DatasetSpec(SpecModel):
    """The training data: an OpenAI-style chat JSONL file versioned with DVC."""

    path: RepoPath = Field(
        description="Path of the chat JSONL inside the repo. It is tracked by DVC: `<path>.dvc` pins its md5."
    )
    test_fraction: float = Field(
        default=0.15,
        ge=0.15,
        le=0.20,
        description="Share held out as the test set and never trained on (seed: 15-20%).",
    )
    min_examples: int = Field(
        default=MIN_EXAMPLES,
        ge=MIN_EXAMPLES,
        description=f"Fewest examples (after cleaning) that may be trained on; never below {MIN_EXAMPLES}.",
    )
    complexity: Literal["simple", "moderate", "complex"] = Field(
        default="simple",
        description=f"How hard the task is. 'complex' tasks are warned below {COMPLEX_EXAMPLES} examples.",
    )
    near_duplicate_threshold: float = Field(
        default=0.85, ge=0.5, le=1.0, description="Jaccard similarity above which two examples count as near-duplicates."
    )
    review: ReviewSpec = Field(default_factory=ReviewSpec, description="Expert review settings.")
