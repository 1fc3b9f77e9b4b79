"""The Jinja environment the templates run in, their version hash, and rendering one template.

Templates receive *values*, never code: they run in Jinja's immutable sandbox with
StrictUndefined, and every value reaches the YAML through `tojson`, so a spec string (a label,
a secret name, a path) is always one quoted scalar and can never add a key, a document or a
list item. `template_version()` hashes the templates' bytes; the run identity includes it, so a
template change is a new run (a new name) instead of an in-place edit of an immutable Job."""
from __future__ import annotations

import hashlib
import json
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from controller.paths import templates_dir
from controller.render.yamlsubset import load_manifests

TRAINING_TEMPLATES = {
    "job": "training-job.yaml.j2",
    "indexed": "training-indexed-job.yaml.j2",
    "trainjob": "training-trainjob.yaml.j2",
    "jobset": "training-jobset.yaml.j2",
}
SERVING_TEMPLATES = ("serving-configmap.yaml.j2", "serving-deployment.yaml.j2", "serving-service.yaml.j2")
EVALUATION_TEMPLATES = ("evaluation-configmap.yaml.j2", "evaluation-job.yaml.j2")


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


def render_template(name: str, context: Mapping[str, Any]) -> list[dict]:
    with _env_lock:  # Jinja's template cache is not documented thread-safe on first load
        template = _environment(str(templates_dir())).get_template(name)
    text = template.render(**context)
    return load_manifests(text)
