"""A deterministic, schema-valid JSON instance for a JSON Schema (what the test teacher answers).

It covers what task output schemas use: objects (every listed property is filled, so strict-form
schemas are satisfied), arrays (1-2 items, or ``minItems``), enums and consts, numbers with bounds,
string formats (date, date-time, email, uri), lengths, ``pattern`` (walked with Python's own regex
parser, so ``^[A-Z][0-9]{2}(\\.[0-9A-Z]{1,4})?$`` gives ``A00``), ``anyOf``/``oneOf`` (first
non-null branch), ``allOf`` (merged) and local ``$ref``. Schemas outside this (e.g. lookaheads,
``not``) get a best-effort instance the caller should validate.
"""

from __future__ import annotations

import hashlib
import re
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

_WORDS = (
    "hypertension",
    "metformin",
    "dyspnea",
    "afebrile",
    "tachycardia",
    "troponin",
    "anemia",
    "sepsis",
    "creatinine",
    "lisinopril",
    "edema",
    "pneumonia",
    "echocardiogram",
    "discharge",
    "follow-up",
    "insulin",
    "biopsy",
    "wheezing",
    "hemoglobin",
    "ambulatory",
    "cardiology",
    "stable",
    "chronic",
    "acute",
)
_FORMATS = {
    "date": "2024-03-15",
    "date-time": "2024-03-15T08:30:00Z",
    "time": "08:30:00",
    "email": "clinician@example.org",
    "uri": "https://example.org/record",
}


def schema_instance(schema: dict[str, Any], seed: str = "") -> Any:
    """A value valid against ``schema``, the same for the same (schema, seed)."""
    return _Generator(schema, seed).value(schema, "root")


class _Generator:
    def __init__(self, root: dict[str, Any], seed: str) -> None:
        self.root = root
        self.seed = seed

    def _pick(self, path: str, n: int) -> int:
        digest = hashlib.blake2b(f"{self.seed}|{path}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % max(n, 1)

    def value(self, schema: Any, path: str) -> Any:
        if not isinstance(schema, dict):
            return None
        if "$ref" in schema:
            return self.value(self._resolve(schema["$ref"]), path)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][self._pick(path, len(schema["enum"]))]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = [b for b in schema[key] if not (isinstance(b, dict) and b.get("type") == "null")]
                return self.value(branches[0] if branches else {"type": "null"}, path)
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged = _merge(merged, part)
            return self.value(_merge(merged, {k: v for k, v in schema.items() if k != "allOf"}), path)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        return getattr(self, f"_{kind}", self._string)(schema, path)

    def _resolve(self, ref: str) -> Any:
        node: Any = self.root
        for part in ref.lstrip("#/").split("/"):
            if part:
                node = node[part]
        return node

    def _object(self, schema: dict[str, Any], path: str) -> dict[str, Any]:
        properties = schema.get("properties", {})
        result = {name: self.value(sub, f"{path}.{name}") for name, sub in properties.items()}
        for name in schema.get("required", ()):
            result.setdefault(name, self._string({}, f"{path}.{name}"))
        return result

    def _array(self, schema: dict[str, Any], path: str) -> list[Any]:
        count = max(schema.get("minItems", 0), 1 + self._pick(path, 2))
        count = min(count, schema.get("maxItems", count))
        items = [self.value(schema.get("items", {}), f"{path}[{index}]") for index in range(count)]
        if schema.get("uniqueItems"):
            items = [item for index, item in enumerate(items) if item not in items[:index]]
        return items

    def _string(self, schema: dict[str, Any], path: str) -> str:
        if "pattern" in schema:
            text = _from_pattern(schema["pattern"], lambda n, where=path: self._pick(where, n))
        elif schema.get("format") in _FORMATS:
            text = _FORMATS[schema["format"]]
        else:
            count = 2 + self._pick(path + "#n", 4)
            text = " ".join(_WORDS[self._pick(f"{path}#{i}", len(_WORDS))] for i in range(count))
        minimum, maximum = schema.get("minLength", 0), schema.get("maxLength")
        if len(text) < minimum:
            text = (text + " " + "clinical note" * minimum)[:minimum]
        return text[:maximum] if maximum is not None else text

    def _integer(self, schema: dict[str, Any], path: str) -> int:
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 101) - 1)
        return int(low) + self._pick(path, int(high) - int(low) + 1)

    def _number(self, schema: dict[str, Any], path: str) -> float:
        return float(self._integer({k: int(v) for k, v in schema.items() if isinstance(v, (int, float))}, path))

    def _boolean(self, schema: dict[str, Any], path: str) -> bool:
        return bool(self._pick(path, 2))

    def _null(self, schema: dict[str, Any], path: str) -> None:
        return None


def _merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    merged = {**left, **right}
    if "properties" in left and "properties" in right:
        merged["properties"] = {**left["properties"], **right["properties"]}
    if "required" in left or "required" in right:
        merged["required"] = sorted({*left.get("required", ()), *right.get("required", ())})
    return merged


def _from_pattern(pattern: str, pick: Any) -> str:
    """The shortest string the regex parser tree admits (alternatives and classes chosen by ``pick``)."""
    try:
        tree = sre_parse.parse(pattern)
    except re.error:
        return ""
    return _walk(tree, pick)


def _walk(tree: Any, pick: Any) -> str:
    out: list[str] = []
    for op, arg in tree:
        if op is sre_constants.LITERAL:
            out.append(chr(arg))
        elif op is sre_constants.ANY:
            out.append("x")
        elif op is sre_constants.IN:
            out.append(_from_class(arg, pick))
        elif op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
            low, _high, sub = arg
            out.extend(_walk(sub, pick) for _ in range(low))
        elif op is sre_constants.SUBPATTERN:
            out.append(_walk(arg[-1], pick))
        elif op is sre_constants.BRANCH:
            branches = arg[1]
            out.append(_walk(branches[pick(len(branches))], pick))
        elif op is sre_constants.CATEGORY:
            out.append(_from_category(arg))
    return "".join(out)


def _from_class(items: Any, pick: Any) -> str:
    if items and items[0][0] is sre_constants.NEGATE:
        return "~"
    choices: list[str] = []
    for op, arg in items:
        if op is sre_constants.LITERAL:
            choices.append(chr(arg))
        elif op is sre_constants.RANGE:
            choices.append(chr(arg[0] + pick(arg[1] - arg[0] + 1)))
        elif op is sre_constants.CATEGORY:
            choices.append(_from_category(arg))
    return choices[pick(len(choices))] if choices else "x"


def _from_category(category: Any) -> str:
    name = str(category)
    if "DIGIT" in name:
        return "7" if "NOT" not in name else "a"
    if "SPACE" in name:
        return " " if "NOT" not in name else "a"
    return "a" if "NOT" not in name else " "
