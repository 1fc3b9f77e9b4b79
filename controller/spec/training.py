"""`training`: the optimisation hyper-parameters of a run."""
from __future__ import annotations

from pydantic import Field

from controller.spec.base import SpecModel


class TrainingSpec(SpecModel):
    """Hyper-parameters. Every field here is part of the run identity: changing one retrains."""

    epochs: float = Field(default=3, gt=0, le=100, description="Passes over the training split.")
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate (e.g. 2.0e-4).")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Examples per device per step.")
    gradient_accumulation: int = Field(default=1, ge=1, le=1024, description="Steps accumulated per optimizer update.")
    max_seq_length: int = Field(default=2048, ge=16, le=262144, description="Longest tokenized example; longer ones are truncated.")
    packing: bool = Field(default=False, description="Pack several short examples into one sequence (no cross-attention between them).")
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for memory.")
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="Share of steps used for linear warm-up.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Seed for data order and initialisation.")
    checkpoint_every_steps: int = Field(default=200, ge=1, description="Save a resumable checkpoint every N optimizer steps.")
