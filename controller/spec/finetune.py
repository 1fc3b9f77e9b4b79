"""The root `FineTune` document: apiVersion, kind, metadata and spec."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from controller.spec.base import SpecModel
from controller.spec.basemodel import BaseModelSpec
from controller.spec.dataset import DatasetSpec
from controller.spec.evaluation import EvaluationSpec
from controller.spec.hardware import HardwareSpec
from controller.spec.metadata import Metadata
from controller.spec.method import API_TRAINING_FIELDS, Method
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


def _base_model_optional_for_api(schema: dict[str, Any]) -> None:
    """The JSON Schema says what the validators do: `baseModel` is required unless `method.type`
    is api, whose base model is the provider's (`method.model`) and which takes no `baseModel`
    or `hardware`."""
    schema["required"] = [r for r in schema.get("required", []) if r != "baseModel"]
    is_api = {"properties": {"method": {"properties": {"type": {"const": "api"}}, "required": ["type"]}},
              "required": ["method"]}
    schema["if"] = is_api
    schema["then"] = {"not": {"anyOf": [{"required": ["baseModel"]}, {"required": ["hardware"]}]}}
    schema["else"] = {"required": ["baseModel"]}


class _WrittenForApi(dict[str, Any]):
    """A `baseModel` the author wrote beside method api: refused where it was written."""


def _set_fields(value: dict[str, Any], default: SpecModel) -> list[str]:
    """The keys of `value` that say something other than `default` does: what an author set. A
    spec dumped and read back (eval.json, run.json, the CR mirror) writes every default out."""
    defaults = default.model_dump(mode="json", by_alias=True)
    return [k for k, v in value.items() if k not in defaults or defaults[k] != v]


def _is_api(data: Any) -> bool:
    method = data.get("method") if isinstance(data, dict) else None
    return isinstance(method, dict) and method.get("type") == "api"


class FineTuneSpec(SpecModel):
    """What to train, on what, how to judge it, and how to serve it."""

    model_config = ConfigDict(json_schema_extra=_base_model_optional_for_api)

    needs: list[Need] = Field(
        default_factory=list,
        description=(
            "What the team needs from this model. The advisor checks them against the seed's decision matrix and "
            "warns when RAG or prompting fits better (e.g. currentData, citations, frequentlyChangingKnowledge)."
        ),
    )
    base_model: BaseModelSpec = Field(
        description="The pretrained model to start from (method api: not written, the provider's method.model).")
    dataset: DatasetSpec = Field(description="Training data and how it is split and reviewed.")
    method: Method = Field(description="lora, qlora, full or api (a provider's managed fine-tuning), with its "
                           "parameters (`type` selects).")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyper-parameters.")
    hardware: HardwareSpec = Field(default_factory=HardwareSpec,
                                   description="GPU resources and time limit (method api: not written).")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Gates before serving.")
    serving: ServingSpec | None = Field(default=None, description="Inference service; omit to train and evaluate only.")
    budget: Budget | None = Field(default=None, description="Cost limit per training run.")

    @model_validator(mode="before")
    @classmethod
    def _api_base_model(cls, data: Any) -> Any:
        """Method api names its base model at the provider (`method.model`); `baseModel` is then
        filled as `api://<provider>/<model>`, so everything that reads the base model (the run
        id, plan, the ledger, trace) names the provider's model without a second place to write it."""
        if not _is_api(data):
            return data
        method = data["method"]
        provider, model = method.get("provider"), method.get("model")
        filled = {"uri": f"api://{provider}/{model}"}
        for key in ("baseModel", "base_model"):
            if key in data:
                value = data[key]
                if isinstance(value, dict) and {k: v for k, v in value.items() if v is not None} != filled:
                    value = _WrittenForApi(value)  # the filled value itself (a dumped spec read back) is fine
                return {**data, key: value}
        if not isinstance(provider, str) or not isinstance(model, str):
            return data  # the method's own errors say what is missing
        return {**data, "baseModel": filled}

    @field_validator("base_model", mode="before")
    @classmethod
    def _no_base_model_for_api(cls, value: Any) -> Any:
        if isinstance(value, _WrittenForApi):
            raise ValueError("does not apply to method api: the base model is the provider's, spec.method.model; "
                             "remove spec.baseModel")
        return value

    @field_validator("hardware", mode="before")
    @classmethod
    def _no_hardware_for_api(cls, value: Any, info: ValidationInfo) -> Any:
        method = info.data.get("method")
        if isinstance(value, dict) and getattr(method, "type", None) == "api" and _set_fields(value, HardwareSpec()):
            raise ValueError("does not apply to method api: the provider trains on its own hardware; remove spec.hardware")
        return value

    @field_validator("training", mode="before")
    @classmethod
    def _api_training_fields(cls, value: Any, info: ValidationInfo) -> Any:
        method = info.data.get("method")
        if isinstance(value, dict) and getattr(method, "type", None) == "api":
            other = [k for k in _set_fields(value, TrainingSpec()) if k not in API_TRAINING_FIELDS]
            if other:
                raise ValueError(
                    f"{', '.join(other)} {'does' if len(other) == 1 else 'do'} not apply to method api: the provider "
                    "optimises; set spec.method.hyperparameters (epochs, learningRateMultiplier, batchSize) instead. "
                    f"Only {', '.join(API_TRAINING_FIELDS)} apply (they shape the data ftops uploads)")
        return value

    @model_validator(mode="after")
    def _api_base_model_matches(self) -> "FineTuneSpec":
        api_uri = getattr(self.method, "base_model_uri", None)
        if api_uri is None and self.base_model.kind == "api":
            raise ValueError(f"spec.baseModel.uri {self.base_model.uri} is a provider's model: fine-tune it with method "
                             "type api (provider and model), or name a model ftops trains itself (a repo path, hf://, s3://)")
        return self

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
