"""Manifests as text: multi-document YAML, keys sorted, byte-identical for identical input."""
from __future__ import annotations

from typing import Iterable

import yaml


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
