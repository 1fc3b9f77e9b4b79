"""The one error a render raises: its inputs cannot give manifests the API server would accept."""
from __future__ import annotations

from controller.errors import PermanentError


class RenderError(PermanentError):
    """The inputs cannot produce valid manifests (tenancy, names, schema). Fix the spec or config."""
