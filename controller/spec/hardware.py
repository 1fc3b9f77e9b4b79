"""`hardware`: where a run trains, and for how long at most."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from controller.spec.base import SpecModel


class HardwareSpec(SpecModel):
    """GPU resources. The GPU type must exist in the operator's catalog."""

    gpu_type: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][-a-z0-9]*$", max_length=63)] = Field(
        default="cpu",
        description="A GPU type from the operator's catalog (e.g. rtx4090, a100-80gb, h100-80gb), or 'cpu'.",
    )
    gpus_per_node: int = Field(default=1, ge=1, le=16, description="GPUs in each node.")
    nodes: int = Field(default=1, ge=1, le=256, description="Nodes (more than one launches a multi-node job).")
    spot: bool = Field(default=False, description="Allow spot / preemptible nodes; runs resume from checkpoints.")
    max_hours: float = Field(default=24, gt=0, le=720, description="Hard limit on a run's wall time.")
