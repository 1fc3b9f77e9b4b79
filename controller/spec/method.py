"""`method`: LoRA, QLoRA or a full fine-tune, with each one's parameters."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from controller.spec.base import SpecModel

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
    """LoRA on a 4-bit quantized base model: a 7B model on one 24 GB GPU."""

    type: Literal["qlora"] = Field(description="Method name.")  # type: ignore[assignment]
    quantization: Quantization = Field(default_factory=Quantization, description="4-bit quantization of the base.")


class FullMethod(SpecModel):
    """Updates every parameter: highest quality, highest cost."""

    type: Literal["full"] = Field(description="Method name.")


Method = Annotated[Union[LoraMethod, QloraMethod, FullMethod], Field(discriminator="type")]
METHOD_TYPES = ("lora", "qlora", "full")
