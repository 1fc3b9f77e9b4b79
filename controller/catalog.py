"""The operator's configuration: GPU catalog, price and throughput tables, tenancy and
cluster defaults. Teams write specs; operators own this file. Defaults ship in
controller/defaults/operator.yaml, and an override file is deep-merged over them."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from controller.errors import PermanentError
from controller.paths import defaults_dir

if TYPE_CHECKING:
    from controller.spec.finetune import FineTune

ENV_VAR = "FTOPS_OPERATOR_CONFIG"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class GpuType(_Model):
    memory_gib: float = Field(ge=0, alias="memoryGiB", description="Accelerator memory per GPU.")
    usd_per_hour: float = Field(ge=0, description="On-demand price per GPU-hour.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels that select this GPU.")
    engine: Literal["vllm", "embedded"] = Field(
        default="vllm", description="The model engine that serves on this pool: vLLM, or ftops' embedded engine.")


class Tenancy(_Model):
    namespace_prefix: str = "ftops-"
    namespaces: dict[str, str] = Field(default_factory=dict, description="owner -> namespace")

    def namespace_for(self, owner: str) -> str:
        return self.namespaces.get(owner, f"{self.namespace_prefix}{owner}")


class Toleration(_Model):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class SecretEnv(_Model):
    """An environment variable filled from a Secret in the run's own namespace (never a literal value)."""

    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    secret: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)


class ArtifactStoreConfig(_Model):
    """Where runs, evaluation reports and the pods' inputs live in a cluster: one bucket prefix.

    Credentials never appear here: `credentials` names Secrets (in each tenant namespace) whose
    keys become the pods' environment (AWS_ACCESS_KEY_ID, ...); the controller gets the same
    variables from the chart's `artifactStore.existingSecret`."""

    uri: str = Field(default="s3://ftops-artifacts", description="s3://bucket/prefix (or gs://, az://).")
    endpoint_url: str = Field(default="", description="S3-compatible endpoint (MinIO, Ceph); empty: the provider's.")
    region: str = Field(default="", description="Bucket region (AWS_REGION); empty: the SDK's default.")
    credentials: tuple[SecretEnv, ...] = Field(default=(), description="Env vars for the store, from Secrets.")


class ModelCacheConfig(_Model):
    """Base models materialised once per cache (a PVC per tenant namespace), keyed by uri@revision,
    verified by sha256, mounted read-only by training, evaluation and serving pods."""

    claim: str = Field(default="ftops-model-cache", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    storage: str = "200Gi"
    storage_class: str = ""
    access_modes: tuple[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"], ...] = ("ReadWriteMany",)
    hf_token: SecretEnv | None = Field(default=None, description="HF_TOKEN for gated hub models, from a Secret.")


class ClusterDefaults(_Model):
    image: str
    priority_class_name: str = ""
    kueue_queue: str = ""
    tolerations: tuple[Toleration, ...] = ()
    spot_tolerations: tuple[Toleration, ...] = ()
    checkpoint_storage_class: str = ""
    checkpoint_storage: str = "50Gi"
    ttl_seconds_after_finished: int = 86400
    backoff_limit: int = 3
    training_flavor: Literal["job", "jobset", "trainjob"] = "job"
    training_runtime: str = Field(default="ftops-torch", description="ClusterTrainingRuntime a TrainJob refers to.")
    serving_flavor: Literal["deployment", "kserve"] = Field(
        default="deployment", description="Serving objects: Deployments (ftops rolls them out) or a KServe InferenceService.")
    # Added for the Kubernetes backend (templates/); every field keeps a working default.
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account_name: str = ""
    run_as_user: int = Field(default=1000, ge=1)
    cpu_per_gpu: str = "8"
    memory_per_gpu: str = "48Gi"
    cpu_only_cpu: str = "4"
    cpu_only_memory: str = "16Gi"
    shm_size: str = "16Gi"
    artifact_store: ArtifactStoreConfig = Field(default_factory=ArtifactStoreConfig)
    model_cache: ModelCacheConfig = Field(default_factory=ModelCacheConfig)
    ephemeral_storage: str = Field(default="20Gi", description="Scratch per pod (inputs, outputs before upload).")
    eval_gpus: int = Field(default=1, ge=0, le=16, description="GPUs of an evaluation Job (0 for gpuType cpu).")
    serving_port: int = Field(default=8000, ge=1, le=65535)
    serving_cpu: str = "2"
    serving_memory: str = "8Gi"
    serving_gpus: int = Field(default=0, ge=0, le=16)
    vllm_image: str = Field(default="vllm/vllm-openai:v0.11.0", description="The vLLM image of engine pools on vLLM.")


class ProviderCredentials(_Model):
    """The Secret key holding the provider's API key. It reaches the controller as the variable
    `FTOPS_SECRET_<NAME>_<KEY>` (controller.spec.base.secret_env_name): exported on one machine,
    a `secretKeyRef` in the controller's pod. Never the key itself."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)

    @property
    def env_name(self) -> str:
        from controller.spec.base import secret_env_name

        return secret_env_name(self.name, self.key)


class ProviderPrices(_Model):
    """What a provider bills, in US dollars per million tokens."""

    usd_per_million_training_tokens: float = Field(ge=0, description="Training: tokens in the training file x epochs.")
    usd_per_million_input_tokens: float = Field(default=0.0, ge=0, description="The fine-tuned model's prompts.")
    usd_per_million_output_tokens: float = Field(default=0.0, ge=0, description="The fine-tuned model's answers.")


class ApiProvider(ProviderPrices):
    """A managed fine-tuning API (OpenAI's or a compatible one) that specs with method api use.
    The prices above are the provider's default; `models` lists the base models specs may
    fine-tune there, each with its own prices (an empty table allows any model at the default)."""

    base_url: str = Field(pattern=r"^https?://[^\s]+$", description="The API root, e.g. https://api.openai.com/v1.")
    credentials: ProviderCredentials = Field(description="The operator's API key for this provider (a Secret key).")
    models: dict[str, ProviderPrices] = Field(default_factory=dict, description="Fine-tunable base models and their prices.")
    organization: str = Field(default="", description="Sent as the OpenAI-Organization header when set.")

    def prices(self, model: str) -> ProviderPrices:
        return self.models.get(model, self)


class OperatorConfig(_Model):
    gpus: dict[str, GpuType]
    throughput7b: dict[Literal["lora", "qlora", "full"], dict[str, float]]
    bytes_per_parameter: dict[Literal["lora", "qlora", "full"], float]
    spot_discount: float = Field(default=0.6, gt=0, le=1)
    multi_gpu_efficiency: float = Field(default=0.9, gt=0, le=1)
    bytes_per_token: float = Field(default=4.0, gt=0)
    tenancy: Tenancy = Field(default_factory=Tenancy)
    cluster: ClusterDefaults
    providers: dict[str, ApiProvider] = Field(
        default_factory=dict, description="Managed fine-tuning APIs that specs with method api may use, by name.")


def api_method_problems(spec: "FineTune", operator: OperatorConfig) -> list[tuple[str, str]]:
    """What the operator's configuration says against a spec with method api, as (field, message):
    a provider it does not configure (the configured ones listed), a model that provider does not
    fine-tune here. Validation, plan and the api backend all ask this one function."""
    from controller.spec.load import did_you_mean

    method = spec.spec.method
    if method.type != "api":
        return []
    provider = operator.providers.get(method.provider)
    if provider is None:
        known = ", ".join(sorted(operator.providers)) or "none (the operator config has no providers: block)"
        return [("spec.method.provider", f"'{method.provider}' is not a provider the operator configured."
                 f"{did_you_mean(method.provider, operator.providers, cutoff=0.5)} Configured: {known}")]
    if provider.models and method.model not in provider.models:
        return [("spec.method.model", f"'{method.model}' is not a model {method.provider} fine-tunes here."
                 f"{did_you_mean(method.model, provider.models, cutoff=0.5)} Write one of: {', '.join(sorted(provider.models))}")]
    return []


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_operator_config(path: str | Path | None = None) -> OperatorConfig:
    """Defaults, deep-merged with `path` (or $FTOPS_OPERATOR_CONFIG) when given."""
    path = path or os.environ.get(ENV_VAR)
    return _load(str(path) if path else None)


@lru_cache(maxsize=8)
def _load(path: str | None) -> OperatorConfig:
    data = yaml.safe_load((defaults_dir() / "operator.yaml").read_text())
    if path:
        try:
            override = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise PermanentError(f"{path}: operator config not found (set by --operator-config or ${ENV_VAR})") from None
        except yaml.YAMLError as exc:
            raise PermanentError(f"{path}: operator config is not valid YAML: {exc}") from None
        if not isinstance(override, dict):
            raise PermanentError(f"{path}: operator config must be a mapping")
        data = _deep_merge(data, override)
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PermanentError(f"{path or 'operator defaults'}: {where}: {first['msg']}") from None
