"""Clinical names: what a clinician writes for a condition, for the document prompt.

A code's name is the most specific entry of ``names.yaml`` covering it; without one, its official
description with the coder's phrases taken out ("unspecified", "initial encounter", "not elsewhere
classified", nonessential modifiers in parentheses), so that the teacher is asked for "displaced
fracture of the shaft of the right femur, closed", not for "Displaced fracture of shaft of right
femur, initial encounter for closed fracture".
"""

from __future__ import annotations

import re
from functools import cache

from mediflow import terminology

_ENCOUNTER = [
    (re.compile(r",? initial encounter for closed fracture", re.I), ", closed"),
    (re.compile(r",? initial encounter for open fracture[^,]*", re.I), ", open"),
    (re.compile(r",? subsequent encounter for fracture with routine healing", re.I), ", healing"),
    (re.compile(r",? subsequent encounter for [^,]*", re.I), ""),
    (re.compile(r",? (initial|subsequent) encounter", re.I), ""),
    (re.compile(r",? sequela", re.I), " (late effect)"),
]
_DROP = [
    re.compile(r",? not applicable or unspecified", re.I),
    re.compile(r",? not elsewhere classified", re.I),
    re.compile(r"\bNEC\b|\bNOS\b"),
    re.compile(r",? without complications", re.I),
    re.compile(r",? unspecified (trimester|site|side|type|organism|part|region)", re.I),
    re.compile(r",? unspecified\b", re.I),
    re.compile(r"^unspecified ", re.I),
    re.compile(r",? (first|second|third) trimester|,? unspecified trimester", re.I),
    re.compile(r"\s*\[[^\]]*\]"),
]
_PARENTHESES = re.compile(r"\s*\([^()]*\)")


@cache
def clean(description: str) -> str:
    """A description without coder phrases."""
    text = description
    for pattern, replacement in _ENCOUNTER:
        text = pattern.sub(replacement, text)
    for pattern in _DROP:
        text = pattern.sub("", text)
    stripped = _PARENTHESES.sub("", text).strip(" ,")
    text = stripped if len(stripped) > 3 else text
    return re.sub(r"\s{2,}", " ", text).strip(" ,")


def clinical_name(code: str, names: dict[str, str]) -> str:
    """The clinical name of ``code``: the most specific ``names`` entry covering it, else its cleaned description."""
    for spec in (code, *terminology.ancestors(code)):
        if spec in names:
            return names[spec]
    return clean(terminology.description(code))
