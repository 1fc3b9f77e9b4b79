"""Which image this controller runs, so the ledger can record it with every step.

The downward API cannot expose an image digest (only names, labels, annotations, IPs), so:

1. `FTOPS_IMAGE_DIGEST` wins when set: the chart sets it when the image is pinned by digest
   (`image.digest`), which is also the only way the digest is known before the pod starts.
2. Otherwise the controller reads its own Pod (`POD_NAME`/`POD_NAMESPACE`, from the downward
   API) and takes the digest the kubelet resolved, from `status.containerStatuses[].imageID`
   (e.g. `docker-pullable://ghcr.io/ftops/controller@sha256:...`). The chart's RBAC allows
   `get pods` in the release namespace for this.

`export_image_digest()` does both once at start-up and puts the answer into the environment,
where the reconciler reads it (`os.environ["FTOPS_IMAGE_DIGEST"]`).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, MutableMapping

from controller.errors import TemporaryError

ENV_DIGEST = "FTOPS_IMAGE_DIGEST"
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64})$")


def digest_from_image_id(image_id: str) -> str | None:
    """`sha256:<64 hex>` from a containerStatus imageID (any runtime's spelling), else None."""
    m = _DIGEST.search(image_id or "")
    return m.group(1) if m else None


def own_image_digest(backend: Any = None, env: Mapping[str, str] = os.environ) -> str | None:
    """This container's image digest, or None when it cannot be known (not in a pod, no
    permission, the kubelet has not reported it)."""
    if env.get(ENV_DIGEST):
        return env[ENV_DIGEST]
    pod_name, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
    if not pod_name or not namespace:
        return None
    from controller.backends.kubernetes import ApiError, KubernetesBackend

    backend = backend if backend is not None else KubernetesBackend()
    try:
        pod = backend.get("v1", "Pod", namespace, pod_name)
    except (ApiError, TemporaryError):
        return None
    container = env.get("FTOPS_CONTAINER_NAME", "controller")
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return digest_from_image_id(status.get("imageID", ""))
    return None


def export_image_digest(backend: Any = None, env: MutableMapping[str, str] = os.environ) -> str | None:
    """Find the digest once and set FTOPS_IMAGE_DIGEST, so everything after reads one value."""
    digest = own_image_digest(backend, env)
    if digest:
        env[ENV_DIGEST] = digest
    return digest


__all__ = ["ENV_DIGEST", "digest_from_image_id", "export_image_digest", "own_image_digest"]
