"""The root `FineTune` document: apiVersion, kind, metadata and spec."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from controller.spec.base import SpecModel
from controller.spec.basemodel import BaseModelSpec
from controller.spec.dataset import DatasetSpec
from controller.spec.evaluation import EvaluationSpec
from controller.spec.hardware import HardwareSpec
from controller.spec.metadata import Metadata
from controller.spec.method import Method
from controller.spec.serving import ServingSpec
from controller.spec.training import TrainingSpec

API_VERSION = "ftops.dev/v1alpha1"
KIND = "FineTune"

Need = Literal[
    "currentData",
    "citations",
    "frequentlyChangingKnowledge",
    "consistentFormat",
    "domainBehavior",
    "lowerCost",
    "lowerLatency",
    "onPremise",
]


class Budget(SpecModel):
    """Spending limit for one training run."""

    max_usd: float = Field(gt=0, description="Largest estimated training cost in US dollars; plan flags a breach.")


class FineTuneSpec(SpecModel):
    """What to train, on what, how to judge it, and how to serve it."""

    needs: list[Need] = Field(
        default_factory=list,
        description=(
            "What the team needs from this model. The advisor checks them against the seed's decision matrix and "
            "warns when RAG or prompting fits better (e.g. currentData, citations, frequentlyChangingKnowledge)."
        ),
    )
    base_model: BaseModelSpec = Field(description="The pretrained model to start from.")
    dataset: DatasetSpec = Field(description="Training data and how it is split and reviewed.")
    method: Method = Field(description="lora, qlora or full, with its parameters (`type` selects).")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyper-parameters.")
    hardware: HardwareSpec = Field(default_factory=HardwareSpec, description="GPU resources and time limit.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Gates before serving.")
    serving: ServingSpec | None = Field(default=None, description="Inference service; omit to train and evaluate only.")
    budget: Budget | None = Field(default=None, description="Cost limit per training run.")

    @model_validator(mode="after")
    def _retrieval_needs_a_corpus(self) -> "FineTuneSpec":
        corpus = self.serving.corpus if self.serving is not None else None
        if corpus is None and self.training.retrieval is not None:
            raise ValueError("training.retrieval (RAFT) builds prompts over the served corpus: set spec.serving.corpus, "
                             "or remove training.retrieval")
        if corpus is None and self.evaluation.rag is not None:
            raise ValueError("evaluation.rag measures retrieval over the served corpus: set spec.serving.corpus, "
                             "or remove evaluation.rag")
        return self


class FineTune(SpecModel):
    """A FineTune document as committed to `specs/<name>.yaml`."""

    api_version: Literal["ftops.dev/v1alpha1"] = Field(description=f"Always '{API_VERSION}'.")
    kind: Literal["FineTune"] = Field(description=f"Always '{KIND}'.")
    metadata: Metadata = Field(description="Name, owner and labels.")
    spec: FineTuneSpec = Field(description="The desired fine-tune.")

    @property
    def name(self) -> str:
        return self.metadata.name
