"""`baseModel`: the pretrained model a fine-tune starts from."""
from __future__ import annotations

import re

from pydantic import Field, ValidationInfo, field_validator

from controller.spec.base import SecretRef, SpecModel, check_repo_path

HF_URI = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*)$")
S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][-a-z0-9.]{1,61}[a-z0-9])/(?P<key>.+)$")
GIT_SHA = re.compile(r"^[0-9a-f]{40}$")
API_URI = re.compile(r"^api://(?P<provider>[a-z0-9]([-a-z0-9]*[a-z0-9])?)/(?P<model>[A-Za-z0-9][-A-Za-z0-9_.:]{0,127})$")


def uri_kind(uri: str) -> str:
    """'hf', 's3', 'api' (a provider's model, for method api) or 'path' (a path inside the GitOps
    repository)."""
    if uri.startswith("hf://"):
        return "hf"
    if uri.startswith("s3://"):
        return "s3"
    if uri.startswith("api://"):
        return "api"
    return "path"


class BaseModelSpec(SpecModel):
    """Where the pretrained weights come from, pinned so a run is reproducible."""

    uri: str = Field(
        description=(
            "A path inside this repository (e.g. 'models/tiny-llama'), 'hf://org/name' (then `revision` is "
            "required), or 's3://bucket/prefix'. Only safetensors weights are ever loaded."
        )
    )
    revision: str | None = Field(
        default=None,
        description="For hf:// models: the 40-hex commit sha of the model repository. Branch names are not reproducible.",
    )
    parameters_billions: float | None = Field(
        default=None,
        gt=0,
        le=2000,
        description="Model size in billions of parameters, used by the cost estimate and the memory check.",
    )
    credentials: SecretRef | None = Field(
        default=None, description="Secret holding a token for a gated hub model or the S3 bucket."
    )

    @property
    def kind(self) -> str:
        return uri_kind(self.uri)

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        if "://" in uri and uri_kind(uri) == "path":
            raise ValueError(
                f"scheme '{uri.split('://')[0]}://' is not supported; write a repo path, hf://org/name or s3://bucket/prefix"
            )
        if uri_kind(uri) == "hf" and not HF_URI.match(uri):
            raise ValueError("must look like hf://org/name")
        if uri_kind(uri) == "s3" and not S3_URI.match(uri):
            raise ValueError("must look like s3://bucket/prefix")
        if uri_kind(uri) == "api" and not API_URI.match(uri):
            raise ValueError("must look like api://provider/model (method api writes it from method.provider and method.model)")
        if uri_kind(uri) == "path":
            check_repo_path(uri)
        return uri

    @field_validator("revision")
    @classmethod
    def _pinned(cls, revision: str | None, info: ValidationInfo) -> str | None:
        uri = info.data.get("uri")
        if revision is None:
            if uri is not None and uri_kind(uri) == "hf":
                raise ValueError(
                    "is required for hf:// models: write the 40-hex commit sha of the model repo so every run uses the same weights"
                )
            return None
        if not GIT_SHA.match(revision):
            raise ValueError(
                f"must be a 40-character lowercase hex commit sha, not '{revision}': branch names and tags move"
            )
        return revision
