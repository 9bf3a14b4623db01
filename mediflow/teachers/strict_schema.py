"""Rewrite a JSON Schema into the "strict" form that OpenAI-style structured outputs accept.

Strict mode only takes objects that close their property set (``additionalProperties: false``) and
list every property as required. Optional properties keep their meaning by becoming nullable, so
an answer that is valid against the strict form is still valid against the original schema once
its ``null`` optionals are dropped (the pipeline validates against the original anyway).
"""

from __future__ import annotations

import copy
from typing import Any

_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("$defs", "definitions")


def strict_form(schema: dict[str, Any]) -> dict[str, Any]:
    """A strict copy of ``schema``: every object closed and fully required, optionals nullable."""
    strict: dict[str, Any] = _strict(copy.deepcopy(schema))
    return strict


def _strict(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    properties = node.get("properties")
    if isinstance(properties, dict) or node.get("type") == "object":
        properties = properties or {}
        required = set(node.get("required", ()))
        node["properties"] = {name: _strict(sub) if name in required else _nullable(_strict(sub)) for name, sub in properties.items()}
        node["required"] = list(properties)
        node["additionalProperties"] = False
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(node.get(key), list):
            node[key] = [_strict(sub) for sub in node[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            node[key] = {name: _strict(sub) for name, sub in node[key].items()}
    return node


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    """Allow ``null`` in addition to what ``node`` allows."""
    kind = node.get("type")
    if isinstance(kind, str) and "enum" not in node:
        return {**node, "type": [kind, "null"]} if kind != "null" else node
    if isinstance(kind, list) and "enum" not in node:
        return node if "null" in kind else {**node, "type": [*kind, "null"]}
    return {"anyOf": [node, {"type": "null"}]}


def is_strict_compatible(schema: dict[str, Any]) -> bool:
    """Strict structured outputs need an object at the root."""
    return schema.get("type") == "object" or isinstance(schema.get("properties"), dict)
