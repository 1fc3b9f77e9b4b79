"""The spec fields the data step reads, flattened into one object.

Every data function takes a `DataParams` rather than a whole `FineTune`, so tests and the CLI can
call them with explicit values, and the spec loader is wired in one place (`from_finetune`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from controller.spec.dataset import COMPLEX_EXAMPLES, MIN_EXAMPLES, WARN_EXAMPLES

if TYPE_CHECKING:
    from controller.spec.finetune import FineTune


@dataclass(frozen=True)
class DataParams:
    """Defaults are the spec's defaults, which are the seed's numbers."""

    spec_name: str = "dataset"
    data_path: str = "data/train.jsonl"
    test_fraction: float = 0.15
    min_examples: int = MIN_EXAMPLES
    warn_examples: int = WARN_EXAMPLES
    complex_examples: int = COMPLEX_EXAMPLES
    complexity: str = "simple"
    near_duplicate_threshold: float = 0.85
    review_file: str | None = None
    review_sample_fraction: float = 0.10
    review_min_approval: float = 0.95
    max_seq_length: int = 2048
    epochs: float = 3.0
    base_model_uri: str | None = None
    base_model_revision: str | None = None

    @property
    def reviews_path(self) -> str:
        """Repo-relative reviews file: the spec's `review.file`, else `reviews/<spec>.jsonl`."""
        return self.review_file or f"reviews/{self.spec_name}.jsonl"

    def with_(self, **changes: object) -> "DataParams":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def from_finetune(ft: "FineTune") -> DataParams:
    """The only place that knows where these fields live in the spec."""
    ds = ft.spec.dataset
    return DataParams(
        spec_name=ft.metadata.name,
        data_path=ds.path,
        test_fraction=ds.test_fraction,
        min_examples=ds.min_examples,
        complexity=ds.complexity,
        near_duplicate_threshold=ds.near_duplicate_threshold,
        review_file=ds.review.file,
        review_sample_fraction=ds.review.sample_fraction,
        review_min_approval=ds.review.min_approval,
        max_seq_length=ft.spec.training.max_seq_length,
        epochs=float(ft.spec.training.epochs),
        base_model_uri=ft.spec.base_model.uri,
        base_model_revision=ft.spec.base_model.revision,
    )
