"""`training`: the optimisation hyper-parameters of a run, and how its arithmetic is done
(precision, attention kernel, activation checkpointing). docs/training.md explains each choice."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from controller.spec.base import RepoPath, SpecModel


class RetrievalTraining(SpecModel):
    """Retrieval-aware fine-tuning (RAFT): train on the prompts serving builds, sources included.

    RAFT is Zhang et al. 2024, arXiv 2403.10131. Each training prompt is built by the serving prompt
    builder over sources from the spec's corpus, so the model learns to answer from retrieved
    sources and cite one, the way it will be served. Examples name their gold source(s) in a
    top-level "sources" list (document paths relative to spec.serving.corpus)."""

    gold_share: float = Field(
        default=0.8, ge=0, le=1,
        description="Share of training examples whose sources include their gold source(s) among the distractors; "
        "the rest see distractors only (RAFT's P; 0.8 in the paper).",
    )
    distractors: int = Field(
        default=1, ge=0, le=16,
        description="Distractor sources per training prompt: the corpus chunks BM25 ranks highest for the question "
        "that are not from a gold document (random chunks fill in when it finds fewer).",
    )


class ReplayTraining(SpecModel):
    """Replay of general data during the fine-tune, so the model keeps what it could do before.

    Why: a fine-tune that learns a narrow task can forget the base model's general skills
    (catastrophic forgetting), which the regression gate measures and blocks. Mixing a share of
    general conversations, like those the base was trained on, into every epoch is the standard
    remedy (rehearsal). The replayed examples go into the training split only, as written (no
    retrieved sources: they are not served prompts); the test split and every evaluation stay as
    they were. The file is read at the spec's commit (committed to git or tracked by DVC) and its
    version is part of the run identity, so a changed replay file trains a new run."""

    path: RepoPath = Field(
        description="Chat JSONL of general conversations to replay (the same format as the dataset), committed to "
        "git or tracked by DVC. None of its prompts may be in the regression suite or the test split.",
    )
    share: float = Field(
        gt=0, le=4,
        description="Replayed examples per training example (0.5: one replayed conversation for every two of the "
        "dataset's). Drawn from the file without repeats while it lasts, in an order fixed by training.seed.",
    )


class TrainingSpec(SpecModel):
    """Hyper-parameters. Every field here is part of the run identity: changing one retrains."""

    epochs: float = Field(default=3, gt=0, le=100, description="Passes over the training split.")
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate (e.g. 2.0e-4).")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Examples per device per step.")
    gradient_accumulation: int = Field(default=1, ge=1, le=1024, description="Steps accumulated per optimizer update.")
    max_seq_length: int = Field(default=2048, ge=16, le=262144, description="Longest tokenized example; longer ones are truncated.")
    packing: bool = Field(default=False, description="Pack several short examples into one sequence (no cross-attention between them).")
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Recompute activations in the backward pass (about 30% more compute, far less memory). "
        "Unset: on for base models of at least 1 billion parameters, off below.",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="Compute dtype of the forward pass (autocast); trained weights and optimizer states stay float32. "
        "auto: bf16 on GPUs that support it, fp16 (with loss scaling) on older GPUs, fp32 on the CPU; "
        "for qlora it follows method.quantization.computeDtype.",
    )
    attention: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        default="auto",
        description="Attention kernel. auto: flash_attention_2 (varlen kernels for packed rows) on a CUDA GPU where "
        "the flash-attn package is installed, else sdpa (PyTorch scaled_dot_product_attention).",
    )
    fused_cross_entropy: bool = Field(
        default=False,
        description="Fused linear + cross-entropy loss (liger-kernel; CUDA only): the logits are never materialized, "
        "which saves gigabytes at large vocabularies. Needs the liger-kernel package in the trainer image.",
    )
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="Share of steps used for linear warm-up.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Seed for data order and initialisation.")
    checkpoint_every_steps: int = Field(default=200, ge=1, description="Save a resumable checkpoint every N optimizer steps.")
    retrieval: RetrievalTraining | None = Field(
        default=None,
        description="Train on served prompts (RAFT): sources from spec.serving.corpus put in each prompt by the serving "
        "prompt builder, rendered once when the data is prepared. Needs spec.serving.corpus. Omit to train on the "
        "examples as written.",
    )
    replay: ReplayTraining | None = Field(
        default=None,
        description="Mix general conversations into the training split so the fine-tune keeps the base model's "
        "skills (rehearsal; the regression gate measures them). Omit to train on the dataset alone.",
    )
