"""Render a FineTune run into Kubernetes manifests (pure: no client, no cluster, no clock).

Why it looks the way it does:

* Templates (templates/*.j2) receive *values*, never code: they run in Jinja's immutable
  sandbox with StrictUndefined, and every value reaches the YAML through `tojson`, so a spec
  string (a label, a secret name, a path) is always one quoted scalar and can never add a key,
  a document or a list item. The context is built here from plain dicts, lists and numbers.
* The output is deterministic: the same inputs give byte-identical YAML (sorted keys, no
  timestamps), so `ftops plan` can diff base against head and a re-render is a no-op apply.
* Names come from the spec name and the run hash (`object_name`): valid RFC 1123 labels of at
  most 63 characters, so the same run always maps to the same Job and a create is idempotent.
* `template_version()` hashes the templates' bytes; the run identity includes it, so a template
  change is a new run (a new name) instead of an in-place edit of an immutable Job.
* Every manifest is validated against the real Kubernetes OpenAPI schemas (kubernetes-validate,
  strict, the oldest Kubernetes we support) plus the enum, name and reference checks that the
  JSON schemas do not carry. A manifest that would be rejected by the API server is a
  PermanentError here, before anything is applied.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from controller import exitcodes
from controller import labels as L
from controller.spec.base import RFC1123_LABEL
from controller.catalog import OperatorConfig
from controller.errors import PermanentError
from controller.paths import templates_dir
from controller.runconfig import RunConfig
from controller.spec.finetune import FineTune

KUBERNETES_VERSION = "1.30.0"
"""Schemas of the oldest Kubernetes we support: a manifest valid here is valid on every later one."""

MAX_NAME = 63
RFC1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")

CONFIG_ERROR_EXIT_CODES = (exitcodes.CONFIG_ERROR,)
"""Trainer exits that retrying cannot fix (78, EX_CONFIG: bad run.json, missing or invalid data,
unsupported model or precision). The Job fails at once on them. Exit 1 is not among them: it is
what torchrun returns for any worker failure, and a lost worker is worth a retry."""
PREEMPTED_EXIT_CODE = exitcodes.PREEMPTED
"""128 + SIGTERM: the trainer checkpointed after a termination notice; the replacement pod
resumes, and the attempt does not count against backoffLimit. Any other exit (1 = unexpected,
75 = temporary, 137 = OOM-killed, ...) counts against backoffLimit. See controller.exitcodes."""

MANAGED_BY = {L.MANAGED_BY: L.MANAGED_BY_VALUE}

# Where things live inside the training pod. run.json is rewritten to point here.
CONFIG_DIR = "/etc/ftops"
DATA_DIR = "/workspace/data"
REPO_DIR = "/workspace/repo"
IMAGE_REPO_DIR = "/opt/ftops/repo"
"""Where the trainer image keeps a clone of the GitOps repo (used when cluster.gitRepo is empty)."""

DATA_PULL_SCRIPT = """set -eu
if [ -n "$FTOPS_GIT_REPO" ]; then git clone --quiet "$FTOPS_GIT_REPO" "$FTOPS_REPO_DIR"; \
else cp -a "$FTOPS_IMAGE_REPO_DIR/." "$FTOPS_REPO_DIR"; fi
cd "$FTOPS_REPO_DIR"
git -c advice.detachedHead=false checkout --quiet "$FTOPS_GIT_COMMIT"
exec ftops data prepare "specs/$FTOPS_SPEC.yaml" --rev "$FTOPS_GIT_COMMIT" --workdir "$FTOPS_DATA_DIR"
"""
"""The data-pull init container: check out the exact commit, then `ftops data prepare --rev`
pulls the dataset pinned by its .dvc file (DVC verifies the md5) and writes the split the
trainer reads. Every value arrives as an environment variable, never spliced into the script,
so no spec value is ever parsed by a shell."""
CHECKPOINT_DIR = "/workspace/checkpoints"
OUTPUT_DIR = "/workspace/output"
MASTER_PORT = 29500

TRAINING_TEMPLATES = {
    "job": "training-job.yaml.j2",
    "indexed": "training-indexed-job.yaml.j2",
    "pytorchjob": "training-pytorchjob.yaml.j2",
    "jobset": "training-jobset.yaml.j2",
}
SERVING_TEMPLATES = ("serving-configmap.yaml.j2", "serving-deployment.yaml.j2", "serving-service.yaml.j2")


class RenderError(PermanentError):
    """The inputs cannot produce valid manifests (tenancy, names, schema). Fix the spec or config."""


# ----------------------------------------------------------------------------- names


def object_name(spec_name: str, run_id: str | None = None, suffix: str = "", max_length: int = MAX_NAME) -> str:
    """`<spec>-<run hash[:12]>-<suffix>`: an RFC 1123 label of at most `max_length` (<= 63) chars.

    Deterministic, so one run always maps to the same object names (create is idempotent). When
    the spec name is too long it is shortened and a 4-hex digest of the full name keeps two long
    names with a common prefix apart. `run_id=None` gives per-spec names (a serving Service)."""
    if not 1 <= max_length <= MAX_NAME:
        raise ValueError(f"max_length must be 1..{MAX_NAME}")
    spec = re.sub(r"[^a-z0-9-]+", "-", spec_name.lower()).strip("-") or "ftops"
    tail = ""
    if run_id:
        if not re.fullmatch(r"[0-9a-f]{8,64}", run_id):
            raise ValueError(f"run id {run_id!r} is not 8-64 lowercase hex characters")
        tail += "-" + run_id[:12]
    if suffix:
        if not RFC1123_LABEL.match(suffix):
            raise ValueError(f"suffix {suffix!r} is not an RFC 1123 label")
        tail += "-" + suffix
    room = max_length - len(tail)
    if spec != spec_name or len(spec) > room:
        digest = hashlib.sha256(spec_name.encode()).hexdigest()[:4]
        keep = max(1, room - 5)
        spec = spec[:keep].rstrip("-") + "-" + digest
        if len(spec) > room:
            raise ValueError(f"suffix {suffix!r} leaves no room for the spec name within {max_length} characters")
    name = spec + tail
    assert RFC1123_LABEL.match(name) and len(name) <= max_length, name
    return name


def run_label(run_id: str) -> str:
    """The run id as a label value (label values are at most 63 characters; full id in an annotation)."""
    return run_id[:63]


# ----------------------------------------------------------------------------- templates


@lru_cache(maxsize=4)
def _template_version(directory: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.j2")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def template_version() -> str:
    """12 hex of a sha256 over every template's name and bytes. Part of the run identity."""
    return _template_version(str(templates_dir()))


_env_lock = threading.Lock()


@lru_cache(maxsize=4)
def _environment(directory: str):
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(directory),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    # Compact, key-sorted JSON: deterministic, and a valid YAML flow scalar/collection.
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": True}
    env.policies["json.dumps_function"] = _strict_dumps
    return env


def _strict_dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps that turns an undefined template variable into Jinja's UndefinedError (not
    a TypeError about serialisation), so a template typo names the missing variable."""
    from jinja2 import Undefined

    def default(obj: Any) -> Any:
        if isinstance(obj, Undefined):
            obj._fail_with_undefined_error()
        raise TypeError(f"{type(obj).__name__} values cannot reach a manifest")

    return json.dumps(value, default=default, **kwargs)


def _render_template(name: str, context: Mapping[str, Any]) -> list[dict]:
    with _env_lock:  # Jinja's template cache is not documented thread-safe on first load
        template = _environment(str(templates_dir())).get_template(name)
    text = template.render(**context)
    return load_manifests(text)


def load_manifests(text: str) -> list[dict]:
    """Parse rendered template text. Our templates write block YAML whose every value is a
    one-line JSON document (tojson), so a small indentation parser plus json.loads reads them
    ~10x faster than PyYAML. Anything outside that subset goes to PyYAML's safe loader, and
    tests check both give the same result for every template."""
    try:
        return [doc for doc in (_fast_load(chunk) for chunk in _documents(text)) if doc is not None]
    except _NotSubset:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return [doc for doc in yaml.load_all(text, Loader=loader) if doc is not None]


class _NotSubset(Exception):
    pass


_KEY_LINE = re.compile(r'^([A-Za-z_][A-Za-z0-9_.-]*|"(?:[^"\\]|\\.)*"):(?: (.*))?$')
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9./_-]*$")
_YAML11_WORDS = {w for base in ("yes", "no", "true", "false", "on", "off", "null") for w in (base, base.title(), base.upper())}


def _documents(text: str) -> list[list[tuple[int, str]]]:
    docs: list[list[tuple[int, str]]] = [[]]
    for raw in text.split("\n"):
        if not raw.strip():
            continue
        if raw == "---":
            docs.append([])
            continue
        content = raw.lstrip(" ")
        if content.startswith("#") or "\t" in raw[: len(raw) - len(content)]:
            raise _NotSubset
        docs[-1].append((len(raw) - len(content), content))
    return [d for d in docs if d]


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    text = text.rstrip()
    if _PLAIN.match(text) and text not in _YAML11_WORDS:
        return text
    raise _NotSubset


def _fast_load(lines: list[tuple[int, str]]) -> Any:
    pos = 0

    def block(indent: int) -> Any:
        nonlocal pos
        if lines[pos][1].startswith("- "):
            seq = []
            while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
                rest = lines[pos][1][2:]
                if _KEY_LINE.match(rest):
                    lines[pos] = (indent + 2, rest)
                    seq.append(block(indent + 2))
                else:
                    seq.append(_scalar(rest))
                    pos += 1
            return seq
        mapping: dict = {}
        while pos < len(lines) and lines[pos][0] == indent and not lines[pos][1].startswith("- "):
            m = _KEY_LINE.match(lines[pos][1])
            if not m:
                raise _NotSubset
            key = json.loads(m.group(1)) if m.group(1).startswith('"') else m.group(1)
            if key in mapping:
                raise _NotSubset
            pos += 1
            if m.group(2) is not None and m.group(2).strip():
                mapping[key] = _scalar(m.group(2))
            elif pos < len(lines) and (lines[pos][0] > indent or (lines[pos][0] == indent and lines[pos][1].startswith("- "))):
                mapping[key] = block(lines[pos][0])
            else:
                mapping[key] = None
        return mapping

    result = block(lines[0][0])
    if pos != len(lines):
        raise _NotSubset
    return result


# ----------------------------------------------------------------------------- context


@dataclass(frozen=True)
class RenderInput:
    """Everything a training render depends on. Nothing else is read (no clock, no cluster)."""

    finetune: FineTune
    run_id: str
    data_md5: str
    git_commit: str
    operator: OperatorConfig
    run_config: RunConfig | Mapping[str, Any]
    namespace: str | None = None
    """The namespace a caller asks for; must be the owner's own (tenancy). None: the owner's."""
    flavor: str | None = None
    """Override the operator's trainingFlavor (job | pytorchjob | jobset); None: the operator's."""


def owner_namespace(finetune: FineTune, operator: OperatorConfig, requested: str | None = None) -> str:
    """The one namespace a spec may use: its owner's, from the operator's tenancy map.

    Refuses a requested namespace that is not the owner's, and an owner whose namespace (by the
    prefix rule) is one the map gives to another owner: a spec never reaches another owner's
    namespace, and so never their Secrets or PVCs (references are namespace-local)."""
    owner = finetune.metadata.owner
    tenancy = operator.tenancy
    namespace = tenancy.namespace_for(owner)
    others = {o for o, ns in tenancy.namespaces.items() if ns == namespace and o != owner}
    if owner not in tenancy.namespaces:
        others |= {o for o in tenancy.namespaces if f"{tenancy.namespace_prefix}{o}" == namespace and o != owner}
    if others:
        raise RenderError(
            f"spec '{finetune.name}': owner '{owner}' maps to namespace '{namespace}', which the operator config "
            f"gives to {sorted(others)}; add an explicit tenancy.namespaces entry for '{owner}'"
        )
    if requested is not None and requested != namespace:
        raise RenderError(
            f"spec '{finetune.name}' (owner '{owner}') may only target namespace '{namespace}', not '{requested}': "
            "a spec can never reach another owner's namespace, secrets or PVCs"
        )
    if not RFC1123_LABEL.match(namespace) or len(namespace) > MAX_NAME:
        raise RenderError(f"namespace '{namespace}' for owner '{owner}' is not an RFC 1123 label of at most 63 characters")
    return namespace


def _spec_labels(finetune: FineTune) -> dict[str, str]:
    labels = dict(finetune.metadata.labels)
    for key in labels:
        if key.startswith(L.RESERVED_PREFIXES) or key in L.RESERVED_KEYS:
            raise RenderError(
                f"spec '{finetune.name}': metadata.labels key '{key}' is reserved (ftops lineage or a scheduler/controller "
                "key); choose another key"
            )
    return labels


def _lineage(finetune: FineTune, run_id: str | None, data_md5: str, git_commit: str, component: str) -> tuple[dict, dict, dict]:
    """(labels, selector labels, annotations) for every object of a run."""
    selector = {
        L.NAME: "ftops",
        L.INSTANCE: finetune.name,
        L.COMPONENT: component,
        L.SPEC: finetune.name,
    }
    labels = {**_spec_labels(finetune), **selector, **MANAGED_BY, L.OWNER: finetune.metadata.owner}
    annotations = {
        L.SPEC: finetune.name,
        L.GIT_COMMIT: git_commit,
        L.DATA_MD5: data_md5,
        L.TEMPLATE_VERSION: template_version(),
    }
    if run_id:
        labels[L.RUN_ID] = run_label(run_id)
        annotations[L.RUN_ID] = run_id
    if re.fullmatch(r"[0-9a-f]{7,40}", git_commit):
        labels[L.GIT_COMMIT] = git_commit
    if re.fullmatch(r"[0-9a-f]{32}", data_md5):
        labels[L.DATA_MD5] = data_md5
    return labels, selector, annotations


def _tolerations(items) -> list[dict]:
    out = []
    for t in items:
        d = {"key": t.key, "operator": t.operator}
        if t.value is not None:
            d["value"] = t.value
        if t.effect is not None:
            d["effect"] = t.effect
        out.append(d)
    return out


def _secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def prepared_dir(spec_name: str, data_md5: str) -> str:
    """Where `ftops data prepare --workdir DATA_DIR` writes the split in the pod."""
    return f"{DATA_DIR}/prepared/{spec_name}/{data_md5}"


def pod_run_config(run_config: RunConfig | Mapping[str, Any], finetune: FineTune) -> RunConfig:
    """run.json as the pod sees it: data, model, checkpoint and output paths point at the volumes
    the template mounts. The local backend uses host paths; the trainer reads only this file."""
    rc = run_config if isinstance(run_config, RunConfig) else RunConfig.model_validate_json(json.dumps(dict(run_config)))
    base = rc.base_model
    if finetune.spec.base_model.kind == "path":  # a path inside the repo: read from the checkout
        base = base.model_copy(update={"uri": f"{REPO_DIR}/{finetune.spec.base_model.uri}"})
    prepared = prepared_dir(finetune.name, rc.data.md5)
    data = rc.data.model_copy(update={"train": f"{prepared}/train.jsonl", "test": f"{prepared}/test.jsonl"})
    hw = finetune.spec.hardware
    return rc.model_copy(
        update={
            "base_model": base,
            "data": data,
            "output_dir": OUTPUT_DIR,
            "checkpoint_dir": CHECKPOINT_DIR,
            "distributed": rc.distributed.model_copy(update={"nodes": hw.nodes, "gpus_per_node": hw.gpus_per_node}),
            "device": "cpu" if hw.gpu_type == "cpu" else "cuda",
        }
    )


def _resources(operator: OperatorConfig, gpu_type: str, gpus: int) -> dict:
    c = operator.cluster
    if gpu_type == "cpu":
        amounts = {"cpu": c.cpu_only_cpu, "memory": c.cpu_only_memory}
    else:
        amounts = {"cpu": _scale(c.cpu_per_gpu, gpus), "memory": _scale(c.memory_per_gpu, gpus), "nvidia.com/gpu": str(gpus)}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _scale(quantity: str, times: int) -> str:
    """'8' x 2 -> '16'; '48Gi' x 2 -> '96Gi'. Quantities in the operator config are simple."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", quantity)
    if not m:
        raise RenderError(f"operator config: resource quantity '{quantity}' must be a number with an optional unit")
    value = float(m.group(1)) * times
    text = str(int(value)) if value == int(value) else f"{value:g}"
    return text + m.group(2)


def _training_context(inp: RenderInput) -> tuple[str, dict]:
    ft, op = inp.finetune, inp.operator
    c = op.cluster
    hw = ft.spec.hardware
    if not re.fullmatch(r"[0-9a-f]{8,64}", inp.run_id):
        raise RenderError(f"run id '{inp.run_id}' is not 8-64 lowercase hex characters")
    if hw.gpu_type not in op.gpus:
        raise RenderError(
            f"spec '{ft.name}': hardware.gpuType '{hw.gpu_type}' is not in the operator's GPU catalog "
            f"({', '.join(sorted(op.gpus))})"
        )
    rc = inp.run_config if isinstance(inp.run_config, RunConfig) else RunConfig.model_validate_json(
        json.dumps(dict(inp.run_config))
    )
    if rc.run_id != inp.run_id or rc.spec_name != ft.name:
        raise RenderError(
            f"run.json is for run '{rc.run_id}' of spec '{rc.spec_name}', not run '{inp.run_id}' of spec '{ft.name}'"
        )
    if rc.data.md5 != inp.data_md5:
        raise RenderError(f"run.json pins data md5 '{rc.data.md5}' but the render was asked for '{inp.data_md5}'")
    namespace = owner_namespace(ft, op, inp.namespace)
    flavor = inp.flavor or c.training_flavor
    if flavor not in ("job", "pytorchjob", "jobset"):
        raise RenderError(f"training flavour '{flavor}' is not one of job, pytorchjob, jobset")
    multi = hw.nodes > 1
    kind = ("indexed" if flavor == "job" else flavor) if multi else "job"

    labels, selector, annotations = _lineage(ft, inp.run_id, inp.data_md5, inp.git_commit, "training")
    annotations = {**annotations, L.BASE_MODEL: ft.spec.base_model.uri + (
        f"@{ft.spec.base_model.revision}" if ft.spec.base_model.revision else "")}
    job_name = object_name(ft.name, inp.run_id, "train", max_length=52 if kind == "jobset" else MAX_NAME - 4)
    names = {
        "job": job_name,
        "runConfig": object_name(ft.name, inp.run_id, "run"),
        "checkpoints": object_name(ft.name, inp.run_id, "ckpt"),
        "workers": object_name(ft.name, inp.run_id, "workers"),
        "artifacts": c.artifacts_claim,
    }
    if not RFC1123_LABEL.match(c.artifacts_claim):
        raise RenderError(f"operator config: cluster.artifactsClaim '{c.artifacts_claim}' is not an RFC 1123 label")
    job_labels = dict(labels)
    if c.kueue_queue:
        job_labels[L.QUEUE] = c.kueue_queue
    pod_labels = {**labels, L.ROLE: "trainer"}
    pod_selector = {L.RUN_ID: run_label(inp.run_id), L.ROLE: "trainer"}

    gpus = 0 if hw.gpu_type == "cpu" else hw.gpus_per_node
    config_path = f"{CONFIG_DIR}/run.json"
    train_module = ["-m", "controller.train", "--config", config_path]
    env: list[dict] = [
        {"name": "FTOPS_RUN_ID", "value": inp.run_id},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "HF_HUB_OFFLINE", "value": "0" if ft.spec.base_model.kind == "hf" else "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if ft.spec.base_model.credentials is not None:
        cred = ft.spec.base_model.credentials
        env.append(_secret_env("HF_TOKEN" if ft.spec.base_model.kind == "hf" else "FTOPS_BASE_MODEL_TOKEN", cred.name, cred.key))
    ports: list[dict] = []
    if kind == "pytorchjob":
        # The training operator injects PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ...; torchrun reads them.
        command = ["torchrun", "--module", "controller.train", "--config", config_path]
        ports = [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}]
    else:
        # One command for every world size: with nodes or GPUs > 1 the trainer re-executes
        # itself through torchrun (controller.train.launch), reading the node rank from
        # JOB_COMPLETION_INDEX (set by Indexed Jobs) and the rendezvous host from MASTER_ADDR.
        command = ["python", *train_module]
        if kind == "indexed":
            master = f"{job_name}-0.{names['workers']}"
        elif kind == "jobset":
            master = f"{job_name}-node-0-0.{names['workers']}"
        else:
            master = ""
        if master:
            env += [{"name": "MASTER_ADDR", "value": master}, {"name": "MASTER_PORT", "value": str(MASTER_PORT)}]
            ports = [{"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"}]

    init_command = ["sh", "-c", DATA_PULL_SCRIPT]
    init_env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "DVC_NO_ANALYTICS", "value": "1"},
        {"name": "FTOPS_GIT_REPO", "value": c.git_repo},
        {"name": "FTOPS_IMAGE_REPO_DIR", "value": IMAGE_REPO_DIR},
        {"name": "FTOPS_REPO_DIR", "value": REPO_DIR},
        {"name": "FTOPS_GIT_COMMIT", "value": inp.git_commit},
        {"name": "FTOPS_SPEC", "value": ft.name},
        {"name": "FTOPS_DATA_MD5", "value": inp.data_md5},
        {"name": "FTOPS_DATA_DIR", "value": DATA_DIR},
    ]
    init_env += [_secret_env(s.env, s.secret, s.key) for s in c.data_credentials]

    tolerations = list(c.tolerations) + (list(c.spot_tolerations) if hw.spot else [])
    node_selector = dict(op.gpus[hw.gpu_type].node_selector)
    pod = {
        "labels": pod_labels,
        "annotations": annotations,
        "restartPolicy": "Never",  # retries belong to the Job controller and its podFailurePolicy
        "serviceAccountName": c.service_account_name,
        "subdomain": names["workers"] if kind == "indexed" else "",
        "priorityClassName": c.priority_class_name,
        "nodeSelector": node_selector,
        "tolerations": _tolerations(tolerations if gpus else [t for t in tolerations if t.key != "nvidia.com/gpu"]),
        "terminationGracePeriodSeconds": 120,
        "runAsUser": c.run_as_user,
        "image": c.image,
        "imagePullPolicy": c.image_pull_policy,
        "resources": _resources(op, hw.gpu_type, gpus),
        "shmSize": c.shm_size if gpus else "1Gi",
    }
    rules = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                              "values": list(CONFIG_ERROR_EXIT_CODES)}},
        {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [PREEMPTED_EXIT_CODE]}},
    ]
    scheduling: dict = {}
    if c.kueue_queue:
        scheduling["queue"] = c.kueue_queue
    if c.priority_class_name:
        scheduling["priorityClass"] = c.priority_class_name
    job = {
        "backoffLimit": c.backoff_limit,
        "activeDeadlineSeconds": int(math.ceil(hw.max_hours * 3600)),
        "ttlSecondsAfterFinished": c.ttl_seconds_after_finished,
        "podFailureRules": rules,
        "indexed": kind == "indexed",
        "nodes": hw.nodes,
        "nprocPerNode": str(max(gpus, 1)),
        "masterPort": MASTER_PORT,
        "schedulingPolicy": scheduling,
    }
    pod_rc = pod_run_config(rc, ft)
    run_json = json.dumps(pod_rc.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"
    checkpoint = {
        "accessModes": ["ReadWriteMany"] if multi else ["ReadWriteOnce"],
        "storageClassName": c.checkpoint_storage_class,
        "storage": c.checkpoint_storage,
    }
    context = {
        "namespace": namespace,
        "names": names,
        "labels": labels,
        "jobLabels": job_labels,
        "annotations": annotations,
        "podSelector": pod_selector,
        "pod": pod,
        "trainer": {"command": command, "env": env, "ports": ports},
        "init": {"command": init_command, "env": init_env},
        "paths": {
            "configDir": CONFIG_DIR,
            "dataDir": DATA_DIR,
            "repoDir": REPO_DIR,
            "checkpointDir": CHECKPOINT_DIR,
            "outputDir": OUTPUT_DIR,
            "artifactsSubPath": f"{ft.name}/{inp.run_id}",
        },
        "job": job,
        "checkpoint": checkpoint,
        "runJson": run_json,
    }
    return kind, context


def training_templates(kind: str) -> list[str]:
    return ["run-configmap.yaml.j2", "checkpoint-pvc.yaml.j2", TRAINING_TEMPLATES[kind]]


def render(inp: RenderInput | None = None, /, *, validate: bool = True, **kwargs: Any) -> list[dict]:
    """Training manifests for one run, in apply order: run.json ConfigMap, checkpoint PVC,
    (headless Service,) Job / PyTorchJob / JobSet.

    Call as `render(RenderInput(...))` or `render(finetune=..., run_id=..., data_md5=...,
    git_commit=..., operator=..., run_config=...)`. Raises RenderError when the inputs cannot
    give valid manifests."""
    if inp is None:
        inp = RenderInput(**kwargs)
    elif kwargs:
        raise TypeError("pass either a RenderInput or keyword arguments, not both")
    kind, context = _training_context(inp)
    manifests: list[dict] = []
    for name in training_templates(kind):
        manifests.extend(_render_template(name, context))
    if validate:
        validate_manifests(manifests, namespace=context["namespace"])
    return manifests


@dataclass(frozen=True)
class ServingInput:
    """What a serving render depends on (used by the serving issue)."""

    finetune: FineTune
    run_id: str
    adapter_uri: str
    """Where the run's model artifacts are: a path relative to the artifacts claim
    (`<spec>/<run-id>/model`) or a URI the server resolves itself (s3://...)."""
    data_md5: str
    git_commit: str
    operator: OperatorConfig
    replicas: int | None = None
    track: str = "stable"
    """'stable' or 'canary': a canary Deployment runs beside the stable one behind one Service."""
    namespace: str | None = None


def render_serving(inp: ServingInput | None = None, /, *, validate: bool = True, **kwargs: Any) -> list[dict]:
    """Serving manifests for one run: ConfigMap (serve.json), Deployment, Service (port 8000,
    readiness /readyz, liveness /healthz). The Service name is per spec, so it stays put as runs
    roll; the Deployment is per spec and track, so a new run is a rolling update."""
    if inp is None:
        inp = ServingInput(**kwargs)
    context = _serving_context(inp)
    manifests: list[dict] = []
    for name in SERVING_TEMPLATES:
        manifests.extend(_render_template(name, context))
    if validate:
        validate_manifests(manifests, namespace=context["namespace"])
    return manifests


def _serving_context(inp: ServingInput) -> dict:
    ft, op = inp.finetune, inp.operator
    c = op.cluster
    serving = ft.spec.serving
    if serving is None:
        raise RenderError(f"spec '{ft.name}' has no spec.serving block; there is nothing to serve")
    if inp.track not in ("stable", "canary"):
        raise RenderError(f"serving track '{inp.track}' must be 'stable' or 'canary'")
    if not re.fullmatch(r"[0-9a-f]{8,64}", inp.run_id):
        raise RenderError(f"run id '{inp.run_id}' is not 8-64 lowercase hex characters")
    namespace = owner_namespace(ft, op, inp.namespace)
    labels, selector, annotations = _lineage(ft, inp.run_id, inp.data_md5, inp.git_commit, "serving")
    selector = {**selector, L.TRACK: inp.track}
    service_selector = {k: v for k, v in selector.items() if k != L.TRACK}
    pod_labels = {**labels, L.TRACK: inp.track}
    names = {
        "servingConfig": object_name(ft.name, inp.run_id, "serve"),
        "deployment": object_name(ft.name, None, "serve" if inp.track == "stable" else "canary"),
        "service": object_name(ft.name, None, "serve"),
        "artifacts": c.artifacts_claim,
    }
    adapter_local = not re.match(r"^[a-z0-9]+://", inp.adapter_uri)
    if adapter_local and (inp.adapter_uri.startswith("/") or ".." in inp.adapter_uri.split("/")):
        raise RenderError(f"adapter location '{inp.adapter_uri}' must be relative to the artifacts claim, without '..'")
    serve_config = {
        "runId": inp.run_id,
        "specName": ft.name,
        "adapter": "/workspace/adapter" if adapter_local else inp.adapter_uri,
        "baseModel": {"uri": ft.spec.base_model.uri, "revision": ft.spec.base_model.revision},
        "corpus": serving.corpus,
        "retriever": serving.retriever,
        "topK": serving.top_k,
        "maxTokens": serving.max_tokens,
        "port": c.serving_port,
    }
    gpus = c.serving_gpus
    resources = {"cpu": c.serving_cpu, "memory": c.serving_memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    env = [{"name": "FTOPS_RUN_ID", "value": inp.run_id}, {"name": "HOME", "value": "/tmp"},
           {"name": "HF_HOME", "value": "/tmp/hf"}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if ft.spec.base_model.credentials is not None:
        cred = ft.spec.base_model.credentials
        env.append(_secret_env("HF_TOKEN" if ft.spec.base_model.kind == "hf" else "FTOPS_BASE_MODEL_TOKEN", cred.name, cred.key))
    context = {
        "namespace": namespace,
        "names": names,
        "labels": labels,
        "podLabels": pod_labels,
        "annotations": annotations,
        "selector": selector,
        "serviceSelector": service_selector,
        "pod": {
            "serviceAccountName": c.service_account_name,
            "priorityClassName": c.priority_class_name,
            "nodeSelector": {},
            "tolerations": _tolerations(c.tolerations) if gpus else [],
            "runAsUser": c.run_as_user,
            "image": c.image,
            "imagePullPolicy": c.image_pull_policy,
            "resources": {"requests": dict(resources), "limits": dict(resources)},
        },
        "serving": {
            "replicas": inp.replicas if inp.replicas is not None else serving.replicas,
            "port": c.serving_port,
            "command": ["ftops", "serve", "--config", f"{CONFIG_DIR}/serve.json", "--host", "0.0.0.0",
                        "--port", str(c.serving_port)],
            "env": env,
        },
        "paths": {
            "configDir": CONFIG_DIR,
            "adapterDir": "/workspace/adapter",
            "adapterSubPath": inp.adapter_uri if adapter_local else f"{ft.name}/{inp.run_id}",
        },
        "serveJson": json.dumps(serve_config, indent=2, sort_keys=True) + "\n",
    }
    return context


# ----------------------------------------------------------------------------- output


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    pass


def _str_representer(dumper, value: str):
    # Multi-line strings (run.json) as literal blocks: readable in `ftops render` and in diffs.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str_representer)


def to_yaml(manifests: Iterable[dict]) -> str:
    """Multi-document YAML, keys sorted: byte-identical for identical manifests."""
    return "".join(
        "---\n" + yaml.dump(m, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=10_000)
        for m in manifests
    )


def _key(m: dict) -> str:
    meta = m.get("metadata", {})
    return f"{m.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}"


def diff_manifests(base: Sequence[dict], head: Sequence[dict], base_label: str = "base", head_label: str = "head") -> str:
    """Unified diff of two manifest lists, object by object (matched by kind/namespace/name), in
    a stable order. Empty string when nothing changes."""
    old = {_key(m): m for m in base}
    new = {_key(m): m for m in head}
    out: list[str] = []
    for key in sorted(old.keys() | new.keys()):
        a = to_yaml([old[key]]).splitlines(keepends=True) if key in old else []
        b = to_yaml([new[key]]).splitlines(keepends=True) if key in new else []
        if a == b:
            continue
        out.extend(difflib.unified_diff(a, b, fromfile=f"{base_label}/{key}", tofile=f"{head_label}/{key}"))
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def run_config_for(finetune: FineTune, run_id: str, data_md5: str) -> RunConfig:
    """The run.json a pod gets when the caller has no host-side one (`ftops render`, `ftops plan`):
    built from the spec alone, with the pod's paths."""
    s = finetune.spec
    rc = RunConfig(
        run_id=run_id,
        spec_name=finetune.name,
        base_model={"uri": s.base_model.uri, "revision": s.base_model.revision},
        method=s.method,
        training=s.training,
        data={"train": f"{prepared_dir(finetune.name, data_md5)}/train.jsonl",
              "test": f"{prepared_dir(finetune.name, data_md5)}/test.jsonl", "md5": data_md5},
        output_dir=OUTPUT_DIR,
        checkpoint_dir=CHECKPOINT_DIR,
    )
    return pod_run_config(rc, finetune)


def input_for(finetune: FineTune, data_md5: str, git_commit: str, operator: OperatorConfig,
              run_config: RunConfig | Mapping[str, Any] | None = None, **extra: Any) -> RenderInput:
    """A RenderInput whose run id is the real run identity (controller.identity), for callers
    that start from a spec: `ftops render`, `ftops plan`, the reconciler."""
    from controller.identity import run_id as identity_run_id

    rid = identity_run_id(finetune, data_md5, template_version())
    return RenderInput(
        finetune=finetune, run_id=rid, data_md5=data_md5, git_commit=git_commit, operator=operator,
        run_config=run_config if run_config is not None else run_config_for(finetune, rid, data_md5), **extra,
    )


def render_for_plan(base: RenderInput | None, head: RenderInput | None) -> str:
    """What `ftops plan` shows for one spec: the unified diff of the rendered training manifests
    between the base revision and the head revision. None on a side means the spec does not
    exist there (added or removed). Raises RenderError when head cannot render."""
    before = render(base) if base is not None else []
    after = render(head) if head is not None else []
    if base is not None and head is not None:
        # Lineage names the commit that asked for a run; a new commit that changes nothing
        # else is not a change to show (the reconciler keeps the run's original commit).
        before, after = _without_commit(before), _without_commit(after)
    return diff_manifests(before, after)


def _without_commit(manifests: list[dict]) -> list[dict]:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != L.GIT_COMMIT and k != "FTOPS_GIT_COMMIT"}
        if isinstance(node, list):
            return [strip(v) for v in node if not (isinstance(v, dict) and v.get("name") == "FTOPS_GIT_COMMIT")]
        return node

    return [strip(m) for m in manifests]


# ----------------------------------------------------------------------------- validation


@dataclass
class _Schemas:
    version: str = KUBERNETES_VERSION
    validators: dict = field(default_factory=dict)
    definitions: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_SCHEMAS = _Schemas()


def _schema_dir() -> str:
    return f"kubernetes-json-schema/v{_SCHEMAS.version}-local-strict"


def _definitions():
    from kubernetes_validate import utils

    if _SCHEMAS.definitions is None:
        _SCHEMAS.definitions = utils.schema_contents(f"{_schema_dir()}/_definitions.json", _SCHEMAS.version)
    return _SCHEMAS.definitions


def _validator_for(key: str, schema_file: str | None = None, ref: str | None = None):
    """A compiled jsonschema validator over kubernetes-validate's strict schemas, cached: loading
    the 1.2 MB definitions per call would cost ~10 ms a manifest."""
    with _SCHEMAS.lock:
        cached = _SCHEMAS.validators.get(key)
        if cached is not None:
            return cached
        import jsonschema
        from kubernetes_validate import utils
        from referencing import Registry, Resource

        definitions = _definitions()
        if schema_file is not None:
            try:
                schema = utils.schema_contents(f"{_schema_dir()}/{schema_file}", _SCHEMAS.version)
            except FileNotFoundError:
                raise RenderError(f"no Kubernetes {_SCHEMAS.version} schema for {key}") from None
        else:
            schema = {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": f"https://kubernetes.io/api/ftops/{key}",
                "$ref": f"/api/_definitions.json#/$defs/{ref}",
            }
        registry = Resource.from_contents(definitions) @ Registry()
        registry = Resource.from_contents(schema) @ registry
        validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
        _SCHEMAS.validators[key] = validator
        return validator


_BUILTIN = {
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
    ("batch/v1", "Job"): "job-batch-v1.json",
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
}


def _schema_errors(doc: Any, key: str, schema_file: str | None = None, ref: str | None = None, where: str = "") -> list[str]:
    """Schema problems of `doc`. The compiled checker answers the common case (valid) fast; any
    doubt is settled, and the messages written, by jsonschema itself over the same schemas."""
    fast = _fast_checker(key, schema_file, ref)
    if fast(doc):
        return []
    validator = _validator_for(key, schema_file, ref)
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path)
        problems.append(f"{where}{'.' if where and path else ''}{path}: {err.message}")
    return problems


_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_fast_cache: dict[str, Any] = {}


def _fast_checker(key: str, schema_file: str | None, ref: str | None):
    """Compile the schema into nested closures answering only "valid or not".

    kubernetes-validate's schemas use a small keyword set (type, properties,
    additionalProperties, required, items, enum, oneOf, $ref into one definitions file), so a
    closure per schema node is enough, and ~10x faster than jsonschema's generic walk. It may
    only ever say "invalid" more often than jsonschema, never less: an unknown keyword makes the
    node defer to jsonschema (always "invalid" here, so the slow path decides)."""
    cached = _fast_cache.get(key)
    if cached is not None:
        return cached
    validator = _validator_for(key, schema_file, ref)
    defs = _definitions()["$defs"]
    compiled: dict[str, Any] = {}

    def by_ref(target: str):
        name = target.rsplit("/", 1)[-1]
        if name not in compiled:
            compiled[name] = None  # recursion guard: filled in below
            fn = compile_node(defs[name])
            compiled[name] = fn
        return lambda v: compiled[name](v)

    known = {"description", "type", "$ref", "properties", "additionalProperties", "required", "items", "enum",
             "oneOf", "format", "$schema", "$id", "x-kubernetes-group-version-kind", "x-kubernetes-list-type",
             "x-kubernetes-list-map-keys", "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key",
             "x-kubernetes-map-type", "x-kubernetes-unions", "default", "x-kubernetes-int-or-string",
             "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource"}

    def compile_node(node: dict):
        if not isinstance(node, dict) or set(node) - known:
            return lambda v: False
        checks = []
        if "$ref" in node:
            checks.append(by_ref(node["$ref"]))
        if "type" in node:
            names = node["type"] if isinstance(node["type"], list) else [node["type"]]
            preds = [_TYPES[t] for t in names]
            checks.append(lambda v, preds=preds: any(p(v) for p in preds))
        if "enum" in node:
            allowed = node["enum"]
            checks.append(lambda v, allowed=allowed: any(v == a and type(v) is type(a) for a in allowed))
        if "oneOf" in node:
            alts = [compile_node(a) for a in node["oneOf"]]
            checks.append(lambda v, alts=alts: sum(1 for a in alts if a(v)) == 1)
        props = {k: compile_node(v) for k, v in node.get("properties", {}).items()}
        extra = node.get("additionalProperties", True)
        extra_fn = None if extra is True else (lambda v: False) if extra is False else compile_node(extra)
        required = tuple(node.get("required", ()))
        if props or extra_fn is not None or required:
            def obj(v, props=props, extra_fn=extra_fn, required=required):
                if not isinstance(v, dict):
                    return True  # not an object: `type` decides, as in JSON Schema
                for r in required:
                    if r not in v:
                        return False
                for k, item in v.items():
                    fn = props.get(k)
                    if fn is not None:
                        if not fn(item):
                            return False
                    elif extra_fn is not None and not extra_fn(item):
                        return False
                return True
            checks.append(obj)
        if "items" in node:
            item_fn = compile_node(node["items"])
            checks.append(lambda v, item_fn=item_fn: not isinstance(v, list) or all(item_fn(i) for i in v))
        if not checks:
            return lambda v: True
        if len(checks) == 1:
            return checks[0]
        return lambda v, checks=tuple(checks): all(c(v) for c in checks)

    fast = compile_node(validator.schema)
    _fast_cache[key] = fast
    return fast


# Hand-written schemas of the CRD top levels we emit (their pod templates are checked against
# the real PodTemplateSpec / JobTemplateSpec schemas below).
_PYTORCHJOB_SPEC = {"nprocPerNode", "runPolicy", "pytorchReplicaSpecs", "elasticPolicy"}
_RUN_POLICY = {"backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "cleanPodPolicy", "schedulingPolicy", "suspend"}
_JOBSET_FAILURE_POLICY = {"maxRestarts", "rules", "restartStrategy"}
_JOBSET_SPEC = {"ttlSecondsAfterFinished", "failurePolicy", "successPolicy", "network", "replicatedJobs", "suspend",
                "startupPolicy", "managedBy", "coordinator"}


def _crd_errors(doc: dict) -> list[str]:
    problems: list[str] = []
    kind = doc.get("kind")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [f"{kind}: spec must be a mapping"]
    if kind == "PyTorchJob":
        problems += [f"spec.{k}: unknown field" for k in spec if k not in _PYTORCHJOB_SPEC]
        problems += [f"spec.runPolicy.{k}: unknown field" for k in spec.get("runPolicy", {}) if k not in _RUN_POLICY]
        if spec.get("runPolicy", {}).get("cleanPodPolicy", "None") not in ("None", "Running", "All"):
            problems.append("spec.runPolicy.cleanPodPolicy: must be None, Running or All")
        replicas = spec.get("pytorchReplicaSpecs") or {}
        if "Master" not in replicas:
            problems.append("spec.pytorchReplicaSpecs: a Master replica is required")
        for role, rs in replicas.items():
            where = f"spec.pytorchReplicaSpecs.{role}"
            if role not in ("Master", "Worker"):
                problems.append(f"{where}: replica type must be Master or Worker")
            problems += [f"{where}.{k}: unknown field" for k in rs if k not in ("replicas", "restartPolicy", "template")]
            if rs.get("restartPolicy") not in ("Always", "OnFailure", "Never", "ExitCode"):
                problems.append(f"{where}.restartPolicy: must be Always, OnFailure, Never or ExitCode")
            if not isinstance(rs.get("replicas"), int) or rs["replicas"] < 1:
                problems.append(f"{where}.replicas: must be a positive integer")
            containers = rs.get("template", {}).get("spec", {}).get("containers", [])
            if not any(c.get("name") == "pytorch" for c in containers) and not any(c.get("name") == "trainer" for c in containers):
                problems.append(f"{where}.template: needs the trainer container")
            problems += _schema_errors(rs.get("template"), "PodTemplateSpec", ref="io.k8s.api.core.v1.PodTemplateSpec",
                                       where=f"{where}.template")
    elif kind == "JobSet":
        problems += [f"spec.{k}: unknown field" for k in spec if k not in _JOBSET_SPEC]
        fp = spec.get("failurePolicy") or {}
        problems += [f"spec.failurePolicy.{k}: unknown field" for k in fp if k not in _JOBSET_FAILURE_POLICY]
        for i, rule in enumerate(fp.get("rules") or []):
            if rule.get("action") not in ("FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"):
                problems.append(f"spec.failurePolicy.rules[{i}].action: must be FailJobSet, RestartJobSet or "
                                "RestartJobSetAndIgnoreMaxRestarts")
            if not RFC1123_LABEL.match(str(rule.get("name", ""))):
                problems.append(f"spec.failurePolicy.rules[{i}].name: must be an RFC 1123 label")
        if spec.get("successPolicy", {}).get("operator") not in ("All", "Any"):
            problems.append("spec.successPolicy.operator: must be All or Any")
        for i, rj in enumerate(spec.get("replicatedJobs") or []):
            where = f"spec.replicatedJobs[{i}]"
            problems += [f"{where}.{k}: unknown field" for k in rj if k not in ("name", "replicas", "template", "dependsOn")]
            if not RFC1123_LABEL.match(str(rj.get("name", ""))):
                problems.append(f"{where}.name: must be an RFC 1123 label")
            problems += _schema_errors(rj.get("template"), "JobTemplateSpec", ref="io.k8s.api.batch.v1.JobTemplateSpec",
                                       where=f"{where}.template")
        if not spec.get("replicatedJobs"):
            problems.append("spec.replicatedJobs: at least one is required")
    else:
        problems.append(f"no schema for {doc.get('apiVersion')} {kind}")
    return problems


_ENUMS = {
    "restartPolicy": {"Always", "OnFailure", "Never", "ExitCode"},
    "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "completionMode": {"NonIndexed", "Indexed"},
    "protocol": {"TCP", "UDP", "SCTP"},
    "dnsPolicy": {"ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"},
    "medium": {"", "Memory", "HugePages"},
    "action": {"Ignore", "FailJob", "FailIndex", "Count"},
    "effect": {"NoSchedule", "PreferNoSchedule", "NoExecute"},
    "accessModes": {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"},
}


def _walk(node: Any, path: str, problems: list[str], ctx: dict) -> None:
    """Checks the schemas do not express: enums, name formats, quantities, env names."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            if key in _ENUMS and (key != "action" or "podFailurePolicy" in path):
                values = value if isinstance(value, list) else [value]
                for v in values:
                    if isinstance(v, str) and v not in _ENUMS[key]:
                        problems.append(f"{here}: '{v}' is not one of {sorted(_ENUMS[key])}")
            if key == "operator" and isinstance(value, str):
                allowed = {"In", "NotIn"} if path.endswith("onExitCodes") else {"Exists", "Equal", "In", "NotIn",
                                                                                   "DoesNotExist", "Gt", "Lt", "All", "Any"}
                if value not in allowed:
                    problems.append(f"{here}: '{value}' is not one of {sorted(allowed)}")
            if key in ("labels", "matchLabels", "selector", "nodeSelector") and isinstance(value, dict) and all(
                isinstance(v, str) for v in value.values()
            ):
                for lk, lv in value.items():
                    if not _label_key_ok(lk):
                        problems.append(f"{here}: label key '{lk}' is not a valid qualified name")
                    if len(lv) > 63 or not LABEL_VALUE.match(lv):
                        problems.append(f"{here}.{lk}: label value '{lv}' is not valid (<= 63 chars, alphanumeric ends)")
            if key == "annotations" and isinstance(value, dict):
                for ak in value:
                    if not _label_key_ok(ak):
                        problems.append(f"{here}: annotation key '{ak}' is not a valid qualified name")
            if key in ("containers", "initContainers") and isinstance(value, list):
                for i, c in enumerate(value):
                    name = c.get("name", "") if isinstance(c, dict) else ""
                    if not RFC1123_LABEL.match(name) or len(name) > 63:
                        problems.append(f"{here}[{i}].name: '{name}' is not an RFC 1123 label")
                    for j, e in enumerate(c.get("env", []) if isinstance(c, dict) else []):
                        if not ENV_NAME.match(str(e.get("name", ""))):
                            problems.append(f"{here}[{i}].env[{j}].name: '{e.get('name')}' is not a valid variable name")
                    mounts = {m.get("name") for m in c.get("volumeMounts", [])} if isinstance(c, dict) else set()
                    ctx.setdefault("mounts", []).append((f"{here}[{i}]", mounts))
                    for k, p in enumerate(c.get("ports", []) if isinstance(c, dict) else []):
                        if "name" in p and (len(p["name"]) > 15 or not IANA_SVC_NAME.match(p["name"])):
                            problems.append(f"{here}[{i}].ports[{k}].name: '{p['name']}' is not an IANA service name (<= 15)")
            if key == "volumes" and isinstance(value, list):
                ctx.setdefault("volumes", []).append({v.get("name") for v in value if isinstance(v, dict)})
                for i, v in enumerate(value):
                    if not RFC1123_LABEL.match(str(v.get("name", ""))):
                        problems.append(f"{here}[{i}].name: '{v.get('name')}' is not an RFC 1123 label")
            if key in ("claimName",) or (key == "name" and path.endswith(("secretKeyRef", "configMap", "configMapKeyRef"))):
                if not isinstance(value, str) or not RFC1123_SUBDOMAIN.match(value) or len(value) > 253:
                    problems.append(f"{here}: '{value}' is not a valid object name")
            if key in ("requests", "limits") and isinstance(value, dict) and path.endswith("resources"):
                for rk, rv in value.items():
                    if not QUANTITY.match(str(rv)):
                        problems.append(f"{here}.{rk}: '{rv}' is not a resource quantity")
            if key == "sizeLimit" and not QUANTITY.match(str(value)):
                problems.append(f"{here}: '{value}' is not a resource quantity")
            _walk(value, here, problems, ctx)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{path}[{i}]", problems, ctx)


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not RFC1123_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(LABEL_NAME.match(name))


NAME_LIMITS = {"Service": 63, "Job": 63, "Deployment": 63, "PyTorchJob": 63, "JobSet": 63, "ConfigMap": 253,
               "PersistentVolumeClaim": 253}


def manifest_problems(doc: Any, namespace: str | None = None) -> list[str]:
    """Every reason the API server would refuse `doc` (as far as schemas and our checks know)."""
    if not isinstance(doc, dict):
        return ["manifest is not a mapping"]
    kind, api = doc.get("kind"), doc.get("apiVersion")
    meta = doc.get("metadata") or {}
    where = f"{kind}/{meta.get('name')}"
    problems: list[str] = []
    schema = _BUILTIN.get((api, kind))
    if schema is not None:
        problems += _schema_errors(doc, f"{api}/{kind}", schema_file=schema)
    elif (api, kind) in (("kubeflow.org/v1", "PyTorchJob"), ("jobset.x-k8s.io/v1alpha2", "JobSet")):
        problems += _schema_errors(meta, "ObjectMeta", ref="io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                                   where="metadata")
        problems += [p for p in _crd_errors(doc)]
        extra = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
        problems += [f"{k}: unknown field" for k in sorted(extra)]
    else:
        problems.append(f"{api} {kind} is not a kind ftops renders")
    name = str(meta.get("name", ""))
    limit = NAME_LIMITS.get(kind, 63)
    pattern = RFC1123_SUBDOMAIN if limit == 253 else RFC1123_LABEL
    if not pattern.match(name) or len(name) > limit:
        problems.append(f"metadata.name: '{name}' must be an RFC 1123 {'subdomain' if limit == 253 else 'label'} of at most {limit} characters")
    if namespace is not None and meta.get("namespace") != namespace:
        problems.append(f"metadata.namespace: '{meta.get('namespace')}' is not the owner's namespace '{namespace}'")
    ctx: dict = {}
    _walk(doc, "", problems, ctx)
    all_volumes = set().union(*ctx.get("volumes", [set()]))
    for cwhere, mounts in ctx.get("mounts", []):
        for m in sorted(mounts - all_volumes, key=str):
            problems.append(f"{cwhere}.volumeMounts: '{m}' names no volume of the pod")
    return [f"{where}: {p}" for p in problems]


def validate_manifests(manifests: Sequence[dict], namespace: str | None = None) -> None:
    """Raise RenderError listing every problem of every manifest (none: returns None).

    Cross-object checks too: the PVC and ConfigMap a pod mounts must be rendered alongside
    (or be the operator's artifacts claim), so a spec never mounts someone else's claim."""
    problems: list[str] = []
    names = {(m.get("kind"), (m.get("metadata") or {}).get("name")) for m in manifests if isinstance(m, dict)}
    for m in manifests:
        problems += manifest_problems(m, namespace)
    for m in manifests:
        if not isinstance(m, dict):
            continue
        for claim in _find_values(m, "claimName"):
            if ("PersistentVolumeClaim", claim) not in names and not _is_artifacts_claim(m, claim):
                problems.append(f"{m.get('kind')}/{m['metadata'].get('name')}: mounts PVC '{claim}' that this run does not own")
    if problems:
        raise RenderError("rendered manifests are invalid:\n  " + "\n  ".join(problems))


def _is_artifacts_claim(manifest: dict, claim: str) -> bool:
    for vols in _find_values(manifest, "volumes"):
        for v in vols:
            if v.get("name") == "artifacts" and v.get("persistentVolumeClaim", {}).get("claimName") == claim:
                return True
    return False


def _find_values(node: Any, key: str) -> list:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found += _find_values(v, key)
    elif isinstance(node, list):
        for item in node:
            found += _find_values(item, key)
    return found
