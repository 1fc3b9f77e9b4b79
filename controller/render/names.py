"""Object names and label values: deterministic, RFC 1123, at most 63 characters.

The same run always maps to the same names, so a create is idempotent and a re-render is a
no-op apply; a too-long spec name is shortened with a digest of the full name so two long
names with a common prefix stay apart."""
from __future__ import annotations

import hashlib
import re

from controller.spec.base import RFC1123_LABEL

MAX_NAME = 63


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


def model_cache_key(uri: str, revision: str | None) -> str:
    """The model cache's directory for a base model: 24 hex of sha256("uri@revision"). The same
    model at the same revision is one directory per cache, whoever asks (train, eval, serve)."""
    return hashlib.sha256(f"{uri}@{revision or ''}".encode()).hexdigest()[:24]
