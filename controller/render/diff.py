"""What `ftops plan` shows: the unified diff of rendered manifests, object by object."""
from __future__ import annotations

import difflib
from typing import Any, Sequence

from controller import labels as L
from controller.render.output import to_yaml
from controller.render.training import RenderInput, render


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
