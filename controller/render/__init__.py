"""Render a FineTune run into Kubernetes manifests (pure: no client, no cluster, no clock).

One module per concern:

* `names`       object names and label values (deterministic RFC 1123, <= 63 characters)
* `templates`   the sandboxed Jinja environment, the template version hash, rendering one template
* `yamlsubset`  the fast reader of the YAML subset the templates write (PyYAML as the fallback)
* `context`     what every object shares: tenancy, lineage, pod paths, resources, secret refs
* `pods`        the pods' containers, volumes and inputs (store bundles, the model cache)
* `training`    the training workload of each flavour (+ run.json ConfigMap, checkpoint PVC)
* `serving`     the serving ConfigMap, Deployment and Service
* `kserve`      the serving as a KServe InferenceService (cluster.servingFlavor: kserve)
* `evaluation`  the evaluation Job (+ eval.json ConfigMap)
* `schema`      validation against the real Kubernetes schemas plus the checks they do not carry
* `output`      manifests as deterministic YAML text

The output is deterministic: the same inputs give byte-identical YAML (sorted keys, no
timestamps), so `ftops plan` can diff base against head (controller.manifest_diff pairs the
objects by role) and a re-render is a no-op apply.
This module re-exports the public names; callers import from here."""
from __future__ import annotations

from controller.render.context import (
    CONFIG_ERROR_EXIT_CODES,
    PREEMPTED_EXIT_CODE,
    owner_namespace,
    pod_run_config,
)
from controller.render.errors import RenderError
from controller.render.evaluation import EvaluationInput, evaluation_names, render_evaluation
from controller.render.names import MAX_NAME, model_cache_key, object_name, run_label
from controller.render.pods import MODEL_DIR, ModelSource, model_cache_claim
from controller.render.output import to_yaml
from controller.render.schema import KUBERNETES_VERSION, manifest_problems, validate_manifests
from controller.render.serving import ServingInput, render_serving
from controller.render.kserve import render_kserve
from controller.render.templates import SERVING_TEMPLATES, TRAINING_TEMPLATES, template_version
from controller.render.training import RenderInput, input_for, render, run_config_for, training_templates
from controller.render.yamlsubset import load_manifests

__all__ = [
    "CONFIG_ERROR_EXIT_CODES", "KUBERNETES_VERSION", "MAX_NAME", "MODEL_DIR", "ModelSource", "model_cache_claim", "model_cache_key", "PREEMPTED_EXIT_CODE", "SERVING_TEMPLATES",
    "TRAINING_TEMPLATES", "EvaluationInput", "RenderError", "evaluation_names", "render_evaluation", "RenderInput", "ServingInput", "input_for",
    "load_manifests", "manifest_problems", "object_name", "owner_namespace", "pod_run_config",
    "render", "render_kserve", "render_serving", "run_config_for", "run_label", "template_version", "to_yaml",
    "training_templates", "validate_manifests",
]
