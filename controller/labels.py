"""The one home for the Kubernetes label and annotation keys ftops writes and selects on.

Every object ftops renders carries its lineage in these keys (spec, owner, run, data version,
commit), so the backends find a run's objects by label, `kubectl get -l` works for operators,
and pruning never touches what ftops does not own. A spec's own labels may not use any of them.
"""
from __future__ import annotations

PREFIX = "ftops.dev/"

# labels (selectable)
SPEC = "ftops.dev/spec"
OWNER = "ftops.dev/owner"
RUN_ID = "ftops.dev/run-id"
"""The run id as a label value (see controller.render.run_label); the full id is an annotation."""
ROLE = "ftops.dev/role"
"""trainer | evaluator | serving: which part of the pipeline a pod is."""
TRACK = "ftops.dev/track"
ENGINE_POOL = "ftops.dev/engine-pool"
"""The engine pool (one per base model) a vLLM Deployment serves."""
ENGINE = "ftops.dev/engine"
"""vllm or embedded: which engine a pool runs."""
"""stable | canary, on serving pods."""
GIT_COMMIT = "ftops.dev/git-commit"
DATA_MD5 = "ftops.dev/data-md5"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "ftops"
NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
QUEUE = "kueue.x-k8s.io/queue-name"
"""Kueue's queue label: set from the operator config only, never from a spec."""

# annotations
TEMPLATE_VERSION = "ftops.dev/template-version"
BASE_MODEL = "ftops.dev/base-model"
EVAL_ID = "ftops.dev/eval-id"
"""The evaluation id on an evaluation Job (its name carries only 12 hex of it)."""
SOURCE = "ftops.dev/source"
SPEC_HASH = "ftops.dev/spec-hash"
READ_ONLY = "ftops.dev/read-only"
GENERATED_BY = "ftops.dev/generated-by"

MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"

RESERVED_PREFIXES = (PREFIX, "kueue.x-k8s.io/", MANAGED_BY, "batch.kubernetes.io/", "jobset.sigs.k8s.io/",
                     "trainer.kubeflow.org/", "training.kubeflow.org/", "kubernetes.io/", "k8s.io/")
"""Label keys a spec may not set: ours (lineage), and keys that steer schedulers or controllers
(a spec label `kueue.x-k8s.io/queue-name` would jump the operator's queue)."""
RESERVED_KEYS = (NAME, INSTANCE, COMPONENT)
