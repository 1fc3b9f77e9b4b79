"""`serving`: the hybrid RAG + fine-tuned inference service."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from controller.spec.base import RepoPath, SpecModel


class Rollout(SpecModel):
    """How a new model version replaces the serving one."""

    strategy: Literal["rolling", "canary"] = Field(default="rolling", description="rolling, or canary then promote.")
    canary_percent: int = Field(default=25, ge=1, le=99, description="Share of replicas on the new version during a canary.")
    stable_seconds: int = Field(default=60, ge=0, le=86400, description="How long the canary must stay ready before promotion.")


class ServingSpec(SpecModel):
    """Retrieval over a document corpus in front of the fine-tuned model, with citations."""

    corpus: RepoPath | None = Field(default=None, description="Folder of documents (DVC-tracked) used for RAG. None: no retrieval.")
    retriever: Literal["bm25", "dense", "hybrid"] = Field(default="bm25", description="bm25, dense embeddings, or hybrid.")
    top_k: int = Field(default=4, ge=1, le=100, description="Chunks retrieved per request.")
    replicas: int = Field(default=1, ge=1, le=100, description="Server replicas.")
    max_tokens: int = Field(default=256, ge=1, le=32768, description="Upper bound on generated tokens per request.")
    rollout: Rollout = Field(default_factory=Rollout, description="Rollout strategy.")

    @model_validator(mode="after")
    def _canary_needs_replicas(self) -> "ServingSpec":
        if self.rollout.strategy == "canary" and self.replicas < 2:
            raise ValueError("a canary rollout needs replicas >= 2 (one canary, at least one stable)")
        return self
