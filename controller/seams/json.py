"""JSON values as types, for payloads that cross a seam as data (events, manifests' provenance)."""
from __future__ import annotations

from typing import Union

JsonValue = Union[str, int, float, bool, None, list["JsonValue"], dict[str, "JsonValue"]]
JsonObject = dict[str, JsonValue]
