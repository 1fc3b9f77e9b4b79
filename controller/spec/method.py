"""`method`: LoRA, QLoRA or a full fine-tune, with each one's parameters, or a provider's
managed fine-tuning API (`api`)."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, StringConstraints

from controller.spec.base import RFC1123_LABEL, SecretRef, SpecModel

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoraMethod(SpecModel):
    """Low-rank adapters (peft): trains 1-10% of the parameters; the seed's default recommendation."""

    type: Literal["lora"] = Field(description="Method name.")
    r: int = Field(default=16, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(default=32, ge=1, le=4096, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES), min_length=1, description="Names of the linear layers that get adapters."
    )
    merge: bool = Field(default=False, description="Also write the adapter merged into the base weights.")


class Quantization(SpecModel):
    """bitsandbytes 4-bit settings for QLoRA."""

    bits: Literal[4] = Field(default=4, description="Weight bits (QLoRA uses 4).")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Also quantize the quantization constants.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Dtype of the matmuls (float32 on CPU)."
    )


class QloraMethod(LoraMethod):
    """LoRA on a 4-bit quantized base model: a 7B model on one 24 GB GPU. The 4-bit base is for
    training only: the run is served, and so evaluated, with its adapter over the unquantized base."""

    type: Literal["qlora"] = Field(description="Method name.")  # type: ignore[assignment]
    quantization: Quantization = Field(default_factory=Quantization, description="4-bit quantization of the base.")


class FullMethod(SpecModel):
    """Updates every parameter: highest quality, highest cost."""

    type: Literal["full"] = Field(description="Method name.")


class ApiHyperparameters(SpecModel):
    """The provider's hyper-parameters, each a number within OpenAI's bounds or `auto`.

    `auto` lets the provider choose from the dataset's size; what it chose is recorded in the
    run's manifest."""

    epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=50)] = Field(
        default="auto", description="Passes over the training split (1-50), or auto.")
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=10)] = Field(
        default="auto", description="Scale of the provider's base learning rate (above 0, at most 10), or auto.")
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = Field(
        default="auto", description="Examples per batch (1-256), or auto.")


PROVIDER_MODEL = r"^[A-Za-z0-9][-A-Za-z0-9_.:]{0,127}$"
"""A provider's model name (`gpt-4o-mini-2024-07-18`): no spaces, slashes or quotes."""


class ApiMethod(SpecModel):
    """Managed fine-tuning at a provider (an OpenAI-compatible fine-tuning API): no GPUs to manage.

    ftops uploads the prepared split, creates the job, follows it and records the hosted model
    it yields. No GPUs are
    managed, so `spec.hardware` does not apply and `spec.baseModel` is not written: the base
    model is `model`, at the provider (`spec.baseModel.uri` reads `api://<provider>/<model>`).
    The provider's address and price come from the operator's configuration (`providers:`)."""

    type: Literal["api"] = Field(description="Method name.")
    provider: Annotated[str, StringConstraints(pattern=RFC1123_LABEL.pattern, max_length=63)] = Field(
        description="A provider the operator configured (operator config `providers:`, e.g. openai).")
    model: Annotated[str, StringConstraints(pattern=PROVIDER_MODEL)] = Field(
        description="The provider's base model to fine-tune, pinned to a dated snapshot (e.g. gpt-4o-mini-2024-07-18).")
    hyperparameters: ApiHyperparameters = Field(
        default_factory=ApiHyperparameters, description="epochs, learningRateMultiplier, batchSize (each may be auto).")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="The provider's seed, for a reproducible job.")
    credentials: SecretRef | None = Field(
        default=None, description="Secret holding this team's API key for the provider; omit to use the operator's "
        "(providers.<name>.credentials). Never the key itself.")

    @property
    def base_model_uri(self) -> str:
        """How `spec.baseModel.uri` names the provider's model (ledger, plan and trace read it)."""
        return f"{API_SCHEME}{self.provider}/{self.model}"


API_SCHEME = "api://"
Method = Annotated[Union[LoraMethod, QloraMethod, FullMethod, ApiMethod], Field(discriminator="type")]
METHOD_TYPES = ("lora", "qlora", "full", "api")
API_TRAINING_FIELDS = ("retrieval", "replay", "maxSeqLength")
"""The `training` fields that apply to method api: they shape the data ftops prepares and uploads
(RAFT prompts, the length check); the provider owns the optimisation (method.hyperparameters)."""
