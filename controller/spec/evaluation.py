"""`evaluation`: the gates a trained model must pass before it may serve."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, HttpUrl, field_validator, model_validator

from controller.spec.base import RepoPath, SecretRef, SpecModel


class TaskMetric(SpecModel):
    """Task accuracy on the held-out test split."""

    metric: Literal["exact_match", "json_field_match", "token_f1", "rouge_l"] = Field(
        default="exact_match",
        description="exact_match (after normalisation), json_field_match (per field of JSON outputs), token_f1 or rouge_l.",
    )
    fields: list[str] = Field(default_factory=list, description="For json_field_match: the fields compared (default: all).")
    min: float = Field(default=0.8, ge=0, le=1, description="Lowest acceptable score.")


class FormatCheck(SpecModel):
    """Format compliance: every output must match a JSON Schema or a regex."""

    json_schema: dict[str, Any] | None = Field(default=None, description="Inline JSON Schema each output must satisfy.")
    schema_path: RepoPath | None = Field(default=None, description="Path of a JSON Schema file in the repo.")
    regex: str | None = Field(default=None, description="Regular expression each whole output must match.")
    min: float = Field(default=1.0, ge=0, le=1, description="Lowest acceptable share of compliant outputs (usually 1.0).")

    @model_validator(mode="after")
    def _exactly_one(self) -> "FormatCheck":
        given = [n for n in ("json_schema", "schema_path", "regex") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of jsonSchema, schemaPath or regex" + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            import re

            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a valid regular expression: {exc}") from None
        return value


class RegressionCheck(SpecModel):
    """General-task regression: the fine-tune may not forget basic skills."""

    suite: str = Field(default="default", description="'default' (shipped) or a repo path to a JSONL suite.")
    max_drop: float = Field(default=0.05, ge=0, le=1, description="Largest allowed drop from the base model's score.")


class ReferenceModel(SpecModel):
    """A model to compare against: an OpenAI-compatible endpoint or a local path."""

    name: str = Field(pattern=r"^[a-z0-9][-a-z0-9_.]*$", max_length=63, description="Short name used in reports and mustBeat.")
    endpoint: HttpUrl | None = Field(default=None, description="Base URL of an OpenAI-compatible API (…/v1).")
    model: str | None = Field(default=None, description="Model name sent to the endpoint.")
    path: RepoPath | None = Field(default=None, description="Repo path of a local model instead of an endpoint.")
    api_key: SecretRef | None = Field(default=None, description="Secret with the endpoint's API key.")

    @model_validator(mode="after")
    def _one_source(self) -> "ReferenceModel":
        if (self.endpoint is None) == (self.path is None):
            raise ValueError("set exactly one of endpoint or path")
        return self


class Comparison(SpecModel):
    """A/B comparison on the same inputs: base, fine-tuned and reference models side by side."""

    models: list[ReferenceModel] = Field(default_factory=list, description="Reference models besides the base model.")
    must_beat: list[str] = Field(
        default_factory=lambda: ["base"], description="Models the fine-tune must score at least as high as ('base' or a reference name)."
    )
    samples: int = Field(default=100, ge=1, le=10000, description="Inputs run through every model (seed: 100).")

    @model_validator(mode="after")
    def _known_names(self) -> "Comparison":
        names = {"base"} | {m.name for m in self.models}
        unknown = [n for n in self.must_beat if n not in names]
        if unknown:
            raise ValueError(f"mustBeat names {unknown} that are not 'base' or one of models: {sorted(names)}")
        return self


class BiasCheck(SpecModel):
    """Bias evaluation: the task metric per group, and the largest gap between groups."""

    path: RepoPath = Field(description="Chat JSONL whose examples carry a group field.")
    group_field: str = Field(default="group", min_length=1, description="Key of each example naming its group.")
    max_gap: float = Field(default=0.1, ge=0, le=1, description="Largest allowed gap between the best and worst group.")


class MinShare(SpecModel):
    """A share that must be reached."""

    min: float = Field(ge=0, le=1, description="Lowest acceptable value.")


class RagCheck(SpecModel):
    """Gates on retrieval and citations, measured on the served system.

    The served system is the spec's retrieval, prompt builder and generation limits in front of the
    model; the held-out examples that name their gold source(s) are scored. Each metric is reported
    whenever the spec serves with a corpus; it gates only when its threshold is set."""

    facts: list[str] = Field(
        default_factory=lambda: ["answer"],
        description="Fields of the JSON answer that state facts from the sources; groundedness checks that each one's "
        "value appears in the source the answer cites.",
    )
    recall_at_k: MinShare | None = Field(
        default=None, description="Retrieval recall@k: share of examples with a gold source among the topK retrieved.")
    citation_accuracy: MinShare | None = Field(
        default=None, description="Share of examples whose answer cites (in its \"source\" field) a gold source it was shown.")
    groundedness: MinShare | None = Field(
        default=None, description="Share of answers whose every fact field is found in the source they cite.")


class EvaluationSpec(SpecModel):
    """Gates. A model serves only when every configured gate passes for its exact run."""

    task: TaskMetric = Field(default_factory=TaskMetric, description="Task accuracy gate.")
    format: FormatCheck | None = Field(default=None, description="Format compliance gate.")
    regression: RegressionCheck = Field(default_factory=RegressionCheck, description="General-task regression gate.")
    compare: Comparison = Field(default_factory=Comparison, description="A/B comparison and mustBeat gate.")
    bias: BiasCheck | None = Field(default=None, description="Bias gate.")
    rag: RagCheck | None = Field(
        default=None, description="Gates on retrieval and citations (recall@k, citation accuracy, groundedness); "
        "needs spec.serving.corpus.")
